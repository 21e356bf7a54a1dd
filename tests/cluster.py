"""An intercommunal set-up, each machine in its own network namespace (tests/netlab.py): the
operator's callers; Kamailio, which is also the router; two Asterisk boxes, each with Kamailio as
its operator, its desk phone and its `ivr serve` workers; PostgreSQL, the shared store. The
workers share one recordings folder (a shared filesystem). Used by tests/test_cluster.py (a small
load) and scripts/bench_cluster.py (the full one).

    with Cluster(base, workers=(2, 1)) as c:
        c.call(i, steps)           # caller i ("c{i}") rings the commune's number at Kamailio
"""
from __future__ import annotations

import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from tests.netlab import CHROOT
from tests.test_workers import avail

NUMBER = "0199472000"


class Kamailio:
    """Kamailio in `ns`, configured by `ivr kamailio config` (probes every second)."""

    def __init__(self, ns, etc: Path, listen: list[str], asterisks: list[str]):
        from ivr.kamailio import write

        if not shutil.which("kamailio"):
            raise RuntimeError("kamailio missing: run scripts/setup.sh")
        self.ns, self.etc = ns, etc
        self.ctl = f"unix:{etc}/kamailio_ctl"
        write(etc, listen=listen, asterisks=asterisks, ping_interval=1, ctl_socket=self.ctl)
        self.log = etc / "kamailio.log"
        # -DD: in the foreground (the namespace holds it); -E: log to stderr, kept in a file
        self.proc = ns.popen(["kamailio", "-f", etc / "kamailio.cfg", "-DD", "-E", "-Y", etc, "-m", "64", "-M", "8"],
                             stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"))

    def destinations(self) -> dict[str, str]:
        """{address: flags}: "AP" up (active, probing), "IP" down (inactive, probing)."""
        out = self.ns.run("kamcmd", "-s", self.ctl, "dispatcher.list", check=False).stdout
        return dict(re.findall(r"URI: sip:([\d.]+):\d+\s+FLAGS: (\w+)", out))

    def wait(self, want: dict[str, str], timeout: float = 15) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("kamailio exited: " + self.log.read_text(errors="replace")[-2000:])
            got = self.destinations()
            if all(got.get(a) == f for a, f in want.items()):
                return got
            time.sleep(0.2)
        return self.destinations()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Box:
    """One Asterisk box: its namespace, address, Asterisk, desk and workers."""

    def __init__(self, ns, addr: str, kamailio_addr: str):
        self.ns, self.addr, self.kamailio_addr = ns, addr, kamailio_addr
        self.pbx = self.desk = None
        self.workers: list = []


class Cluster:
    def __init__(self, base: Path, workers: tuple[int, ...] = (2, 1), max_calls: int = 4):
        self.base, self.per_box, self.max_calls = Path(base), workers, max_calls
        self._exit: list = []

    def __enter__(self) -> "Cluster":
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        from ivr.pbx import render
        from tests.conftest import make_cfg
        from tests.netlab import Lab, LabAsterisk
        from tests.pglab import PgServer
        from tests.sipcall import Desk

        self.lab = Lab().__enter__()
        self._exit.append(lambda: self.lab.__exit__(None, None, None))
        self.op, self.edge, db = self.lab.netns("op"), self.lab.netns("edge"), self.lab.netns("db")
        self.o_addr, self.e_op = self.lab.link(self.op, self.edge)
        self.boxes = []
        for i in range(len(self.per_box)):
            ns = self.lab.netns(f"ast{i + 1}")
            e_addr, a_addr = self.lab.link(self.edge, ns)
            self.boxes.append(Box(ns, a_addr, e_addr))
        e_db, self.db_addr = self.lab.link(self.edge, db)
        # the edge box routes: media flows straight between the callers and the box that answered
        self.edge.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.op.run("ip", "route", "add", "default", "via", self.e_op)
        db.run("ip", "route", "add", "default", "via", e_db)
        for b in self.boxes:
            b.ns.run("ip", "route", "add", "default", "via", b.kamailio_addr)

        self.pg = PgServer(netns=db, listen=self.db_addr, port=5432).start()
        self._exit.append(self.pg.__exit__)
        shared = self.base / "shared"
        (shared / "recordings").mkdir(parents=True)
        (shared / "pg_password").write_text(self.pg.password + "\n")
        self.recordings = shared / "recordings"
        self.url = f"postgresql://ivr@{self.db_addr}:5432/ivr"
        self.store_env = {"IVR_STORE__URL": self.url, "IVR_STORE__PASSWORD_FILE": str(shared / "pg_password"),
                          "IVR_PATHS__RECORDINGS": str(self.recordings)}
        self.kamailio = Kamailio(self.edge, self.base / "kamailio", [self.e_op, *(b.kamailio_addr for b in self.boxes)],
                                 [b.addr for b in self.boxes])
        self._exit.append(self.kamailio.stop)

        for f in (CHROOT / "var/spool/mairie").glob("*.call"):
            f.unlink()                          # left by earlier calls on this machine: not this cluster's
        starting = []
        for i, (b, n) in enumerate(zip(self.boxes, self.per_box), 1):
            data = self.base / f"ast{i}"
            data.mkdir()
            settings = data / "ivr.toml"
            # Kamailio is this box's operator: calls from its address, no registration
            settings.write_text(f'[trunk]\nmode = "ip"\nserver = "{b.kamailio_addr}"\nnumbers = ["01 99 47 20 00"]\n'
                                f'bind = "{b.addr}"\n')
            b.settings = settings
            b.pbx = LabAsterisk(b.ns, f"ast{i}", render(make_cfg(data, IVR_CONFIG=settings)),
                                password_file=data / "secrets" / "sip_password").start()
            self._exit.append(lambda p=b.pbx: p.__exit__(None, None, None))
            b.desk = Desk(netns=b.ns).__enter__()
            self._exit.append(lambda d=b.desk: d.__exit__(None, None, None))
            for j in range(n):
                starting.append((b, j))
        # the workers load their models at the same time
        errors = []

        def start(b, j):
            try:
                w = self.worker(b, j).start()
                b.workers.append(w)
            except Exception as exc:        # noqa: BLE001 (said below)
                errors.append(exc)

        threads = [threading.Thread(target=start, args=bj) for bj in starting]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        self._exit.append(lambda: [w.stop() for b in self.boxes for w in b.workers])
        if errors:
            raise errors[0]
        for b, n in zip(self.boxes, self.per_box):
            b.workers.sort(key=lambda w: w.port)
            deadline = time.monotonic() + 60
            while avail(b.pbx) != n and time.monotonic() < deadline:
                time.sleep(0.5)
            assert avail(b.pbx) == n, b.pbx.cli("pjsip show contacts")
        want = {b.addr: "AP" for b in self.boxes}
        got = self.kamailio.wait(want)
        assert got == want, (got, self.kamailio.log.read_text(errors="replace")[-2000:])

    def worker(self, box: Box, j: int):
        from tests.sipcall import Assistant

        port = 5091 + j
        data = self.base / f"worker-{box.addr}-{port}"
        data.mkdir(exist_ok=True)
        w = Assistant(data, box.pbx, netns=box.ns, env=dict(
            self.store_env, IVR_CONFIG=str(box.settings), IVR_SIP__PORT=str(port),
            IVR_SIP__MAX_CALLS=str(self.max_calls), IVR_MONITORING__PORT=str(9108 + j),
            # the boxes' Asterisks share the chroot: calls sent to a desk without a worker are listed
            # there (/var/spool/mairie), and every worker records them (each once, by Asterisk's id)
            IVR_PBX__ASTERISK_ROOT=str(CHROOT),
            # the namespaces share one host name: name the workers by their box
            IVR_SIP__WORKER_NAME=f"{box.addr}:{port}"))
        w.port = port
        return w

    def call(self, i: int, steps=(), **kw):
        """Caller i, "c{i}", rings the commune's number at Kamailio's address."""
        from tests.sipcall import reactive_call

        return reactive_call(list(steps), extension=NUMBER, netns=self.op, target=f"{self.e_op}:5060",
                             bind=self.o_addr, from_user=f"c{i}", **kw)

    def kill_worker(self, box: Box, j: int = 0):
        w = box.workers[j]
        w.proc.send_signal(signal.SIGKILL)
        w.proc.wait(10)
        return w

    def store(self):
        """The shared store, as read from the test's own namespace (the server's Unix socket)."""
        from ivr.store import Store

        return Store(url=self.pg.local_url, password=self.pg.password)

    def __exit__(self, *exc) -> None:
        for fn in reversed(self._exit):
            try:
                fn()
            except Exception:           # noqa: BLE001 (tear down the rest)
                pass
        self._exit.clear()
