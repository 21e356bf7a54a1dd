"""Call records in SQLite (sqlite-utils, WAL): calls, turns, events, reports, callbacks.

The schema is created and migrated by code: each migration runs once, in order, recorded in
`migrations`. Written by the call session as things happen; read by the CLI and the console.
"""
from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import sqlite_utils

log = logging.getLogger(__name__)


def _db_errors() -> tuple:
    try:
        import psycopg

        return (sqlite3.Error, psycopg.Error)
    except ImportError:
        return (sqlite3.Error,)


DB_ERRORS = _db_errors()        # what a failed read or write raises, on either backend

# Writes lost since the process started (a full disk, a database that cannot be written): counted
# here and logged as "ERROR ... disk full ...: <what> not saved", what alert watchers look for.
WRITE_FAILURES = {"count": 0, "last": ""}
_failures_lock = threading.Lock()
_logged: dict[str, list] = {}           # kind -> [monotonic time of its last line, failures not logged since]


def storage_failed(what: str, exc: BaseException, kind: str = "") -> None:
    """Something a call wanted kept could not be written: counted, and logged (one line per kind of
    write per 5 s at most, saying how many of that kind were not logged since the previous one)."""
    with _failures_lock:
        WRITE_FAILURES["count"] += 1
        WRITE_FAILURES["last"] = f"{what}: {exc}"
        seen = _logged.setdefault(kind or what, [-1e9, 0])
        now = time.monotonic()
        if now - seen[0] < 5.0:
            seen[1] += 1
            return
        more, seen[0], seen[1] = seen[1], now, 0
    log.error("disk full or database not writable: %s not saved (%s)%s; %d write(s) lost since start", what, exc,
              f", and {more} more of the kind since the previous message" if more else "", WRITE_FAILURES["count"])


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _m1(db: sqlite_utils.Database) -> None:
    db["calls"].create({
        "id": str, "started_at": str, "ended_at": str, "transport": str, "caller": str,
        "status": str,            # active | ended
        "outcome": str,           # answered | transferred | message | abandoned | error
        "end_reason": str, "summary": str, "satisfaction": int, "recording": str,
        "duration_s": float,
    }, pk="id")
    db["turns"].create({
        "id": int, "call_id": str, "seq": int, "speaker": str,   # caller | assistant
        "kind": str,              # speech | dtmf | prompt
        "text": str, "t_start": float, "t_end": float, "confidence": float,
        "action": str, "theme": str, "entry_id": str, "latency_ms": str, "created_at": str,
    }, pk="id", foreign_keys=[("call_id", "calls", "id")])
    db["events"].create({
        "id": int, "call_id": str, "t": float, "type": str, "data": str, "created_at": str,
    }, pk="id", foreign_keys=[("call_id", "calls", "id")])
    db["turns"].create_index(["call_id", "seq"])
    db["events"].create_index(["call_id"])


def _m2(db: sqlite_utils.Database) -> None:
    db["reports"].create({
        "id": int, "ticket": str, "call_id": str, "category": str, "place": str,
        "description": str, "callback": str, "status": str, "created_at": str,
    }, pk="id")
    db["reports"].create_index(["ticket"], unique=True)
    db["callbacks"].create({
        "id": int, "call_id": str, "message": str, "phone": str, "status": str, "created_at": str,
    }, pk="id")


def _m3(db: sqlite_utils.Database) -> None:
    """The console: accounts, the audit log, report and callback follow-up, webhook deliveries."""
    db["users"].create({"name": str, "role": str, "pw_hash": str, "created_at": str, "last_login": str},
                       pk="name")
    db["audit"].create({"id": int, "at": str, "user": str, "action": str, "target": str, "detail": str},
                       pk="id")
    db["reports"].add_column("updated_at", str)
    db["reports"].add_column("updated_by", str)
    db["callbacks"].add_column("done_at", str)
    db["callbacks"].add_column("done_by", str)
    db["deliveries"].create({"id": int, "report_id": int, "at": str, "attempt": int, "ok": int,
                             "status": str, "detail": str}, pk="id")
    db["calls"].create_index(["started_at"])
    db["turns"].create_index(["entry_id"])


