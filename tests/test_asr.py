"""French ASR with the real packaged Whisper base, on real recordings of a human speaker."""
import numpy as np
import pytest

from asr.transcriber import ModelMissing, Transcriber, is_hallucination
from ivr.audio import phone_line, read_audio
from tests.conftest import core_sounds, make_cfg, wer

RATE = 8000


@pytest.fixture(scope="module")
def asr(engines):
    return engines.transcriber


def test_real_recordings_over_a_phone_line(asr):
    refs, hyps = [], []
    for path, text in core_sounds(8):
        pcm, _ = read_audio(path, RATE)
        hyps.append(asr.transcribe(phone_line(pcm, RATE), RATE).text)
        refs.append(text)
    score = wer(" ".join(refs), " ".join(hyps))
    assert score < 0.30, list(zip(refs, hyps))


def test_result_has_confidence_and_timing(asr):
    path, text = core_sounds(1)[0]
    pcm, _ = read_audio(path, RATE)
    tr = asr.transcribe(pcm, RATE)
    assert tr.text and 0.3 < tr.confidence <= 1.0
    assert tr.asr_ms > 0 and abs(tr.audio_s - len(pcm) / RATE) < 0.01


def test_silence_gives_no_invented_text(asr):
    for pcm in (np.zeros(RATE * 3, np.int16), np.random.default_rng(0).normal(0, 3, RATE * 3).astype(np.int16)):
        tr = asr.transcribe(pcm, RATE)
        assert tr.text == "" and tr.rejected


def test_a_minute_of_noise_gives_no_sentence(asr):
    rng = np.random.default_rng(2)
    noise = rng.normal(0, 2500, RATE * 60).astype(np.int16)
    tr = asr.transcribe(noise, RATE)
    assert len(tr.text.split()) <= 2, tr.text


def test_clipped_loud_audio_is_still_understood(asr):
    path, text = max(core_sounds(10), key=lambda r: len(r[1]))
    pcm, _ = read_audio(path, RATE)
    loud = np.clip(pcm.astype(np.int32) * 6, -32768, 32767).astype(np.int16)   # +16 dB, hard clipping
    assert (np.abs(loud) >= 32767).mean() > 0.01
    tr = asr.transcribe(loud, RATE)
    assert wer(text, tr.text) < 0.6, (text, tr.text)


def test_known_hallucinations_are_recognised():
    assert is_hallucination("Sous-titres réalisés par la communauté d'Amara.org")
    assert is_hallucination("Merci d'avoir regardé !")
    assert not is_hallucination("Je voudrais un passeport.")


def test_missing_model_names_the_setup_command(tmp_path):
    cfg = make_cfg(tmp_path, IVR_PATHS__MODELS=tmp_path / "none")
    with pytest.raises(ModelMissing, match="scripts/setup.sh"):
        Transcriber(cfg["asr"], cfg.models_dir)
    cfg = make_cfg(tmp_path, IVR_ASR__MODEL="large-v3")
    with pytest.raises(ModelMissing, match="--whisper-model large-v3"):
        Transcriber(cfg["asr"], cfg.models_dir)
