"""The health of the whole install, and alerts about it by e-mail and webhook ([alerts]).

Both run in `ivr console`, not in `ivr serve`: the alerts must still go out when the assistant
itself is dead. One evaluation (the doctor's checks of the assistant, Asterisk and the trunk, the
data folder's disk, the assistant's /health and the call records) feeds the admins' banner,
/sante/installation and the watcher. The watcher sends a message when a problem has lasted long
enough, at most once per `repeat_min` per kind of problem, and a "rétabli" message when it clears.
Every message sent or failed is logged and kept in the `alerts` table."""
from __future__ import annotations

import json
import logging
import smtplib
import socket
import sqlite3
import ssl
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

from ivr import doctor
from ivr.store import DB_ERRORS

log = logging.getLogger(__name__)

PARTS = ("assistant", "asterisk", "trunk", "disk")
RETRY_S = 300.0                    # a message no channel took is tried again after this long
# kind: (problem title, recovered title, what it means for callers)
TITLES = {
    "assistant": ("L'assistant vocal ne prend plus les appels", "L'assistant vocal prend de nouveau les appels",
                  "Tant qu'il ne répond pas, les appels destinés à l'assistant vont directement à l'accueil."),
    "asterisk": ("Le standard téléphonique (Asterisk) ne répond plus",
                 "Le standard téléphonique (Asterisk) répond de nouveau",
                 "Tant qu'il ne répond pas, aucun appel n'arrive par ce serveur, ni à l'assistant ni à l'accueil."),
    "trunk": ("La ligne téléphonique de l'opérateur ne fonctionne plus",
              "La ligne téléphonique de l'opérateur fonctionne de nouveau",
              "Tant qu'elle ne fonctionne pas, les appels venant de l'extérieur n'arrivent plus à la mairie."),
    "disk": ("Le disque du serveur est presque plein", "Le disque du serveur a de nouveau assez de place",
             "S'il se remplit, les enregistrements et les fiches des appels ne pourront plus être conservés."),
    "errors": ("Des erreurs s'accumulent sur l'assistant vocal", "L'assistant vocal ne signale plus d'erreurs en série",
               "Des appelants ont pu être passés à l'accueil à cause de ces erreurs."),
    "call_error": ("Un appel s'est terminé sur une erreur", "", ""),
}
DOWN_KINDS = ("assistant", "asterisk", "trunk")        # alerted after [alerts] down_after_s


@dataclass
class Part:
    name: str
    status: str                    # ok | fail | skip (doctor's words)
    detail: str = ""
    fix: str = ""


@dataclass
class Snapshot:
    at: float
    parts: dict[str, Part]
    errors: int = 0                # errors within [alerts] errors_window_min
    errors_detail: str = ""
    serve: dict | None = None      # the assistant's /health, when it answers

    @property
    def ok(self) -> bool:
        return all(p.status != doctor.FAIL for p in self.parts.values())

    def failing(self) -> list[Part]:
        return [self.parts[n] for n in PARTS if n in self.parts and self.parts[n].status == doctor.FAIL]


def settings(cfg) -> dict:
    """[alerts], with lists also accepted as comma-separated text (IVR_ALERTS__SMTP_TO=a@x,b@y)."""
    a = dict(cfg["alerts"])
    for key in ("smtp_to", "webhook_urls"):
        if isinstance(a[key], str):
            a[key] = [x.strip() for x in a[key].split(",") if x.strip()]
    return a


# --- evaluation ----------------------------------------------------------------------------------
def check_disk(cfg) -> Part:
    from ivr.monitoring import disk_usage

    a = settings(cfg)
    free, size = disk_usage(cfg.data_dir)
    pct = 100 * free / size if size else 0.0
    detail = f"{doctor._size(free)} libres sur {doctor._size(size)} ({pct:.0f} %) pour {cfg.data_dir}"
    if free < float(a["disk_min_free_mb"]) * 2**20 or pct < float(a["disk_min_free_pct"]):
        return Part("disk", doctor.FAIL, f"disque presque plein : {detail}",
                    "libérez de la place : ivr purge (enregistrements plus anciens que call.retention_days), "
                    "ou agrandissez le disque")
    return Part("disk", doctor.OK, detail)


