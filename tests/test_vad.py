"""Endpointing on synthetic verdict sequences (pure), and the real Silero detector on real audio."""
import numpy as np
import pytest

from asr.vad import BargeIn, SileroVad, SpeechEnded, SpeechStarted, VoiceSegmenter, WebRtcVad
from audio.pcm import iter_frames
from tests.conftest import caller_voice, with_silence

RATE = 8000


def run(seg, probs):
    events = []
    for i, p in enumerate(probs):
        frame = np.full(160, i, dtype=np.int16)     # frame index as content, to check pre-roll
        events += [(i, e) for e in seg.process(frame, p)]
    return events


def test_utterance_with_preroll_and_end_of_turn():
    seg = VoiceSegmenter(min_speech_ms=200, preroll_ms=100, end_silence_ms=600, barge_in_ms=100)
    probs = [0.0] * 20 + [0.9] * 50 + [0.0] * 40
    ev = run(seg, probs)
    kinds = [type(e).__name__ for _, e in ev]
    assert kinds == ["BargeIn", "SpeechStarted", "SpeechEnded"]
    barge = next(i for i, e in ev if isinstance(e, BargeIn))
    start = next(i for i, e in ev if isinstance(e, SpeechStarted))
    assert barge < start                      # the quick signal comes before the utterance is confirmed
    end_i, end = ev[-1]
    assert end.reason == "silence"
    assert end_i == 20 + 50 + 30 - 1          # 600 ms of silence = 30 frames
    first = end.audio[0]
    assert 14 <= first <= 15                  # pre-roll reaches ~100 ms (5 frames) before speech began
    assert end.audio[-1] < 20 + 50 + 30       # most trailing silence trimmed


@pytest.mark.parametrize("pause_ms", [300, 200, 140])
def test_pause_gives_early_audio_identical_to_the_turn_unless_speech_resumes(pause_ms):
    seg = VoiceSegmenter(min_speech_ms=200, preroll_ms=100, end_silence_ms=600, barge_in_ms=100, pause_ms=pause_ms)
    probs = [0.0] * 10 + [0.9] * 30 + [0.0] * 20 + [0.9] * 20 + [0.0] * 40   # 400 ms pause, then more speech
    ev = [e for _, e in run(seg, probs) if not isinstance(e, (BargeIn, SpeechStarted))]
    assert [type(e).__name__ for e in ev] == ["SpeechPaused", "SpeechPaused", "SpeechEnded"]
    first, second, end = ev
    assert len(first.audio) < len(end.audio)                 # the caller went on: this one is stale
    assert np.array_equal(second.audio, end.audio)           # silence to the end: same audio, reuse it
    assert round(end.t_end - second.t, 3) == round(0.6 - pause_ms / 1000, 3)


@pytest.mark.parametrize("early_ms", [150, 100])
def test_an_early_pause_comes_first_with_the_same_audio(early_ms):
    seg = VoiceSegmenter(min_speech_ms=200, preroll_ms=100, end_silence_ms=600, barge_in_ms=100, pause_ms=300,
                         early_pause_ms=early_ms)
    probs = [0.0] * 10 + [0.9] * 30 + [0.0] * 10 + [0.9] * 20 + [0.0] * 40   # 200 ms pause, then more speech
    ev = [e for _, e in run(seg, probs) if not isinstance(e, (BargeIn, SpeechStarted))]
    assert [(type(e).__name__, getattr(e, "early", None)) for e in ev] == [
        ("SpeechPaused", True), ("SpeechPaused", True), ("SpeechPaused", False), ("SpeechEnded", None)]
    stale, early, late, end = ev
    assert len(stale.audio) < len(end.audio)
    assert np.array_equal(early.audio, end.audio) and np.array_equal(late.audio, end.audio)
    assert abs((late.t - early.t) - (0.3 - early_ms / 1000)) <= 0.02 + 1e-9     # within a 20 ms frame


def test_short_noise_burst_is_not_an_utterance():
    seg = VoiceSegmenter(min_speech_ms=200, barge_in_ms=100)
    ev = run(seg, [0.0] * 10 + [0.9] * 6 + [0.0] * 50)
    assert not any(isinstance(e, (SpeechStarted, SpeechEnded)) for _, e in ev)


