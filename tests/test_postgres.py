"""PostgreSQL as the shared store (Debian's postgresql-15, a cluster made by the test, password
authentication): the same records, queries and console figures as SQLite; migrations once when
workers start together, a database of the previous schema migrated; the live board woken by a
write from another process (LISTEN/NOTIFY); two real `ivr serve` workers behind Asterisk writing
to it, with one shared recordings folder, and the console showing every call."""
from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests.conftest import ROOT, make_cfg

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the test cluster runs as the postgres user")
_dbs = itertools.count()


@pytest.fixture(scope="module")
def pg():
    from tests.pglab import PgServer

    with PgServer() as server:
        yield server


def fresh_db(pg) -> str:
    """A new empty database on the test server; its URL."""
    name = f"t{next(_dbs)}"
    pg.sql(f"create database {name} owner ivr")
    return pg.url.rsplit("/", 1)[0] + f"/{name}"


def pg_store(pg):
    return pg_store_at(fresh_db(pg), pg)


def pg_store_at(url, pg):
    from ivr.store import Store

    return Store(url=url, password=pg.password)


def scenario(store, rec_dir) -> dict:
    """Calls, turns, events, reports, callbacks, accounts and audit lines written through the store
    and the console's helpers; then everything the console reads back, without ids and times."""
    from ivr.console.accounts import Accounts, audit
    from ivr.console.privacy import delete_caller, export_caller
    from ivr.console.queries import Queries
    from ivr.store import now_iso

    ids = []
    for i, (commune, caller, outcome, text) in enumerate([
            ("montclair", "<sip:0612345678@x>", "answered", "Quels sont les HORAIRES de la mairie ?"),
            ("montclair", "<sip:0698765432@x>", "transferred", "Je voudrais parler à 100 % à quelqu'un"),
            ("valbois", "<sip:0612345678@x>", "answered", "Le ramassage des déchets verts"),
            ("valbois", "<sip:0700000000@x>", None, "Euh, bonjour")]):
        cid = store.start_call("sip", caller, commune=commune)
        ids.append(cid)
        store.add_turn(cid, "assistant", "Bonjour", kind="prompt", action="greeting")
        store.add_turn(cid, "caller", text, t_start=1.0, t_end=2.5, confidence=0.8)
        store.add_turn(cid, "assistant", "Réponse", theme="horaires" if i % 2 == 0 else "dechets",
                       action="answer" if i != 1 else "transfer", confidence=0.3 if i == 2 else 0.9,
                       latency_ms={"asr": 200, "tts_first": 150, "endpoint": 300})
        store.add_event(cid, "transfer" if i == 1 else "reply", 2.6, summary="demande à parler à un agent | x")
        rec = rec_dir / f"{cid}.wav"
        rec.write_bytes(b"RIFF")
        if outcome:
            store.end_call(cid, outcome, "hangup", 30.0 + i, summary="demande à parler à un agent" if i == 1 else "",
                           recording=str(rec))
    store.set_satisfaction(ids[0], 1)
    ticket = store.add_report(ids[0], "voirie", "rue des Lilas", "un trou", callback="0612345678")
    store.add_callback(ids[1], "rappeler pour l'état civil", "0698765432", service="etat_civil")
    accounts = Accounts(store)
    accounts.add("agent-m", "agent", "mot-de-passe-long", commune="montclair")
    accounts.add("admin2", "admin", "mot-de-passe-long")
    verified = accounts.verify("agent-m", "mot-de-passe-long")
    audit(store, "agent-m", "consultation d'appel", ids[0], note="é")
    store.db["users"].update("admin2", {"role": "agent"})
    # an old call, past the retention of its commune only
    store.db.execute("update calls set started_at = ? where id = ?", ["2020-01-01T10:00:00.000+00:00", ids[3]])
    today = now_iso()[:10]
    out = {"ticket": ticket[:8], "verified": verified, "accounts": [dict(a, created_at=None, last_login=None)
                                                                      for a in accounts.list()]}
    for commune in ("", "montclair"):
        q = Queries(store, commune)
        rows, total = q.calls(text="horaires")
        out[f"search {commune}"] = (total, [r["theme"] for r in rows])
        rows, total = q.calls(since="2026-01-01", until=today, outcome="answered")
        out[f"answered {commune}"] = (total, sorted(r["n_turns"] for r in rows))
        out[f"live {commune}"] = [(c["state"], c["summary"]) for c in q.live()]
        out[f"reports {commune}"] = [(r["category"], r["status"]) for r in q.reports()]
        out[f"callbacks {commune}"] = [(r["message"], r["caller"]) for r in q.callbacks()]
        f = q.figures("2026-12-01", today)
        out[f"figures {commune}"] = {k: f[k] for k in ("calls", "answered", "handled", "reasons", "themes",
                                                       "satisfaction", "latency_p50_ms", "latency_turns")}
        out[f"weak {commune}"] = sorted((w["text"], w["why"]) for w in q.weak_questions())
    exported = export_caller(store, "06 12 34 56 78", "valbois")
    out["export"] = ([len(c["turns"]) for c in exported["calls"]], len(exported["reports"]), len(exported["callbacks"]))
    out["purge"] = store.purge(365, {"valbois": 30})["calls_deleted"]
    out["delete"] = delete_caller(store, "0612345678")
    out["left"] = sorted(r["caller"] for r in store.db.query("select caller from calls"))
    out["recordings left"] = len(list(rec_dir.iterdir()))
    return out