def _m4(db: sqlite_utils.Database) -> None:
    db["callbacks"].add_column("service", str)        # the service a message is for (commune.yaml key)


def _m5(db: sqlite_utils.Database) -> None:
    # caller speech the call's VAD did not hear (s), and calls where it heard none of it
    db["calls"].add_column("unheard_speech_s", float)
    db["calls"].add_column("deaf", int)


def _m6(db: sqlite_utils.Database) -> None:
    db["calls"].add_column("returned_from", str)      # the call whose transfer failed and came back


def _m_alerts(db: sqlite_utils.Database) -> None:
    # every alert message, one row per channel and attempt, sent or not (ivr/alerts.py)
    db["alerts"].create({"id": int, "at": str, "kind": str, "state": str, "subject": str, "message": str,
                         "channel": str, "target": str, "ok": int, "detail": str}, pk="id")
    db["alerts"].create_index(["kind", "at"])


def _m_communes(db: sqlite_utils.Database) -> None:
    # several communes on one install: the commune a call was for, the one a console account sees
    # ("": the only commune, or every commune for an account)
    db["calls"].add_column("commune", str, not_null_default="")
    db["users"].add_column("commune", str, not_null_default="")
    db["calls"].create_index(["commune", "started_at"])


def _m_postgresql(db) -> None:
    # PostgreSQL only: SQLite's date(x, 'localtime') and the triggers that feed every console's live board
    if not isinstance(db, sqlite_utils.Database):
        from ivr.postgres import setup_functions

        setup_functions(db)


def _m_workers(db) -> None:
    # the worker (`ivr serve`) that took a call: at its restart it closes its own interrupted calls only
    db["calls"].add_column("worker", str, not_null_default="")


MIGRATIONS = [("001_calls_turns_events", _m1), ("002_reports_callbacks", _m2), ("003_console", _m3),
              ("004_callback_service", _m4), ("005_unheard_speech", _m5), ("006_returned_calls", _m6),
              ("007_alerts", _m_alerts), ("008_communes", _m_communes), ("009_postgresql", _m_postgresql),
              ("010_workers", _m_workers)]


