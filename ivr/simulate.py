"""`ivr simulate`: a recorded caller through the same CallSession a real call uses."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from audio.pcm import iter_frames, read_audio, write_wav

log = logging.getLogger(__name__)


def run_session_on_audio(engines, pcm: np.ndarray, greeting: bool = True, tail_s: float = 30.0,
                         wait_for_greeting: bool = True):
    """Feeds 20 ms frames in real call order (one frame in, one frame out) and returns the session.
    wait_for_greeting=False: the caller starts at once, over the greeting."""
    from ivr.session import CallSession

    session = CallSession(engines, transport="simulate", inline=True)
    silence = np.zeros(session.frame_n, dtype=np.int16)
    if greeting:
        while wait_for_greeting and session.speaking and not session.ended:   # a polite caller waits for the greeting
            session.push_audio(silence)
            session.pull_audio()
    else:
        session._clear_output()
    for frame in iter_frames(pcm, session.rate):
        if session.ended:
            break
        session.push_audio(frame)
        session.pull_audio()
    quiet = 0
    for _ in range(int(tail_s / session.frame_s)):   # let the last answer play out, then stop
        if session.ended:
            break
        session.push_audio(silence)
        session.pull_audio()
        quiet = quiet + 1 if session.idle else 0
        if quiet * session.frame_s >= 1.0:
            break
    if not session.ended:
        session.close("simulation_end")
    return session


def simulate_call(cfg, input_wav: Path, clock=None, greeting: bool = True, out_wav: Path | None = None) -> dict:
    from ivr.app import build_engines

    rate = int(cfg["audio"]["sample_rate"])
    pcm, info = read_audio(input_wav, rate)
    if info["channels"] > 1 or info["source_rate"] != rate:
        log.info("input converted: %d Hz, %d channel(s) -> %d Hz mono", info["source_rate"], info["channels"], rate)
    engines = build_engines(cfg, clock=clock)
    session = run_session_on_audio(engines, pcm, greeting)
    if out_wav:
        write_wav(out_wav, session.assistant_audio(), rate)
    turns = [{k: t[k] for k in ("transcript", "action", "theme", "entry_id", "confidence", "text", "latency_ms")}
             for t in session.turns if t["transcript"] is not None]
    return {"call_id": session.call_id, "turns": turns, "outcome": session.outcome,
            "duration_s": session._t, "input": info}
