"""PCM helpers: read/convert/write audio, G.711, 20 ms framing. PCM is mono int16 numpy arrays."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # stdlib until 3.12, the audioop-lts package afterwards


class AudioError(Exception):
    """A user-facing problem with an audio file (missing, empty, unreadable)."""


def resample(pcm: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    if src_rate == dst_rate or len(pcm) == 0:
        return pcm.astype(np.int16, copy=False)
    out = soxr.resample(pcm.astype(np.float32) / 32768.0, src_rate, dst_rate, quality="HQ")
    return float_to_pcm(out)


class Upsampler2x:
    """Streaming 2x up-sampling (8 -> 16 kHz) with a short linear-phase FIR: every chunk comes out at
    once, ~2 ms late. soxr's streaming resampler holds ~100 ms and releases it in bursts, which made
    the VAD hear the end of a sentence 100-200 ms late."""

    def __init__(self, taps: int = 64):
        n = np.arange(taps) - (taps - 1) / 2
        h = np.sinc(n / 2) * np.kaiser(taps, 8.0)      # low-pass at the input's Nyquist frequency
        self._h = (2.0 * h / h.sum()).astype(np.float32)   # gain 2: half the samples are inserted zeros
        self._tail = np.zeros(taps - 1, np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        up = np.zeros(2 * len(x), np.float32)
        up[::2] = x
        buf = np.concatenate([self._tail, up])
        self._tail = buf[len(buf) - len(self._tail):]
        return np.convolve(buf, self._h, mode="valid").astype(np.float32)


def float_to_pcm(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16)


def pcm_to_float(pcm: np.ndarray) -> np.ndarray:
    return pcm.astype(np.float32) / 32768.0


def read_audio(path: str | Path, rate: int) -> tuple[np.ndarray, dict]:
    """Read any libsndfile format as mono int16 at `rate`. Returns (pcm, info about conversions)."""
    path = Path(path)
    if not path.exists():
        raise AudioError(f"fichier introuvable : {path}")
    if path.stat().st_size == 0:
        raise AudioError(f"fichier vide : {path}")
    try:
        data, src_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(f"fichier audio illisible ou corrompu : {path} ({exc})") from None
    if data.shape[0] == 0:
        raise AudioError(f"le fichier ne contient aucun échantillon audio : {path}")
    info = {"source_rate": src_rate, "channels": data.shape[1], "seconds": data.shape[0] / src_rate}
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    pcm = float_to_pcm(mono)
    return resample(pcm, src_rate, rate), info


def write_wav(path: str | Path, pcm: np.ndarray, rate: int) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), pcm.astype(np.int16), rate, subtype="PCM_16")


def ulaw_encode(pcm: np.ndarray) -> bytes:
    return audioop.lin2ulaw(pcm.astype("<i2").tobytes(), 2)


def ulaw_decode(data: bytes) -> np.ndarray:
    return np.frombuffer(audioop.ulaw2lin(data, 2), dtype="<i2").copy()


def phone_line(pcm: np.ndarray, rate: int) -> np.ndarray:
    """What a caller's audio looks like after a G.711 mu-law phone line (8 kHz, returned at `rate`)."""
    narrow = resample(pcm, rate, 8000)
    return resample(ulaw_decode(ulaw_encode(narrow)), 8000, rate)


def at_level(pcm: np.ndarray, dbfs: float) -> np.ndarray:
    """`pcm` scaled to an RMS of `dbfs`; what goes past full scale is clipped, as a hot line does."""
    gain = 10 ** ((dbfs - rms_dbfs(pcm)) / 20)
    return np.clip(pcm.astype(np.float64) * gain, -32768, 32767).astype(np.int16)


def frame_samples(rate: int, frame_ms: int = 20) -> int:
    return rate * frame_ms // 1000


def iter_frames(pcm: np.ndarray, rate: int, frame_ms: int = 20):
    """Split into fixed frames; the last one is zero-padded."""
    n = frame_samples(rate, frame_ms)
    for start in range(0, len(pcm), n):
        frame = pcm[start:start + n]
        if len(frame) < n:
            frame = np.concatenate([frame, np.zeros(n - len(frame), dtype=np.int16)])
        yield frame


def rms_dbfs(pcm: np.ndarray) -> float:
    if len(pcm) == 0:
        return -120.0
    rms = np.sqrt(np.mean((pcm.astype(np.float64) / 32768.0) ** 2))
    return 20 * np.log10(max(rms, 1e-6))
