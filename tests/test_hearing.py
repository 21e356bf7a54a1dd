"""Every line a caller says is heard, whatever the voice, the level, and what the line carries between
lines (digital silence or comfort noise); a call where the caller spoke and nothing was heard is
flagged as a deaf call in its record and the log.

The first tests run the call session on audio (no telephony); the others are real calls: Asterisk,
`ivr serve`, and a pjsua2 caller (tests/reactive_caller.py) that speaks once the assistant is quiet.
"""
from __future__ import annotations

import copy
import dataclasses
import os

import numpy as np
import pytest

from audio.pcm import at_level, phone_line
from ivr.simulate import run_session_on_audio
from tests.conftest import caller_voice

RATE = 8000


def full_scale(pcm: np.ndarray) -> np.ndarray:
    """As loud as the line allows: the peak at full scale (the question then measures -10 to -16 dBFS RMS)."""
    return (pcm.astype(np.float64) * (32767 / np.abs(pcm).max())).astype(np.int16)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.int16)


def deaf_engines(engines):
    """The real engines, with a VAD that never takes anything for speech: a deaf assistant."""
    cfg = copy.deepcopy(engines.cfg)
    cfg["vad"]["threshold"] = 1.01
    return dataclasses.replace(engines, cfg=cfg)


# --- the call session on audio -------------------------------------------------------------------

def test_a_caller_who_speaks_after_the_reprompt_is_heard(engines):
    """Silero's recurrent state drifted while the line was silent (digital silence through the greeting,
    7 s more, the reprompt and 5 s after it): a loud question then never started an utterance, and
    the call went to the desk as a silent caller."""
    q = full_scale(caller_voice("Je voudrais un acte de naissance.", phone=False, voice="mb-fr4", wpm=145))
    s = run_session_on_audio(engines, np.concatenate([silence(16.0), phone_line(q, RATE), silence(1.5)]))
    kinds = [(e.type, e.t) for e in s.events if e.type in ("silence", "speech-start", "reply")]
    assert [k for k, _ in kinds].count("silence") == 1 and kinds[-1][0] == "reply", kinds   # reprompted once
    assert any(e.type == "speech-start" and e.t > 22 for e in s.events), kinds
    assert any(t["entry_id"] and t["entry_id"].startswith("etat_civil.") for t in s.turns), s.turns
    call = engines.store.call(s.call_id)
    assert call["deaf"] == 0 and call["unheard_speech_s"] < 0.5, call


