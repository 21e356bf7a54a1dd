"""Alerts by e-mail and webhook, and the health the console shows: a local SMTP server (aiosmtpd,
STARTTLS with its own certificate, log-in required) and a local HTTP receiver started here, on
loopback. The states are real: a full tmpfs, call records ended on an error, an `ivr serve`
stopped then started again with `ivr console` watching it."""
from __future__ import annotations

import email
import email.policy
import html
import json
import os
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import ADMIN, AGENT, MODELS, ROOT, Console, Http, free_port, make_cfg, run_ivr

SMTP_USER, SMTP_PASSWORD = "alertes", "mot-de-passe-smtp"
RECIPIENTS = ["informatique@mairie.test", "dgs@mairie.test"]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts, Asterisk and real SIP need root")


class Mailbox:
    """What the local SMTP server received: (logged in over TLS, recipients, parsed message)."""

    def __init__(self):
        self.received: list[tuple[bool, list[str], email.message.EmailMessage]] = []

    async def handle_DATA(self, server, session, envelope):
        tls = session.ssl is not None
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.received.append((bool(session.authenticated) and tls, list(envelope.rcpt_tos), msg))
        return "250 OK"

    def subjects(self) -> list[str]:
        return [m["Subject"] for _, _, m in self.received]


@pytest.fixture(scope="module")
def mailbox(tmp_path_factory):
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    d = tmp_path_factory.mktemp("smtp")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", d / "key.pem", "-out", d / "cert.pem"],
                   check=True, capture_output=True)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(d / "cert.pem", d / "key.pem")

    def auth(server, session, envelope, mechanism, data):
        ok = (data.login, data.password) == (SMTP_USER.encode(), SMTP_PASSWORD.encode())
        return AuthResult(success=ok, handled=False)           # handled=False: aiosmtpd answers 535 itself

    box = Mailbox()
    box.port, box.ca = free_port(), d / "cert.pem"
    ctl = Controller(box, hostname="127.0.0.1", port=box.port, tls_context=ctx, require_starttls=True,
                     authenticator=auth, auth_require_tls=True)
    ctl.start()
    yield box
    ctl.stop()


@pytest.fixture(scope="module")
def receiver():
    """A webhook receiver: keeps each JSON body POSTed to it."""
    posts: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            posts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    httpd.posts, httpd.url = posts, f"http://127.0.0.1:{httpd.server_port}/alertes"
    yield httpd
    httpd.shutdown()


@pytest.fixture(autouse=True)
def fresh(request, monkeypatch):
    for name in ("mailbox", "receiver"):
        if name in request.fixturenames:
            obj = request.getfixturevalue(name)
            (obj.received if name == "mailbox" else obj.posts).clear()
            if name == "mailbox":
                monkeypatch.setenv("SSL_CERT_FILE", str(obj.ca))      # the client trusts the test server


