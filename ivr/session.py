"""A call session, transport-neutral: 20 ms frames and DTMF keys in, 20 ms frames out, and two
outcomes the transport carries out (transfer to a person, hang up).

The same session runs under `ivr simulate` (frames from a WAV file), the tests (frames from a list)
and the SIP endpoint. Audio in never waits for ASR or TTS: finished utterances go to a worker
(or run inline when `inline=True`, which makes simulations deterministic).
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from sqlite_utils.db import NotFoundError

from asr.vad import (BargeIn, SpeechEnded, SpeechPaused, SpeechStarted, TurnCheck, VoiceSegmenter, make_detector,
                     speech_seconds)
from audio.pcm import frame_samples, rms_dbfs
from dialogue.unfinished import unfinished
from ivr import monitoring
from ivr.communes import desk_extension
from ivr.echo import EchoMeter
from ivr.recording import RecordingWriter
from ivr.store import storage_failed

log = logging.getLogger(__name__)

# ASR rejections that mean "nobody spoke" (no reply), as opposed to speech not understood
NOISE = ("silence", "no_speech", "hallucination", "prompt")
CALLER_LEVEL_DBFS = -40.0       # caller audio this loud (and not our echo) may be speech
HOLD_ONSET_S = 0.5              # how long a held turn waits on a start of speech the VAD cannot settle
DEAF_SPEECH_S = 1.0             # speech a fresh detector finds outside every utterance: a deaf call


@dataclass
class Engines:
    """Everything heavy, loaded once per process and shared by all calls."""

    cfg: dict
    transcriber: object            # asr.transcriber.Transcriber
    speaker: object                # tts.synthesizer.Speaker
    new_conversation: Callable      # (call_id, caller) -> dialogue Conversation
    store: object                  # ivr.store.Store
    recordings_dir: Path | None = None
    knowledge: object = None       # ivr.app.Knowledge: the corpus as it is today
    live: set = field(default_factory=set)   # ids of the calls in progress
    turn_model: object = None      # asr.turn.SmartTurn: has the caller finished? (None: a fixed silence)
    turn_pool: ThreadPoolExecutor | None = None   # where it runs, off the media path (made on first use)
    communes: dict = field(default_factory=dict)    # ivr.communes.Commune by id ({"": ...} for one commune)
    knowledges: dict = field(default_factory=dict)  # their Knowledge, by id
    prompt_for: Callable[[str], str | None] = lambda commune: None   # a commune's ASR prompt (None: the default)

    def check_turn(self, audio: np.ndarray, rate: int, done: Callable[[float | None], None]) -> None:
        """The turn model on `audio`, off the calling thread; `done` gets its verdict (None: it failed)."""
        if self.turn_pool is None:
            self.turn_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="turn")

        def run() -> None:
            try:
                p = self.turn_model(audio, rate)
            except Exception:           # then the turn ends after the longest silence
                log.exception("turn model failed")
                p = None
            done(p)
        self.turn_pool.submit(run)


@dataclass
class HeldTurn:
    """A turn not answered yet: its transcript reads unfinished, or the caller spoke again."""
    event: SpeechEnded
    deadline: float | None          # call time at which it is answered as it is (None: wait for the rest)


@dataclass
class SessionEvent:
    type: str                       # call-start, speech-start, barge-in, speech-end, asr, reply, tts-start,
    t: float                        # tts-end, dtmf, silence, transfer, hangup, error
    data: dict = field(default_factory=dict)


class CallSession:
    def __init__(self, engines: Engines, transport: str = "test", caller: str = "",
                 on_transfer: Callable[[str, str | None], None] | None = None,
                 on_hangup: Callable[[str], None] | None = None,
                 on_event: Callable[[SessionEvent], None] | None = None,
                 inline: bool = False, executor: ThreadPoolExecutor | None = None, returned: dict | None = None,
                 commune: str = ""):
        """`returned`: the caller comes back after a transfer that failed: {"extension", "status" (the
        dialplan's DIALSTATUS: BUSY, NOANSWER, CHANUNAVAIL...), "call" (the call it came from)}.
        `commune`: the commune called, on an install that serves several (ivr/communes.py)."""
        cfg = engines.cfg
        self.e = engines
        self.rate = int(cfg["audio"]["sample_rate"])
        self.frame_n = frame_samples(self.rate, int(cfg["audio"]["frame_ms"]))
        self.frame_s = self.frame_n / self.rate
        self.detector = make_detector(cfg["vad"], self.rate)
        self.segmenter = VoiceSegmenter.from_config(cfg["vad"], self.rate, int(cfg["audio"]["frame_ms"]))
        self._set_turn_taking(None)
        self._verdict_in: tuple[int, float] | None = None   # a turn model's verdict, for the media thread
        self._held: HeldTurn | None = None
        self._open_t: float | None = None   # start of the caller's first words not answered yet
        self.store = engines.store
        self.returned = returned
        self._lost = 0                      # record writes that failed (full disk...): logged, call goes on
        self._start_args = (transport, caller, (returned or {}).get("call"))
        self.call_id = uuid.uuid4().hex[:16]
        self.commune = commune
        self._stored = self._save("call start", self.store.start_call, transport, caller, call_id=self.call_id,
                                  returned_from=self._start_args[2], commune=commune) is not None
        engines.live.add(self.call_id)
        self.conversation = engines.new_conversation(self.call_id, caller, commune)
        self._prompt = engines.prompt_for(commune)     # its own words for the ASR (None: the default)
        # several communes: "the desk" is the called commune's own reception (services.accueil.poste)
        self._desk = desk_extension(self.conversation.corpus) if len(engines.communes) > 1 else None
        self.on_transfer, self.on_hangup, self.on_event = on_transfer, on_hangup, on_event
        self.inline = inline
        self._own_executor = executor is None and not inline
        self.executor = executor or (None if inline else ThreadPoolExecutor(max_workers=1))
        self._echo_guard_db = float(cfg["vad"].get("echo_guard_db", 15.0))
        self._out_level = deque(maxlen=15)   # dBFS of the last 300 ms we played (echo guard)
        self._echo = EchoMeter(self.rate)    # how loud the line's echo of our voice is
        self._lock = threading.RLock()
        self._out: deque[np.ndarray] = deque()
        self._after_playback: tuple[str, str] | None = None   # ("transfer"|"hangup", reason)
        self._t = 0.0                       # call clock: seconds of audio received
        self._last_activity = 0.0
        self._limit_hit = False
        self._pending = 0                   # jobs queued or running on the worker (turns, greeting...)
        self._spec = None                   # (audio, hint, Future of the transcript) started in a pause
        self._spec_pool = None              # its own threads: a stale guess does not delay the next one
        self._transfer_reason = ""          # why the call went to a person (kept in its record)
        self._transfer_to = None            # a service's extension (None: the desk)
        self.ended = False
        self.outcome = "abandoned"
        self.turns: list[dict] = []         # what happened, per caller turn (for simulate/bench)
        self._rec_in: list[np.ndarray] = []
        self._rec_out: list[np.ndarray] = []
        # written as the call goes (a killed process keeps all but the last second): ivr/recording.py
        self._recorder = (RecordingWriter(Path(engines.recordings_dir) / f"{self.call_id}.wav", self.rate,
                                          on_error=self._recording_failed)
                          if cfg["call"]["record"] and engines.recordings_dir else None)
        self._loud = bytearray()            # per frame received: caller-level audio, not our echo
        self._heard: list[list[float]] = []  # [start, end] of each utterance the VAD heard (s)
        self._max_s = float(cfg["call"]["max_duration_s"])
        self._silence_s = float(cfg["call"]["silence_reprompt_s"])
        self.events: list[SessionEvent] = []
        self._emit("call-start", transport=transport)
        self._submit(self._greet)

    # --- transport side ----------------------------------------------------------------------------
    def push_audio(self, frame: np.ndarray) -> None:
        """One 20 ms int16 frame from the caller. Never blocks on ASR/TTS."""
        if self.ended:
            return
        self._t += self.frame_s
        self._rec_in.append(frame)
        if self._recorder is not None and len(self._rec_in) % 50 == 0:       # once a second
            self._recorder.write(self._rec_in, self._rec_out, min(len(self._rec_in), len(self._rec_out)))
        prob = self.detector(frame)
        verdict, self._verdict_in = self._verdict_in, None
        if verdict is not None:
            self.segmenter.verdict(*verdict)
        self._echo.update(frame, self._rec_out[-1] if self._rec_out else np.zeros_like(frame))
        ours = max(self._out_level) if self._out_level else -120.0
        level = rms_dbfs(frame)
        if ours > -45.0:
            # while we speak (and just after), what is not louder than the line's echo of our voice
            # (measured, + 6 dB; until measured, the configured guard) is that echo, not the caller
            echo = self._echo.echo_db
            if level < ours + (-self._echo_guard_db if echo is None else echo + 6.0):
                prob = 0.0
                level = -120.0
        self._loud.append(1 if level >= CALLER_LEVEL_DBFS else 0)
        for ev in self.segmenter.process(frame, prob):
            if isinstance(ev, BargeIn):
                self._barge_in(ev.t)
            elif isinstance(ev, SpeechStarted):
                self._last_activity = self._t
                self._heard.append([ev.t, self._max_s])
                if self._open_t is None:
                    self._open_t = ev.t
                held = self._held
                if held is not None:
                    held.deadline = None        # the caller goes on: their next words join that turn
                self._emit("speech-start", t_start=round(ev.t, 3))
            elif isinstance(ev, TurnCheck):
                self._check_turn(ev)
            elif isinstance(ev, SpeechPaused):
                self._speculate(ev)
            elif isinstance(ev, SpeechEnded):
                self._last_activity = self._t
                if self._heard:
                    self._heard[-1][1] = ev.t_end
                self._emit("speech-end", t_start=round(ev.t_start, 3), reason=ev.reason, silence_ms=ev.silence_ms,
                           complete=None if ev.complete_p is None else round(ev.complete_p, 3))
                self._submit(self._caller_turn, ev, time.perf_counter(), len(self._heard))
        held = self._held
        if held is not None and held.deadline is not None and self._t >= held.deadline \
                and (not self.segmenter.active or self._t >= held.deadline + HOLD_ONSET_S):
            self._held = None               # nothing more came: answered as it is
            self._submit(self._answer_held, held)
        if self._t >= self._max_s and not self._limit_hit:
            self._limit_hit = True
            self._submit(self._limit_reached)
        elif (not self._busy and not self._out and not self.segmenter.active and self._after_playback is None
              and self._t - self._last_activity >= self._silence_s):
            self._last_activity = self._t
            self._submit(self._silence)

    def pull_audio(self) -> np.ndarray:
        """The next 20 ms frame to play to the caller (silence when nothing to say)."""
        if self.ended:
            return np.zeros(self.frame_n, dtype=np.int16)
        with self._lock:
            frame = self._out.popleft() if self._out else None
            if frame is not None:
                self._last_activity = self._t
            elif self._after_playback and not self._busy:
                kind, reason = self._after_playback
                self._after_playback = None
                self._submit(self._finish_action, kind, reason)   # not on the media thread
        if frame is None:
            frame = np.zeros(self.frame_n, dtype=np.int16)
        self._out_level.append(rms_dbfs(frame))     # the echo guard fades 300 ms after we stop
        self._rec_out.append(frame)
        return frame

    def push_dtmf(self, key: str) -> None:
        if self.ended:
            return
        self._emit("dtmf", key=key)
        self._held = self._open_t = None    # a key answers instead
        self._last_activity = self._t
        self._clear_output()
        self._submit(self._dtmf_turn, key)

    def caller_hung_up(self) -> None:
        self.close("caller_hangup")

    @property
    def speaking(self) -> bool:
        return bool(self._out)

    @property
    def _busy(self) -> bool:
        return self._pending > 0

    @property
    def idle(self) -> bool:
        return not self._busy and not self._out and not self.segmenter.in_speech and self._held is None

    # --- turn handling (worker side) -----------------------------------------------------------------
    def _submit(self, fn, *args) -> None:
        with self._lock:
            self._pending += 1
        if self.inline:
            self._run(fn, *args)
        else:
            self.executor.submit(self._run, fn, *args)

    def _run(self, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as exc:  # a crashed component sends the caller to a person, never dead air
            log.exception("call %s: %s failed", self.call_id, getattr(fn, "__name__", fn))
            self._emit("error", where=getattr(fn, "__name__", "?"), error=repr(exc))
            self.outcome = "error"
            try:
                self._speak_then("Je rencontre un problème technique. Je vous passe un agent.", "transfer",
                                 "erreur technique", cache=True)
            except Exception:           # not even that can be said: to a person all the same
                log.exception("call %s: the apology failed, transfer without it", self.call_id)
                self._after_playback = ("transfer", "erreur technique")
        finally:
            with self._lock:
                self._pending -= 1
                if not self._pending and not self._out:
                    self._last_activity = self._t   # the silence timer starts when we are done

    def _greet(self) -> None:
        if self.returned:
            self._emit("returned", **self.returned)
            self._reply(self.conversation.returned(self.returned.get("extension", ""), self.returned.get("status", "")),
                        latency={}, transcript="")
        else:
            self._reply(self.conversation.greet(), latency={})

    def _speculate(self, ev: SpeechPaused) -> None:
        """Transcribe during the end-of-turn silence; _caller_turn uses it if the audio did not change.
        With no more calls in progress than ASR replicas, the guess runs on its own thread (a stale one
        does not hold up the real turn) and may start at the early pause, if a replica is left free for
        ended turns. With more calls, it runs on the call's worker as before: one ASR job per call at a
        time (extra guesses took replicas from other callers' ended turns: 8 calls' p50 1.22 -> 1.68 s)."""
        spec = self._spec
        if spec is not None and (np.array_equal(spec[0], ev.audio) or (ev.early and not spec[2].done())):
            return                          # already guessing this audio, or busy with an older guess
        crowded = len(self.e.live) > self.e.transcriber.workers
        if ev.early and (crowded or not self.e.transcriber.has_spare(alone=len(self.e.live) <= 1)):
            return
        hint = self._hint()
        self._emit("asr-guess", early=ev.early, audio_s=round(len(ev.audio) / self.rate, 2))
        future: Future = Future()
        took = {"t": self._t, "s": 0.0}        # when (call time) and how long: simulations replay it

        def guess() -> None:
            if not self.ended and future.set_running_or_notify_cancel():
                try:
                    t0 = time.perf_counter()
                    tr = self.e.transcriber.transcribe(ev.audio, self.rate, hint=hint, alone=len(self.e.live) <= 1,
                                                       prompt=self._prompt)
                    took["s"] = time.perf_counter() - t0
                    future.set_result(tr)
                except Exception as exc:
                    future.set_exception(exc)
            elif not future.done():
                future.set_exception(RuntimeError("call ended"))
        if self.inline:
            guess()
        elif crowded:
            self._submit(guess)
        else:
            if self._spec_pool is None:
                self._spec_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="asr-guess")
            self._spec_pool.submit(guess)
        self._spec = (ev.audio, hint, future, took)

    def _set_turn_taking(self, expects: str | None) -> None:
        """How long a turn may pause, given what the caller was just asked: digits are said with
        pauses (a fixed, longer silence); a yes/no or a choice is short (at most the usual silence)."""
        vad, turn, seg = self.e.cfg["vad"], self.e.cfg["turn"], self.segmenter
        model = self.e.turn_model is not None and expects != "phone"
        seg.end_silence_ms = int(vad.get("end_silence_digits_ms", vad["end_silence_ms"]) if expects == "phone"
                                 else vad["end_silence_ms"])
        seg.turn_check_ms = int(turn["check_ms"]) if model else 0
        seg.complete_threshold = float(turn["complete_threshold"])
        seg.max_wait_ms = int(vad["end_silence_ms"] if expects in ("yes_no", "choice") else turn["max_wait_ms"])

    def _check_turn(self, ev: TurnCheck) -> None:
        if self.e.turn_model is None:
            return
        # the model hears the whole turn so far: after a pause, "samedi." alone sounds unfinished
        opened = self._open_t
        audio = self._caller_audio(opened, self._t) if opened is not None and opened < self._t - 0.3 else ev.audio
        if self.inline:                      # simulations: the verdict at once, deterministic
            self.segmenter.verdict(ev.n, self.e.turn_model(audio, self.rate))
            return

        def done(p: float | None) -> None:
            if p is not None:
                self._verdict_in = (ev.n, p)
        self.e.check_turn(audio, self.rate, done)

    def _caller_audio(self, t_start: float, t_end: float) -> np.ndarray:
        frames = self._rec_in[int(round(t_start / self.frame_s)):int(round(t_end / self.frame_s))]
        return np.concatenate(frames) if frames else np.zeros(0, np.int16)

    def _caller_turn(self, ev: SpeechEnded, ended_at: float, utterances: int = 0) -> None:
        if self.ended:
            return
        held, self._held = self._held, None
        if held is not None:
            # the caller went on after a pause: one turn, from their first words
            first = held.event
            ev = SpeechEnded(first.t_start, ev.t_end, self._caller_audio(first.t_start, ev.t_end - ev.silence_ms / 1000
                                                                         + 0.15), ev.reason, ev.silence_ms, ev.complete_p)
            self._emit("turn-joined", t_start=round(first.t_start, 3))
        spec, self._spec = self._spec, None
        hint = self._hint()
        tr, ready_t = None, self._t
        if spec is not None and spec[1] == hint and np.array_equal(spec[0], ev.audio):
            try:
                tr, speculative = spec[2].result(), True
                ready_t = spec[3]["t"] + spec[3]["s"]
            except Exception:       # the guess failed: transcribe again (a second failure is the turn's)
                log.exception("call %s: early transcription failed", self.call_id)
        if tr is None:
            tr = self.e.transcriber.transcribe(ev.audio, self.rate, hint=hint, alone=len(self.e.live) <= 1,
                                               prompt=self._prompt)
            speculative = False
        asr_ms = (time.perf_counter() - ended_at) * 1000      # what the caller waited for, after the endpoint
        self._emit("asr", text=tr.text, confidence=tr.confidence, rejected=tr.rejected, ms=round(asr_ms),
                   speculative=speculative)
        if not tr.text and tr.rejected in NOISE:
            if len(self._heard) <= utterances:
                self._open_t = None     # the next turn's words start after it
            return          # a cough, a click, the line: not a turn (the event above keeps the trace)
        ev.transcript = (tr, round(asr_ms), speculative)
        # not over the caller: if they went on speaking, or stopped mid-sentence, the reply waits
        resumed = len(self._heard) > utterances          # a new utterance has begun: it joins this one
        wait_s = float(self.e.cfg["turn"]["unfinished_wait_ms"]) / 1000
        cut = bool(wait_s) and unfinished(tr.text)
        unsure = bool(wait_s) and not cut and bool(self.e.cfg["turn"]["hold_unsure"]) \
            and self.conversation.unsure(tr.text, tr.alternatives)
        if resumed or cut or unsure or self.segmenter.active:
            # speech starting (not confirmed yet) holds it too: "Oui, | c'est bien ça." If what starts
            # turns out to be nothing, the turn is answered as it is, as soon as the VAD lets go of it
            wait = wait_s if cut or unsure else 0.0
            deadline = None if resumed else max(ev.t_end - ev.silence_ms / 1000 + wait, self._t)
            self._held = HeldTurn(ev, deadline)
            self._emit("turn-held", text=tr.text, resumed=resumed, unfinished=cut, unsure=unsure)
            return
        if self.inline:
            # a simulation runs the ASR between two frames: the caller's next words during the time it
            # really took (as on a live call) still join this turn
            self._held = HeldTurn(ev, max(self._t + asr_ms / 1000, ready_t))
            return
        self._answer(ev)

    def _answer_held(self, held: HeldTurn) -> None:
        if not self.ended:
            self._answer(held.event)

    def _answer(self, ev: SpeechEnded) -> None:
        self._open_t = None
        tr, asr_ms, speculative = ev.transcript
        self._save("caller turn", self.store.add_turn, self.call_id, "caller", tr.text, "speech", ev.t_start,
                   ev.t_end, tr.confidence, latency_ms={"asr": asr_ms})
        t1 = time.perf_counter()
        reply = self.conversation.on_text(tr.text, tr.confidence, alternatives=tr.alternatives)
        nlu_ms = (time.perf_counter() - t1) * 1000
        self._reply(reply, latency={"endpoint": ev.silence_ms, "asr": asr_ms, "asr_wait": tr.wait_ms,
                                    "asr_early": speculative, "dialogue": round(nlu_ms, 1)},
                    transcript=tr.text, t_caller_end=ev.t_end)

    def _hint(self) -> str | None:
        """What the ASR should listen for, given what the caller was just asked."""
        from asr.transcriber import HINTS

        return HINTS.get(getattr(self.conversation, "expects", None) or "")

    def _dtmf_turn(self, key: str) -> None:
        self._save("caller key", self.store.add_turn, self.call_id, "caller", key, "dtmf", self._t, self._t)
        t1 = time.perf_counter()
        reply = self.conversation.on_dtmf(key)
        self._reply(reply, latency={"dialogue": round((time.perf_counter() - t1) * 1000, 1)}, transcript=f"[{key}]")

    def _silence(self) -> None:
        self._emit("silence")
        self._reply(self.conversation.on_silence(), latency={}, transcript="")

    def _limit_reached(self) -> None:
        self._speak_then("La durée maximale de l'appel est atteinte. Je vous passe un agent.",
                         "transfer", "durée maximale")

    def _reply(self, reply, latency: dict, transcript: str | None = None, t_caller_end: float | None = None) -> None:
        self._set_turn_taking(getattr(self.conversation, "expects", None))
        self._emit("reply", action=reply.action, theme=reply.theme, entry_id=reply.entry_id,
                   confidence=reply.confidence, text=reply.text)
        first_ms = self._speak(reply.text, cache=reply.cacheable)
        latency = dict(latency, tts_first=round(first_ms, 1))
        monitoring.on_turn(latency)
        self._save("reply", self.store.add_turn, self.call_id, "assistant", reply.text, "prompt", self._t, self._t,
                   reply.confidence, reply.action, reply.theme or "", reply.entry_id or "", latency)
        if transcript is not None or reply.action != "greeting":
            self.turns.append({"transcript": transcript, "action": reply.action, "theme": reply.theme,
                               "entry_id": reply.entry_id, "confidence": reply.confidence,
                               "text": reply.text, "latency_ms": latency})
        if reply.satisfaction is not None:
            self._save("satisfaction", self.store.set_satisfaction, self.call_id, reply.satisfaction)
        if reply.transfer:
            self.outcome = "transferred"
            self._transfer_to = reply.transfer_to
            self._after_playback = ("transfer", reply.summary or transcript or "")
        elif reply.end_call:
            if self.outcome == "abandoned":
                self.outcome = reply.outcome or "answered"
            self._after_playback = ("hangup", "goodbye")
        elif reply.action in ("answer", "guide", "orientation", "signalement", "message") and self.outcome in ("abandoned",):
            self.outcome = "answered" if reply.action != "message" else "message"

    def _speak(self, text: str, cache: bool = True) -> float:
        """Queue the reply sentence by sentence; returns ms until the first sentence was ready."""
        t0 = time.perf_counter()
        first = None
        self._emit("tts-start")
        for chunk in self.e.speaker.stream(text, cache=cache):
            if first is None:
                first = (time.perf_counter() - t0) * 1000
            with self._lock:
                pcm = chunk.pcm
                for i in range(0, len(pcm), self.frame_n):
                    f = pcm[i:i + self.frame_n]
                    if len(f) < self.frame_n:
                        f = np.concatenate([f, np.zeros(self.frame_n - len(f), dtype=np.int16)])
                    self._out.append(f)
                self._out.extend([np.zeros(self.frame_n, dtype=np.int16)] * 10)  # 200 ms between sentences
        self._emit("tts-end")
        return first or 0.0

    def _speak_then(self, text: str, kind: str, reason: str, cache: bool = True) -> None:
        self._speak(text, cache)
        self._save("reply", self.store.add_turn, self.call_id, "assistant", text, "prompt", self._t, self._t,
                   action=kind)
        if kind == "transfer":
            self.outcome = "transferred" if self.outcome != "error" else "error"
        self._after_playback = (kind, reason)

    def _barge_in(self, t: float) -> None:
        if self._out:
            self._emit("barge-in", dropped_ms=len(self._out) * 20)
            self._clear_output()

    def _clear_output(self) -> None:
        with self._lock:
            self._out.clear()

    def _finish_action(self, kind: str, reason: str) -> None:
        if kind == "transfer":
            self._transfer_reason = reason
            self._emit("transfer", summary=reason)
            if self.on_transfer:
                self.on_transfer(self.summary(reason), self._transfer_to or self._desk)
            self.close("transfer")
        else:
            self.close(reason)

    # --- end ---------------------------------------------------------------------------------------
    def summary(self, reason: str = "") -> str:
        said = [t["transcript"] for t in self.turns if t.get("transcript")]
        text = f"{reason} | " if reason else ""
        return (text + " / ".join(said))[-300:]

    def close(self, reason: str) -> None:
        """Ends the call at once; the record and the recording are written off the calling thread."""
        with self._lock:
            if self.ended:
                return
            self.ended = True
        if self.inline or self.executor is None:
            self._finalize(reason)
        else:
            self.executor.submit(self._finalize, reason)

    def _finalize(self, reason: str) -> None:
        self.e.live.discard(self.call_id)
        if reason == "caller_hangup" and self.outcome == "abandoned" and self.turns:
            self.outcome = "answered" if any(t["action"] in ("answer", "guide", "orientation") for t in self.turns) else "abandoned"
        try:
            unheard = self._unheard_speech_s()
        except Exception:               # a second opinion only: the record is written regardless
            log.exception("call %s: unheard speech check failed", self.call_id)
            unheard = 0.0
        deaf = not self._heard and unheard >= DEAF_SPEECH_S
        if unheard >= DEAF_SPEECH_S:
            self._emit("unheard-speech", seconds=unheard, deaf=deaf)
            log.warning("call %s: %s: %.1f s of caller speech outside any utterance heard", self.call_id,
                        "deaf call, nothing the caller said was heard" if deaf else "caller speech not heard", unheard)
        self._emit("hangup", reason=reason)
        recording = ""
        if self._recorder is not None:
            try:
                recording = str(self._recorder.finish(self._rec_in, self._rec_out) or "")
            except Exception:           # the record is written regardless
                log.exception("call %s: recording failed", self.call_id)
        if self._lost or (self._recorder is not None and self._recorder.failures):
            # what alert watchers and the console see, once the disk takes writes again
            self._emit("storage-error", writes_lost=self._lost,
                       recording_failures=self._recorder.failures if self._recorder else 0,
                       recording_complete=bool(recording) and not self._recorder.failing)
        if not self._stored:            # its start could not be written: the record is made now
            transport, caller, returned_from = self._start_args
            self._stored = self._save("call start", self.store.start_call, transport, caller, call_id=self.call_id,
                                      returned_from=returned_from) is not None
        # a transferred call's record starts with why (the desk and the console show it)
        self._save("call end", self.store.end_call, self.call_id, self.outcome, reason, self._t,
                   self.summary(self._transfer_reason), recording, unheard_speech_s=unheard, deaf=deaf)
        if self.on_hangup and reason not in ("caller_hangup", "transfer"):
            self.on_hangup(reason)
        if self._own_executor:
            self.executor.shutdown(wait=False)
        if self._spec_pool is not None:
            self._spec_pool.shutdown(wait=False)

    def _unheard_speech_s(self, pad_s: float = 0.2, most_s: float = 120.0) -> float:
        """Speech a fresh detector finds in the caller's loud audio outside every utterance the call's
        own VAD heard: a detector gone deaf (its state, a level it misjudges) shows up here."""
        loud = np.frombuffer(bytes(self._loud), dtype=np.uint8).astype(bool)
        n = min(len(loud), len(self._rec_in))
        loud = loud[:n]
        for start, end in self._heard:
            loud[max(0, int(start / self.frame_s) - 10):int(end / self.frame_s) + 10] = False
        if loud.sum() * self.frame_s < 0.3:
            return 0.0
        pad = int(pad_s / self.frame_s)
        near = np.convolve(loud.astype(float), np.ones(2 * pad + 1), mode="same") > 0.5     # each stretch, padded
        edges = np.flatnonzero(np.diff(np.concatenate([[0], near.astype(np.int8), [0]])))
        total, budget = 0.0, int(most_s / self.frame_s)
        for a, b in zip(edges[::2], edges[1::2]):
            b = min(b, a + budget)
            if b <= a:
                break
            budget -= b - a
            total += speech_seconds(np.concatenate(self._rec_in[a:b]), self.rate)
        return round(total, 2)

    def save_recording(self, path: Path) -> Path:
        """Both directions, aligned on the call clock: left = caller, right = assistant."""
        inp = np.concatenate(self._rec_in) if self._rec_in else np.zeros(0, np.int16)
        out = np.concatenate(self._rec_out) if self._rec_out else np.zeros(0, np.int16)
        n = max(len(inp), len(out))
        stereo = np.zeros((n, 2), dtype=np.int16)
        stereo[: len(inp), 0] = inp
        stereo[: len(out), 1] = out
        import soundfile as sf

        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), stereo, self.rate, subtype="PCM_16")
        return path

    def _save(self, what: str, fn, *args, **kw):
        """A write to the call's record. A full disk or a locked or broken database must not end the
        call: the write is logged and counted (ivr.store.storage_failed), and the call goes on."""
        try:
            return fn(*args, **kw)
        except (sqlite3.Error, OSError, NotFoundError) as exc:
            self._lost += 1
            storage_failed(f"call {self.call_id}: {what}", exc, kind=what.split()[0])
        except Exception:               # not the disk: a bug, said as one; the call goes on all the same
            self._lost += 1
            log.exception("call %s: %s not saved", self.call_id, what)
        return None

    def _recording_failed(self, what: str, exc: BaseException) -> None:
        storage_failed(f"call {self.call_id}: {what}", exc, kind="recording")

    def assistant_audio(self) -> np.ndarray:
        return np.concatenate(self._rec_out) if self._rec_out else np.zeros(0, np.int16)

    def _emit(self, type_: str, **data) -> None:
        ev = SessionEvent(type_, round(self._t, 3), data)
        self.events.append(ev)
        if type_ not in ("tts-start", "tts-end", "asr-guess"):    # frequent, and on the media thread
            self._save(f"event {type_}", self.store.add_event, self.call_id, type_, self._t, **data)
        log.debug("call %s t=%.2f %s %s", self.call_id, self._t, type_, data)
        monitoring.on_session_event(self, type_, data)      # /metrics of `ivr serve`
        if self.on_event:
            self.on_event(ev)
