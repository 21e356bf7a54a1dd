"""Calls the assistant never saw: while it was down, restarting, unregistered or too slow to answer,
the bundled Asterisk sends the caller to the desk and writes a file UNIQUEID.call holding
"EPOCH;UNIQUEID;NUMBER;DIALSTATUS;DIALLED" (asterisk-conf/extensions.conf). They become records here, so that
every call has one."""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from ivr.communes import commune_for, load_communes

log = logging.getLogger(__name__)


def unserved_dir(cfg) -> Path:
    root = cfg["pbx"]["asterisk_root"] or cfg.data_dir / "asterisk" / "root"
    return Path(root) / "var/spool/mairie"


def import_unserved(cfg, store) -> int:
    """Add the calls written since the last import (one small file per call, written at once by
    Asterisk; those older than a second, so none is read half-written), then remove their files.
    Ids come from Asterisk's: a file read twice (a crash in between) adds nothing twice."""
    rows, done = [], []
    communes = load_communes(cfg)
    try:
        files = sorted(Path(unserved_dir(cfg)).glob("*.call"))
    except OSError:
        return 0
    for f in files:
        try:
            if time.time() - f.stat().st_mtime < 1.0:
                continue
            parts = f.read_text(errors="replace").strip().split(";")
        except OSError:
            continue
        done.append(f)
        if len(parts) not in (4, 5) or not parts[0].isdigit():
            log.warning("%s: not a call written by the dialplan, ignored", f)
            continue
        epoch, unique_id, number, status, dialled = (parts + [""])[:5]
        at = datetime.fromtimestamp(int(epoch), timezone.utc).isoformat(timespec="milliseconds")
        rows.append({"id": "a" + hashlib.sha1(unique_id.encode()).hexdigest()[:15], "started_at": at, "ended_at": at,
                     "transport": "sip", "caller": f"sip:{number}", "status": "ended", "outcome": "declined",
                     "end_reason": f"assistant_unavailable:{status.lower() or 'nocontact'}", "duration_s": 0.0,
                     "commune": commune_for(communes, dialled).id if len(communes) > 1 else ""})
    if rows:
        with store._lock:
            store.db["calls"].insert_all(rows, ignore=True)
        log.warning("%d call(s) went to the desk without the assistant (down, unregistered or too slow): recorded",
                    len(rows))
    for f in done:
        f.unlink(missing_ok=True)
    return len(rows)


def start_importing(cfg, store, every_s: float = 30.0) -> None:
    def loop():
        while True:
            try:
                import_unserved(cfg, store)
            except Exception:          # a full disk or a damaged line: retried at the next round
                log.exception("could not record the calls the assistant did not take")
            threading.Event().wait(every_s)

    threading.Thread(target=loop, name="unserved-import", daemon=True).start()
