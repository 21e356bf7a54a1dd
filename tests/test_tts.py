"""French TTS: normalisation, the offline Pico voice, the Piper code path, sentence streaming, cache."""
import numpy as np
import pytest

from audio.pcm import rms_dbfs
from tests.conftest import wer
from tts.normalize import normalize, sentences
from tts.synthesizer import PicoSynthesizer, PiperSynthesizer, Speaker, TTSError, make_synthesizer, packaged_piper_voice


@pytest.mark.parametrize("text, spoken", [
    ("Ouvert de 9h30 à 12h", "Ouvert de neuf heures trente à douze heures"),
    ("à 8 h 05", "à huit heures cinq"),
    ("Appelez le 01 99 47 20 00.", "Appelez le zéro un, quatre-vingt-dix-neuf, quarante-sept, vingt, zéro zéro."),
    ("au 01-99-47-20-15", "au zéro un, quatre-vingt-dix-neuf, quarante-sept, vingt, quinze"),
    ("au +33 1 99 47 20 15", "au plus trente-trois, un, quatre-vingt-dix-neuf, quarante-sept, vingt, quinze"),
    ("le 2026-12-05", "le cinq décembre deux mille vingt-six"),
    ("le 1/12", "le premier décembre"),
    ("Le timbre coûte 86 €.", "Le timbre coûte quatre-vingt-six euros."),
    ("soit 17,50 euros", "soit dix-sept euros cinquante"),
    ("Prenez rdv avec votre CNI au CCAS.", "Prenez rendez-vous avec votre carte d'identité au C. C. A. S."),
    ("Ticket SIG-2026-000123", "Ticket S. I. G., deux, zéro, deux, six, zéro, zéro, zéro, un, deux, trois"),
])
def test_french_normalisation(text, spoken):
    assert normalize(text) == spoken


def test_sentences_split_for_streaming():
    assert sentences("Bonjour. La mairie est ouverte le samedi. Avez-vous une autre question ?") == [
        "Bonjour. La mairie est ouverte le samedi.", "Avez-vous une autre question ?"]


def test_pico_speaks_intelligible_french_at_8k(engines):
    sp = Speaker(PicoSynthesizer(), 8000)
    text = "La mairie est ouverte le samedi matin de neuf heures à midi."
    pcm = sp.say(text)
    assert pcm.dtype == np.int16 and 2.0 < len(pcm) / 8000 < 8.0
    assert rms_dbfs(pcm) > -35
    back = engines.transcriber.transcribe(pcm, 8000).text
    assert wer(text, back) < 0.35, back


def test_stream_yields_each_sentence_and_cache_serves_repeats(tmp_path):
    sp = Speaker(PicoSynthesizer(), 8000, cache_dir=tmp_path)
    text = "Première phrase de test. Deuxième phrase, un peu plus longue."
    first = list(sp.stream(text))
    assert len(first) == 2 and not any(c.cached for c in first) and all(c.synth_ms > 0 for c in first)
    again = list(sp.stream(text))
    assert all(c.cached and c.synth_ms == 0 for c in again)
    assert np.array_equal(first[1].pcm, again[1].pcm)
    assert len(list(tmp_path.glob("*.wav"))) == 2
    fresh = Speaker(PicoSynthesizer(), 8000, cache_dir=tmp_path)     # disk cache survives a restart
    assert all(c.cached for c in fresh.stream(text))


def test_personal_text_is_not_cached(tmp_path):
    sp = Speaker(PicoSynthesizer(), 8000, cache_dir=tmp_path)
    sp.say("Rappel au 06 12 34 56 78.", cache=False)
    assert not list(tmp_path.glob("*.wav"))


def test_piper_code_path_with_the_packaged_voice():
    synth = PiperSynthesizer(packaged_piper_voice())
    sp = Speaker(synth, 16000)
    pcm = sp.say("Hello. This is the town hall.")
    assert synth.native_rate == 22050 and len(pcm) / 16000 > 1.0 and rms_dbfs(pcm) > -35


def test_espeak_mbrola_option_speaks_french(engines, tmp_path):
    synth = make_synthesizer({"engine": "espeak", "espeak_voice": "mb-fr1", "speed_percent": 90}, tmp_path)
    text = "La mairie est ouverte le samedi matin."
    pcm = Speaker(synth, 8000).say(text)
    assert synth.name == "espeak-mb-fr1-90" and rms_dbfs(pcm) > -35
    assert wer(text, engines.transcriber.transcribe(pcm, 8000).text) < 0.35


def test_unknown_engine_or_missing_voice_is_a_clear_error(tmp_path):
    with pytest.raises(TTSError, match="inconnu"):
        make_synthesizer({"engine": "festival"}, tmp_path)
    with pytest.raises(TTSError, match="introuvable"):
        make_synthesizer({"engine": "piper", "piper_voice": "fr_FR-siwis-medium"}, tmp_path)
    with pytest.raises(TTSError, match="indisponible"):
        make_synthesizer({"engine": "espeak", "espeak_voice": "mb-xx9"}, tmp_path)


def test_homophones_can_be_scored_as_heard():
    from ivr.metrics import errors

    ref = "Les guirlandes restent allumées, appelez la mairie."
    assert errors(ref, "Les guirlandes restent allumés, appelé la mairie.") == (2, 7)
    assert errors(ref, "Les guirlandes restent allumés, appelé la mairie.", homophones=True) == (0, 7)
    assert errors(ref, "Les guirlandes restent allumés, appelé l'Amérique.", homophones=True)[0] == 2


def test_tts_benchmark_reports_voice_next_to_human_speaker(cfg):
    from ivr.bench import bench_tts
    from tests.conftest import SOUNDS

    out = bench_tts(cfg, SOUNDS, n=2, limit=3)
    for key in ("answers", "prompts", "prompts_human_speaker"):
        s = out[key]
        assert s["words"] > 10 and 0.0 <= s["wer_homophones_as_right"] <= s["wer"] < 0.6, (key, s)
    assert out["prompts"]["texts"] == out["prompts_human_speaker"]["texts"] == 3
    assert out["first_audio_ms_median"] > 0 and out["engine"].startswith("pico")


def test_pre_emphasis_brightens_without_changing_the_peak():
    from tts.synthesizer import pre_emphasis

    t = np.arange(16000) / 16000
    x = (8000 * np.sin(2 * np.pi * 200 * t) + 2000 * np.sin(2 * np.pi * 3000 * t)).astype(np.int16)
    y = pre_emphasis(x, 0.8)
    band = lambda s, f: np.abs(np.fft.rfft(s.astype(np.float64)))[f]   # noqa: E731 (1 Hz bins)
    assert y.dtype == np.int16 and abs(int(np.abs(y).max()) - int(np.abs(x).max())) <= 1
    assert band(y, 3000) / band(y, 200) > 4 * band(x, 3000) / band(x, 200)
    assert pre_emphasis(x, 0.0) is x