class Store:
    """The records, in SQLite (`path`, the default) or in PostgreSQL (`url`, shared by several
    workers and consoles)."""

    def __init__(self, path: str | Path | None = None, *, url: str = "", password: str | None = None):
        self._lock = threading.RLock()
        self.url = url
        self.worker = ""        # this process's name among the workers sharing the records (ivr serve sets it)
        if url:
            from ivr.postgres import PgDatabase

            self.path = None
            self.db = PgDatabase(url, password)
        else:
            self.path = Path(path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # one connection shared by the call threads, serialised by self._lock
            self.db = sqlite_utils.Database(sqlite3.connect(str(self.path), check_same_thread=False))
            self.db.execute("PRAGMA busy_timeout = 5000")
            self.db.enable_wal()
        self.migrate()

    @property
    def shared(self) -> bool:
        """True on PostgreSQL: other machines write here too."""
        return bool(self.url)

    def migrate(self) -> None:
        with self._lock, (self.db.migration_lock() if self.shared else contextlib.nullcontext()):
            if "migrations" not in self.db.table_names():
                self.db["migrations"].create({"name": str, "applied_at": str}, pk="name")
            done = {r["name"] for r in self.db["migrations"].rows}
            for name, fn in MIGRATIONS:
                if name not in done:
                    with self.db.conn:
                        fn(self.db)
                        self.db["migrations"].insert({"name": name, "applied_at": now_iso()})

    def wait_change(self, timeout: float) -> bool:
        """Block until the records change (written by any process, or any machine on PostgreSQL) or
        `timeout` s pass; True if they changed."""
        if self.shared:
            return self.db.wait_change(timeout)
        version = lambda: self.db.execute("pragma data_version").fetchone()[0]  # noqa: E731
        start, end = version(), time.monotonic() + timeout
        while time.monotonic() < end:
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))
            if version() != start:
                return True
        return False

    def close(self) -> None:
        self.db.conn.close()

    # --- calls ------------------------------------------------------------------------------------
    def start_call(self, transport: str, caller: str = "", call_id: str | None = None,
                   returned_from: str | None = None, commune: str = "") -> str:
        call_id = call_id or uuid.uuid4().hex[:16]
        with self._lock:
            self.db["calls"].insert({"id": call_id, "started_at": now_iso(), "transport": transport,
                                     "caller": caller, "status": "active", "returned_from": returned_from,
                                     "commune": commune, "worker": self.worker})
        return call_id

    def end_call(self, call_id: str, outcome: str, reason: str, duration_s: float,
                 summary: str = "", recording: str = "", unheard_speech_s: float = 0.0, deaf: bool = False) -> None:
        with self._lock:
            self.db["calls"].update(call_id, {"ended_at": now_iso(), "status": "ended", "outcome": outcome,
                                              "end_reason": reason, "duration_s": round(duration_s, 3),
                                              "summary": summary, "recording": recording,
                                              "unheard_speech_s": unheard_speech_s, "deaf": int(deaf)})

    def close_interrupted(self, transport: str) -> int:
        """Calls this worker left 'active' when it died: closed as errors, so every call has an end
        (another worker's calls in progress are not touched)."""
        # SQLite: one worker's own file (and calls recorded before workers had names)
        mine = " and worker = ?" if self.shared else ""
        with self._lock, self.db.conn:
            cur = self.db.execute("update calls set status = 'ended', outcome = 'error', end_reason = "
                                  f"'assistant_restart', ended_at = ? where status = 'active' and transport = ?{mine}",
                                  [now_iso(), transport] + ([self.worker] if self.shared else []))
            return cur.rowcount

    def set_recording(self, call_id: str, path: str) -> bool:
        """A recording found after the call's end (repaired after a crash). False: no such call."""
        with self._lock, self.db.conn:
            return self.db.execute("update calls set recording = ? where id = ?", [path, call_id]).rowcount > 0

    def set_satisfaction(self, call_id: str, value: int) -> None:
        with self._lock:
            self.db["calls"].update(call_id, {"satisfaction": value})

    def add_turn(self, call_id: str, speaker: str, text: str, kind: str = "speech", t_start: float = 0.0,
                 t_end: float = 0.0, confidence: float | None = None, action: str = "", theme: str = "",
                 entry_id: str = "", latency_ms: dict | None = None) -> int:
        with self._lock:
            seq = self.db.execute("select count(*) from turns where call_id = ?", [call_id]).fetchone()[0]
            table = self.db["turns"].insert({
                "call_id": call_id, "seq": seq, "speaker": speaker, "kind": kind, "text": text,
                "t_start": round(t_start, 3), "t_end": round(t_end, 3), "confidence": confidence,
                "action": action or None, "theme": theme or None, "entry_id": entry_id or None,
                "latency_ms": json.dumps(latency_ms) if latency_ms else None, "created_at": now_iso()})
            return table.last_pk

    def add_event(self, call_id: str, type_: str, t: float = 0.0, **data) -> None:
        with self._lock:
            self.db["events"].insert({"call_id": call_id, "t": round(t, 3), "type": type_,
                                      "data": json.dumps(data, ensure_ascii=False) if data else None,
                                      "created_at": now_iso()})

    def call(self, call_id: str) -> dict | None:
        rows = list(self.db.query("select * from calls where id = ?", [call_id]))
        if not rows:
            return None
        call = rows[0]
        call["turns"] = list(self.db.query("select * from turns where call_id = ? order by seq", [call_id]))
        call["events"] = list(self.db.query("select * from events where call_id = ? order by id", [call_id]))
        return call

    def recent_calls(self, limit: int = 20) -> list[dict]:
        return list(self.db.query("select * from calls order by started_at desc limit ?", [limit]))

    # --- reports and callbacks ----------------------------------------------------------------------
    def add_report(self, call_id: str | None, category: str, place: str, description: str,
                   callback: str = "") -> str:
        """Stores a signalement and returns its ticket, SIG-<year>-<6 digits>, unique."""
        year = datetime.now().year
        with self._lock, self.db.conn:
            row = self.db["reports"].insert({"call_id": call_id, "category": category, "place": place,
                                             "description": description, "callback": callback or None,
                                             "status": "nouveau", "created_at": now_iso()})
            ticket = f"SIG-{year}-{row.last_pk:06d}"
            self.db["reports"].update(row.last_pk, {"ticket": ticket})
        return ticket

    def add_callback(self, call_id: str | None, message: str, phone: str = "", service: str = "") -> int:
        with self._lock:
            return self.db["callbacks"].insert({"call_id": call_id, "message": message, "phone": phone or None,
                                                "service": service or None, "status": "à rappeler",
                                                "created_at": now_iso()}).last_pk

    def purge(self, older_than_days: int, communes: dict[str, int] | None = None) -> dict:
        """Retention: delete calls (and their turns, events, recordings) older than the limit, or than
        their commune's own limit (`communes`: days by commune id)."""
        def cutoff_of(days: int) -> str:
            return datetime.fromtimestamp(time.time() - days * 86400, timezone.utc).isoformat()

        cutoff, own = cutoff_of(older_than_days), {k: v for k, v in (communes or {}).items() if v}
        with self._lock, self.db.conn:
            others = f" and commune not in ({','.join('?' * len(own))})" if own else ""
            old = list(self.db.query(f"select id, recording from calls where started_at < ?{others}", [cutoff, *own]))
            for commune, days in own.items():
                old += self.db.query("select id, recording from calls where started_at < ? and commune = ?",
                                     [cutoff_of(days), commune])
            for row in old:
                if row["recording"]:
                    Path(row["recording"]).unlink(missing_ok=True)
                for table in ("turns", "events"):
                    self.db.execute(f"delete from {table} where call_id = ?", [row["id"]])
                self.db.execute("delete from calls where id = ?", [row["id"]])
        return {"calls_deleted": len(old), "cutoff": cutoff}


