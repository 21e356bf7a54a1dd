"""End of turn: has the caller finished, or only paused?

A turn model takes the utterance so far (int16, with the pause that follows it) and returns the
probability that the turn is complete. `SmartTurn` is Pipecat's Smart Turn v3 (BSD-2; audio only,
23 languages including French): a Whisper-tiny encoder on the log-mel of the last 8 s at 16 kHz.
Its ONNX file ships inside the `pipecat-ai` wheel; `ivr models provision` takes it from there
(ivr/models.py), so nothing comes from a model hub.
"""
from __future__ import annotations

import functools
import threading
from pathlib import Path

import numpy as np

MODEL_FILE = "smart-turn-v3.2-cpu.onnx"
RATE = 16000
WINDOW_S = 8


@functools.lru_cache(maxsize=1)
def _mel_filters() -> np.ndarray:
    from faster_whisper.feature_extractor import FeatureExtractor

    return FeatureExtractor.get_mel_filters(RATE, 400, n_mels=80).astype(np.float64)     # (80, 201)


def log_mel(pcm16k: np.ndarray) -> np.ndarray:
    """Whisper's log-mel of exactly 8 s (transformers' WhisperFeatureExtractor with chunk_length=8 and
    do_normalize, as Smart Turn was trained): (80, 800) float32."""
    x = np.zeros(RATE * WINDOW_S, np.float32)
    pcm = np.asarray(pcm16k, np.float32)[: len(x)]
    x[: len(pcm)] = pcm
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    padded = np.pad(x.astype(np.float64), 200, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, 400)[::160]
    window = np.hanning(401)[:-1]
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2           # (801, 201)
    mel = np.log10(np.maximum(_mel_filters() @ power.T, 1e-10))[:, :-1]
    mel = np.maximum(mel, mel.max() - 8.0)
    return ((mel + 4.0) / 4.0).astype(np.float32)


class SmartTurn:
    """Thread-safe: one ONNX session per process, one inference at a time per thread pool worker."""

    def __init__(self, path: Path, threads: int = 1):
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = max(1, int(threads))
        opts.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 4
        self.path = Path(path)
        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"], sess_options=opts)
        self._lock = threading.Lock()

    def __call__(self, pcm: np.ndarray, rate: int) -> float:
        from audio.pcm import resample

        x = resample(pcm, rate, RATE)[-RATE * WINDOW_S:].astype(np.float32) / 32768.0
        # the model reads the last 8 s with the speech at the end: zeros go in front
        features = log_mel(np.concatenate([np.zeros(RATE * WINDOW_S - len(x), np.float32), x]))[None]
        with self._lock:
            out = self.session.run(None, {"input_features": features})[0]
        return float(np.asarray(out).reshape(-1)[0])
