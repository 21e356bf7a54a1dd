"""systemd's notify protocol (sd_notify(3)), spoken directly: one datagram per message on the socket
named by $NOTIFY_SOCKET. Without systemd (scripts/run.sh, tests) every call is a no-op."""
from __future__ import annotations

import logging
import os
import socket
import threading
import time

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, env=None):
        env = os.environ if env is None else env
        self.address = env.get("NOTIFY_SOCKET", "")
        if self.address.startswith("@"):                 # abstract socket
            self.address = "\0" + self.address[1:]
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        # systemd asks for a ping within WATCHDOG_USEC; send at a third of it
        self.watchdog_s = int(usec) / 3e6 if usec.isdigit() and int(usec) > 0 and mine else 0.0
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._last_ping = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *lines: str) -> bool:
        if not self.address:
            return False
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto("\n".join(lines).encode(), self.address)
                return True
            except OSError as exc:      # systemd gone or restarted: nothing to tell, nothing to break
                log.debug("sd_notify failed: %s", exc)
                return False

    def ready(self, status: str = "") -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def ping(self, force: bool = False) -> None:
        """Pet the watchdog, at most every watchdog_s."""
        if self.watchdog_s and (force or time.monotonic() - self._last_ping >= self.watchdog_s):
            self._last_ping = time.monotonic()
            self.send("WATCHDOG=1")

    def keep_alive_while(self, busy: threading.Event) -> None:
        """Ping from a thread while busy is set (loading models before the SIP loop runs): a start
        that takes longer than the watchdog period is not taken for a hang."""
        if not self.watchdog_s:
            return

        def loop():
            while busy.is_set():
                self.ping(force=True)
                time.sleep(self.watchdog_s)

        threading.Thread(target=loop, name="watchdog-startup", daemon=True).start()