def test_brief_dip_does_not_end_the_turn():
    seg = VoiceSegmenter(end_silence_ms=600)
    ev = run(seg, [0.9] * 30 + [0.0] * 20 + [0.9] * 30 + [0.0] * 40)
    ends = [e for _, e in ev if isinstance(e, SpeechEnded)]
    assert len(ends) == 1 and len(ends[0].audio) >= 60 * 160


def test_max_length_cuts_a_monologue():
    seg = VoiceSegmenter(max_utterance_s=2.0)
    ev = run(seg, [0.9] * 250)
    ends = [e for _, e in ev if isinstance(e, SpeechEnded)]
    assert ends and ends[0].reason == "max_length"
    assert abs(len(ends[0].audio) / RATE - 2.0) < 0.05


def test_flush_returns_unfinished_utterance():
    seg = VoiceSegmenter()
    run(seg, [0.9] * 30)
    out = seg.flush()
    assert len(out) == 1 and out[0].reason == "flush"


def _speech_mask(pcm, detector):
    return np.array([detector(f) >= 0.5 for f in iter_frames(pcm, RATE)])


def test_silero_finds_real_speech_in_noise_and_nothing_in_noise_alone():
    rng = np.random.default_rng(1)
    speech = caller_voice("Bonjour, je voudrais inscrire mon fils à la cantine de l'école.")
    pcm = with_silence(speech, RATE, 1.0, 1.0).astype(np.float64)
    p_speech = np.mean(speech.astype(np.float64) ** 2)
    noise = rng.normal(0, np.sqrt(p_speech / 10), len(pcm))        # 10 dB SNR
    noisy = np.clip(pcm + noise, -32768, 32767).astype(np.int16)
    mask = _speech_mask(noisy, SileroVad(RATE))
    n0 = int(1.0 / 0.02)
    truth = np.zeros(len(mask), bool)
    truth[n0:n0 + len(speech) // 160] = True
    recall = (mask & truth).sum() / truth.sum()
    false_alarm = (mask & ~truth).sum() / (~truth).sum()
    assert recall > 0.7, recall
    assert false_alarm < 0.1, false_alarm
    only_noise = rng.normal(0, 800, RATE * 5).astype(np.int16)
    assert _speech_mask(only_noise, SileroVad(RATE)).mean() < 0.05


def test_silero_hears_the_end_of_a_sentence_within_100_ms():
    """Each 20 ms frame reaches the detector at once: the 8 -> 16 kHz resampler used to hold ~100 ms
    and release it in bursts, and the end of a sentence was heard 100-200 ms late (every turn waited)."""
    from audio.pcm import Upsampler2x

    up = Upsampler2x()
    assert all(len(up(np.zeros(160, np.float32))) == 320 for _ in range(10))
    for text in ("Quels sont les horaires de la mairie ?", "Quand passent les encombrants ?",
                 "Je voudrais m'inscrire sur les listes électorales."):
        speech = caller_voice(text)
        pcm = with_silence(speech, RATE, 0.5, 1.0)
        last = np.flatnonzero(np.abs(pcm) > 300)[-1] // 160          # the last frame with speech in it
        vad = SileroVad(RATE)
        probs = [vad(f) for f in iter_frames(pcm, RATE)]
        heard_end = next(i for i in range(last, len(probs)) if probs[i] < 0.35)
        assert (heard_end - last) * 20 <= 100, (text, (heard_end - last) * 20)


def test_webrtc_detector_runs_as_a_cheap_option():
    speech = with_silence(caller_voice("Quels sont les horaires de la mairie ?"), RATE)
    mask = _speech_mask(speech, WebRtcVad(RATE, 2))
    assert 0.2 < mask.mean() < 0.95


def test_speech_confirmed_late_still_starts_at_its_onset():
    """Over a prompt the echo guard mutes parts of the caller's first words: the start is confirmed
    late, but the utterance reaches back to where the speech began."""
    seg = VoiceSegmenter(min_speech_ms=200, preroll_ms=100, barge_in_ms=100, lookback_ms=2000)
    flicker = ([0.9] * 4 + [0.0] * 8) * 5                 # 60 frames of speech cut by 160 ms mutes
    probs = [0.0] * 50 + flicker + [0.9] * 30 + [0.0] * 40
    ev = run(seg, probs)
    end = next(e for _, e in ev if isinstance(e, SpeechEnded))
    assert 45 <= end.audio[0] <= 50                       # onset (frame 50) minus the 100 ms pre-roll


def test_an_old_burst_does_not_pull_the_start_back():
    seg = VoiceSegmenter(min_speech_ms=200, preroll_ms=100, barge_in_ms=100, onset_gap_ms=400)
    probs = [0.0] * 10 + [0.9] * 3 + [0.0] * 40 + [0.9] * 30 + [0.0] * 40   # a click, 800 ms, then speech
    end = next(e for _, e in run(seg, probs) if isinstance(e, SpeechEnded))
    assert 48 <= end.audio[0] <= 53


def test_echo_meter_measures_the_line_echo_even_while_the_caller_talks():
    from audio.pcm import phone_line, read_audio
    from ivr.echo import EchoMeter
    from tests.conftest import core_sounds

    ours = caller_voice("Bonjour, l'assistant vocal de la mairie vous écoute. Appel enregistré. Tapez 0 pour un agent.")
    caller = np.concatenate([phone_line(read_audio(p, RATE)[0], RATE) for p, _ in core_sounds(3)])
    n = len(ours) // 160 * 160
    for echo_db in (None, -12.0, -25.0):
        for caller_db in (-100.0, 0.0):                     # silent, or as loud as us from 1 s on
            rng = np.random.default_rng(0)
            out = ours[:n].astype(np.float64)
            back = np.zeros(n)
            if echo_db is not None:
                back[480:] = out[:-480] * 10 ** (echo_db / 20)             # 60 ms late
            back[RATE:] += caller[: n - RATE] * 10 ** (caller_db / 20)
            back += rng.normal(0, 20, n)
            meter = EchoMeter(RATE)
            for i in range(0, n, 160):
                meter.update(back[i:i + 160], out[i:i + 160])
            want = -60.0 if echo_db is None else echo_db
            assert meter.echo_db is not None and abs(meter.echo_db - want) < 1.5, (echo_db, caller_db, meter.echo_db)


def test_echo_meter_gives_a_first_measure_half_a_second_into_our_voice():
    """Until the echo is measured only the fixed guard tells it from the caller: the first measure
    comes ~0.45 s into our first prompt; an echo later than it can search yet is not called absent."""
    from ivr.echo import EchoMeter

    ours = caller_voice("Bonjour, l'assistant vocal de la mairie vous écoute.").astype(np.float64)
    n = len(ours) // 160 * 160
    for delay_s, want in ((0.06, -12.0), (0.3, None)):
        back = np.zeros(n)
        d = int(delay_s * RATE)
        back[d:] = ours[: n - d] * 10 ** (-12 / 20)
        back += np.random.default_rng(0).normal(0, 20, n)
        meter = EchoMeter(RATE)
        for i in range(0, int(0.5 * RATE), 160):
            meter.update(back[i:i + 160], ours[i:i + 160])
        if want is None:
            assert meter.echo_db is None or abs(meter.echo_db + 12) < 1.5, meter.echo_db
        else:
            assert meter.echo_db is not None and abs(meter.echo_db - want) < 1.5, meter.echo_db
        for i in range(int(0.5 * RATE), n, 160):
            meter.update(back[i:i + 160], ours[i:i + 160])
        assert meter.echo_db is not None and abs(meter.echo_db + 12) < 1.5, (delay_s, meter.echo_db)


def test_a_first_word_the_detector_scores_low_is_kept():
    """'Non merci' at 0.45, then 'au revoir' at 0.7: the utterance starts at 'Non', not at 'au'."""
    seg = VoiceSegmenter(min_speech_ms=200, preroll_ms=100, barge_in_ms=100)
    rows = [(10, 0.0)] * 40 + [(3000, 0.45)] * 30 + [(10, 0.1)] * 8 + [(3000, 0.8)] * 30 + [(10, 0.0)] * 40
    events = []
    for i, (amp, p) in enumerate(rows):
        frame = np.full(160, amp, dtype=np.int16)
        frame[0] = i                                   # frame index, to find where the audio starts
        events += seg.process(frame, p)
    end = next(e for e in events if isinstance(e, SpeechEnded))
    assert 34 <= end.audio[0] <= 40                    # 'Non' (frame 40) minus the pre-roll