def serve_health(cfg, timeout: float = 2.0) -> dict | None:
    """The assistant's own /health ([monitoring]); None when it does not answer."""
    m = cfg["monitoring"]
    if not m["enabled"]:
        return None
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(m["bind"], m["bind"])
    url = f"http://{'[' + host + ']' if ':' in host else host}:{int(m['port'])}/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read(65536))
    except urllib.error.HTTPError as exc:          # 503: answers, but not registered
        try:
            return json.loads(exc.read(65536))
        except ValueError:
            return None
    except (OSError, ValueError):
        return None


def error_calls(cfg, since_iso: str) -> list[dict]:
    """Calls ended on an error (a component failed, or the assistant stopped mid-call) since then."""
    from ivr.store import shared_store

    sql = ("select id, started_at, ended_at, end_reason from calls where outcome = 'error' "
           "and ended_at > ? order by ended_at limit 200")
    if cfg["store"]["url"]:
        try:
            return list(shared_store(cfg).db.query(sql, [since_iso]))
        except (*DB_ERRORS, RuntimeError) as exc:
            log.warning("alerts: cannot read the call records: %s", exc)
            return []
    if not cfg.db_path.exists():
        return []
    try:
        conn = sqlite3.connect(f"file:{cfg.db_path}?mode=ro", uri=True, timeout=5)
        conn.row_factory = sqlite3.Row
        try:
            rows = conn.execute(sql, [since_iso]).fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        log.warning("alerts: cannot read the call records: %s", exc)
        return []
    return [dict(r) for r in rows]


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")


def evaluate(cfg) -> Snapshot:
    """One look at every part, in parallel (the slowest, a stuck Asterisk CLI, bounds it)."""
    checks = {"assistant": doctor.check_assistant, "asterisk": doctor.check_asterisk, "trunk": doctor.check_trunk,
              "disk": check_disk}
    with ThreadPoolExecutor(len(checks) + 1) as pool:
        futures = {name: pool.submit(doctor._safe, name, fn, cfg) for name, fn in checks.items()}
        serve = pool.submit(serve_health, cfg)
        parts = {}
        for name, fut in futures.items():
            r = fut.result()
            parts[name] = Part(name, r.status, r.detail, r.fix)
        serve = serve.result()
    a = settings(cfg)
    window = float(a["errors_window_min"]) * 60
    failed = len(error_calls(cfg, _iso(time.time() - window)))
    logged = int(((serve or {}).get("errors") or {}).get("recent") or 0)
    # each failed call is also a logged error: the larger of the two, not their sum
    count = max(failed, logged)
    detail = (f"{count} erreur(s) en {_minutes(window)} : {logged} consignée(s) dans le journal d'ivr serve, "
              f"{failed} appel(s) terminé(s) sur une erreur (seuil : {int(a['errors_max'])})")
    return Snapshot(time.time(), parts, count, detail, serve)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min"


class Health:
    """The latest evaluation, shared by the console's pages and the watcher (which refreshes it)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self._snap: Snapshot | None = None
        self._lock = threading.Lock()

    def refresh(self) -> Snapshot:
        with self._lock:
            self._snap = evaluate(self.cfg)
            return self._snap

    def current(self, max_age_s: float = 30.0) -> Snapshot:
        snap = self._snap
        if snap is not None and time.time() - snap.at <= max_age_s:
            return snap
        with self._lock:                 # one evaluation at a time; the others wait for it
            if self._snap is None or time.time() - self._snap.at > max_age_s:
                self._snap = evaluate(self.cfg)
            return self._snap

    def banner(self) -> dict | None:
        """For the admins' pages: what is down, in French, or None when all is well."""
        snap = self.current(max(30.0, 2 * float(self.cfg["alerts"]["check_every_s"])))
        failing = snap.failing()
        if not failing:
            return None
        return {"at": datetime.fromtimestamp(snap.at).strftime("%H:%M:%S"),
                "items": [{"label": doctor.LABELS.get(p.name, p.name), "title": TITLES[p.name][0],
                           "detail": p.detail, "fix": p.fix} for p in failing]}

    def public(self) -> dict:
        """/sante/installation: each part's state, without addresses, paths or anything about callers."""
        snap = self.current(10.0)
        return {"ok": snap.ok, "checked_at": _iso(snap.at), "parts": {n: snap.parts[n].status for n in PARTS},
                "problems": [TITLES[p.name][0] for p in snap.failing()], "errors_recent": snap.errors}


