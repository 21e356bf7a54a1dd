"""The assistant installed as systemd services by scripts/install_services.sh, on a machine booted
under systemd: this very server in a container (`systemd-nspawn --boot` on an overlay of the host's
root, so the install and everything it writes stays in a tmpfs the test throws away), in a network
namespace of its own (its Asterisk's 5060 is not the host's). Real calls from a caller in that
namespace. Checks: a killed assistant, and a hung one (SIGSTOP: only the watchdog sees it), are
back and registered within 15 s; the services run sandboxed as their own user; after a reboot
everything starts again and answers a call."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, caller_voice

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containers and namespaces need root")

UNITS = ("mairie-asterisk", "mairie-assistant", "mairie-console")
ENV = ["env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"]


class Machine:
    """The host's own system booted in a container: an overlay of / whose changes go to a tmpfs, so
    that they survive a reboot of the container but not the test."""

    def __init__(self, tmp: Path, netns):
        if not shutil.which("systemd-nspawn"):
            subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "systemd-container"],
                           check=True, capture_output=True)
        self.tmp, self.netns = tmp, netns
        self.layers, self.root = tmp / "layers", tmp / "root"
        self.layers.mkdir()
        self.root.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4G", "tmpfs", self.layers], check=True)
        (self.layers / "upper").mkdir()
        (self.layers / "work").mkdir()
        # metacopy: chown of a big file (the install gives the data folder to its user) copies no data
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir=/,upperdir={self.layers}/upper,workdir={self.layers}/work,metacopy=on",
                        self.root], check=True)
        self.proc: subprocess.Popen | None = None
        self.pid1 = 0
        etc = self.root / "etc/systemd/system"
        for unit in ("postgresql.service", "postgresql@.service", "apt-daily.timer", "apt-daily-upgrade.timer",
                     "man-db.timer", "e2scrub_all.timer", "fstrim.timer", "dpkg-db-backup.timer"):
            (etc / unit).unlink(missing_ok=True)
            (etc / unit).symlink_to("/dev/null")       # masked: the host's own services, not ours
        # This machine's Python lives under /root (pyenv), which no service user can reach; a server
        # installed as docs/install.md says uses the system Python and needs nothing of the kind.
        python = Path(os.path.realpath(ROOT / ".venv/bin/python"))
        for parent in python.parents:
            mode = (self.root / parent.relative_to("/")).stat().st_mode
            os.chmod(self.root / parent.relative_to("/"), mode | 0o011)

    def boot(self, timeout: float = 60) -> None:
        log = open(self.tmp / "console.log", "ab")
        self.proc = subprocess.Popen(["systemd-nspawn", "-q", "-D", self.root, "--boot", "--register=no",
                                      "--keep-unit", f"--network-namespace-path=/run/netns/{self.netns.name}"],
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            kids = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
            if kids:
                self.pid1 = int(kids[0])
                state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return
            assert self.proc.poll() is None, f"the container stopped: {self.console()}"
            time.sleep(0.3)
        raise AssertionError(f"the container did not boot: {self.console()}")

    def console(self) -> str:
        return (self.tmp / "console.log").read_text(errors="replace")[-3000:]

    def run(self, *args, check: bool = True, timeout: float = 240) -> subprocess.CompletedProcess:
        """A command inside the container (all its namespaces), with a clean environment."""
        return subprocess.run(["nsenter", "-t", str(self.pid1), "-a", *ENV, *map(str, args)],
                              capture_output=True, text=True, check=check, timeout=timeout)

    def show(self, unit: str) -> dict:
        out = self.run("systemctl", "show", unit, "-p", "MainPID,ActiveState,SubState,User,NRestarts,Result").stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def back_after(self, unit: str, old_pid: str, t0: float, timeout: float = 40) -> float:
        """Seconds from t0 until `unit` runs again under a new process and is ready (for the
        assistant, a Type=notify unit, ready means registered)."""
        while time.monotonic() - t0 < timeout:
            s = self.show(unit)
            if s["MainPID"] not in (old_pid, "0") and s["ActiveState"] == "active" and s["SubState"] == "running":
                return time.monotonic() - t0
            time.sleep(0.1)
        raise AssertionError(f"{unit} not back after {timeout} s: {self.show(unit)}\n{self.journal(unit)}")

    def journal(self, unit: str) -> str:
        return self.run("journalctl", "-u", unit, "--no-pager", "-n", "60", check=False).stdout

    def reboot(self) -> None:
        self.run("systemctl", "reboot", check=False)
        self.proc.wait(60)
        self.boot()

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.run("systemctl", "poweroff", check=False)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for path in (self.root, self.layers):
            subprocess.run(["umount", "-l", path], capture_output=True)


@pytest.fixture(scope="module")
def machine(tmp_path_factory):
    from tests.netlab import Lab

    with Lab() as lab:
        m = Machine(tmp_path_factory.mktemp("machine"), lab.netns("server"))
        try:
            m.boot()
            out = m.run(ROOT / "scripts/install_services.sh", check=False)
            assert out.returncode == 0, out.stdout + out.stderr + "".join(m.journal(u) for u in UNITS)
            yield m
        finally:
            m.close()


def calls_in(m: Machine) -> list[dict]:
    """The container's call records: (id, turns said by the caller and by the assistant)."""
    code = (f"import json, os, sqlite3; os.chdir({str(ROOT)!r}); from ivr.config import load_config; "
            "db = sqlite3.connect(load_config().db_path); "
            "print(json.dumps([{'id': i, 'status': s, 'caller': c, 'assistant': a} for i, s, c, a in db.execute("
            "\"select c.id, c.status, sum(t.speaker = 'caller' and t.text != ''), sum(t.speaker = 'assistant') "
            "from calls c left join turns t on t.call_id = c.id group by c.id order by c.started_at\")]))")
    return json.loads(m.run(ROOT / ".venv/bin/python", "-c", code).stdout)


