"""The intercommunal set-up under load, for real (tests/cluster.py): Kamailio, two Asterisk boxes,
three workers (two on the first box, one on the second), PostgreSQL, each in its namespace. Six
callers ask a real question; during the calls one worker is killed and the second Asterisk is
stopped. Every caller is answered or reaches a desk, every call has one record in PostgreSQL,
and the console lists them all. The full load (24 callers) is scripts/bench_cluster.py."""
from __future__ import annotations

import os
import re
import threading
import time

import pytest

from tests.conftest import make_cfg

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces, Asterisk and PostgreSQL need root")

CALLERS = 8         # six before the faults, two after


def test_a_load_with_a_worker_killed_and_an_asterisk_stopped(tmp_path):
    from ivr.console.accounts import Accounts
    from ivr.console.web import create_app
    from tests.cluster import Cluster
    from tests.netlab import CHROOT
    from tests.test_trunk import say

    question = say("Quels sont les horaires d'ouverture de la mairie ?")
    with Cluster(tmp_path, workers=(2, 1), max_calls=4) as c:
        box1, box2 = c.boxes
        results: dict[int, object] = {}

        def caller(i):
            results[i] = c.call(i, [question], hangup_after=22, timeout=45)

        threads = []

        def ring(i):
            threads.append(threading.Thread(target=caller, args=(i,)))
            threads[-1].start()

        for i in range(6):
            ring(i)
            time.sleep(0.7)
        time.sleep(2)
        killed = c.kill_worker(box1, 0)           # a worker dies with its calls
        time.sleep(2)
        box2.pbx.stop()                           # and a whole Asterisk box
        for i in (6, 7):                          # new callers: the box left takes them
            ring(i)
            time.sleep(1)
        for t in threads:
            t.join(90)
        # systemd would restart the killed worker: it closes its own interrupted calls
        killed.start()
        desk_calls = box1.desk.calls_received() + box2.desk.calls_received()

        store = c.store()
        deadline = time.monotonic() + 40        # the workers list unserved calls every 30 s
        while time.monotonic() < deadline and (store.db.execute(
                "select count(*) from calls where status = 'active'").fetchone()[0] or
                list((CHROOT / "var/spool/mairie").glob("*.call"))):
            time.sleep(0.5)
        rows = list(store.db.query("select id, caller, worker, outcome, end_reason, status, recording from calls "
                                   "where returned_from is null order by started_at"))
        log = c.kamailio.log.read_text(errors="replace")

        # every caller was answered (by a worker, or by a desk after one failed)
        assert sorted(results) == list(range(CALLERS))
        assert all(r.answered for r in results.values()), {i: r.error for i, r in results.items()}
        # one record per caller, none left open, written by the three workers between them
        by_caller = {}
        for r in rows:
            m = re.search(r"sip:c(\d+)\b", r["caller"] or "")
            assert m, r
            by_caller.setdefault(int(m.group(1)), []).append(r)
        assert sorted(by_caller) == list(range(CALLERS)) and all(len(v) == 1 for v in by_caller.values()), rows
        assert all(r["status"] == "ended" for r in rows), rows
        interrupted = [r for r in rows if r["end_reason"] == "assistant_restart"]
        assert interrupted and all(r["worker"] == f"{box1.addr}:{killed.port}" for r in interrupted), rows
        # the callers after the stop went to the box left (a worker there, or its desk when they were full)
        assert c.kamailio.destinations() == {box1.addr: "AP", box2.addr: "IP"}
        assert "call to 0199472000" in log and desk_calls >= 1, (desk_calls, log[-2000:])

        # a console, anywhere, lists every call
        cfg = make_cfg(tmp_path / "console", IVR_STORE__URL=c.pg.local_url,
                       IVR_STORE__PASSWORD_FILE=tmp_path / "shared" / "pg_password",
                       IVR_PATHS__RECORDINGS=c.recordings)
        app = create_app(cfg)
        app.config["SESSION_COOKIE_SECURE"] = False
        Accounts(app.extensions["ivr"]["store"]).add("chef", "admin", "mot-de-passe-long")
        client = app.test_client()
        token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/connexion").text).group(1)
        client.post("/connexion", data={"nom": "chef", "mot_de_passe": "mot-de-passe-long", "csrf_token": token})
        page = client.get("/appels").get_data(as_text=True)
        assert all(r["id"] in page for r in rows), page[:2000]
