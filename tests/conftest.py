"""Shared fixtures. Tests use the real models provisioned by scripts/setup.sh (data/models), a real
SQLite file in a temporary folder, and real French speech: Debian's recordings of a human speaker
(scripts/fetch_french_sounds.sh) and a second French voice (espeak-ng + MBROLA fr1) playing callers."""
from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from audio.pcm import phone_line, read_audio
from ivr.config import load_config
from ivr.metrics import wer  # noqa: F401 (re-exported for the tests)

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "data" / "models"
SOUNDS = ROOT / "data" / "sounds" / "fr"

# A Tuesday morning, when the town hall is open (hours matter for transfers).
OPEN_TIME = dt.datetime(2026, 12, 1, 10, 0)
CLOSED_TIME = dt.datetime(2026, 12, 1, 21, 0)


def make_cfg(tmp: Path, **overrides):
    # models and the search index are shared (read-only for tests); database, recordings are per test
    env = {"IVR_DATA": str(tmp), "IVR_PATHS__MODELS": str(MODELS), "IVR_PATHS__CORPUS": str(ROOT / "corpus"),
           "IVR_PATHS__CACHE": str(ROOT / "data" / "cache")}
    env.update({k: str(v) for k, v in overrides.items()})
    return load_config(env=env)


@pytest.fixture
def cfg(tmp_path):
    return make_cfg(tmp_path)


@pytest.fixture(scope="session")
def shared_data(tmp_path_factory):
    return tmp_path_factory.mktemp("ivr-data")


@pytest.fixture(scope="session")
def engines(shared_data):
    """Real engines (Whisper base, Silero, Pico, USE) loaded once for the whole run."""
    from ivr.app import build_engines

    cfg = make_cfg(shared_data)
    return build_engines(cfg, clock=lambda: OPEN_TIME)


@pytest.fixture(scope="module")
def pbx():
    """A real Asterisk (tests/sipcall.py), for the modules that place real calls."""
    from tests.sipcall import Asterisk

    with Asterisk() as ast:
        yield ast


@pytest.fixture(scope="module")
def assistant(pbx, tmp_path_factory):
    """`ivr serve` registered with it, one per test module."""
    from tests.sipcall import Assistant

    a = Assistant(tmp_path_factory.mktemp("serve"), pbx).start()
    yield a
    a.stop()


def caller_voice(text: str, rate: int = 8000, phone: bool = True, tmp: Path | None = None,
                 voice: str = "mbrola", wpm: int = 150) -> np.ndarray:
    """A caller saying `text` in French through a G.711 phone line: espeak-ng + MBROLA (`voice`
    "mbrola" or "mb-fr1": fr1, the test voice; "mb-fr4": a second one, at `wpm` words a minute), or
    SVOX Pico (`voice="pico"`, the assistant's own voice, a third one for benchmarks)."""
    if voice == "pico":
        from audio.pcm import resample
        from tts.synthesizer import PicoSynthesizer

        pcm = resample(PicoSynthesizer().synth(text), PicoSynthesizer.native_rate, rate)
        return phone_line(pcm, rate) if phone else pcm
    if not shutil.which("espeak-ng"):
        pytest.fail("espeak-ng missing: run scripts/setup.sh")
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        wav = Path(d) / "caller.wav"
        subprocess.run(["espeak-ng", "-v", "mb-fr1" if voice == "mbrola" else voice, "-s", str(wpm), "-w", str(wav),
                        text], check=True, capture_output=True)
        pcm, _ = read_audio(wav, rate)
    return phone_line(pcm, rate) if phone else pcm


def with_silence(pcm: np.ndarray, rate: int, before: float = 0.5, after: float = 1.5) -> np.ndarray:
    z = lambda s: np.zeros(int(s * rate), dtype=np.int16)  # noqa: E731
    return np.concatenate([z(before), pcm, z(after)])


def core_sounds(n: int | None = None) -> list[tuple[Path, str]]:
    """Real French recordings with their corrected transcripts (scripts/data/core_sounds_fr.tsv)."""
    tsv = ROOT / "scripts" / "data" / "core_sounds_fr.tsv"
    rows = []
    for line in tsv.read_text(encoding="utf-8").splitlines()[1:]:
        if not line.strip():
            continue
        name, text = line.split("\t", 1)
        path = SOUNDS / f"{name}.wav"
        if not path.exists():
            pytest.fail(f"{path} missing: run scripts/fetch_french_sounds.sh (called by scripts/test.sh)")
        rows.append((path, text))
    return rows[:n] if n else rows
