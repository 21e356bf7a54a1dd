"""French speech recognition with faster-whisper, guarded against text invented on silence."""
from __future__ import annotations

import functools
import logging
import math
import re
import threading
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

PACKAGED_BASE = "base"

# Whisper's well-known inventions on silence/noise in French (from subtitle training data).
HALLUCINATIONS = [
    "sous-titres réalisés par la communauté d'amara.org",
    "sous-titres réalisés para la communauté d'amara.org",
    "sous-titrage st' 501",
    "sous-titrage société radio-canada",
    "sous-titrage fr",
    "merci d'avoir regardé",
    "merci d'avoir regardé cette vidéo",
    "abonnez-vous",
    "n'oubliez pas de vous abonner",
    "à la prochaine",
    "amara.org",
    "sous-titres",
    "...",
]


class ModelMissing(Exception):
    """The ASR model is not provisioned: the message names the command that fixes it."""


@dataclass
class Transcript:
    text: str
    confidence: float                 # 0-1, from Whisper's own token probabilities
    no_speech_prob: float = 0.0
    audio_s: float = 0.0
    asr_ms: float = 0.0
    rejected: str | None = None       # why text was dropped (silence, hallucination, unsure)
    segments: list = field(default_factory=list, repr=False)


def _norm(text: str) -> str:
    text = unicodedata.normalize("NFC", text.lower()).replace("’", "'")
    return re.sub(r"[\s.!?,;:…]+", " ", text).strip()


_HALLU = {_norm(h) for h in HALLUCINATIONS if _norm(h)}


def is_hallucination(text: str) -> bool:
    t = _norm(text)
    return not t or t in _HALLU or any(h in t for h in _HALLU if len(h) > 12)


def resolve_model(name: str, models_dir: Path) -> str:
    """A folder, the packaged base, or a faster-whisper model name (fetched into models_dir)."""
    p = Path(name)
    if p.is_dir():
        if not (p / "model.bin").exists():
            raise ModelMissing(f"{p} does not hold a CTranslate2 Whisper model (model.bin missing)")
        return str(p)
    if name == PACKAGED_BASE:
        local = models_dir / "whisper-base"
        if not (local / "model.bin").exists():
            raise ModelMissing(
                f"modèle de reconnaissance vocale absent ({local}). "
                "Lancez : scripts/setup.sh  (ou : ivr models provision)")
        return str(local)
    local = models_dir / f"whisper-{name}"
    if (local / "model.bin").exists():
        return str(local)
    raise ModelMissing(
        f"modèle Whisper {name!r} absent de {models_dir}. "
        f"Lancez : ivr models provision --whisper-model {name}  (nécessite l'accès au dépôt de modèles)")


@functools.lru_cache(maxsize=2)
def _load(path: str, device: str, compute_type: str, threads: int):
    from faster_whisper import WhisperModel

    t = time.perf_counter()
    model = WhisperModel(path, device=device, compute_type=compute_type, cpu_threads=threads)
    log.info("ASR model loaded from %s in %.1f s", path, time.perf_counter() - t)
    return model


class Transcriber:
    """One loaded Whisper model, shared by every call of the process."""

    def __init__(self, asr_cfg: dict, models_dir: Path, prompt: str = ""):
        self.cfg = asr_cfg
        path = resolve_model(str(asr_cfg["model"]), Path(models_dir))
        self.model = _load(path, asr_cfg["device"], asr_cfg["compute_type"], int(asr_cfg["threads"]))
        self.prompt = prompt if asr_cfg.get("hotwords", True) else ""
        self._lock = threading.Lock()  # CTranslate2 can run concurrently, but 2 cores: queue instead

    def transcribe(self, pcm: np.ndarray, sample_rate: int) -> Transcript:
        from ivr.audio import pcm_to_float, resample, rms_dbfs

        audio_s = len(pcm) / sample_rate
        if audio_s < 0.1 or rms_dbfs(pcm) < -60:
            return Transcript("", 0.0, 1.0, audio_s, 0.0, rejected="silence")
        audio = pcm_to_float(resample(pcm, sample_rate, 16000))
        t0 = time.perf_counter()
        with self._lock:
            segments, _info = self.model.transcribe(
                audio,
                language="fr",
                beam_size=int(self.cfg["beam_size"]),
                vad_filter=False,
                condition_on_previous_text=False,
                without_timestamps=True,
                initial_prompt=self.prompt or None,
                temperature=[0.0, 0.4],
            )
            segments = list(segments)
        asr_ms = (time.perf_counter() - t0) * 1000
        kept, logprobs, weights, no_speech = [], [], [], 1.0
        rejected = None
        for seg in segments:
            no_speech = min(no_speech, seg.no_speech_prob)
            if seg.no_speech_prob > self.cfg["no_speech_threshold"] and seg.avg_logprob < -0.5:
                rejected = "no_speech"
                continue
            if seg.avg_logprob < self.cfg["min_avg_logprob"] or seg.compression_ratio > 2.4:
                rejected = "unsure"
                continue
            if is_hallucination(seg.text):
                rejected = "hallucination"
                continue
            kept.append(seg.text.strip())
            n = max(1, len(seg.tokens))
            logprobs.append(seg.avg_logprob * n)
            weights.append(n)
        text = " ".join(kept).strip()
        if not text:
            return Transcript("", 0.0, no_speech, audio_s, asr_ms, rejected=rejected or "empty", segments=segments)
        confidence = math.exp(sum(logprobs) / sum(weights)) * (1.0 - 0.5 * no_speech)
        return Transcript(text, round(confidence, 3), no_speech, audio_s, asr_ms, segments=segments)
