"""Turn-taking: a turn ends when the caller has finished, not after a fixed silence.

The segmenter's rule on synthetic verdicts; the transcript check; the real Smart Turn model on a real
recording; then the call session on audio, and real SIP calls (Asterisk, `ivr serve`, the reactive
pjsua2 caller): a question with a pause in the middle is answered once, as a whole, and a quick "oui"
after a yes/no question is taken at once.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from asr.vad import SpeechEnded, TurnCheck, VoiceSegmenter
from audio.pcm import phone_line, read_audio
from dialogue.unfinished import unfinished
from ivr.simulate import run_session_on_audio
from tests.conftest import ROOT, caller_voice, core_sounds

RATE = 8000
sip = pytest.mark.skipif(os.geteuid() != 0, reason="real calls need root (chroot, tcpdump)")


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.int16)


def segmenter(**kw) -> VoiceSegmenter:
    return VoiceSegmenter(min_speech_ms=100, preroll_ms=100, barge_in_ms=60, turn_check_ms=100, max_wait_ms=1500, **kw)


def feed(seg: VoiceSegmenter, probs: list[float], verdicts: dict[int, float] | None = None, delay_frames: int = 3):
    """Frames of `probs`; the verdict for check n arrives `delay_frames` after it (as from a thread)."""
    out, due = [], {}
    frame = np.zeros(160, np.int16)
    for i, p in enumerate(probs):
        for n, at in list(due.items()):
            if at == i:
                seg.verdict(n, verdicts[n])
        for ev in seg.process(frame, p):
            out.append((i, ev))
            if isinstance(ev, TurnCheck) and verdicts and ev.n in verdicts:
                due[ev.n] = i + delay_frames
    return out


def test_a_complete_verdict_ends_the_turn_as_soon_as_it_arrives():
    seg = segmenter()
    ev = feed(seg, [1.0] * 50 + [0.0] * 100, {1: 0.9})
    checks = [(i, e) for i, e in ev if isinstance(e, TurnCheck)]
    ends = [(i, e) for i, e in ev if isinstance(e, SpeechEnded)]
    assert len(checks) == 1 and checks[0][0] == 50 + 4                # after 100 ms of silence
    assert len(ends) == 1 and ends[0][0] == checks[0][0] + 3           # the frame the verdict came
    assert ends[0][1].reason == "complete" and ends[0][1].complete_p == 0.9 and ends[0][1].silence_ms <= 180


def test_an_unfinished_verdict_keeps_the_turn_open_through_a_pause():
    seg = segmenter()
    # speech, a 1 s pause judged unfinished, speech again, then silence judged finished
    probs = [1.0] * 50 + [0.0] * 50 + [1.0] * 50 + [0.0] * 100
    ev = feed(seg, probs, {1: 0.1, 2: 0.95})
    ends = [e for _, e in ev if isinstance(e, SpeechEnded)]
    assert [type(e).__name__ for _, e in ev].count("SpeechStarted") == 1
    assert len(ends) == 1 and ends[0].reason == "complete" and len(ends[0].audio) >= 150 * 160


def test_without_a_verdict_the_turn_ends_after_the_longest_silence():
    seg = segmenter()
    ev = feed(seg, [1.0] * 50 + [0.0] * 100)                            # the model never answered
    ends = [(i, e) for i, e in ev if isinstance(e, SpeechEnded)]
    assert len(ends) == 1 and ends[0][1].reason == "silence" and ends[0][1].silence_ms == 1500


def test_a_verdict_for_an_older_pause_is_ignored():
    seg = segmenter()
    frame = np.zeros(160, np.int16)
    events = [e for p in [1.0] * 30 + [0.0] * 6 for e in seg.process(frame, p)]
    first = next(e for e in events if isinstance(e, TurnCheck))
    for p in [1.0] * 10:                        # the caller goes on before the verdict comes
        seg.process(frame, p)
    seg.verdict(first.n, 0.99)                  # late, for the pause that is over
    events = [e for p in [0.0] * 3 for e in seg.process(frame, p)]
    assert not any(isinstance(e, SpeechEnded) for e in events)


def test_without_a_turn_model_the_fixed_silence_still_rules():
    seg = VoiceSegmenter(min_speech_ms=100, preroll_ms=100, barge_in_ms=60, end_silence_ms=600)
    ev = feed(seg, [1.0] * 50 + [0.0] * 60)
    assert not any(isinstance(e, TurnCheck) for _, e in ev)
    end = next(e for _, e in ev if isinstance(e, SpeechEnded))
    assert end.reason == "silence" and end.silence_ms == 600


@pytest.mark.parametrize("text,expected", [
    ("Je voudrais savoir.", True), ("Alors euh", True), ("C'est pour le", True), ("Bonjour.", True),
    ("Je voudrais un acte de naissance pour mon fils.", False), ("Oui.", False), ("Non merci, au revoir.", False),
    ("C'est où ?", False), ("Je voudrais parler.", True), ("Quels sont les horaires de la mairie", False), ("j'appelle parce qu'", True),
    ("Mon adresse c'est le…", True), ("", False)])
def test_a_transcript_that_stops_mid_sentence_is_told_apart(text, expected):
    assert unfinished(text) is expected


def test_smart_turn_comes_from_its_wheel_and_hears_a_real_sentence_end(engines):
    from ivr.backup import file_sha256
    from ivr.models import SMART_TURN_SHA256, smart_turn_path

    path = smart_turn_path(engines.cfg.models_dir)
    assert file_sha256(path) == SMART_TURN_SHA256
    model = engines.turn_model
    assert model is not None and model.path == path
    pcm = phone_line(read_audio(core_sounds(1)[0][0], RATE)[0], RATE)
    on = np.flatnonzero(np.abs(pcm) > 300)
    whole = pcm[on[0]:on[-1] + 1]
    assert model(np.concatenate([whole, silence(0.12)]), RATE) >= 0.5
    assert 0.0 <= model(silence(1.0), RATE) <= 1.0


# --- the call session on audio ----------------------------------------------------------------------
def test_a_question_with_a_long_pause_in_the_middle_is_answered_once_as_a_whole(engines):
    a = caller_voice("Je voudrais savoir,")
    b = caller_voice("quels sont les horaires de la piscine ?")
    a = a[: np.flatnonzero(np.abs(a) > 500)[-1]]
    s = run_session_on_audio(engines, np.concatenate([silence(0.3), a, silence(0.8), b, silence(2.0)]))
    turns = [t for t in s.turns if t["transcript"]]
    assert len(turns) == 1, turns
    assert "voudrais" in turns[0]["transcript"].lower() and "piscine" in turns[0]["transcript"].lower()
    assert turns[0]["entry_id"] == "sport_culture_loisirs.piscine_horaires"


def test_a_first_half_the_knowledge_cannot_answer_waits_for_the_rest(engines):
    # "Je cherche les horaires." sounds finished (Smart Turn: 0.98) but matches no one entry
    a = caller_voice("Je cherche les horaires.")
    a = a[: np.flatnonzero(np.abs(a) > 500)[-1]]
    s = run_session_on_audio(engines, np.concatenate([silence(0.3), a, silence(0.8), caller_voice("de la médiathèque."),
                                                      silence(2.5)]))
    held = [e.data for e in s.events if e.type == "turn-held"]
    assert held and held[0]["unsure"] and not held[0]["unfinished"], held
    turns = [t for t in s.turns if t["transcript"]]
    assert len(turns) == 1 and turns[0]["entry_id"] == "sport_culture_loisirs.mediatheque_horaires", turns


def test_the_fixed_silence_is_still_there_for_those_who_want_it(engines):
    import copy
    import dataclasses

    cfg = copy.deepcopy(engines.cfg)
    cfg["turn"]["model"] = "silence"
    eng = dataclasses.replace(engines, cfg=cfg, turn_model=None)
    s = run_session_on_audio(eng, np.concatenate([silence(0.3), caller_voice("Quels sont les horaires de la mairie ?"),
                                                  silence(2.0)]))
    end = next(e for e in s.events if e.type == "speech-end")
    assert end.data["reason"] == "silence" and end.data["silence_ms"] == 600 and end.data["complete"] is None


# --- real calls -------------------------------------------------------------------------------------
def _replies_between(call: dict, t0: float, t1: float) -> list[str]:
    return [t["text"] for t in call["turns"] if t["speaker"] == "assistant" and t0 <= t["t_start"] <= t1]


@sip
def test_over_sip_a_pause_mid_question_is_not_answered_and_a_quick_oui_is_taken_at_once(assistant):
    from tests.sipcall import reactive_call
    from tests.test_calls import wait_idle

    a = caller_voice("Je voudrais savoir,", phone=False)
    a = a[: np.flatnonzero(np.abs(a) > 500)[-1]]
    question = np.concatenate([a, silence(0.8), caller_voice("quels sont les horaires de la piscine ?", phone=False)])
    steps = [dict(audio=question, after_silence_s=1.0),
             dict(audio=caller_voice("Non merci.", phone=False), after_silence_s=1.0),
             dict(audio=caller_voice("Oui.", phone=False), after_silence_s=0.8)]
    r = reactive_call(steps, timeout=90)
    assert r.answered and not r.error, r.error
    wait_idle(assistant.store)
    call = assistant.last_calls()[0]
    said = [(t["speaker"], t["text"]) for t in call["turns"]]
    caller = [t for t in call["turns"] if t["speaker"] == "caller" and t["kind"] == "speech"]
    # the question: one turn, both halves, one answer, nothing said in the pause
    q = r.steps[0]
    first = [t for t in caller if t["t_start"] < q["end_s"] + 0.5 and t["t_end"] > q["start_s"]]
    assert len(first) == 1 and "piscine" in first[0]["text"].lower() and "voudrais" in first[0]["text"].lower(), said
    assert len(_replies_between(call, q["start_s"], q["end_s"])) == 0, said
    answers = [t for t in call["turns"] if t["speaker"] == "assistant" and t["action"] == "answer"]
    assert len(answers) == 1 and "piscine" in answers[0]["text"].lower(), said
    # "Oui." to the yes/no question: its turn ended on the model's verdict, not after a long silence
    oui = r.steps[2]
    ends = [e for e in call["events"] if e["type"] == "speech-end" and e["t"] >= oui["start_s"]]
    assert ends, (said, call["events"][-10:])
    data = json.loads(ends[0]["data"]) if isinstance(ends[0]["data"], str) else ends[0]["data"]
    assert data["reason"] == "complete" and data["silence_ms"] < 600, data


def test_bench_turns_measures_each_policy_on_held_out_utterances():
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "ivr.cli", "bench", "turns", "--limit", "2", "--policy", "silence_600ms",
                        "--policy", "smart_turn_and_transcript"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout)
    assert r["cases"]["complete"] >= 4 and r["cases"]["paused"] >= 3, r["cases"]
    assert set(r["policies"]) == {"silence_600ms", "smart_turn_and_transcript"}
    fixed, smart = r["policies"]["silence_600ms"], r["policies"]["smart_turn_and_transcript"]
    assert 600 <= fixed["wait_after_complete_ms"]["p50"] < 800          # the fixed silence, plus the VAD's lag
    assert smart["model_ms_p50"] is not None and fixed["model_ms_p50"] is None
    assert all(0 <= v["cut_off_pct"] <= 100 for v in r["policies"].values())
