"""The console: a small server-rendered Flask application over the call database.

Agents (switchboard staff) see the live board, the calls they receive and the callbacks to make;
admins see everything else. Sessions are signed cookies (HttpOnly, SameSite=Strict, Secure unless
configured off), every form carries a CSRF token (Flask-WTF), log-in attempts are rate-limited
(Flask-Limiter), and each access to personal data is written to the audit log.
"""
from __future__ import annotations

import csv
import datetime as dt
import functools
import io
import json
import logging
import re
import threading
import time
from pathlib import Path

from flask import (Flask, Response, abort, flash, g, jsonify, redirect, render_template, request, send_file,
                   session, stream_with_context, url_for)
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_wtf.csrf import CSRFError, CSRFProtect

from ivr.console.accounts import ROLE_NAMES, Accounts, audit, secret
from ivr.console.queries import ACTIONS, OUTCOMES, REPORT_STATUSES, Queries, caller_number, mask_number
from ivr.store import Store, now_iso, open_store

log = logging.getLogger(__name__)
CALL_ID = re.compile(r"^[0-9a-f]{8,32}$")


def create_app(cfg, store: Store | None = None, clock=None) -> Flask:
    from dialogue.corpus import THEMES

    ccfg = cfg["console"]
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=secret(cfg.data_dir, "console_session_key"),
        SESSION_COOKIE_NAME="mairie_console",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=bool(ccfg["secure_cookies"] or ccfg.get("https")),
        PERMANENT_SESSION_LIFETIME=dt.timedelta(hours=float(ccfg["session_hours"])),
        WTF_CSRF_TIME_LIMIT=None,            # the token lives as long as the session
        MAX_CONTENT_LENGTH=1 << 20,
    )
    if ccfg.get("behind_proxy"):
        # only then: the proxy's X-Forwarded-For (rate limits, audit), -Proto (https) and -Host are
        # believed; sent to a console without a proxy, they would be anyone's say-so
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)
    # PostgreSQL: one store, a connection per thread inside it
    store = store or (open_store(cfg) if cfg["store"]["url"] else _PerThread(lambda: open_store(cfg)))
    accounts, q = Accounts(store), _Scoped(store)
    clock = clock or dt.datetime.now
    CSRFProtect(app)
    limiter = Limiter(get_remote_address, app=app, storage_uri="memory://", default_limits=[],
                      headers_enabled=False)
    from ivr.alerts import Health

    install = Health(cfg)      # refreshed by the alerts watcher that `ivr console` starts
    app.extensions["ivr"] = {"store": store, "cfg": cfg, "health": install}
    rec_dir = cfg.recordings_dir.resolve()
    from ivr.communes import load_communes

    communes = load_communes(cfg)
    views = {cid: _KnowledgeView(cfg, clock, c.corpus_dir) for cid, c in communes.items()}

    def shown() -> str:
        """The commune whose knowledge and facts the pages show: the account's own, or for an account
        of every commune the one it chose (the first by default)."""
        cid = g.get("commune") or session.get("commune_vue") or ""
        return cid if cid in communes else next(iter(communes))

    def corpus_dir():
        return communes[shown()].corpus_dir

    knowledge = _Forward(lambda: views[shown()])
    from ivr.console.commune import register_routes, setup_pending

    # --- access -------------------------------------------------------------------------------------
    def login_required(role: str | None = None):
        def deco(fn):
            @functools.wraps(fn)
            def wrapper(*a, **kw):
                user = session.get("user")
                if not user or not accounts.get(user):
                    session.clear()
                    return redirect(url_for("login", suite=request.full_path.rstrip("?") if request.method == "GET" else None))
                g.user = accounts.get(user)
                if role and g.user["role"] != role:
                    abort(403)
                g.commune = g.user.get("commune") or ""    # an account of one commune sees only its calls
                return fn(*a, **kw)
            return wrapper
        return deco

    admin_only = login_required("admin")
    anyone = login_required()

    def mine(row: dict) -> bool:
        """A call (or what it left) of the account's commune, or any for an account of every commune."""
        return not g.commune or (row.get("commune") or "") == g.commune

    def owned(sql: str, key) -> dict:
        """The one row `sql` finds (with its call's commune), else 404; another commune's: 403."""
        rows = list(store.db.query(sql, [key]))
        if not rows:
            abort(404)
        if not mine(rows[0]):
            abort(403)
        return rows[0]

    @app.template_filter("local")
    def local_time(iso: str | None, fmt: str = "%d/%m/%Y %H:%M") -> str:
        """Stored times are UTC; staff read the server's local time."""
        if not iso:
            return "—"
        try:
            return dt.datetime.fromisoformat(iso).astimezone().strftime(fmt)
        except ValueError:
            return iso

    @app.context_processor
    def inject():
        me = getattr(g, "user", None)
        return {"me": me, "ROLE_NAMES": ROLE_NAMES, "OUTCOMES": OUTCOMES, "ACTIONS": ACTIONS,
                "THEMES": THEMES, "commune": knowledge.commune_name(), "commune_id": shown(),
                "communes": [(cid, c.name) for cid, c in communes.items()] if len(communes) > 1 else [],
                "health_banner": _banner(install) if me and me["role"] == "admin" else None}

    @app.after_request
    def headers(resp):
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["Referrer-Policy"] = "same-origin"
        resp.headers["Content-Security-Policy"] = ("default-src 'self'; img-src 'self' data:; "
                                                   "style-src 'self'; script-src 'self'; media-src 'self'")
        if request.endpoint not in ("static",):
            resp.headers["Cache-Control"] = "no-store"
        if request.is_secure:               # HTTPS, directly or through a trusted proxy: keep to it
            resp.headers["Strict-Transport-Security"] = "max-age=31536000"
        return resp

    @app.errorhandler(CSRFError)
    def csrf_error(e):
        return render_template("error.html", title="Formulaire expiré",
                               message="Le formulaire a expiré ou ne vient pas de cette console. "
                                       "Rechargez la page et recommencez."), 400

    @app.errorhandler(403)
    def forbidden(e):
        return render_template("error.html", title="Accès refusé",
                               message="Cette page est réservée aux administrateurs."), 403

    @app.errorhandler(404)
    def not_found(e):
        return render_template("error.html", title="Page introuvable",
                               message="Cette page n'existe pas ou n'est plus disponible."), 404

    @app.errorhandler(500)
    def server_error(e):
        return render_template("error.html", title="Erreur du serveur",
                               message="Une erreur s'est produite ; elle est consignée dans le journal du "
                                       "serveur. Réessayez, ou prévenez l'administrateur."), 500

    @app.errorhandler(429)
    def too_many(e):
        return render_template("login.html", error="Trop de tentatives. Réessayez dans une minute.",
                               suite=""), 429

    # --- log-in -------------------------------------------------------------------------------------
    def login_key() -> str:
        return f"{get_remote_address()}|{request.form.get('nom', '').strip().lower()[:64]}"

    def failed(resp) -> bool:
        return resp.status_code != 302             # only failed attempts count

    @app.route("/connexion", methods=["GET", "POST"])
    @limiter.limit(ccfg["login_rate"], methods=["POST"], key_func=login_key, deduct_when=failed)   # per account
    @limiter.limit(ccfg["login_rate_address"], methods=["POST"], deduct_when=failed)                # per address
    def login():
        suite = request.values.get("suite") or ""
        if not suite.startswith("/") or suite.startswith("//") or "\\" in suite:    # no redirect off-site
            suite = ""
        if request.method == "POST":
            before = accounts.get(request.form.get("nom", "").strip()) or {}
            user = accounts.verify(request.form.get("nom", "").strip(), request.form.get("mot_de_passe", ""))
            if user:
                session.clear()
                session.permanent = True
                session["user"] = user["name"]
                # an admin's first log-in on a new install: the commune's set-up is offered on the home page
                home_dir = communes.get(before.get("commune") or "", next(iter(communes.values()))).corpus_dir
                if user["role"] == "admin" and not before.get("last_login") and setup_pending(home_dir, store):
                    session["guide_offer"] = True
                audit(store, user["name"], "connexion")
                return redirect(suite.rstrip("?") or url_for("home"))
            audit(store, request.form.get("nom", "")[:64], "connexion refusée", request.remote_addr or "")
            return render_template("login.html", error="Nom ou mot de passe incorrect.", suite=suite), 401
        return render_template("login.html", error=None, suite=suite)

    @app.post("/deconnexion")
    def logout():
        session.clear()
        return redirect(url_for("login"))

    @app.get("/")
    @anyone
    def home():
        if g.user["role"] == "admin" and session.pop("guide_offer", False):
            session["guide"] = 0
            flash("Bienvenue ! Commençons par les informations de la commune que l'assistant donne aux appelants.")
            return redirect(url_for("commune_identity"))
        return redirect(url_for("dashboard" if g.user["role"] == "admin" else "live"))

    # --- switchboard ------------------------------------------------------------------------------
    @app.get("/direct")
    @anyone
    def live():
        return render_template("live.html", calls=q.live())

    @app.get("/direct/flux")
    @anyone
    def live_stream():
        once = request.args.get("once") == "1"

        @stream_with_context
        def events():
            last = None
            yield "retry: 2000\n\n"
            end = time.monotonic() + 300          # the browser reconnects; a dead tab frees its thread
            while time.monotonic() < end:
                data = json.dumps(q.live(), ensure_ascii=False)
                if data != last:
                    last = data
                    yield f"event: appels\ndata: {data}\n\n"
                    if once:
                        return
                else:
                    yield ": attente\n\n"
                # at once when any worker writes (PostgreSQL: NOTIFY), else each second (the durations)
                store.wait_change(1.0)

        return Response(events(), mimetype="text/event-stream",
                         headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/appels/<call_id>")
    @anyone
    def call_page(call_id):
        if not CALL_ID.match(call_id):
            abort(404)
        c = q.call(call_id)
        if not c:
            abort(404)
        if not mine(c):
            abort(403)
        admin = g.user["role"] == "admin"
        if not admin and not (c["status"] == "active" or c["outcome"] in ("transferred", "message")):
            abort(403)                # agents see the calls that reach them, not the whole history
        audit(store, g.user["name"], "consultation d'appel", call_id)
        c["caller_shown"] = caller_number(c["caller"]) if admin else mask_number(c["caller"])
        has_audio = admin and bool(c["recording"]) and _inside(rec_dir, c["recording"])
        return render_template("call.html", call=c, has_audio=has_audio)

    @app.get("/appels/<call_id>/enregistrement")
    @admin_only
    def recording(call_id):
        if not CALL_ID.match(call_id):
            abort(404)
        c = store.call(call_id)
        if not c or not c["recording"] or not _inside(rec_dir, c["recording"]):
            abort(404)
        if not mine(c):
            abort(403)
        path = Path(c["recording"]).resolve()
        if not path.is_file():
            abort(404)
        if request.headers.get("Range", "bytes=0-").startswith("bytes=0-"):
            audit(store, g.user["name"], "écoute d'enregistrement", call_id)
        return send_file(path, mimetype="audio/wav", conditional=True, max_age=0)

    @app.get("/rappels")
    @anyone
    def callbacks():
        rows = q.callbacks(done=request.args.get("faits") == "1")
        services = knowledge.services()
        for r in rows:
            r["caller_shown"] = mask_number(r["caller"]) if g.user["role"] != "admin" else caller_number(r["caller"])
            r["service_name"] = (services.get(r.get("service") or "") or {}).get("nom")
        return render_template("callbacks.html", rows=rows, done=request.args.get("faits") == "1")

    @app.post("/rappels/<int:cb_id>/fait")
    @anyone
    def callback_done(cb_id):
        owned("select c.commune from callbacks cb left join calls c on c.id = cb.call_id where cb.id = ?", cb_id)
        with store._lock:
            store.db["callbacks"].update(cb_id, {"done_at": now_iso(), "done_by": g.user["name"],
                                                 "status": "traité"})
        audit(store, g.user["name"], "rappel traité", str(cb_id))
        flash("Rappel marqué comme traité.")
        return redirect(url_for("callbacks"))

    # --- admin: calls -----------------------------------------------------------------------------
    @app.get("/appels")
    @admin_only
    def calls():
        f = {k: request.args.get(k, "").strip() for k in ("du", "au", "issue", "theme", "texte", "non_entendu")}
        for k in ("du", "au"):
            if f[k] and not re.match(r"^\d{4}-\d{2}-\d{2}$", f[k]):
                f[k] = ""
        page = max(1, request.args.get("page", 1, type=int) or 1)
        rows, total = q.calls(f["du"], f["au"], f["issue"], f["theme"], f["texte"], page, unheard=f["non_entendu"] == "1")
        pages = max(1, -(-total // 25))
        return render_template("calls.html", rows=rows, total=total, page=page, pages=pages, f=f)

    # --- admin: reports -----------------------------------------------------------------------------
    @app.get("/signalements")
    @admin_only
    def reports():
        status = request.args.get("statut", "")
        return render_template("reports.html", rows=q.reports(status if status in REPORT_STATUSES else ""),
                               statuses=REPORT_STATUSES, status=status,
                               webhook=bool(ccfg["webhook_url"]), deliveries=_deliveries(store))

    @app.post("/signalements/<int:report_id>/statut")
    @admin_only
    def report_status(report_id):
        status = request.form.get("statut", "")
        if status not in REPORT_STATUSES:
            abort(400)
        rows = [owned("select r.*, c.commune from reports r left join calls c on c.id = r.call_id where r.id = ?",
                      report_id)]
        rows[0].pop("commune")
        with store._lock:
            store.db["reports"].update(report_id, {"status": status, "updated_at": now_iso(),
                                                   "updated_by": g.user["name"]})
        audit(store, g.user["name"], "signalement " + status, rows[0]["ticket"])
        if status == "transmis" and ccfg["webhook_url"]:
            report = dict(rows[0], status=status)
            threading.Thread(target=deliver, args=(store, ccfg, report), daemon=True).start()
        flash(f"Signalement {rows[0]['ticket']} : {status}.")
        return redirect(url_for("reports", statut=request.args.get("statut", "")))

    @app.get("/signalements.csv")
    @admin_only
    def reports_csv():
        buf = io.StringIO()
        w = csv.writer(buf, delimiter=";")
        w.writerow(["ticket", "date", "catégorie", "lieu", "description", "rappel", "statut", "appel"])
        for r in q.reports():
            w.writerow([_cell(v) for v in (r["ticket"], r["created_at"], r["category"], r["place"],
                                           r["description"], r["callback"] or "", r["status"], r["call_id"] or "")])
        audit(store, g.user["name"], "export CSV des signalements")
        name = f"signalements-{clock().date().isoformat()}.csv"
        return Response("\ufeff" + buf.getvalue(), mimetype="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f"attachment; filename={name}"})

    # --- admin: questions to learn from ------------------------------------------------------------
    @app.get("/questions")
    @admin_only
    def questions():
        since = request.args.get("depuis", "")
        if since and not re.match(r"^\d{4}-\d{2}-\d{2}$", since):
            since = ""
        items = q.weak_questions(since)
        groups = knowledge.group(items)
        return render_template("questions.html", groups=groups, total=len(items), since=since)

    # --- admin: knowledge ---------------------------------------------------------------------------
    @app.get("/connaissances")
    @admin_only
    def knowledge_list():
        trial = None
        question = request.args.get("question", "").strip()[:300]
        if question:
            trial = knowledge.try_question(question)
        return render_template("knowledge.html", themes=knowledge.by_theme(), question=question, trial=trial,
                               error=knowledge.error())

    @app.route("/connaissances/<entry_id>", methods=["GET", "POST"])
    @admin_only
    def knowledge_edit(entry_id):
        from ivr.console.knowledge import find_entry, save_entry

        if not re.match(r"^[a-z_]+\.[a-z0-9_]+$", entry_id):
            abort(404)
        found = find_entry(corpus_dir(), entry_id)
        if not found:
            abort(404)
        entry, problems = found[1], []
        if request.method == "POST":
            questions = request.form.get("questions", "").splitlines()
            answer = request.form.get("reponse", "")
            problems = save_entry(corpus_dir(), entry_id, questions, answer, clock().date().isoformat())
            if not problems:
                audit(store, g.user["name"], "modification de fiche", entry_id)
                knowledge.invalidate()
                flash("Fiche enregistrée. L'assistant l'utilisera dans moins d'une minute.")
                return redirect(url_for("knowledge_edit", entry_id=entry_id))
            entry = dict(entry, questions=[x for x in questions if x.strip()], answer=answer)
        return render_template("entry.html", entry=entry, problems=problems), (422 if problems else 200)

    # --- admin: dashboard -------------------------------------------------------------------------
    @app.get("/tableau-de-bord")
    @admin_only
    def dashboard():
        from ivr.console.charts import charts

        today = clock().date()
        until = _date_arg("au", today)
        since = _date_arg("du", until - dt.timedelta(days=29))
        if since > until:
            since, until = until, since
        fig = q.figures(since.isoformat(), until.isoformat())
        return render_template("dashboard.html", fig=fig, charts=charts(fig, THEMES))

    # --- admin: privacy and audit ------------------------------------------------------------------
    @app.route("/appelants", methods=["GET", "POST"])
    @admin_only
    def callers():
        from ivr.console.privacy import delete_caller, export_caller

        number = re.sub(r"[^\d+]", "", request.form.get("numero", ""))
        if request.method == "POST":
            if len(number) < 4:
                flash("Indiquez un numéro de téléphone complet.")
                return redirect(url_for("callers"))
            if request.form.get("action") == "exporter":
                data = export_caller(store, number, g.commune)
                audit(store, g.user["name"], "export des données d'un appelant", hash_tail(number),
                      calls=len(data["calls"]))
                return Response(json.dumps(data, ensure_ascii=False, indent=1), mimetype="application/json",
                                headers={"Content-Disposition": "attachment; filename=appelant.json"})
            if request.form.get("action") == "supprimer" and request.form.get("confirmer") == "oui":
                n = delete_caller(store, number, g.commune)
                audit(store, g.user["name"], "suppression des données d'un appelant", hash_tail(number), **n)
                flash(f"Supprimé : {n['calls']} appel(s), {n['reports']} signalement(s), {n['callbacks']} rappel(s).")
                return redirect(url_for("callers"))
            flash("Cochez la confirmation pour supprimer.")
        return render_template("callers.html", retention=int(cfg["call"]["retention_days"]))

    @app.get("/journal")
    @admin_only
    def audit_log():
        page = max(1, request.args.get("page", 1, type=int) or 1)
        # an account of one commune: what that commune's accounts did
        scope = 'where "user" in (select name from users where commune = ?) ' if g.commune else ""
        rows = list(store.db.query(f"select * from audit {scope}order by id desc limit 100 offset ?",
                                   ([g.commune] if g.commune else []) + [(page - 1) * 100]))
        return render_template("audit.html", rows=rows, page=page)

    # --- admin: the commune's facts (ivr/console/commune.py) -----------------------------------------
    register_routes(app, cfg, store, admin_only, clock, on_saved=lambda: knowledge.invalidate(), corpus_dir=corpus_dir)

    @app.post("/commune-affichee")
    @anyone
    def choose_commune():
        """An account of every commune picks the one whose knowledge and facts it edits."""
        cid = request.form.get("commune", "")
        if cid in communes and not g.commune:
            session["commune_vue"] = cid
        target = request.form.get("suite") or ""
        return redirect(target if target.startswith("/") and not target.startswith("//") else url_for("home"))

    @app.get("/sante")
    def health():
        return jsonify({"ok": True})

    @app.get("/sante/installation")
    def install_health():
        """The whole install (assistant, Asterisk, trunk, disk): states only, no address nor caller."""
        state = install.public()
        return jsonify(state), (200 if state["ok"] else 503)

    def _date_arg(name: str, default: dt.date) -> dt.date:
        try:
            return dt.date.fromisoformat(request.args.get(name, ""))
        except ValueError:
            return default

    return app


def _banner(health) -> dict | None:
    try:
        return health.banner()
    except Exception:              # the banner must never cost a page
        log.exception("health banner failed")
        return None


class _Forward:
    """Forwards to what `get()` returns for the request at hand."""

    def __init__(self, get):
        self._get = get

    def __getattr__(self, name):
        return getattr(self._get(), name)


class _Scoped:
    """The console's queries, limited to the signed-in account's commune (ivr/console/queries.py)."""

    def __init__(self, store):
        self.store = store

    def __getattr__(self, name):
        return getattr(Queries(self.store, g.get("commune", "")), name)


class _PerThread:
    """A Store per server thread: one SQLite connection must not serve two requests at once."""

    def __init__(self, factory):
        self._factory, self._local = factory, threading.local()

    def __getattr__(self, name):
        obj = getattr(self._local, "obj", None)
        if obj is None:
            obj = self._local.obj = self._factory()
        return getattr(obj, name)


def hash_tail(number: str) -> str:
    from ivr.console.queries import hash_number

    return "appelant " + hash_number(f"sip:{number}@")


def _cell(value) -> str:
    """A CSV cell a spreadsheet will not run: what a caller said may start with = + - or @."""
    text = str(value if value is not None else "")
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def _inside(folder: Path, path: str) -> bool:
    """The recording path is a file under the recordings folder (no '..', no link out of it)."""
    try:
        return Path(path).resolve().is_relative_to(folder)
    except (OSError, ValueError):
        return False


def _deliveries(store: Store) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for d in store.db.query("select * from deliveries order by id"):
        out[d["report_id"]] = d
    return out


def deliver(store: Store, ccfg: dict, report: dict, delays=(0, 2, 10)) -> bool:
    """POST the report as JSON to the commune's ticketing tool; retried, each attempt logged."""
    import urllib.error
    import urllib.request

    body = json.dumps({k: report.get(k) for k in ("ticket", "created_at", "category", "place", "description",
                                                   "callback", "status", "call_id")}, ensure_ascii=False).encode()
    for attempt, delay in enumerate(delays, 1):
        time.sleep(delay)
        ok, status, detail = False, "", ""
        try:
            req = urllib.request.Request(ccfg["webhook_url"], data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=float(ccfg["webhook_timeout_s"])) as resp:
                status = str(resp.status)
                ok = 200 <= resp.status < 300
        except urllib.error.HTTPError as exc:
            status, detail = str(exc.code), str(exc.reason)[:200]
        except (urllib.error.URLError, OSError) as exc:
            status, detail = "erreur", str(exc)[:200]
        with store._lock:
            store.db["deliveries"].insert({"report_id": report["id"], "at": now_iso(), "attempt": attempt,
                                           "ok": int(ok), "status": status, "detail": detail})
        log.info("webhook %s attempt %d: %s %s", report["ticket"], attempt, status, detail)
        if ok:
            return True
    return False


class _KnowledgeView:
    """The corpus (cheap: reloaded when its files change), the search index (built or loaded only for
    "try a question", as `ivr serve` would) and the embedder (for grouping questions), in the console
    process. An edit that needs a new index does not block the other pages while it builds."""

    def __init__(self, cfg, clock, corpus_dir):
        self.cfg, self.clock, self.corpus_dir = cfg, clock, corpus_dir
        self._lock = threading.Lock()
        self._corpus = self._corpus_key = None
        self._pair = self._pair_key = None
        self._embedder = None
        self._error = None

    def corpus(self):
        from dialogue.corpus import CorpusError, fingerprint, load_corpus

        key = fingerprint(self.corpus_dir)
        with self._lock:
            if self._corpus is None or key != self._corpus_key:
                try:
                    self._corpus, self._corpus_key = load_corpus(self.corpus_dir, self.clock().date()), key
                    self._error = None
                except CorpusError as exc:
                    self._error = str(exc)
                    if self._corpus is None:
                        raise
            return self._corpus

    def _index(self):
        from dialogue.corpus import fingerprint

        from ivr.app import build_dialogue

        key = fingerprint(self.corpus_dir)
        with self._lock:
            if self._pair is None or key != self._pair_key:
                self._pair, self._pair_key = build_dialogue(self.cfg, self.clock().date(), corpus_dir=self.corpus_dir), key
            return self._pair

    def embedder(self):
        from dialogue.search import make_embedder

        with self._lock:
            if self._embedder is None:
                self._embedder = make_embedder(self.cfg["dialogue"]["embedding"])
            return self._embedder

    def invalidate(self):
        with self._lock:
            self._corpus_key = None

    def error(self):
        return self._error

    def services(self) -> dict:
        try:
            return self.corpus().commune.data.get("services", {})
        except Exception:
            return {}

    def commune_name(self) -> str:
        try:
            return self.corpus().commune.name
        except Exception:
            return ""

    def by_theme(self):
        from dialogue.corpus import EXTRA_THEMES, THEMES

        out: dict[str, list] = {}
        for e in self.corpus().entries:
            out.setdefault(e.theme, []).append(e)
        names = dict(THEMES, **EXTRA_THEMES)
        return [(t, names.get(t, t), out[t]) for t in sorted(out, key=lambda t: names.get(t, t))]

    def try_question(self, text: str) -> dict:
        from dialogue.conversation import Conversation

        corpus, index = self._index()
        conv = Conversation(corpus, index, self.cfg["dialogue"], clock=self.clock)
        reply = conv.on_text(text)
        res = index.search(text)
        return {"action": reply.action, "text": reply.text, "entry_id": reply.entry_id,
                "confidence": reply.confidence,
                "candidates": [(c.entry.id, c.entry.label, round(c.score, 3)) for c in res.candidates[:3]]}

    def group(self, items: list[dict]) -> list[dict]:
        from dialogue.insights import group_questions

        return group_questions(items, self.embedder()) if items else []
