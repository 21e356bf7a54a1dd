"""Hardening, for real (docs/security.md): what the bundled Asterisk listens on, fail2ban banning a
password guesser in the Asterisk's own network namespace, the console over HTTPS, the console's
trust of a reverse proxy's headers, private secrets, and the doctor's `security` check."""
from __future__ import annotations

import http.client
import json
import os
import re
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, make_cfg

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces, Asterisk and nftables need root")
REGISTER = [sys.executable, str(ROOT / "tests" / "sip_register.py")]
NUMBER = "0199472000"


def asterisk_sockets(ns) -> set[tuple[str, str, str]]:
    """{(protocol, state, local address)} of Asterisk's listening TCP and unconnected UDP sockets."""
    out = ns.run("ss", "-H", "-lntup").stdout
    found = set()
    for line in out.splitlines():
        f = line.split()
        if '"asterisk"' in line:
            found.add((f[0], f[1], f[4]))
    return found


def resolver_sockets(found: set) -> set:
    """pjproject's DNS resolver: one IPv4 and one IPv6 UDP socket on ephemeral ports (any address)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    return {s for s in found if s[0] == "udp" and re.fullmatch(r"(0\.0\.0\.0|\[::\]|\*):(\d+)", s[2])
            and int(s[2].rsplit(":", 1)[1]) >= low}


def trunk_toml(data: Path, server: str, bind: str = "", local_nets: tuple = (), extra: str = "") -> Path:
    (data / "secrets").mkdir(parents=True, mode=0o700, exist_ok=True)
    pw = data / "secrets" / "trunk_password"
    pw.write_text("mot-de-passe-operateur\n")
    pw.chmod(0o600)
    settings = data / "ivr.toml"
    settings.write_text(f"""[trunk]
