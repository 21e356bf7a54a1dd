"""Other machines, for real, on this one: network namespaces joined by veth pairs, and Asterisk
instances inside them (the bundled chroot's binary, each with its own configuration, run, spool,
database and log folders). An operator, a town hall's own PBX or the town hall's server each get
their own addresses; traffic stays inside the namespaces the test made, which it removes.

    with Lab() as lab:
        mairie, op = lab.netns("mairie"), lab.netns("op")
        m_addr, op_addr = lab.link(mairie, op)
        with LabAsterisk(op, "op", files) as ast:
            ast.cli("pjsip show registrations")
"""
from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_DATA = Path(os.environ.get("IVR_DATA", "data"))
CHROOT = (_DATA if _DATA.is_absolute() else REPO / _DATA) / "asterisk" / "root"
_ids = itertools.count()


def sh(*args, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], check=check, capture_output=True, text=True, **kw)


class Netns:
    """One network namespace: its own interfaces, loopback up."""

    def __init__(self, name: str):
        self.name = name
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def cmd(self, args) -> list[str]:
        """`args` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *map(str, args)]

    def run(self, *args, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return sh(*self.cmd(args), check=check, **kw)

    def popen(self, args, **kw) -> subprocess.Popen:
        return subprocess.Popen(self.cmd(args), **kw)

    def delete(self) -> None:
        # processes left inside would keep the namespace's sockets: stop them first
        pids = sh("ip", "netns", "pids", self.name, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass
        sh("ip", "netns", "delete", self.name, check=False)


class Lab:
    """Namespaces and links, all removed at exit. Names carry the test process id."""

    def __init__(self):
        self.tag = f"ivr{os.getpid() % 100000}"
        self.spaces: list[Netns] = []
        self.links = 0

    def netns(self, name: str) -> Netns:
        ns = Netns(f"{self.tag}-{name}")
        self.spaces.append(ns)
        return ns

    def link(self, a: Netns, b: Netns) -> tuple[str, str]:
        """A veth pair between a and b, addresses 10.77.N.1/24 (a) and 10.77.N.2/24 (b)."""
        n = self.links = self.links + 1
        ia, ib = f"v{self.tag[3:]}-{n}a", f"v{self.tag[3:]}-{n}b"
        sh("ip", "link", "add", ia, "netns", a.name, "type", "veth", "peer", "name", ib, "netns", b.name)
        addrs = f"10.77.{n}.1", f"10.77.{n}.2"
        for ns, dev, addr in ((a, ia, addrs[0]), (b, ib, addrs[1])):
            sh("ip", "-n", ns.name, "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", ns.name, "link", "set", dev, "up")
        return addrs

    def interface(self, ns: Netns, n: int) -> str:
        """The name of link n's end in `ns` (for captures)."""
        ends = [f"v{self.tag[3:]}-{n}a", f"v{self.tag[3:]}-{n}b"]
        out = ns.run("ip", "-o", "link").stdout
        return next(e for e in ends if f" {e}@" in out)

    def __enter__(self) -> "Lab":
        if os.geteuid() != 0:
            raise RuntimeError("network namespaces need root")
        return self

    def __exit__(self, *exc) -> None:
        for ns in reversed(self.spaces):
            ns.delete()
        self.spaces.clear()


class LabAsterisk:
    """An Asterisk from the bundled chroot running inside `ns` with the configuration `files`
    ({name: text}; asterisk.conf is written here with this instance's own folders)."""

    def __init__(self, ns: Netns, name: str, files: dict[str, str], password_file: Path | None = None):
        if not (CHROOT / "usr/sbin/asterisk").exists():
            raise RuntimeError(f"no Asterisk chroot at {CHROOT}: run scripts/setup.sh")
        self.ns, self.inst = ns, f"{ns.name}-{name}-{next(_ids)}"
        self.etc = f"/etc/asterisk-lab/{self.inst}"
        self.dirs = {k: f"/{base}/asterisk-lab/{self.inst}" for k, base in
                     (("astrundir", "run"), ("astspooldir", "var/spool"), ("astdbdir", "var/lib"), ("astlogdir", "var/log"))}
        self.files = dict(files)
        self.password_file = password_file
        self.proc = None

    def path(self, p: str) -> Path:
        """A path inside the chroot, seen from the host."""
        return CHROOT / p.lstrip("/")

    def _asterisk_conf(self) -> str:
        return f"""[directories]
astcachedir => /var/cache/asterisk
astetcdir => {self.etc}
astmoddir => /usr/lib/x86_64-linux-gnu/asterisk/modules
astvarlibdir => /var/lib/asterisk
astkeydir => /var/lib/asterisk
astdatadir => /usr/share/asterisk
astagidir => /usr/share/asterisk/agi-bin
astsbindir => /usr/sbin
""" + "".join(f"{k} => {v}\n" for k, v in self.dirs.items()) + """
[options]
verbose = 3
defaultlanguage = fr
"""

    def write(self, files: dict[str, str] | None = None) -> None:
        """(Re)write the configuration; `files` replaces the given ones."""
        self.files.update(files or {})
        etc = self.path(self.etc)
        etc.mkdir(parents=True, exist_ok=True)
        for name, text in self.files.items():
            # files rendered for the bundled Asterisk name their folder: this instance has its own
            (etc / name).write_text(self._asterisk_conf() if name == "asterisk.conf" else text.replace("/etc/asterisk/", f"{self.etc}/"))
        (etc / "asterisk.conf").write_text(self._asterisk_conf())
        for d in self.dirs.values():
            self.path(d).mkdir(parents=True, exist_ok=True)
        (self.path(self.dirs["astspooldir"]) / "monitor").mkdir(exist_ok=True)

    def _ast(self, *args) -> list[str]:
        return ["chroot", str(CHROOT), "/usr/sbin/asterisk", "-C", f"{self.etc}/asterisk.conf", *args]

    def cli(self, command: str) -> str:
        return subprocess.run(self._ast("-rx", command), capture_output=True, text=True, timeout=20).stdout

    def log(self) -> str:
        p = self.path(self.dirs["astlogdir"]) / "messages.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def start(self) -> "LabAsterisk":
        self.write()
        # -f: in the foreground, so that the namespace's process list holds it
        self.proc = self.ns.popen(self._ast("-f"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ctl = self.path(self.dirs["astrundir"]) / "asterisk.ctl"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Asterisk {self.inst} exited: " + self.log()[-2000:])
            if ctl.exists() and subprocess.run(self._ast("-rx", "core waitfullybooted"), capture_output=True,
                                               timeout=10).returncode == 0:
                return self
            time.sleep(0.1)
        raise RuntimeError(f"Asterisk {self.inst} did not boot: " + self.log()[-2000:])

    def reload(self) -> None:
        self.write()
        self.cli("core reload")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.cli("core stop now")
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "LabAsterisk":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        for p in [self.etc, *self.dirs.values()]:
            shutil.rmtree(self.path(p), ignore_errors=True)