def test_postgresql_gives_the_same_records_and_figures_as_sqlite(pg, tmp_path):
    from ivr.store import Store

    results = []
    for name, store in (("sqlite", Store(tmp_path / "ivr.db")), ("postgresql", pg_store(pg))):
        rec = tmp_path / f"rec-{name}"
        rec.mkdir()
        results.append(scenario(store, rec))
    sqlite, postgres = results
    assert postgres == sqlite
    # and the scenario says something: scoped, searched case-blind, purged per commune, erased
    assert sqlite["search "][0] == 1 and sqlite["search montclair"][0] == 1
    assert sqlite["figures "]["calls"] == 3 and sqlite["figures montclair"]["calls"] == 2
    assert sqlite["purge"] == 1 and sqlite["delete"] == {"calls": 2, "reports": 1, "callbacks": 0}
    assert sqlite["left"] == ["<sip:0698765432@x>"]


def test_workers_starting_together_migrate_once_and_an_older_schema_is_migrated(pg, monkeypatch):
    import ivr.store
    from ivr.store import MIGRATIONS, Store

    url = fresh_db(pg)
    errors, stores = [], []

    def start():
        try:
            stores.append(Store(url=url, password=pg.password))
        except Exception as exc:        # noqa: BLE001 (what a racing migration would raise)
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(stores) == 4, errors
    names = [r["name"] for r in stores[0].db.query("select name from migrations order by name")]
    assert names == sorted(n for n, _ in MIGRATIONS)

    # a database made before the communes and the workers: its calls are kept, the columns added
    old = fresh_db(pg)
    monkeypatch.setattr(ivr.store, "MIGRATIONS", MIGRATIONS[:7])
    s = Store(url=old, password=pg.password)
    s.db["calls"].insert({"id": "ancien", "started_at": "2026-11-01T10:00:00.000+00:00", "transport": "sip",
                          "status": "ended", "outcome": "answered"})
    assert "commune" not in {r["column_name"] for r in s.db.query(
        "select column_name from information_schema.columns where table_name = 'calls'")}
    monkeypatch.setattr(ivr.store, "MIGRATIONS", MIGRATIONS)
    s = Store(url=old, password=pg.password)
    call = s.call("ancien")
    assert call["commune"] == "" and call["worker"] == "" and call["outcome"] == "answered", call


def test_the_live_board_is_woken_by_another_machine(pg):
    """The console waits on the store; a worker in another process starts a call: the console hears
    it at once (NOTIFY), not at its next poll, and its live board shows it."""
    from ivr.console.queries import Queries
    from ivr.store import Store

    url = fresh_db(pg)
    console = Store(url=url, password=pg.password)
    assert console.wait_change(0.3) is False
    worker = (f"import time; from ivr.store import Store; s = Store(url={url!r}, password={pg.password!r}); "
              "time.sleep(1.0); c = s.start_call('sip', '<sip:0611223344@x>'); "
              "s.add_turn(c, 'caller', 'Je voudrais une carte d identite')")
    proc = subprocess.Popen([sys.executable, "-c", worker], cwd=ROOT)
    try:
        start = time.monotonic()
        assert console.wait_change(20) is True
        woke = time.monotonic() - start
    finally:
        proc.wait(30)
    assert woke < 10, woke
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        live = Queries(console).live()
        if live and "carte" in live[0]["summary"]:
            break
        console.wait_change(1)
    assert live and live[0]["state"] == "avec l'assistant" and "carte" in live[0]["summary"], live