# --- messages ------------------------------------------------------------------------------------
@dataclass
class Message:
    kind: str
    state: str                     # problem | reminder | recovered | test
    subject: str
    text: str
    deliveries: list[dict] = field(default_factory=list)

    @property
    def sent(self) -> bool:
        """Taken by at least one channel (or there is none configured: nothing to retry)."""
        return not self.deliveries or any(d["ok"] for d in self.deliveries)


def _when(t: float) -> str:
    d = datetime.fromtimestamp(t)
    return f"le {d:%d/%m/%Y} à {d:%H} h {d:%M}"


def _commune(cfg) -> str:
    import yaml

    try:
        return yaml.safe_load((cfg.corpus_dir / "commune.yaml").read_text(encoding="utf-8"))["commune"]["nom"]
    except Exception:
        return ""


def _frame(cfg, title: str, lines: list[str]) -> tuple[str, str]:
    commune = _commune(cfg)
    where = f"de la mairie de {commune}" if commune else "de la mairie"
    subject = f"[Assistant vocal{' — ' + commune if commune else ''}] {title}"
    text = "\n".join(["Bonjour,", "", *lines, "", "-- ",
                      f"Message automatique de l'assistant vocal {where} (serveur {socket.gethostname()})."])
    return subject, text


def problem_message(cfg, kind: str, detail: str, fix: str, since: float, now: float, reminder: bool = False) -> Message:
    a = settings(cfg)
    title, _, impact = TITLES[kind]
    lines = [f"{title} : problème constaté {_when(since)} (depuis {doctor._age(max(now - since, 0))}).", impact, "",
             f"Constat : {detail}"]
    if fix:
        lines.append(f"À faire : {fix}")
    lines += ["", "Pour un bilan complet, lancez « ivr doctor » sur le serveur."]
    if a["console_url"]:
        lines.append(f"Console : {a['console_url'].rstrip('/')}/")
    repeat = float(a["repeat_min"])
    lines.append("Un message vous préviendra quand ce sera rétabli" +
                 (f" ; d'ici là, au plus un rappel toutes les {repeat:.0f} min." if repeat > 0 else "."))
    subject, text = _frame(cfg, ("Rappel : " if reminder else "Alerte : ") + title, lines)
    return Message(kind, "reminder" if reminder else "problem", subject, text)


def recovered_message(cfg, kind: str, since: float | None, now: float, detail: str = "") -> Message:
    _, title, _ = TITLES[kind]
    lines = [f"{title} ({_when(now)})."]
    if since is not None:
        lines.append(f"Le problème avait été constaté {_when(since)} ; il a duré {doctor._age(max(now - since, 0))}.")
    if detail:
        lines.append(f"État actuel : {detail}")
    subject, text = _frame(cfg, "Rétabli : " + title, lines)
    return Message(kind, "recovered", subject, text)


def call_error_message(cfg, calls: list[dict]) -> Message:
    a = settings(cfg)
    n = len(calls)
    title = TITLES["call_error"][0] if n == 1 else f"{n} appels se sont terminés sur une erreur"
    lines = [f"{title} :" if n > 1 else "Un appel s'est terminé sur une erreur :"]
    base = a["console_url"].rstrip("/")
    for c in calls[:20]:
        started = datetime.fromisoformat(c["started_at"]).timestamp() if c.get("started_at") else time.time()
        why = ("l'assistant s'est arrêté pendant l'appel" if c.get("end_reason") == "assistant_restart"
               else "une erreur technique ; l'appelant a été passé à l'accueil")
        link = f" ({base}/appels/{c['id']})" if base else ""
        lines.append(f"- appel {c['id']}, {_when(started)} : {why}{link}")
    if n > 20:
        lines.append(f"- et {n - 20} autre(s)")
    lines += ["", "Le détail de l'erreur est dans le journal d'ivr serve ; chaque appel est consultable dans la "
              "console (page Appels, issue « erreur »)."]
    subject, text = _frame(cfg, "Alerte : " + title, lines)
    return Message("call_error", "problem", subject, text)