def test_a_deaf_detector_makes_a_deaf_call_record(engines, caplog):
    q = caller_voice("Bonjour, je voudrais un acte de naissance pour mon fils.", voice="mb-fr4")
    s = run_session_on_audio(deaf_engines(engines), np.concatenate([silence(1.0), q, silence(1.0)]), tail_s=2)
    call = engines.store.call(s.call_id)
    assert call["deaf"] == 1 and call["unheard_speech_s"] >= 1.5, call
    assert not [t for t in call["turns"] if t["speaker"] == "caller"]
    assert any(e["type"] == "unheard-speech" for e in call["events"])
    assert any("deaf call" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("kind", ["noise", "music"])
def test_loud_noise_or_music_alone_is_not_a_deaf_call(engines, kind):
    rng = np.random.default_rng(3)
    if kind == "noise":
        audio = rng.normal(0, 1000, RATE * 6)
    else:                       # hold music: a few chords, loud
        t = np.arange(RATE * 6) / RATE
        audio = sum(3000 * np.sin(2 * np.pi * f * t) * (np.sin(2 * np.pi * 0.5 * t) > 0) for f in (262, 330, 392))
    s = run_session_on_audio(deaf_engines(engines), phone_line(np.clip(audio, -32768, 32767).astype(np.int16), RATE),
                             tail_s=1)
    call = engines.store.call(s.call_id)
    assert call["deaf"] == 0 and call["unheard_speech_s"] < 1.0, call


# --- real calls ----------------------------------------------------------------------------------

sip = pytest.mark.skipif(os.geteuid() != 0, reason="real calls need root (chroot, tcpdump)")


def heard_lines(call: dict, r) -> list[tuple[dict, list[str]]]:
    """For each line the caller said, the caller turns of the call's record that overlap it."""
    turns = [t for t in call["turns"] if t["speaker"] == "caller" and t["kind"] == "speech"]
    out = []
    for step in r.steps:
        end = step["end_s"] if step["end_s"] is not None else step["start_s"] + 5
        out.append((step, [t["text"] for t in turns if t["t_start"] < end + 0.5 and t["t_end"] > step["start_s"]]))
    return out


@sip
def test_a_loud_question_two_seconds_after_the_greeting_is_heard_over_sip(assistant):
    """A pjsua2 caller waits until the assistant has been quiet 2 s after the greeting and asks, in
    MBROLA fr4 at 145 words a minute, at full scale: the question and the goodbye used to go unheard
    (a reprompt, then the desk for a silent caller), three times out of three."""
    from tests.sipcall import reactive_call
    from tests.test_calls import wait_idle

    lines = ["Quels sont les horaires de la mairie ?", "Non merci, au revoir.", "Oui, tout à fait."]
    steps = [dict(audio=full_scale(caller_voice(t, phone=False, voice="mb-fr4", wpm=145)), after_silence_s=2.0)
             for t in lines]
    r = reactive_call(steps, timeout=120)
    assert r.answered and not r.error, r.error
    wait_idle(assistant.store)
    call = assistant.last_calls()[0]
    heard = heard_lines(call, r)
    said = [t["text"] for t in call["turns"]]
    # every line said was heard (the call may end after the goodbye: what follows is the dialogue's
    # reading of the words, which varies with the CPU's arithmetic, not hearing)
    assert len(r.steps) >= 2 and all(h for _, h in heard), (heard, said)
    assert not [e for e in call["events"] if e["type"] == "silence"], said          # no "je ne vous entends pas"
    assert any(t["entry_id"] == "mairie_pratique.horaires" for t in call["turns"]), said
    assert call["outcome"] in ("answered", "transferred") and call["deaf"] == 0, (call["outcome"], said)


CALLERS = [  # voice, level (dBFS RMS), comfort noise between lines (dBFS RMS; None: digital silence)
    ("mb-fr1", -30, -60), ("mb-fr4", -6, None), ("pico", -18, -50), ("mb-fr4", -24, -55), ("pico", -6, None),
    ("mb-fr1", -12, None)]


@sip
def test_every_line_is_heard_whatever_the_voice_and_level(assistant):
    """Six callers at once (two seconds apart), each with its voice, level and line between lines."""
    import threading
    import time

    from tests.sipcall import reactive_call
    from tests.test_calls import wait_idle

    lines = ["Je voudrais un acte de naissance.", "Non merci, au revoir.", "Oui, tout à fait."]
    results = {}

    def call(k, voice, level, noise):
        steps = [dict(audio=at_level(caller_voice(t, phone=False, voice=voice), level), after_silence_s=1.5)
                 for t in lines]
        results[k] = reactive_call(steps, timeout=150, noise_dbfs=noise)

    threads = []
    for k, c in enumerate(CALLERS):
        threads.append(threading.Thread(target=call, args=(k, *c)))
        threads[-1].start()
        time.sleep(2.0)
    for t in threads:
        t.join()
    wait_idle(assistant.store, 30)
    calls = sorted(assistant.last_calls(len(CALLERS)), key=lambda c: c["started_at"])   # in the order placed
    for k, (caller, call) in enumerate(zip(CALLERS, calls)):
        r = results[k]
        assert r.answered and not r.error, (caller, r.error)
        heard = heard_lines(call, r)
        said = [(t["speaker"], t["text"]) for t in call["turns"]]
        assert len(r.steps) >= 2 and all(h for _, h in heard), (caller, heard, said)
        assert not [s for s in r.steps if s["forced"]], (caller, r.steps)     # each line came after a reply
        assert call["deaf"] == 0, (caller, call)


@sip
def test_a_deaf_assistant_flags_the_call_in_its_record_and_log(assistant, pbx, tmp_path):
    """Last of the module: it replaces the shared assistant by one whose VAD hears nothing."""
    from tests.sipcall import Assistant, reactive_call

    assistant.stop()
    deaf = Assistant(tmp_path, pbx, env={"IVR_VAD__THRESHOLD": "1.01"}).start()
    try:
        q = at_level(caller_voice("Bonjour, je voudrais les horaires de la piscine.", phone=False), -20)
        r = reactive_call([dict(audio=q, after_silence_s=1.0)], hangup_after=16, timeout=40, noise_dbfs=-55)
        assert r.answered and r.steps, r.error
        from tests.test_calls import wait_idle

        wait_idle(deaf.store)
        call = deaf.last_calls()[0]
        assert call["deaf"] == 1 and call["unheard_speech_s"] >= 1.0, call
        assert "deaf call" in deaf.log.read_text()
    finally:
        deaf.stop()
