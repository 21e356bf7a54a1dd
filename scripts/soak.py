#!/usr/bin/env python3
"""Soak with faults (`scripts/soak.py`, JSON out).

The assistant installed as services (scripts/install_services.sh) on this server booted under systemd
in a container (tests/machine.py), with a desk phone whose person talks as soon as they pick up.
`--callers` SIPp callers at once, for `--minutes`, each call asking two real French questions, one
call after another. Faults, spread over the run: the assistant killed (SIGKILL), Asterisk restarted,
the console restarted. Measured: how each call ended, the silence a caller hears after speaking,
whether every call the assistant took has a record, and the assistant's memory, threads and open
files sampled every 10 s from the host (per process: the kill starts a new one).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ivr.bench import machine as machine_info  # noqa: E402
from tests.conftest import caller_voice  # noqa: E402
from tests.machine import Machine  # noqa: E402
from tests.netlab import Lab  # noqa: E402
from tests.sipcall import Desk, place_call  # noqa: E402

RATE = 8000
QUESTIONS = [
    "Quels sont les horaires de la mairie ?", "Comment obtenir un acte de naissance ?",
    "Je voudrais refaire mon passeport.", "Quand passent les encombrants ?",
    "Comment inscrire mon fils à l'école ?", "Où se trouve la médiathèque ?",
    "Comment louer une salle pour une fête ?", "Je voudrais m'inscrire sur les listes électorales.",
    "Quels sont les horaires de la déchetterie ?", "Comment faire un permis de construire ?",
]
ASK_AT, GAP, CALL_S = 9.0, 14.0, 36.0      # questions 9 s after the answer (after the greeting), 14 s apart
FAULTS = ("kill-assistant", "restart-asterisk", "restart-console")
IN_CALLS = [0]                              # callers in a call now


def loud(pcm: np.ndarray) -> np.ndarray:
    """Per 20 ms frame: something is heard (above -45 dBFS)."""
    n = len(pcm) // 160
    f = pcm[: n * 160].reshape(n, 160).astype(np.float64) / 32768
    return 20 * np.log10(np.maximum(np.sqrt((f ** 2).mean(axis=1)), 1e-6)) > -45


def silences_after_speaking(heard: np.ndarray, ends: list[float]) -> list[float]:
    """For each question that ended while the call still went on: seconds until something is heard."""
    on = loud(heard)
    out = []
    for end in ends:
        i = int(end * 50)
        if i >= len(on) - 50:                     # the call was over by then
            continue
        after = np.flatnonzero(on[i:])
        out.append(round(float(after[0] if len(after) else len(on) - i) / 50, 2))
    return out


class Caller(threading.Thread):
    def __init__(self, n: int, voices, netns, deadline: float, results: list, lock: threading.Lock):
        super().__init__(name=f"caller-{n}", daemon=True)
        self.n, self.voices, self.netns, self.deadline, self.results, self.lock = n, voices, netns, deadline, results, lock

    def run(self) -> None:
        k = self.n
        while time.monotonic() + CALL_S < self.deadline:
            audio = np.zeros(int(CALL_S * RATE), np.int16)
            ends = []
            for q in range(2):
                v = self.voices[(k + q) % len(self.voices)]
                i = int((ASK_AT + GAP * q) * RATE)
                audio[i:i + len(v)] = v
                ends.append((i + np.flatnonzero(np.abs(v) > 300)[-1]) / RATE)
            k += 1
            t0 = time.time()
            with self.lock:
                IN_CALLS[0] += 1
            r = place_call(audio, hangup_after=CALL_S, timeout=CALL_S + 20, netns=self.netns)
            with self.lock:
                IN_CALLS[0] -= 1
                self.results.append({"at": t0, "answered": r.answered, "remote_hangup": r.remote_hangup,
                                     "duration_s": round(r.duration, 1),
                                     "silences_s": silences_after_speaking(r.heard, ends) if r.answered else []})
            if not r.answered:
                time.sleep(2.0)                   # a caller who got nothing tries again a little later


def _descendants(pid1: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                kids.setdefault(int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]), []).append(int(d.name))
            except (OSError, IndexError, ValueError):
                continue
    out, todo = [], [pid1]
    while todo:
        out.append(todo.pop())
        todo += kids.get(out[-1], [])
    return out


def sample(m: Machine, in_calls: int) -> dict | None:
    """The assistant's memory, threads and open files, read from the host's /proc: nothing is started
    in the container (a probe process every few seconds there disturbed the calls)."""
    for pid in _descendants(m.pid1):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if not (any(c.endswith(b"/ivr") for c in cmd) and b"serve" in cmd):
                continue
            status = Path(f"/proc/{pid}/status").read_text()
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue
        rss, threads = re.search(r"VmRSS:\s+(\d+)", status), re.search(r"Threads:\s+(\d+)", status)
        return {"t": time.time(), "pid": pid, "rss_mb": round(int(rss.group(1)) / 1024, 1) if rss else None,
                "threads": int(threads.group(1)) if threads else None, "fds": fds, "in_calls": in_calls}
    return None


def records(m: Machine, since: float) -> dict:
    import datetime as dt

    iso = dt.datetime.fromtimestamp(since, dt.timezone.utc).isoformat()
    code = (f"import json, os, sqlite3; os.chdir({str(ROOT)!r}); from ivr.config import load_config; "
            "db = sqlite3.connect(load_config().db_path); "
            f"print(json.dumps(db.execute(\"select coalesce(outcome, status), count(*) from calls where started_at >= '{iso}' "
            "group by 1\").fetchall()))")
    return dict(json.loads(m.run(ROOT / ".venv/bin/python", "-c", code).stdout))


def inject(m: Machine, fault: str) -> dict:
    """Do it, then time until the part is back (for the assistant and Asterisk: the assistant
    registered again)."""
    t0 = time.monotonic()
    if fault == "kill-assistant":
        pid = m.show("mairie-assistant")["MainPID"]
        m.run("kill", "-KILL", pid)
        back = m.back_after("mairie-assistant", pid, t0, timeout=120)
    elif fault == "restart-asterisk":
        m.run("systemctl", "restart", "mairie-asterisk")
        while time.monotonic() - t0 < 120:
            contacts = m.run("chroot", ROOT / "data/asterisk/root", "/usr/sbin/asterisk", "-rx", "pjsip show contacts",
                             check=False).stdout
            if re.search(r"assistant/\S+\s+\S+\s+Avail", contacts):
                break
            time.sleep(0.2)
        back = time.monotonic() - t0
    else:
        pid = m.show("mairie-console")["MainPID"]
        m.run("systemctl", "restart", "mairie-console")
        m.back_after("mairie-console", pid, t0, timeout=120)
        page = "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/connexion', timeout=2)"
        while time.monotonic() - t0 < 120 and m.run("python3", "-c", page, check=False).returncode:
            time.sleep(0.2)               # until its pages answer
        back = time.monotonic() - t0
    return {"fault": fault, "at": round(time.time(), 1), "back_after_s": round(back, 1)}


def growth(samples: list[dict], warmup_s: float, window_s: float = 300) -> dict:
    """Per assistant process, after warm-up: the first sample against the last one, and (at equal
    load: the memory follows the calls in progress) the median of the first `window_s` against that
    of the last, over samples taken with every caller in a call."""
    out = []
    for pid in dict.fromkeys(s["pid"] for s in samples):
        mine = [s for s in samples if s["pid"] == pid]
        warm = [s for s in mine if s["t"] - mine[0]["t"] >= warmup_s]
        if len(warm) < 2:
            continue
        a, b = warm[0], warm[-1]
        full = max(s["in_calls"] for s in warm)
        loaded = [s for s in warm if s["in_calls"] == full]
        first = [s["rss_mb"] for s in loaded if s["t"] - a["t"] <= window_s]
        last = [s["rss_mb"] for s in loaded if b["t"] - s["t"] <= window_s]
        equal = None
        if b["t"] - a["t"] >= 2 * window_s and first and last:
            m0, m1 = float(np.median(first)), float(np.median(last))
            equal = {"callers_in_calls": full, "rss_mb_median": [round(m0, 1), round(m1, 1)],
                     "samples": [len(first), len(last)], "rss_growth_pct": round(100 * (m1 - m0) / m0, 1)}
        out.append({"pid": pid, "minutes": round((b["t"] - a["t"]) / 60, 1), "rss_mb": [a["rss_mb"], b["rss_mb"]],
                    "rss_growth_pct": round(100 * (b["rss_mb"] - a["rss_mb"]) / a["rss_mb"], 1),
                    "at_equal_load": equal,
                    "threads": [a["threads"], b["threads"]], "fds": [a["fds"], b["fds"]],
                    "threads_max": max(s["threads"] for s in warm), "fds_max": max(s["fds"] for s in warm)})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30)
    p.add_argument("--callers", type=int, default=16)
    p.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, among {', '.join(FAULTS)}")
    p.add_argument("--warmup", type=float, default=180, help="seconds of a process's life before memory is compared")
    a = p.parse_args()
    faults = [f for f in a.faults.split(",") if f]
    assert all(f in FAULTS for f in faults), faults
    voices = [caller_voice(q, phone=False) for q in QUESTIONS]
    desk_voice = caller_voice("Mairie, bonjour, l'accueil à votre écoute. " * 12, phone=False)
    out = {"benchmark": "soak", "minutes": a.minutes, "callers": a.callers, "machine": machine_info()}
    results, samples, done = [], [], []
    lock = threading.Lock()
    with Lab() as lab, tempfile.TemporaryDirectory() as tmp:
        m = Machine(Path(tmp), lab.netns("soak"))
        try:
            m.boot()
            m.install()
            with Desk(netns=m.netns, voice=desk_voice):
                start = time.time()
                deadline = time.monotonic() + 60 * a.minutes
                callers = [Caller(i, voices, m.netns, deadline, results, lock) for i in range(a.callers)]
                for i, c in enumerate(callers):
                    c.start()
                    time.sleep(CALL_S / a.callers)          # spread the calls over a call's length
                plan = [(start + 60 * a.minutes * (i + 1) / (len(faults) + 1), f) for i, f in enumerate(faults)]
                while any(c.is_alive() for c in callers):
                    if plan and time.time() >= plan[0][0]:
                        done.append(inject(m, plan.pop(0)[1]))
                        print(json.dumps(done[-1]), file=sys.stderr, flush=True)
                    s = sample(m, IN_CALLS[0])
                    if s:
                        samples.append(s)
                    time.sleep(10)
                time.sleep(3)                              # the last records are written
                out["records"] = records(m, start - 1)
                # why each assistant process ended: the faults, and any other restart (watchdog, crash)
                log = m.run("journalctl", "-u", "mairie-assistant", "--no-pager", "-o", "short-monotonic",
                            check=False).stdout.splitlines()
                out["assistant_ends"] = [line for line in log if re.search(
                    r"watchdog|Main process exited|Failed with result|Traceback|CRITICAL|Killed|dumped core|oom|"
                    r"Scheduled restart", line, re.I)][-40:]
                # and the stacks written just before each end (faulthandler: a stall, a crash, the watchdog)
                stack = re.compile(r"stalled|Fatal Python|Timeout \(|Thread 0x|Current thread|  File ")
                out["assistant_stacks"] = [[line for line in log[max(0, i - 300):i] if stack.search(line)][-120:]
                                           for i, line in enumerate(log) if "Main process exited" in line]
        finally:
            m.close()
    silences = sorted(x for r in results for x in r["silences_s"])
    placed = len(results)
    answered = sum(r["answered"] for r in results)
    for f in done:
        f["at_s"] = round(f.pop("at") - start, 1)
    out.update({
        "faults": done,
        "calls": {"placed": placed, "answered": answered, "not_answered": placed - answered,
                  "not_answered_at_s": [round(r["at"] - start) for r in results if not r["answered"]]},
        "silence_after_speaking": {
            "questions": len(silences), "over_3s": sum(x > 3 for x in silences),
            "p50_s": silences[len(silences) // 2] if silences else None,
            "p95_s": silences[int(len(silences) * 0.95)] if silences else None, "max_s": silences[-1] if silences else None,
            "over_3s_at_s": [round(r["at"] - start) for r in results if any(x > 3 for x in r["silences_s"])]},
        "assistant": growth(samples, a.warmup),
    })
    out["records"]["total"] = sum(v for k, v in out["records"].items() if k != "total")
    print(json.dumps(out, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