def settings(path: Path, data: Path, mailbox, webhooks: list[str], **alerts) -> Path:
    """A settings file with [alerts] towards the local servers; the SMTP password in data/secrets."""
    (data / "secrets").mkdir(parents=True, exist_ok=True)
    (data / "secrets" / "smtp_password").write_text(SMTP_PASSWORD + "\n")
    values = dict(smtp_host="127.0.0.1", smtp_port=mailbox.port, smtp_user=SMTP_USER, smtp_from="assistant@mairie.test",
                  smtp_to=RECIPIENTS, webhook_urls=webhooks, **alerts)
    lines = ["[alerts]"] + [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def rows(db: Path) -> list[dict]:
    from ivr.store import Store

    return list(Store(db).db.query("select kind, state, channel, target, ok, detail, subject from alerts order by id"))


def wait_for(cond, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.2)
    return False


# --- delivery --------------------------------------------------------------------------------------
def test_ivr_alerts_test_sends_by_email_and_webhook_and_keeps_every_attempt(tmp_path, mailbox, receiver):
    closed = f"http://127.0.0.1:{free_port()}/rien"
    conf = settings(tmp_path / "ivr.toml", tmp_path, mailbox, [receiver.url, closed])
    env = dict(os.environ, IVR_DATA=str(tmp_path), IVR_CONFIG=str(conf), IVR_PATHS__CORPUS=str(ROOT / "corpus"))
    r = run_ivr(env, "alerts", "test")
    assert r.returncode == 1, r.stdout + r.stderr                      # one channel failed
    assert f"envoyé : email → {', '.join(RECIPIENTS)}" in r.stdout, r.stdout
    assert f"ÉCHEC : webhook → {closed} (connexion refusée" in r.stdout, r.stdout
    (secure, to, msg), = mailbox.received
    assert secure and to == RECIPIENTS                                  # logged in, over STARTTLS
    assert msg["Subject"] == "[Assistant vocal — Montclair-sur-Lise] Message d'essai", msg["Subject"]
    assert "les alertes de l'assistant vocal vous parviendront aussi" in msg.get_content()
    (post,) = receiver.posts
    assert post["state"] == "test" and post["subject"] == msg["Subject"] and "Message d'essai" in post["text"]
    kept = rows(tmp_path / "ivr.db")
    assert [(k["channel"], k["ok"]) for k in kept] == [("email", 1), ("webhook", 1), ("webhook", 0)], kept
    assert kept[2]["detail"] == "connexion refusée : rien n'écoute à cette adresse" and kept[2]["target"] == closed

    # a wrong SMTP password: the server refuses it, and that is said and kept too
    (tmp_path / "secrets" / "smtp_password").write_text("pas-le-bon")
    r = run_ivr(dict(env, IVR_ALERTS__WEBHOOK_URLS=""), "alerts", "test")
    assert r.returncode == 1 and "le serveur refuse l'identifiant ou le mot de passe (535)" in r.stdout, r.stdout
    assert len(mailbox.received) == 1 and rows(tmp_path / "ivr.db")[-1]["ok"] == 0


# --- the watcher, driven tick by tick ------------------------------------------------------------------
def fill(folder: Path) -> Path:
    f = folder / "remplissage"
    with open(f, "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    return f


@needs_root
def test_a_full_disk_alerts_once_then_recovers_and_a_new_episode_waits_for_the_rate_limit(tmp_path, tmpfs, mailbox,
                                                                                            receiver):
    from ivr.alerts import Health, Watcher
    from ivr.store import Store

    data = tmpfs("4M")
    conf = settings(tmp_path / "ivr.toml", tmp_path, mailbox, [receiver.url], down_after_s=3600,
                    disk_min_free_mb=1, disk_min_free_pct=5, smtp_password_file=str(tmp_path / "secrets/smtp_password"))
    cfg = make_cfg(data, IVR_CONFIG=conf)
    # the alerts log on another disk: on this one, SQLite may or may not find room (the mail goes regardless)
    w = Watcher(cfg, store=Store(tmp_path / "ivr.db"))
    assert w.tick() == [] and not mailbox.received                     # nothing wrong but what waits an hour
    filler = fill(data)
    sent = w.tick()
    assert [(m.kind, m.state) for m in sent] == [("disk", "problem")]
    (secure, to, msg), = mailbox.received
    assert msg["Subject"].endswith("Alerte : Le disque du serveur est presque plein"), msg["Subject"]
    body = msg.get_content()
    assert "disque presque plein" in body and str(data) in body and "ivr purge" in body, body
    assert "au plus un rappel toutes les 60 min" in body
    assert receiver.posts[0]["kind"] == "disk" and receiver.posts[0]["state"] == "problem"
    assert Health(cfg).public()["parts"]["disk"] == "fail"

    assert w.tick() == [] and w.tick() == [] and len(mailbox.received) == 1     # it persists: sent once

    filler.unlink()
    assert [(m.kind, m.state) for m in w.tick()] == [("disk", "recovered")]
    assert mailbox.subjects()[1].endswith("Rétabli : Le disque du serveur a de nouveau assez de place")
    assert "Le problème avait été constaté le" in mailbox.received[1][2].get_content()

    fill(data)
    assert w.tick() == [] and len(mailbox.received) == 2               # announced less than an hour ago
    w.repeat_s = 1.0
    time.sleep(1.1)
    assert [(m.kind, m.state) for m in w.tick()] == [("disk", "problem")]
    kept = rows(tmp_path / "ivr.db")
    assert [(r["state"], r["channel"], r["ok"]) for r in kept] == [
        ("problem", "email", 1), ("problem", "webhook", 1), ("recovered", "email", 1), ("recovered", "webhook", 1),
        ("problem", "email", 1), ("problem", "webhook", 1)], kept


def test_calls_ended_on_an_error_are_announced_gathered_and_not_twice(tmp_path, mailbox, receiver):
    from ivr.alerts import Watcher
    from ivr.store import Store

    conf = settings(tmp_path / "ivr.toml", tmp_path, mailbox, [receiver.url], down_after_s=3600, errors_max=3)
    cfg = make_cfg(tmp_path, IVR_CONFIG=conf)
    store = Store(cfg.db_path)

    def failed_call() -> str:          # as a session whose component raised records its call
        cid = store.start_call("sip", "sip:0611223344@127.0.0.1")
        store.end_call(cid, "error", "transfer", 12.0)
        return cid

    w = Watcher(cfg)
    first = failed_call()
    assert [(m.kind, m.state) for m in w.tick()] == [("call_error", "problem")]
    body = mailbox.received[0][2].get_content()
    assert mailbox.subjects()[0].endswith("Alerte : Un appel s'est terminé sur une erreur")
    assert f"appel {first}" in body and "l'appelant a été passé à l'accueil" in body, body
    assert "0611223344" not in body and "0611223344" not in json.dumps(receiver.posts)   # no caller's number

    second = failed_call()
    store.start_call("sip", "sip:0699887766@127.0.0.1")
    store.close_interrupted("sip")                 # the assistant stopped during this one
    sent = w.tick()                                # 3 errors within 15 min: they pile up
    assert [(m.kind, m.state) for m in sent] == [("errors", "problem")], [m.subject for m in sent]
    assert "3 erreur(s) en 15 min" in sent[0].text and "3 appel(s) terminé(s) sur une erreur" in sent[0].text
    assert len(mailbox.received) == 2              # the two new calls wait for the hour to pass

    again = Watcher(cfg)                           # a console restarted: nothing said twice
    assert again.tick() == []
    again.repeat_s = w.repeat_s = 1.0
    time.sleep(1.1)
    gathered = [m for m in again.tick() if m.kind == "call_error"]
    assert len(gathered) == 1 and gathered[0].subject.endswith("Alerte : 2 appels se sont terminés sur une erreur")
    assert f"appel {second}" in gathered[0].text and "l'assistant s'est arrêté pendant l'appel" in gathered[0].text
    assert f"appel {first}" not in gathered[0].text


# --- the console, watching a real assistant ------------------------------------------------------------
@needs_root
def test_the_console_alerts_when_the_assistant_stops_shows_it_to_admins_and_says_when_it_is_back(
        pbx, tmp_path, mailbox, receiver):
    from tests.sipcall import Assistant

    data = tmp_path / "data"
    data.mkdir()
    conf = settings(tmp_path / "ivr.toml", data, mailbox, [receiver.url], check_every_s=1, down_after_s=2)
    with open(conf, "a") as f:
        f.write(f"\n[monitoring]\nport = {free_port()}\n")
    env = dict(os.environ, IVR_DATA=str(data), IVR_CONFIG=str(conf), IVR_PATHS__MODELS=str(MODELS),
               IVR_PATHS__CORPUS=str(ROOT / "corpus"), IVR_PATHS__CACHE=str(ROOT / "data" / "cache"),
               SSL_CERT_FILE=str(mailbox.ca), IVR_SIP__PASSWORD_FILE=str(pbx.password_file),
               IVR_PBX__ASTERISK_ROOT=str(pbx.root))            # the host's Asterisk, not one in this data folder
    for (name, pw), role in ((ADMIN, "admin"), (AGENT, "agent")):
        assert run_ivr(env, "users", "add", name, "--role", role, "--password-stdin", stdin=pw + "\n").returncode == 0
    assistant = Assistant(data, pbx, env={"IVR_CONFIG": str(conf)}).start()
    console = Console(env).start()
    try:
        admin, agent = Http(console.url), Http(console.url)
        assert admin.login(*ADMIN).status == 302 and agent.login(*AGENT).status == 302
        r = admin.request("/sante/installation")
        state = json.loads(r.text)
        assert r.status == 200 and state["ok"], state
        assert state["parts"] == {"assistant": "ok", "asterisk": "ok", "trunk": "skip", "disk": "ok"}, state
        assert "Problème sur l'installation" not in admin.request("/direct").text
        time.sleep(3)
        assert not mailbox.received, mailbox.subjects()

        assistant.stop()
        assert wait_for(lambda: mailbox.received), "no alert for a stopped assistant"
        (secure, to, msg), = mailbox.received
        assert secure and msg["Subject"].endswith("Alerte : L'assistant vocal ne prend plus les appels"), msg["Subject"]
        body = msg.get_content()
        assert "ivr serve est arrêté" in body and "À faire : démarrez l'assistant" in body, body
        assert "les appels destinés à l'assistant vont directement à l'accueil" in body
        r = Http(console.url).request("/sante/installation")                # no log-in needed
        state = json.loads(r.text)
        assert r.status == 503 and not state["ok"] and state["parts"]["assistant"] == "fail", state
        assert state["problems"] == ["L'assistant vocal ne prend plus les appels"], state
        assert str(data) not in r.text and "pid" not in r.text and "processus" not in r.text
        page = html.unescape(admin.request("/direct").text)
        assert "Problème sur l'installation" in page and "L'assistant vocal ne prend plus les appels" in page
        assert "ivr serve est arrêté" in page
        assert "Problème sur l'installation" not in agent.request("/direct").text     # admins only
        time.sleep(3)
        assert len(mailbox.received) == 1 and len(receiver.posts) == 1      # it persists: sent once

        assistant.start()
        # the e-mail goes first, the webhook right after it
        assert wait_for(lambda: len(mailbox.received) == 2 and len(receiver.posts) == 2), mailbox.subjects()
        assert mailbox.subjects()[1].endswith("Rétabli : L'assistant vocal prend de nouveau les appels")
        assert [p["state"] for p in receiver.posts] == ["problem", "recovered"]
        assert "Problème sur l'installation" not in admin.request("/direct").text
    finally:
        console.stop()
        assistant.stop()
    kept = rows(data / "ivr.db")
    assert [(r["kind"], r["state"], r["channel"], r["ok"]) for r in kept] == [
        ("assistant", "problem", "email", 1), ("assistant", "problem", "webhook", 1),
        ("assistant", "recovered", "email", 1), ("assistant", "recovered", "webhook", 1)], kept