mode = "register"
server = "{server}"
user = "mairie-test"
numbers = ["01 99 47 20 00"]
bind = "{bind}"
local_nets = {json.dumps(list(local_nets))}
{extra}""")
    return settings


def sip_register(ns, server: str, user: str, password: str, count: int = 1, bind: str = "0.0.0.0",
                 timeout: float = 1.0) -> list[int | None]:
    out = ns.run(*REGISTER, "--server", server, "--user", user, "--password", password, "--count", count,
                 "--bind", bind, "--timeout", timeout, cwd=ROOT, timeout=120).stdout
    return json.loads(out)


# --- what Asterisk listens on -----------------------------------------------------------------------
@root_only
def test_asterisk_listens_only_where_needed(tmp_path):
    """Default settings: SIP on 127.0.0.1:5060 only. With the operator trunk and TLS: the trunk's port
    on its address and TLS on its own; RTP only during a call, in 10000-10999, on the media addresses.
    Never the AMI (5038) nor the HTTP server (8088, ARI). The two other UDP sockets are pjproject's DNS
    resolver (ephemeral ports) and answer no SIP."""
    from ivr.pbx import render
    from tests.netlab import Lab, LabAsterisk
    from tests.sipcall import Desk, reactive_call

    with Lab() as lab:
        mairie, op = lab.netns("mairie"), lab.netns("op")
        m_addr, op_addr = lab.link(mairie, op)
        # 1. the defaults: loopback only
        with LabAsterisk(mairie, "defaut", render(make_cfg(tmp_path / "defaut"))) as ast:
            found = asterisk_sockets(mairie)
            dns = resolver_sockets(found)
            assert found - dns == {("udp", "UNCONN", "127.0.0.1:5060")}, found
            assert len(dns) == 2, found
            assert "Manager (AMI):             No" in ast.cli("manager show settings")
            assert "Server Disabled" in ast.cli("http show status")
            loaded = ast.cli("module show")
            for module in ("res_ari", "res_http_websocket", "res_manager", "chan_sip", "res_http_post"):
                assert module not in loaded, module
            # the resolver's sockets say nothing to a SIP request from the network
            for proto, state, local in dns:
                if local.startswith("0.0.0.0"):
                    port = local.rsplit(":", 1)[1]
                    probe = ("import sys; from ivr.doctor import sip_options; "
                             f"sys.exit(sip_options('sip:{m_addr}:{port}', 1.5) is not None)")
                    assert op.run(sys.executable, "-c", probe, cwd=ROOT, check=False).returncode == 0

        # 2. an operator trunk on the server's address, and TLS
        data = tmp_path / "trunk"
        settings = trunk_toml(data, op_addr, f"{m_addr}:5062", extra="\n[tls]\nenabled = true\n")
        files = render(make_cfg(data, IVR_CONFIG=settings))
        assert "security.log => security" in files["logger.conf"]
        assert "load => res_security_log.so" in files["modules.conf"]
        with LabAsterisk(mairie, "trunk", files):
            found = asterisk_sockets(mairie)
            dns = resolver_sockets(found)
            assert found - dns == {("udp", "UNCONN", "127.0.0.1:5060"), ("udp", "UNCONN", f"{m_addr}:5062"),
                                   ("tcp", "LISTEN", "127.0.0.1:5061")}, found
            assert len(dns) == 2, found
            # a call from the operator to the desk: RTP sockets, in the range, on the media addresses
            seen: set = set()
            with Desk(netns=mairie):
                result = {}
                caller = threading.Thread(target=lambda: result.update(r=reactive_call(
                    [], extension=NUMBER, netns=op, target=f"{m_addr}:5062", bind=op_addr, hangup_after=4,
                    timeout=20)))
                caller.start()
                while caller.is_alive():
                    seen |= asterisk_sockets(mairie) - found
                    time.sleep(0.3)
            assert result["r"].answered, result["r"].error
            addrs = {local.rsplit(":", 1)[0] for _, _, local in seen}
            ports = {int(local.rsplit(":", 1)[1]) for _, _, local in seen}
            assert seen and all(p[0] == "udp" for p in seen), seen
            assert addrs == {m_addr, "127.0.0.1"}, seen                 # the operator's leg, the desk's
            assert all(10000 <= p <= 10999 for p in ports), seen
            time.sleep(1)
            assert asterisk_sockets(mairie) == found                    # closed with the call


# --- fail2ban ---------------------------------------------------------------------------------------
class Fail2ban:
    """A real fail2ban-server inside `ns`, with the configuration scripts/install_fail2ban.sh writes in
    `etc` (its own socket, pid file and database there): its bans (nftables) act in `ns` only."""

    def __init__(self, ns, etc: Path, logdir: Path):
        self.ns, self.etc, self.logdir = ns, etc, logdir
        self.proc = None

    def install(self, env: dict) -> str:
        r = subprocess.run(["bash", str(ROOT / "scripts" / "install_fail2ban.sh"), "--etc", str(self.etc),
                            "--logdir", str(self.logdir)], capture_output=True, text=True, env=env, cwd=ROOT,
                           timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    def client(self, *args, check: bool = True) -> str:
        r = subprocess.run(["fail2ban-client", "-c", str(self.etc), *args], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 or not check, r.stdout + r.stderr
        return r.stdout + r.stderr

    def start(self) -> "Fail2ban":
        log = open(self.etc / "server.out", "ab")
        self.proc = self.ns.popen(["fail2ban-server", "-c", self.etc, "-xf", "start"], stdout=log,
                                  stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if "Currently banned" in self.client("status", "mairie-asterisk", check=False):
                return self
            time.sleep(0.3)
        raise RuntimeError("fail2ban did not start: " + (self.etc / "server.out").read_text()[-2000:]
                           + (self.etc / "fail2ban.log").read_text()[-3000:])

    def banned(self) -> list[str]:
        out = self.client("status", "mairie-asterisk")
        m = re.search(r"Banned IP list:\s*(.*)$", out, re.M)
        return m.group(1).split() if m else []

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.client("stop", check=False)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"not within {timeout} s: {what}")


@root_only
def test_fail2ban_bans_password_guessers_and_spares_the_phones(tmp_path):
    """The town hall's Asterisk faces two networks: the local one (a phone with the right password, and a
    compromised PC guessing the assistant's password) and the outside (not the operator, refused by the
    trunk's ACL). fail2ban, run as scripts/install_fail2ban.sh sets it up, in the Asterisk's namespace:
    both guessers are banned after 5 failures and then get no answer at all, the phone still registers,
    the doctor sees the jail, and an unbanned address is answered again."""
    from ivr.pbx import render, sip_password_file
    from tests.netlab import CHROOT, Lab, LabAsterisk

    data = tmp_path / "data"
    with Lab() as lab:
        mairie, lan, pc, outside = lab.netns("mairie"), lab.netns("lan"), lab.netns("pc"), lab.netns("dehors")
        m1, phone = lab.link(mairie, lan)
        m2, guesser = lab.link(mairie, pc)
        m3, stranger = lab.link(mairie, outside)
        # the operator's registrar is out of reach here: its registration fails quietly, which is no matter
        settings = trunk_toml(data, "10.77.9.9", "0.0.0.0:5062", local_nets=("10.77.1.0/24", "10.77.2.0/24"))
        cfg = make_cfg(data, IVR_CONFIG=settings)
        with LabAsterisk(mairie, "mairie", render(cfg)) as pbx:
            password = sip_password_file(cfg).read_text().strip()
            logdir = pbx.path(pbx.dirs["astlogdir"])
            f2b = Fail2ban(mairie, tmp_path / "fail2ban", logdir)
            env = dict(os.environ, IVR_CONFIG=str(settings), IVR_DATA=str(data))
            f2b.install(env)
            jail = (f2b.etc / "jail.d" / "mairie-asterisk.conf").read_text()
            assert f"logpath = {logdir}/security.log\n          {logdir}/messages.log\n" in jail
            assert "ignoreip = 127.0.0.1/8 ::1 10.77.9.9/32" in jail        # the operator: never banned
            assert "logtimezone = UTC" in jail                             # the chroot is in UTC
            f2b.start()
            try:
                assert f2b.banned() == []
                assert sip_register(lan, f"{m1}:5062", "assistant", password) == [200]
                # the PC on the local network guesses the assistant's password: refused, then unanswered
                codes = sip_register(pc, f"{m2}:5062", "assistant", "123456", count=5)
                assert codes == [401] * 5, codes
                wait_for(lambda: guesser in f2b.banned(), 15, f"{guesser} banned")
                assert sip_register(pc, f"{m2}:5062", "assistant", password, count=2) == [None, None]
                # from outside, refused by the trunk's ACL (403) until banned
                codes = sip_register(outside, f"{m3}:5062", "assistant", "admin", count=5)
                assert codes == [403] * 5, codes
                wait_for(lambda: stranger in f2b.banned(), 15, f"{stranger} banned")
                assert sip_register(outside, f"{m3}:5062", "assistant", "admin") == [None]
                # the phone is not affected
                assert sip_register(lan, f"{m1}:5062", "assistant", password, count=2) == [200, 200]
                assert set(f2b.banned()) == {guesser, stranger}
                # the ban lives in the Asterisk's namespace (nftables), nowhere else
                rules = mairie.run("nft", "list", "ruleset").stdout
                assert "addr-set-mairie-asterisk" in rules and guesser in rules and stranger in rules, rules
                host = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
                assert guesser not in host
                # the doctor, on the server, sees the jail at work
                denv = dict(env, IVR_FAIL2BAN__SOCKET=str(f2b.etc / "fail2ban.sock"), IVR_PBX__ASTERISK_ROOT=str(CHROOT),
                            IVR_PBX__ASTERISK_CONF=f"{pbx.etc}/asterisk.conf")
                out = mairie.run(sys.executable, "-m", "ivr.cli", "doctor", "--json", env=denv, cwd=ROOT,
                                 check=False).stdout
                item = {i["check"]: i for i in json.loads(out)}["security"]
                assert item["status"] in ("ok", "warn"), item
                assert "fail2ban surveille le journal de sécurité d'Asterisk (2 adresse(s) bannie(s)" in item["detail"]
                assert "Asterisk sans AMI ni serveur HTTP" in item["detail"], item
                from ivr.doctor import _fail2ban_findings

                [(status, detail, fix)] = _fail2ban_findings(make_cfg(
                    data, IVR_CONFIG=settings, IVR_FAIL2BAN__SOCKET=f2b.etc / "fail2ban.sock", IVR_FAIL2BAN__JAIL="autre"))
                assert status == "warn" and "fail2ban tourne, mais sans la prison autre" in detail, detail
                assert "scripts/install_fail2ban.sh" in fix
                # unban, as docs/security.md says: answered again
                f2b.client("set", "mairie-asterisk", "unbanip", guesser)
                assert sip_register(pc, f"{m2}:5062", "assistant", password) == [200]
            finally:
                f2b.stop()
            # what was counted: wrong passwords in security.log, refusals by the ACL in messages.log
            assert 'SecurityEvent="ChallengeResponseFailed"' in (logdir / "security.log").read_text()
            assert f"Incoming SIP message from {stranger}:" in pbx.log()


# --- the console over HTTPS ------------------------------------------------------------------------
def _console_env(data: Path, **extra) -> dict:
    from tests.conftest import MODELS

    env = dict(os.environ, IVR_DATA=str(data), IVR_PATHS__MODELS=str(MODELS), IVR_PATHS__CORPUS=str(ROOT / "corpus"),
               IVR_PATHS__CACHE=str(ROOT / "data" / "cache"), IVR_ALERTS__ENABLED="false")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def test_the_console_over_https(tmp_path):
    """`ivr console` with [console] https: its self-signed certificate is made (key 0600), a client that
    trusts that certificate logs in over TLS, the session cookie is Secure, HSTS is sent, the live
    board's events stream; plain HTTP on that port gets nothing from the console."""
    data = tmp_path / "data"
    port = free_port()
    env = _console_env(data, IVR_CONSOLE__HTTPS="true", IVR_CONSOLE__PORT=port)
    cli = [sys.executable, "-m", "ivr.cli"]
    add = subprocess.run([*cli, "users", "add", "secretaire", "--role", "admin", "--password-stdin"],
                         input="un-mot-de-passe-solide\n", text=True, capture_output=True, env=env, cwd=ROOT)
    assert add.returncode == 0, add.stderr
    log = tmp_path / "console.log"
    proc = subprocess.Popen([*cli, "console"], env=env, cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    cert = data / "secrets" / "console-tls" / "console.crt"
    key = cert.with_name("console.key")
    try:
        ctx = ssl.create_default_context(cafile=str(wait_for(lambda: cert.exists() and cert, 30, "certificate")))
        base = f"https://127.0.0.1:{port}"

        def health():
            try:
                with urllib.request.urlopen(f"{base}/sante", context=ctx, timeout=2) as r:
                    return json.loads(r.read())
            except (OSError, ssl.SSLError):
                if proc.poll() is not None:
                    raise AssertionError(log.read_text()[-3000:])
                return None

        assert wait_for(health, 60, "console over HTTPS") == {"ok": True}
        assert key.stat().st_mode & 0o777 == 0o600 and cert.parent.stat().st_mode & 0o777 == 0o700
        assert f"Console : https://127.0.0.1:{port}/connexion" in log.read_text()
        # log in over TLS, the certificate verified against the console's own
        jar = CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx),
                                             urllib.request.HTTPCookieProcessor(jar))
        page = opener.open(f"{base}/connexion", timeout=5).read().decode()
        token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page).group(1)
        form = urllib.parse.urlencode({"csrf_token": token, "nom": "secretaire",
                                       "mot_de_passe": "un-mot-de-passe-solide"}).encode()

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *a, **kw):
                return None

        login = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx), NoRedirect,
                                            urllib.request.HTTPCookieProcessor(jar))
        try:
            # over HTTPS, Flask-WTF also wants the page's own address as referrer (browsers send it)
            login.open(urllib.request.Request(f"{base}/connexion", data=form,
                                              headers={"Referer": f"{base}/connexion"}), timeout=5)
            raise AssertionError("the log-in should redirect")
        except urllib.error.HTTPError as exc:
            assert exc.code == 302, exc.read()[:500]
            cookies = exc.headers.get_all("Set-Cookie")
            assert exc.headers["Strict-Transport-Security"] == "max-age=31536000"
        session = [c for c in cookies if c.startswith("mairie_console=")]
        assert session and "; Secure" in session[0] and "HttpOnly" in session[0], cookies
        # logged in: the live board streams over TLS (an event within seconds, not at a buffer's fill)
        with opener.open(f"{base}/direct/flux", timeout=10) as stream:
            t = time.monotonic()
            head = b""
            while b"event: appels" not in head and time.monotonic() - t < 5:
                head += stream.read1(4096)
            assert b"event: appels" in head, head
        # a client that does not trust that certificate is refused
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(f"{base}/sante", context=ssl.create_default_context(), timeout=5)
        # plain HTTP on the HTTPS port: never the console's answer
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/sante", timeout=5) as r:
                body, status = r.read(), r.status
        except urllib.error.HTTPError as exc:
            body, status = exc.read(), exc.code
        except (OSError, http.client.HTTPException):
            body, status = b"", None
        assert status != 200 and b'"ok"' not in body, (status, body[:200])
        # the doctor's console check speaks HTTPS too
        from ivr.doctor import check_console

        result = check_console(make_cfg(data, IVR_CONSOLE__HTTPS="true", IVR_CONSOLE__PORT=port))
        assert result.status == "ok" and f"https://127.0.0.1:{port}/sante" in result.detail, result
    finally:
        proc.terminate()
        try:
            assert proc.wait(15) in (0, -15), log.read_text()[-2000:]
        except subprocess.TimeoutExpired:
            proc.kill()
            raise