def question_is_answered(m: Machine) -> None:
    from tests.sipcall import reactive_call

    before = len(calls_in(m))
    r = reactive_call([{"audio": caller_voice("Quels sont les horaires d'ouverture de la mairie ?"),
                        "after_silence_s": 1.0}], netns=m.netns, hangup_after=14, timeout=40)
    assert r.answered, r.error
    calls = calls_in(m)
    assert len(calls) == before + 1, calls
    call = calls[-1]
    # greeted, heard the question, answered it
    assert call["caller"] >= 1 and call["assistant"] >= 2, (call, m.journal("mairie-assistant"))


def test_services_run_sandboxed_as_their_own_user_and_answer(machine):
    for unit in UNITS:
        assert machine.show(unit)["ActiveState"] == "active", machine.journal(unit)
    assert machine.show("mairie-assistant")["User"] == "mairie"
    pid = machine.show("mairie-assistant")["MainPID"]
    status = machine.run("cat", f"/proc/{pid}/status").stdout
    uid = machine.run("id", "-u", "mairie").stdout.strip()
    assert f"Uid:\t{uid}\t" in status and "NoNewPrivs:\t1" in status
    # inside the assistant's own view of the file system: the code and the system are read-only,
    # the data folder is not
    def write(path):
        return machine.run("nsenter", "-t", pid, "-m", "-S", uid, "-G", uid, "touch", path, check=False)
    assert "Read-only file system" in write(ROOT / "ivr/written-by-the-service").stderr
    assert "Read-only file system" in write("/etc/written-by-the-service").stderr
    assert write(ROOT / "data/run/written-by-the-service").returncode == 0
    assert "registration: 200" in machine.journal("mairie-assistant")       # its log is in the journal
    question_is_answered(machine)


def test_a_killed_or_hung_assistant_is_back_and_registered_within_15_s(machine):
    pid = machine.show("mairie-assistant")["MainPID"]
    t0 = time.monotonic()
    machine.run("kill", "-KILL", pid)
    killed = machine.back_after("mairie-assistant", pid, t0)

    pid = machine.show("mairie-assistant")["MainPID"]
    t0 = time.monotonic()
    machine.run("kill", "-STOP", pid)        # alive but hung: only the watchdog can tell
    hung = machine.back_after("mairie-assistant", pid, t0)
    journal = machine.journal("mairie-assistant")
    print(f"back and registered: {killed:.1f} s after SIGKILL, {hung:.1f} s after SIGSTOP")
    assert "Watchdog timeout" in journal
    assert killed <= 15 and hung <= 15, (killed, hung)
    contacts = machine.run("chroot", ROOT / "data/asterisk/root", "/usr/sbin/asterisk", "-rx",
                           "pjsip show contacts").stdout
    assert "assistant/" in contacts and "Avail" in contacts, contacts
    question_is_answered(machine)


def test_after_a_reboot_everything_is_back_and_answers(machine):
    machine.reboot()
    for unit in UNITS:
        t0 = time.monotonic()
        machine.back_after(unit, "-", t0, timeout=90)
    out = machine.run("python3", "-c", "import urllib.request; print(urllib.request.urlopen("
                      "'http://127.0.0.1:8080/connexion', timeout=5).status)", check=False)
    assert out.stdout.strip() == "200", out
    question_is_answered(machine)
