"""A PostgreSQL server for tests: Debian's postgresql-15, a cluster made by the test in a temporary
folder, run as the `postgres` user, on loopback or inside a network namespace (tests/netlab.py).
Clients authenticate with a password (scram-sha-256), as the assistant's workers would.

    with PgServer() as pg:
        Store(url=pg.url, password=pg.password)
"""
from __future__ import annotations

import glob
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.sipcall import free_port_pair


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError("PostgreSQL missing: run scripts/setup.sh")
    return found[-1]


class PgServer:
    def __init__(self, netns=None, listen: str = "127.0.0.1", port: int | None = None,
                 password: str = "mot-de-passe-de-test"):
        self.netns, self.listen = netns, listen
        self.port = port or free_port_pair()[0]
        self.password = password
        self.dir = Path(tempfile.mkdtemp(prefix="ivr-pg-"))
        self.proc = None

    @property
    def url(self) -> str:
        return f"postgresql://ivr@{self.listen}:{self.port}/ivr"

    @property
    def local_url(self) -> str:
        """Through the server's Unix socket, from this machine's own namespace (tests read there)."""
        return f"postgresql://ivr@/ivr?host={self.dir}&port={self.port}"

    def _as_postgres(self, *args) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *map(str, args)]

    def _run(self, *args, **kw):
        cmd = self._as_postgres(*args)
        return subprocess.run(self.netns.cmd(cmd) if self.netns else cmd, check=True, capture_output=True,
                              text=True, **kw)

    def start(self) -> "PgServer":
        shutil.chown(self.dir, "postgres", "postgres")
        data = self.dir / "data"
        self._run(_bin("initdb"), "-D", data, "-U", "postgres", "--auth-local=trust",
                  "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync")
        with open(data / "pg_hba.conf", "a") as f:
            f.write("host all all 0.0.0.0/0 scram-sha-256\n")
        cmd = self._as_postgres(_bin("postgres"), "-D", data, "-k", self.dir, "-c", f"listen_addresses={self.listen}",
                                "-c", f"port={self.port}", "-c", "fsync=off", "-c", "max_connections=200")
        self.log = open(self.dir / "postgres.log", "wb")
        self.proc = subprocess.Popen(self.netns.cmd(cmd) if self.netns else cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("postgres exited: " + (self.dir / "postgres.log").read_text()[-2000:])
            if subprocess.run((self.netns.cmd if self.netns else list)(self._as_postgres(
                    _bin("pg_isready"), "-q", "-h", self.dir, "-p", self.port)), capture_output=True).returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("postgres did not start: " + (self.dir / "postgres.log").read_text()[-2000:])
            time.sleep(0.1)
        self.sql(f"create role ivr login password '{self.password}'")
        self.sql("create database ivr owner ivr")
        return self

    def sql(self, statement: str, db: str = "postgres") -> str:
        return self._run(_bin("psql"), "-h", self.dir, "-p", self.port, "-d", db, "-At", "-v", "ON_ERROR_STOP=1",
                         "-c", statement).stdout

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            # "fast": clients are disconnected (the default waits for them)
            subprocess.run(self._as_postgres(_bin("pg_ctl"), "stop", "-D", self.dir / "data", "-m", "fast", "-w"),
                           capture_output=True, timeout=30)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "PgServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