def test_message(cfg) -> Message:
    subject, text = _frame(cfg, "Message d'essai", [
        "Ceci est un message d'essai envoyé par « ivr alerts test ».",
        "S'il vous parvient, les alertes de l'assistant vocal vous parviendront aussi."])
    return Message("test", "test", subject, text)


# --- delivery ------------------------------------------------------------------------------------
def smtp_password_file(cfg) -> Path:
    return Path(cfg["alerts"]["smtp_password_file"] or cfg.data_dir / "secrets" / "smtp_password")


def _why(exc: BaseException) -> str:
    """An SMTP or network failure, said in French for the alerts log."""
    if isinstance(exc, ConnectionRefusedError):
        return "connexion refusée : rien n'écoute à cette adresse"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "pas de réponse à temps"
    if isinstance(exc, socket.gaierror):
        return f"nom de serveur inconnu ({exc})"
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return f"le serveur refuse l'identifiant ou le mot de passe ({exc.smtp_code})"
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "destinataires refusés : " + ", ".join(exc.recipients)
    if isinstance(exc, ssl.SSLError):
        return f"échec TLS ({exc.reason or exc})"
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return f"le serveur ne le permet pas ({exc})"
    return f"{type(exc).__name__}: {exc}"[:300]


def send_email(cfg, msg: Message) -> dict | None:
    a = settings(cfg)
    if not a["smtp_host"] or not a["smtp_to"]:
        return None
    target = ", ".join(a["smtp_to"])
    em = EmailMessage()
    em["Subject"] = msg.subject
    em["From"] = a["smtp_from"] or f"assistant-vocal@{socket.gethostname()}"
    em["To"] = target
    em["Date"] = formatdate(localtime=True)
    em["Message-ID"] = make_msgid(domain="assistant-vocal")
    em.set_content(msg.text)
    security = a["smtp_security"]
    try:
        password = None
        if a["smtp_user"]:
            path = smtp_password_file(cfg)
            try:
                password = path.read_text().strip()
            except OSError:
                return {"channel": "email", "target": target, "ok": False,
                        "detail": f"mot de passe SMTP introuvable : écrivez-le dans {path}"}
        ctx = ssl.create_default_context()
        if security == "tls":
            smtp = smtplib.SMTP_SSL(a["smtp_host"], int(a["smtp_port"]), timeout=10, context=ctx)
        else:
            smtp = smtplib.SMTP(a["smtp_host"], int(a["smtp_port"]), timeout=10)
        with smtp:
            if security == "starttls":
                smtp.starttls(context=ctx)
            if password is not None:
                smtp.login(a["smtp_user"], password)
            refused = smtp.send_message(em)
        detail = ("refusé pour : " + ", ".join(refused)) if refused else ""
        return {"channel": "email", "target": target, "ok": True, "detail": detail}
    except (smtplib.SMTPException, OSError, ValueError) as exc:
        return {"channel": "email", "target": target, "ok": False, "detail": _why(exc)}