def test_a_wrong_password_or_a_dead_server_is_a_clear_error(pg, tmp_path):
    from ivr.postgres import StoreError
    from ivr.store import Store

    with pytest.raises(StoreError, match="injoignable.*password authentication failed"):
        Store(url=pg.url, password="pas-le-bon")
    with pytest.raises(StoreError, match="injoignable"):
        Store(url="postgresql://ivr@127.0.0.1:1/ivr", password="x")
    # and the command line says it in one line, no traceback
    settings = tmp_path / "ivr.toml"
    (tmp_path / "pw").write_text("pas-le-bon\n")
    settings.write_text(f'[store]\nurl = "{pg.url}"\npassword_file = "{tmp_path / "pw"}"\n')
    out = subprocess.run([sys.executable, "-m", "ivr.cli", "calls", "list"], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, IVR_CONFIG=str(settings), IVR_DATA=str(tmp_path)))
    assert out.returncode != 0 and "injoignable" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_two_workers_record_every_call_once_in_postgresql_and_the_console_shows_them(pg, pbx, tmp_path_factory):
    """Two `ivr serve` of one call each, behind the bundled Asterisk, on one PostgreSQL database and
    one recordings folder: three callers at once, two answered (one by each), one declined by both
    and sent to the desk: three records, once each; the console lists the three and plays both
    recordings."""
    from ivr.console.web import create_app
    from tests.sipcall import RATE, Assistant, Desk, place_call
    from tests.test_workers import avail

    url = fresh_db(pg)
    shared = tmp_path_factory.mktemp("shared")
    (shared / "pg_password").write_text(pg.password + "\n")
    rec = shared / "recordings"
    env = {"IVR_STORE__URL": url, "IVR_STORE__PASSWORD_FILE": str(shared / "pg_password"),
           "IVR_PATHS__RECORDINGS": str(rec), "IVR_SIP__MAX_CALLS": "1"}
    ws = []
    try:
        for port in (5093, 5094):
            ws.append(Assistant(tmp_path_factory.mktemp(f"pgworker{port}"), pbx,
                                env=dict(env, IVR_SIP__PORT=str(port))).start())
        deadline = time.monotonic() + 60
        while avail(pbx) != 2 and time.monotonic() < deadline:
            time.sleep(1)
        assert avail(pbx) == 2, pbx.cli("pjsip show contacts")
        silence = np.zeros(10 * RATE, np.int16)
        results = []
        with Desk() as desk:
            callers = [threading.Thread(target=lambda: results.append(place_call(silence, hangup_after=8)))
                       for _ in range(3)]
            for c in callers:
                c.start()
                time.sleep(0.3)
            for c in callers:
                c.join(60)
            time.sleep(1)
            assert all(r.answered for r in results) and desk.calls_received() == 1, desk.calls_received()
        from ivr.store import Store

        store = Store(url=url, password=pg.password)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and store.db.execute(
                "select count(*) from calls where status = 'active'").fetchone()[0]:
            time.sleep(0.5)
        rows = list(store.db.query("select id, outcome, end_reason, worker, recording from calls order by started_at"))
        assert len(rows) == 3 and len({r["id"] for r in rows}) == 3, rows
        assert sorted(r["outcome"] for r in rows).count("declined") == 1, rows
        answered = [r for r in rows if r["outcome"] != "declined"]
        assert sorted(r["worker"].rsplit(":", 1)[1] for r in answered) == ["5093", "5094"], rows
        assert all(r["recording"] and r["recording"].startswith(str(rec)) for r in answered), rows

        # the console, on another data folder, reads the same database and recordings
        cfg = make_cfg(tmp_path_factory.mktemp("console"), IVR_STORE__URL=url,
                       IVR_STORE__PASSWORD_FILE=shared / "pg_password", IVR_PATHS__RECORDINGS=rec)
        app = create_app(cfg)
        from ivr.console.accounts import Accounts

        Accounts(app.extensions["ivr"]["store"]).add("chef", "admin", "mot-de-passe-long")
        app.config["SESSION_COOKIE_SECURE"] = False           # the test client speaks plain http
        client = app.test_client()
        token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/connexion").text).group(1)
        assert client.post("/connexion", data={"nom": "chef", "mot_de_passe": "mot-de-passe-long",
                                               "csrf_token": token}).status_code == 302
        page = client.get("/appels").get_data(as_text=True)
        assert all(r["id"] in page for r in rows), page[:2000]
        for r in answered:
            audio = client.get(f"/appels/{r['id']}/enregistrement")
            assert audio.status_code == 200 and audio.data[:4] == b"RIFF", audio.status_code
    finally:
        for w in ws:
            w.stop()


def test_doctor_checks_the_shared_database(pg, tmp_path):
    from ivr.doctor import FAIL, OK, check_database

    pw = tmp_path / "pw"
    pw.write_text(pg.password + "\n")
    url = fresh_db(pg)
    cfg = make_cfg(tmp_path, IVR_STORE__URL=url, IVR_STORE__PASSWORD_FILE=pw)
    r = check_database(cfg)
    assert r.status == FAIL and "vide" in r.detail, r
    pg_store_at(url, pg)
    r = check_database(cfg)
    assert r.status == OK and "schéma à jour" in r.detail, r
    pw.write_text("pas-le-bon\n")
    r = check_database(cfg)
    assert r.status == FAIL and "password authentication failed" in r.detail and r.fix, r