def test_forwarded_headers_are_trusted_only_behind_a_proxy(tmp_path):
    """Without [console] behind_proxy, X-Forwarded-Proto/-For from anyone change nothing; with it (nginx
    on this machine), the request is HTTPS (HSTS) and the client's address is the proxy's word."""
    from flask import request

    from ivr.console.web import create_app

    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7", "X-Forwarded-Host": "mairie.example"}
    for behind, secure, addr in ((False, False, "127.0.0.1"), (True, True, "203.0.113.7")):
        app = create_app(make_cfg(tmp_path / str(behind), IVR_CONSOLE__BEHIND_PROXY=str(behind).lower()))
        seen = {}

        @app.get("/vu")
        def vu():
            seen.update(addr=request.remote_addr, secure=request.is_secure, host=request.host)
            return "ok"

        r = app.test_client().get("/vu", headers=headers, environ_base={"REMOTE_ADDR": "127.0.0.1"})
        assert r.status_code == 200
        assert seen == {"addr": addr, "secure": secure, "host": "mairie.example" if behind else "localhost"}, seen
        assert ("Strict-Transport-Security" in r.headers) is secure
        assert app.config["SESSION_COOKIE_SECURE"] is True


# --- secrets ---------------------------------------------------------------------------------------
def test_generated_secrets_and_asterisk_files_are_private(tmp_path):
    from ivr.console.accounts import secret
    from ivr.pbx import write

    data = tmp_path / "data"
    cfg = make_cfg(data, IVR_TLS__ENABLED="true")
    etc = tmp_path / "etc"
    write(cfg, etc)
    secret(data, "console_session_key")
    folder = data / "secrets"
    assert folder.stat().st_mode & 0o777 == 0o700
    for p in [folder / "sip_password", folder / "console_session_key", folder / "tls" / "asterisk.key"]:
        assert p.stat().st_mode & 0o777 == 0o600, p
    for p in etc.iterdir():                       # pjsip.conf holds the SIP password, tls.key the key
        assert p.stat().st_mode & 0o077 == 0, (p, oct(p.stat().st_mode))
    # `ivr users init` (scripts/setup.sh) leaves the database to its owner
    env = _console_env(data)
    r = subprocess.run([sys.executable, "-m", "ivr.cli", "users", "init"], env=env, cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert (data / "ivr.db").stat().st_mode & 0o777 == 0o600


# --- the doctor's security check -------------------------------------------------------------------
def test_doctor_security_on_a_careless_install(tmp_path):
    from ivr.doctor import check_security

    data = tmp_path / "data"
    (data / "secrets").mkdir(parents=True)
    (data / "secrets").chmod(0o755)
    (data / "secrets" / "trunk_password").write_text("x")
    (data / "secrets" / "trunk_password").chmod(0o644)
    cfg = make_cfg(data, IVR_CONSOLE__BIND="0.0.0.0", IVR_PBX__ASTERISK_ROOT=tmp_path / "pas-d-asterisk")
    r = check_security(cfg)
    assert r.status == "fail", r
    assert "secrets lisibles par d'autres comptes" in r.detail and "trunk_password (0644)" in r.detail
    assert "(0755)" in r.detail and "chmod 700" in r.fix
    assert "la console est servie en HTTP sur une adresse du réseau (0.0.0.0:8080)" in r.detail
    assert "[console] https = true" in r.fix
    # fixed: secrets private, the console behind a proxy but still on the network: a warning only
    (data / "secrets").chmod(0o700)
    (data / "secrets" / "trunk_password").chmod(0o600)
    r = check_security(make_cfg(data, IVR_CONSOLE__BIND="0.0.0.0", IVR_CONSOLE__BEHIND_PROXY="true",
                                IVR_PBX__ASTERISK_ROOT=tmp_path / "pas-d-asterisk"))
    assert r.status == "warn" and "entre le proxy et elle, tout passe en clair" in r.detail, r
    r = check_security(make_cfg(data, IVR_CONSOLE__BIND="0.0.0.0", IVR_CONSOLE__HTTPS="true",
                                IVR_PBX__ASTERISK_ROOT=tmp_path / "pas-d-asterisk"))
    assert r.status == "ok" and "console en HTTPS" in r.detail, r


@root_only
def test_doctor_security_sees_asterisk_manager_and_http(tmp_path):
    """An Asterisk whose AMI and HTTP server someone turned on: the doctor fails, and says how to undo it."""
    from ivr.pbx import render
    from tests.netlab import CHROOT, Lab, LabAsterisk

    data = tmp_path / "data"
    cfg = make_cfg(data)
    files = render(cfg)
    files["manager.conf"] = "[general]\nenabled = yes\nbindaddr = 127.0.0.1\n"
    files["http.conf"] = "[general]\nenabled = yes\nbindaddr = 127.0.0.1\nbindport = 8088\n"
    with Lab() as lab:
        ns = lab.netns("mairie")
        with LabAsterisk(ns, "ouvert", files) as ast:
            env = _console_env(data, IVR_PBX__ASTERISK_ROOT=CHROOT, IVR_PBX__ASTERISK_CONF=f"{ast.etc}/asterisk.conf")
            assert ("tcp", "LISTEN", "127.0.0.1:5038") in asterisk_sockets(ns)      # the test can tell
            out = ns.run(sys.executable, "-m", "ivr.cli", "doctor", "--json", env=env, cwd=ROOT, check=False).stdout
            item = {i["check"]: i for i in json.loads(out)}["security"]
            assert item["status"] == "fail", item
            assert "l'interface de gestion d'Asterisk (AMI) est activée" in item["detail"]
            assert "le serveur HTTP d'Asterisk (ARI, AMI/HTTP) est activé" in item["detail"]
            assert "manager.conf" in item["fix"] and "http.conf" in item["fix"]
