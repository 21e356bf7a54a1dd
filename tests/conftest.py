"""Shared fixtures. Tests use the real models provisioned by scripts/setup.sh (data/models), a real
SQLite file in a temporary folder, and real French speech: Debian's recordings of a human speaker
(scripts/fetch_french_sounds.sh) and a second French voice (espeak-ng + MBROLA fr1) playing callers."""
from __future__ import annotations

import datetime as dt
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
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


@pytest.fixture
def tmpfs(tmp_path):
    """A small tmpfs of our own (unmounted whatever happens)."""
    mounts = []

    def mount(size: str) -> Path:
        path = tmp_path / f"tmpfs{len(mounts)}"
        path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
        mounts.append(path)
        return path

    yield mount
    for path in reversed(mounts):
        subprocess.run(["umount", "-l", str(path)], check=False)


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


# --- the web console in a browser (tests/test_console.py, tests/test_commune_console.py) -----------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ADMIN, AGENT = ("alice", "mot-de-passe-admin"), ("bruno", "mot-de-passe-agent")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ivr(env: dict, *args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """The `ivr` command line, as staff run it."""
    return subprocess.run([sys.executable, "-m", "ivr.cli", *args], cwd=ROOT, env=env, input=stdin,
                          capture_output=True, text=True, timeout=timeout)


class Console:
    """`ivr console` in its own process, on a free loopback port."""

    def __init__(self, env: dict):
        self.env, self.port = env, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(env["IVR_DATA"]) / "console.log"

    def start(self) -> "Console":
        self.proc = subprocess.Popen([sys.executable, "-m", "ivr.cli", "console", "--port", str(self.port)],
                                     cwd=ROOT, env=self.env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("ivr console exited: " + self.log.read_text()[-2000:])
            try:
                urllib.request.urlopen(self.url + "/sante", timeout=2)
                return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("the console did not start: " + self.log.read_text()[-2000:])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Http:
    """A cookie-keeping HTTP client that does not follow redirects (what a script or an attacker
    would use), to check the server's answers themselves."""

    def __init__(self, base: str):
        self.base, self.cookies = base, {}
        self.opener = urllib.request.build_opener(_NoRedirect)

    def request(self, path: str, data: dict | None = None, headers: dict | None = None):
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        req = urllib.request.Request(self.base + path, data=body, headers=dict(headers or {}))
        if self.cookies:
            req.add_header("Cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items()))
        try:
            resp = self.opener.open(req, timeout=30)
        except urllib.error.HTTPError as exc:
            resp = exc
        for h in resp.headers.get_all("Set-Cookie") or []:
            name, value = h.split(";")[0].split("=", 1)
            self.cookies[name] = value
        resp.text = resp.read().decode("utf-8", "replace")
        return resp

    def csrf(self, path: str) -> str:
        return re.search(r'name="csrf_token" value="([^"]+)"', self.request(path).text).group(1)

    def login(self, name: str, password: str):
        return self.request("/connexion", {"nom": name, "mot_de_passe": password, "csrf_token": self.csrf("/connexion")})


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **kw):
        return None


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, driven by Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--autoplay-policy=no-user-gesture-required"])
        yield b
        b.close()


def login_page(browser, url: str, who=ADMIN):
    """A new browser context logged in to the console at `url`."""
    ctx = browser.new_context(locale="fr-FR", viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    page.goto(url + "/connexion")
    page.fill("#nom", who[0])
    page.fill("#mot_de_passe", who[1])
    page.click("button[type=submit]")
    page.wait_for_load_state()
    return page


def axe_clean(page, name: str) -> None:
    """No serious or critical accessibility violation (axe-core, in the page)."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    bad = [v for v in results.response["violations"] if v["impact"] in ("serious", "critical")]
    assert not bad, f"{name}: " + "; ".join(f"{v['id']} ({v['impact']}): {v['help']} x{len(v['nodes'])}" for v in bad)