def send_webhook(cfg, url: str, msg: Message) -> dict:
    payload = {"text": f"{msg.subject}\n\n{msg.text}", "subject": msg.subject, "message": msg.text,
               "kind": msg.kind, "state": msg.state, "at": _iso(time.time()), "host": socket.gethostname(),
               "commune": _commune(cfg)}
    req = urllib.request.Request(url, data=json.dumps(payload, ensure_ascii=False).encode(), method="POST",
                                 headers={"Content-Type": "application/json; charset=utf-8"})
    try:
        with urllib.request.urlopen(req, timeout=float(cfg["alerts"]["webhook_timeout_s"])) as resp:
            return {"channel": "webhook", "target": url, "ok": 200 <= resp.status < 300, "detail": str(resp.status)}
    except urllib.error.HTTPError as exc:
        return {"channel": "webhook", "target": url, "ok": False, "detail": f"{exc.code} {exc.reason}"[:300]}
    except urllib.error.URLError as exc:
        return {"channel": "webhook", "target": url, "ok": False, "detail": _why(exc.reason)
                if isinstance(exc.reason, BaseException) else str(exc.reason)[:300]}
    except (OSError, ValueError) as exc:
        return {"channel": "webhook", "target": url, "ok": False, "detail": _why(exc)}


def deliver(cfg, msg: Message, store=None) -> Message:
    """Through every configured channel; each attempt logged and, with a store, kept."""
    deliveries = [d for d in [send_email(cfg, msg)] if d]
    deliveries += [send_webhook(cfg, url, msg) for url in settings(cfg)["webhook_urls"]]
    msg.deliveries = deliveries
    if not deliveries:
        log.warning("alert (no recipient configured in [alerts]): %s", msg.subject)
    for d in deliveries:
        (log.info if d["ok"] else log.error)("alert %s %s via %s to %s: %s %s", msg.kind, msg.state, d["channel"],
                                              d["target"], "sent" if d["ok"] else "FAILED", d["detail"])
        if store is not None:
            try:
                with store._lock:
                    store.db["alerts"].insert({"at": _iso(time.time()), "kind": msg.kind, "state": msg.state,
                                               "subject": msg.subject, "message": msg.text, "channel": d["channel"],
                                               "target": d["target"], "ok": int(d["ok"]), "detail": d["detail"]})
            except DB_ERRORS as exc:          # a full disk is one of the alerts: the message still goes
                log.error("alerts: cannot record the alert: %s", exc)
    return msg


# --- the watcher ---------------------------------------------------------------------------------
@dataclass
class _State:
    bad_since: float | None = None
    alerted: bool = False          # a problem message went out for the current episode
    last_sent: float | None = None  # of the latest problem or reminder message
    last_failed: float | None = None