def open_store(cfg) -> Store:
    """The store the settings name: `[store] url` (PostgreSQL) or the SQLite file in the data folder."""
    if not cfg["store"]["url"]:
        return Store(cfg.db_path)
    return Store(url=cfg["store"]["url"], password=store_password(cfg))


def store_password(cfg) -> str | None:
    if not cfg["store"]["password_file"]:
        return None             # in the URL, or ~/.pgpass
    try:
        return Path(cfg["store"]["password_file"]).read_text().strip()
    except OSError as exc:
        from ivr.postgres import StoreError

        raise StoreError(f"[store] password_file illisible : {exc}") from None


_shared: dict[str, Store] = {}
_shared_lock = threading.Lock()


def shared_store(cfg) -> Store | None:
    """One PostgreSQL store per process for occasional readers (alerts, doctor); None on SQLite."""
    if not cfg["store"]["url"]:
        return None
    with _shared_lock:
        if cfg["store"]["url"] not in _shared:
            _shared[cfg["store"]["url"]] = open_store(cfg)
        return _shared[cfg["store"]["url"]]


def start_daily_purge(store: Store, retention_days: int, every_s: float = 86400.0,
                      communes: dict[str, int] | None = None) -> threading.Thread:
    """Retention without a cron job: purge now, then once a day, for as long as the process runs."""
    import logging

    log = logging.getLogger(__name__)

    def loop():
        while True:
            try:
                res = store.purge(retention_days, communes)
                if res["calls_deleted"]:
                    log.info("retention: %d call(s) older than %d days deleted", res["calls_deleted"], retention_days)
            except Exception:                      # a locked database must not end the service
                log.exception("retention purge failed")
            time.sleep(every_s)

    t = threading.Thread(target=loop, name="daily-purge", daemon=True)
    t.start()
    return t
