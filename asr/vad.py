"""Voice activity detection: speech detectors (frame -> probability) and a pure endpointing segmenter.

The segmenter takes the detector's verdict as a plain number, so it is tested on synthetic sequences
and works with any detector (idea from Home Assistant's assist_pipeline VoiceCommandSegmenter).
"""
from __future__ import annotations

import functools
import os
from collections import deque
from dataclasses import dataclass, field

import numpy as np


class SpeechDetector:
    """Stateful per call: feed consecutive 20 ms int16 frames, get a speech probability."""

    sample_rate: int

    def __call__(self, frame: np.ndarray) -> float:  # pragma: no cover - interface
        raise NotImplementedError

    def reset(self) -> None:
        pass


@functools.lru_cache(maxsize=2)
def _silero_session(user: str = "calls"):
    """One ONNX session per user: the calls' frames (media thread) and the ASR's speech gate (worker
    threads) do not share one."""
    import onnxruntime
    from faster_whisper.utils import get_assets_path

    opts = onnxruntime.SessionOptions()
    opts.inter_op_num_threads = 1
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 4
    path = os.path.join(get_assets_path(), "silero_vad_v6.onnx")
    return onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"], sess_options=opts)


@functools.lru_cache(maxsize=2)
def _silero_ready_state(user: str = "calls") -> tuple[np.ndarray, np.ndarray]:
    """Silero's recurrent state after 1 s of silence from zero: a listener that has settled. From zero,
    48 of 54 lines said at once start an utterance, from this state 52; left to run on, it drifts."""
    session = _silero_session(user)
    h = c = np.zeros((1, 1, 128), dtype=np.float32)
    silence = np.zeros((1, SileroVad.CONTEXT + SileroVad.WINDOW), dtype=np.float32)
    for _ in range(16000 // SileroVad.WINDOW):
        _, h, c = session.run(None, {"input": silence, "h": h, "c": c})
    return h, c


class SileroVad(SpeechDetector):
    """Silero VAD v6 (the ONNX file bundled with faster-whisper), streamed in 32 ms windows at 16 kHz.

    One ONNX session is shared by all calls; the recurrent state is per instance. 8 kHz input is
    up-sampled on the fly. Two things keep it hearing a whole call:
    - its recurrent state drifts while nothing is said and the model goes deaf: after 9 s of digital
      silence a loud question scored at most 0.54 (0.92 from a settled state), after 30 s of line noise
      21 of 54 lines were missed. Each `idle_reset_s` of windows scoring under 0.1, the state goes
      back to a settled one;
    - it scores loud speech lower (at -12 dBFS RMS 16 of 18 lines start an utterance, at -6 dBFS 15):
      what it hears is turned down to at most `agc_target_dbfs`, at once, and released slowly. Quiet
      callers are never turned up (noise would be too).
    """

    WINDOW = 512
    CONTEXT = 64

    def __init__(self, sample_rate: int = 8000, user: str = "calls", idle_reset_s: float = 2.0,
                 agc_target_dbfs: float = -16.0, agc_release_db_s: float = 6.0, settled: bool = True):
        """idle_reset_s = 0, agc_target_dbfs = 0 and settled = False: the plain model (benchmarks)."""
        if sample_rate not in (8000, 16000):
            raise ValueError("SileroVad: sample rate must be 8000 or 16000")
        self.sample_rate = sample_rate
        self.user = user
        self.idle_reset_s, self.settled = idle_reset_s, settled
        self.agc_target_dbfs, self.agc_release_db_s = agc_target_dbfs, agc_release_db_s
        self.session = _silero_session(user)
        self.reset()

    def reset(self) -> None:
        from audio.pcm import Upsampler2x

        self._settle()
        self._context = np.zeros(self.CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        self._prob = 0.0
        self._level = -120.0                # the AGC's envelope, dBFS
        self._up = Upsampler2x() if self.sample_rate == 8000 else None

    def _settle(self) -> None:
        if self.settled:
            h, c = _silero_ready_state(self.user)
            self._h, self._c = h.copy(), c.copy()
        else:
            self._h = self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._quiet = 0                     # windows in a row scoring under 0.1

    def __call__(self, frame: np.ndarray) -> float:
        x = frame.astype(np.float32) / 32768.0
        level = 10.0 * np.log10(float(np.mean(x * x)) + 1e-12)
        self._level = max(level, self._level - self.agc_release_db_s * len(frame) / self.sample_rate)
        if self.agc_target_dbfs and self._level > self.agc_target_dbfs:
            x = x * np.float32(10.0 ** ((self.agc_target_dbfs - self._level) / 20.0))
        if self._up is not None:
            x = self._up(x)
        self._pending = np.concatenate([self._pending, x])
        while len(self._pending) >= self.WINDOW:
            window, self._pending = self._pending[: self.WINDOW], self._pending[self.WINDOW:]
            inp = np.concatenate([self._context, window])[None, :]
            out, self._h, self._c = self.session.run(None, {"input": inp, "h": self._h, "c": self._c})
            self._context = window[-self.CONTEXT:]
            self._prob = float(np.asarray(out).reshape(-1)[0])
            self._quiet = self._quiet + 1 if self._prob < 0.1 else 0
            if self.idle_reset_s and self._quiet * self.WINDOW >= self.idle_reset_s * 16000:
                self._settle()
        return self._prob


class WebRtcVad(SpeechDetector):
    """Google WebRTC VAD (webrtcvad-wheels): nearly free, but weak on noisy lines (docs/benchmarks.md)."""

    def __init__(self, sample_rate: int = 8000, mode: int = 2):
        import webrtcvad

        self.sample_rate = sample_rate
        self._vad = webrtcvad.Vad(mode)

    def __call__(self, frame: np.ndarray) -> float:
        return 1.0 if self._vad.is_speech(frame.astype("<i2").tobytes(), self.sample_rate) else 0.0


def make_detector(vad_cfg: dict, sample_rate: int) -> SpeechDetector:
    engine = vad_cfg.get("engine", "silero")
    if engine == "silero":
        return SileroVad(sample_rate)
    if engine == "webrtc":
        return WebRtcVad(sample_rate, int(vad_cfg.get("webrtc_mode", 2)))
    raise ValueError(f"unknown VAD engine {engine!r} (silero or webrtc)")


def speech_seconds(pcm: np.ndarray, rate: int, threshold: float = 0.5, user: str = "asr") -> float:
    """Seconds of `pcm` a fresh Silero detector scores as speech (a second opinion on a stretch of
    audio, independent of the state a call's own detector is in)."""
    vad = SileroVad(rate, user=user)
    n = rate // 50
    return sum(1 for i in range(0, len(pcm) - n + 1, n) if vad(pcm[i:i + n]) >= threshold) * 0.02


# --- segmenter ------------------------------------------------------------------------------------

@dataclass
class SpeechStarted:
    t: float                        # seconds since the stream began, start of the utterance


@dataclass
class BargeIn:
    t: float                        # caller has been speaking for barge_in_ms: stop talking over them


@dataclass
class SpeechPaused:
    """A pause long enough that the turn may be over: the audio is what SpeechEnded will carry if the
    caller stays silent, so transcription can start before the end-of-turn silence has run out."""
    t_start: float
    t: float
    audio: np.ndarray = field(repr=False)
    early: bool = False             # at early_pause_ms: worth transcribing only if the ASR has time to spare


@dataclass
class TurnCheck:
    """A pause of turn_check_ms: has the caller finished? The answer goes back through
    `VoiceSegmenter.verdict(n, probability)`; until then the turn stays open (at most max_wait_ms)."""
    n: int                          # the check's number: a verdict for an older pause is ignored
    t: float
    audio: np.ndarray = field(repr=False)   # the utterance so far, with the pause


@dataclass
class SpeechEnded:
    t_start: float
    t_end: float
    audio: np.ndarray = field(repr=False)
    reason: str = "silence"         # silence | complete (a turn model said so) | max_length | flush
    silence_ms: int = 0             # the silence that ended it
    complete_p: float | None = None  # the turn model's verdict, when it was asked
    transcript: object = field(default=None, repr=False)   # what the ASR made of it (set by the session)


@dataclass
class VoiceSegmenter:
    """Turns per-frame speech probabilities into utterances. No I/O, no model: `process` is pure."""

    sample_rate: int = 8000
    frame_ms: int = 20
    threshold: float = 0.5
    min_speech_ms: int = 200        # speech needed before an utterance starts
    preroll_ms: int = 300           # audio kept from before the detected start
    end_silence_ms: int = 600       # trailing silence that ends the turn
    max_utterance_s: float = 15.0   # hard cut
    barge_in_ms: int = 120          # speech that signals "the caller started talking"
    pause_ms: int = 0               # silence after which SpeechPaused is sent (0: never)
    early_pause_ms: int = 0         # an earlier SpeechPaused(early=True) (0: none)
    lookback_ms: int = 2000         # how far back the start may reach, to the onset of the speech
    onset_gap_ms: int = 400         # silence that separates one burst of speech from the next
    # end of turn decided by a turn model: TurnCheck after turn_check_ms of silence (0: no model, the
    # turn ends after end_silence_ms); a verdict >= complete_threshold ends it at once, otherwise (or
    # while no verdict has come) it ends after max_wait_ms
    turn_check_ms: int = 0
    complete_threshold: float = 0.5
    max_wait_ms: int = 1500

    def __post_init__(self):
        self._neg_threshold = max(self.threshold - 0.15, 0.01)
        # audio kept while waiting for speech: enough to reach back to the onset of a start that took
        # a while to confirm (speech over a prompt, where the echo guard mutes parts of it)
        keep = max(self.preroll_ms + self.min_speech_ms, self.lookback_ms) // self.frame_ms + 1
        self._ring: deque[tuple[int, np.ndarray, float]] = deque(maxlen=keep)   # (frame number, audio, prob)
        self._frames: list[np.ndarray] = []
        self._t = 0.0
        self._n = 0                  # frames seen
        self._speech_run = 0         # ms of (nearly) continuous speech before start
        self._silence_run = 0        # ms of silence inside an utterance
        self._gap = 0                # ms of silence while still pre-start
        self._onset = -1             # frame number where the current burst of speech began
        self._last_speech = -10**9   # frame number of the latest speech frame
        self._in_speech = False
        self._barged = False
        self._start_t = 0.0
        self._paused = 0             # SpeechPaused events already sent for the current pause
        self._check = getattr(self, "_check", 0)    # TurnCheck number (kept across utterances)
        self._checked = False        # a TurnCheck was sent for the current pause
        self._verdict: float | None = None

    @classmethod
    def from_config(cls, vad_cfg: dict, sample_rate: int, frame_ms: int = 20) -> "VoiceSegmenter":
        keys = ("threshold", "min_speech_ms", "preroll_ms", "end_silence_ms", "max_utterance_s", "barge_in_ms",
                "pause_ms", "early_pause_ms", "lookback_ms", "onset_gap_ms", "turn_check_ms", "complete_threshold",
                "max_wait_ms")
        return cls(sample_rate=sample_rate, frame_ms=frame_ms, **{k: vad_cfg[k] for k in keys if k in vad_cfg})

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    @property
    def active(self) -> bool:
        """In an utterance, or hearing what may become one."""
        return self._in_speech or self._speech_run > 0

    def reset(self) -> None:
        t, n = self._t, self._n
        self.__post_init__()
        self._t, self._n = t, n

    def verdict(self, n: int, complete_p: float) -> None:
        """A turn model's answer to TurnCheck `n` (any thread may compute it; call this from the
        thread that calls `process`)."""
        if n == self._check and self._checked and self._in_speech:
            self._verdict = float(complete_p)

    def process(self, frame: np.ndarray, speech_prob: float) -> list:
        events: list = []
        self._t += self.frame_ms / 1000.0
        self._n += 1
        if not self._in_speech:
            self._ring.append((self._n, frame, speech_prob))
            if speech_prob >= self.threshold:
                if (self._n - self._last_speech) * self.frame_ms > self.onset_gap_ms:
                    self._onset = self._n
                self._last_speech = self._n
                self._speech_run += self.frame_ms
                self._gap = 0
            elif speech_prob >= self._neg_threshold:
                pass    # unsure (Silero gives 0.4-0.5 inside short synthetic or phone-band words): no reset
            else:
                self._gap += self.frame_ms
                if self._gap > 100:  # a short dip is tolerated, a pause resets the candidate
                    self._speech_run = 0
                    self._barged = False
            if self._speech_run >= self.barge_in_ms and not self._barged:
                self._barged = True
                events.append(BargeIn(self._t))
            if self._speech_run >= self.min_speech_ms:
                self._in_speech = True
                # from the onset of this burst of speech (minus the pre-roll), as far as the ring reaches
                first = self._voiced_onset() - self.preroll_ms // self.frame_ms
                self._frames = [f for k, f, _ in self._ring if k >= first]
                self._ring.clear()
                self._start_t = max(0.0, self._t - len(self._frames) * self.frame_ms / 1000.0)
                self._silence_run = 0
                events.append(SpeechStarted(self._start_t))
            return events

        self._frames.append(frame)
        if speech_prob < self._neg_threshold:
            self._silence_run += self.frame_ms
        elif speech_prob >= self.threshold:
            self._silence_run = 0
            self._paused = 0
            self._checked, self._verdict = False, None
        length = len(self._frames) * self.frame_ms / 1000.0
        if self.turn_check_ms and self._silence_run >= self.turn_check_ms and not self._checked:
            self._check += 1
            self._checked = True
            events.append(TurnCheck(self._check, self._t, np.concatenate(self._frames)))
        if self.turn_check_ms and self._checked and self._verdict is not None \
                and self._verdict >= self.complete_threshold:
            events.append(self._end("complete"))
        elif self._silence_run >= (self.max_wait_ms if self.turn_check_ms else self.end_silence_ms):
            events.append(self._end("silence"))
        elif length >= self.max_utterance_s:
            events.append(self._end("max_length"))
        else:
            pauses = [(ms, ms < self.pause_ms) for ms in sorted({self.early_pause_ms, self.pause_ms}) if ms > 0]
            if self._paused < len(pauses) and pauses[self._paused][0] <= self._silence_run:
                self._paused += 1
                events.append(SpeechPaused(self._start_t, self._t, self._audio(), early=pauses[self._paused - 1][1]))
        return events

    def _voiced_onset(self) -> int:
        """The onset, moved back over the loud, speech-like frames just before it: a detector is often
        late on a first word ("Non merci" scored 0.45 where "au revoir" scored 0.7)."""
        frames = list(self._ring)
        levels = [float(np.sqrt(np.mean(f.astype(np.float64) ** 2))) + 1.0 for _, f, _ in frames]
        floor = max(float(np.percentile(levels, 20)), 10.0)          # the line's noise, ~ -70 dBFS at least
        onset, gap = self._onset, 0
        for (k, _, prob), level in zip(reversed(frames), reversed(levels)):
            if k >= self._onset:
                continue
            if prob >= self.threshold * 0.3 and level >= floor * 5.6:  # 15 dB above the noise
                onset, gap = k, 0
            else:
                gap += self.frame_ms
                if gap > self.onset_gap_ms:
                    break
        return onset

    def flush(self) -> list:
        """End of stream: an utterance in progress is returned as it is."""
        return [self._end("flush")] if self._in_speech else []

    def _audio(self) -> np.ndarray:
        # keep a little of the trailing silence (Whisper likes a clean ending), drop the rest; never more
        # than the first pause, so the audio at SpeechPaused and at SpeechEnded is the same and the early
        # transcription can be kept
        keep = min([200] + [ms for ms in (self.pause_ms, self.early_pause_ms) if ms > 0])
        trailing = max(0, self._silence_run - keep) // self.frame_ms
        frames = self._frames[: len(self._frames) - trailing] if trailing else self._frames
        return np.concatenate(frames) if frames else np.zeros(0, dtype=np.int16)

    def _end(self, reason: str) -> SpeechEnded:
        event = SpeechEnded(self._start_t, self._t, self._audio(), reason, self._silence_run, self._verdict)
        self.reset()
        return event
