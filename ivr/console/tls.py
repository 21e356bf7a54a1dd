"""The console over HTTPS ([console] https = true): waitress speaks no TLS, so cheroot serves it
with Python's ssl (TLS 1.2 at least). The certificate is [console] tls_cert / tls_key, or a
self-signed pair made once in <data>/secrets/console-tls/ (the key 0600 in a 0700 folder)."""
from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import ssl
import threading
from pathlib import Path

log = logging.getLogger(__name__)


def console_tls_files(cfg) -> tuple[Path, Path]:
    """(certificate, key) of the console: the configured ones, or the self-signed pair."""
    c = cfg["console"]
    if bool(c["tls_cert"]) != bool(c["tls_key"]):
        raise ValueError("[console] tls_cert et tls_key vont ensemble : indiquez les deux, ou aucun "
                         "(certificat auto-signé)")
    d = cfg.data_dir / "secrets" / "console-tls"
    return (Path(c["tls_cert"]) if c["tls_cert"] else d / "console.crt",
            Path(c["tls_key"]) if c["tls_key"] else d / "console.key")


def _names(bind: str) -> list[str]:
    """Who the self-signed certificate is for: this machine's name, loopback and the bind address."""
    names = [socket.gethostname(), "localhost", "127.0.0.1", "::1"]
    try:
        if not ipaddress.ip_address(bind).is_unspecified:
            names.append(bind)
    except ValueError:
        names.append(bind)
    return list(dict.fromkeys(n for n in names if n))


def ensure_console_tls(cfg) -> tuple[Path, Path]:
    from ivr.pbx import self_signed

    cert, key = console_tls_files(cfg)
    if not cfg["console"]["tls_cert"] and not (cert.exists() and key.exists()):
        self_signed(cert, key, "mairie-console", _names(cfg["console"]["bind"]))
        log.info("self-signed certificate for the console made: %s", cert)
    for f in (cert, key):
        if not f.exists():
            raise FileNotFoundError(f"[console] fichier du certificat introuvable : {f}")
    return cert, key


def serve_https(app, host: str, port: int, cert: Path, key: Path, threads: int) -> None:
    """Serve `app` over HTTPS until SIGTERM or SIGINT."""
    from cheroot import wsgi
    from cheroot.ssl.builtin import BuiltinSSLAdapter

    adapter = BuiltinSSLAdapter(str(cert), str(key))
    adapter.context.minimum_version = ssl.TLSVersion.TLSv1_2
    # the live board's server-sent events hold a thread each, as with waitress
    server = wsgi.Server((host, port), app, numthreads=threads, server_name="mairie-console", timeout=600)
    server.ssl_adapter = adapter

    def stop(signum, frame):
        # stop() waits for the serving loop, which this (main) thread runs: from another thread
        threading.Thread(target=server.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.start()
    finally:
        server.stop()