class Watcher:
    """Looks at the install every `check_every_s` from `ivr console` and sends the alerts."""

    def __init__(self, cfg, health: Health | None = None, store=None, clock=time.time):
        from ivr.store import open_store

        self.cfg, self.clock = cfg, clock
        self.health = health or Health(cfg)
        self.store = store or open_store(cfg)      # its own connection, for this thread
        a = settings(cfg)
        self.repeat_s = float(a["repeat_min"]) * 60
        self.down_after_s = float(a["down_after_s"])
        self.state = {k: _State() for k in TITLES}
        self.pending_calls: list[dict] = []
        now = clock()
        self.calls_since = _iso(now - float(a["errors_window_min"]) * 60)
        self._seed(now)
        self._stop = threading.Event()

    def _seed(self, now: float) -> None:
        """After a restart: no second message for a problem already announced, and its "rétabli" still due."""
        rows = self.store.db.query("select kind, state, at from alerts where ok = 1 and state != 'test' order by id")
        for r in rows:
            st = self.state.get(r["kind"])
            if st is None:
                continue
            at = datetime.fromisoformat(r["at"]).timestamp()
            if r["state"] in ("problem", "reminder"):
                st.last_sent, st.alerted = at, r["kind"] != "call_error"
                if r["state"] == "problem":
                    st.bad_since = at      # it began then, or a little before
            else:
                st.alerted, st.bad_since = False, None
            if r["kind"] == "call_error":
                self.calls_since = max(self.calls_since, r["at"])

    def conditions(self, snap: Snapshot) -> dict[str, tuple[bool | None, str, str, float]]:
        """kind: (bad; None when unknown, detail, fix, how long it must last)."""
        out = {}
        asterisk_down = doctor._bundled(self.cfg) and snap.parts["asterisk"].status == doctor.FAIL
        for kind in ("assistant", "asterisk", "trunk", "disk"):
            p = snap.parts[kind]
            bad: bool | None = p.status == doctor.FAIL
            if p.status == doctor.SKIP or (asterisk_down and kind in ("assistant", "trunk")):
                bad = None                 # skipped, or only a consequence of Asterisk being down
            out[kind] = (bad, p.detail, p.fix, self.down_after_s if kind in DOWN_KINDS else 0.0)
        fix = "lisez le journal d'ivr serve (lignes ERROR) et la liste des appels en erreur dans la console"
        out["errors"] = (snap.errors >= int(settings(self.cfg)["errors_max"]), snap.errors_detail, fix, 0.0)
        return out

    def tick(self) -> list[Message]:
        """One look, and the messages it calls for (returned, for the tests and the log)."""
        snap = self.health.refresh()
        now = self.clock()
        sent = []
        for kind, (bad, detail, fix, delay) in self.conditions(snap).items():
            msg = self._step(kind, bad, detail, fix, delay, now)
            if msg:
                sent.append(msg)
        msg = self._call_errors(now)
        if msg:
            sent.append(msg)
        return sent

    def _allowed(self, st: _State, now: float) -> bool:
        return not (st.last_failed is not None and now - st.last_failed < RETRY_S)

    def _send(self, st: _State, msg: Message, now: float) -> Message:
        deliver(self.cfg, msg, self.store)
        st.last_failed = None if msg.sent else now
        return msg

    def _step(self, kind, bad, detail, fix, delay, now) -> Message | None:
        st = self.state[kind]
        if bad is None:
            return None
        if bad:
            if st.bad_since is None:
                st.bad_since = now
            if now - st.bad_since < delay or not self._allowed(st, now):
                return None
            if st.alerted:
                if self.repeat_s > 0 and st.last_sent is not None and now - st.last_sent >= self.repeat_s:
                    msg = self._send(st, problem_message(self.cfg, kind, detail, fix, st.bad_since, now, True), now)
                    if msg.sent:
                        st.last_sent = now
                    return msg
                return None
            if self.repeat_s > 0 and st.last_sent is not None and now - st.last_sent < self.repeat_s:
                return None                # rate limit: this kind was announced less than repeat_min ago
            msg = self._send(st, problem_message(self.cfg, kind, detail, fix, st.bad_since, now), now)
            if msg.sent:
                st.alerted, st.last_sent = True, now
            return msg
        since, st.bad_since = st.bad_since, None
        if not st.alerted or not self._allowed(st, now):
            return None
        msg = self._send(st, recovered_message(self.cfg, kind, since, now, detail), now)
        if msg.sent:
            st.alerted = False
        return msg

    def _call_errors(self, now: float) -> Message | None:
        rows = error_calls(self.cfg, self.calls_since)
        if rows:
            self.pending_calls += rows
            self.calls_since = rows[-1]["ended_at"]
        st = self.state["call_error"]
        if not self.pending_calls or not self._allowed(st, now):
            return None
        if self.repeat_s > 0 and st.last_sent is not None and now - st.last_sent < self.repeat_s:
            return None                    # gathered into the next message
        msg = self._send(st, call_error_message(self.cfg, self.pending_calls), now)
        if msg.sent:
            self.pending_calls, st.last_sent = [], now
        return msg

    def run(self) -> None:
        every = float(self.cfg["alerts"]["check_every_s"])
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:              # the watcher must outlive any one bad look
                log.exception("alerts: check failed")
            self._stop.wait(every)

    def start(self) -> "Watcher":
        threading.Thread(target=self.run, name="alerts-watcher", daemon=True).start()
        a = settings(self.cfg)
        channels = ([f"e-mail à {', '.join(a['smtp_to'])}"] if a["smtp_host"] and a["smtp_to"] else []) + \
                   [f"webhook {u}" for u in a["webhook_urls"]]
        log.info("alerts: watching every %s s; %s", self.cfg["alerts"]["check_every_s"],
                 "; ".join(channels) or "no recipient configured ([alerts] smtp_to, webhook_urls)")
        return self

    def stop(self) -> None:
        self._stop.set()
