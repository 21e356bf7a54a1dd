"""This very server booted under systemd in a container, for the services' tests and the soak:
`systemd-nspawn --boot` on an overlay of the host's root whose changes go to a tmpfs (they survive a
reboot of the container, not the test), in a network namespace of its own."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UNITS = ("mairie-asterisk", "mairie-assistant", "mairie-console")
ENV = ["env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"]


class Machine:
    """The host's own system booted in a container (see the module's docstring)."""

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
        # nspawn mounts a fresh tmpfs on the container's /tmp, which would hide a checkout there (a CI
        # clone): the overlay's copy of the checkout is bound back, from outside the container's tree
        self.checkout = self.layers / "checkout"
        self.checkout.mkdir()
        subprocess.run(["mount", "--bind", f"{self.root}{ROOT}", self.checkout], check=True)
        self.proc: subprocess.Popen | None = None
        self.pid1 = 0
        etc = self.root / "etc/systemd/system"
        for unit in ("postgresql.service", "postgresql@.service", "apt-daily.timer", "apt-daily-upgrade.timer",
                     "man-db.timer", "e2scrub_all.timer", "fstrim.timer", "dpkg-db-backup.timer"):
            (etc / unit).unlink(missing_ok=True)
            (etc / unit).symlink_to("/dev/null")       # masked: the host's own services, not ours
        # This machine's Python lives under /root (pyenv), and a checkout may sit in a private folder
        # (mktemp -d): no service user could reach them. A server installed as docs/services.md says
        # (/opt/mairie-assistant, the system Python) needs nothing of the kind; here the container's
        # copy of those folders is opened to others, the host's are left alone.
        python = Path(os.path.realpath(ROOT / ".venv/bin/python"))
        for parent in {*python.parents, ROOT, *ROOT.parents}:
            mode = (self.root / parent.relative_to("/")).stat().st_mode
            os.chmod(self.root / parent.relative_to("/"), mode | 0o011)

    def boot(self, timeout: float = 60) -> None:
        with open(self.tmp / "console.log", "ab") as log:
            self.proc = subprocess.Popen(["systemd-nspawn", "-q", "-D", self.root, "--boot", "--register=no",
                                          "--keep-unit", f"--network-namespace-path=/run/netns/{self.netns.name}",
                                          f"--bind={self.checkout}:{ROOT}"],
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
        return self.run("journalctl", "-u", unit, "--no-pager", "-n", "600", check=False).stdout

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
        for path in (self.checkout, self.root, self.layers):
            subprocess.run(["umount", "-l", path], capture_output=True, check=False)

    def install(self) -> None:
        """scripts/install_services.sh, as an IT provider runs it."""
        out = self.run(ROOT / "scripts/install_services.sh", check=False)
        if out.returncode:
            raise AssertionError(out.stdout + out.stderr + "".join(self.journal(u) for u in UNITS))

    def main_pid(self, unit: str) -> str:
        return self.show(unit)["MainPID"]

