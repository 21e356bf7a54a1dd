"""Several assistant workers behind one Asterisk: the dialplan rings them one after the other, each
call starting at the next worker (calls spread), a full one skipped; when every worker is full, the
desk; every call has one record. A real Asterisk, real SIP callers, two `ivr serve` processes."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from tests.sipcall import RATE, Assistant, Desk, place_call
from tests.test_calls import wait_idle

PORTS = (5091, 5092)


def avail(pbx) -> int:
    return sum(1 for line in pbx.cli("pjsip show contacts").splitlines()
               if line.strip().startswith("Contact:") and "assistant/" in line and "Avail" in line)


@pytest.fixture(scope="module")
def workers(pbx, tmp_path_factory):
    ws = []
    try:
        for port in PORTS:              # each takes one call at a time
            ws.append(Assistant(tmp_path_factory.mktemp(f"worker{port}"), pbx,
                                env={"IVR_SIP__PORT": str(port), "IVR_SIP__MAX_CALLS": "1"}).start())
        deadline = time.monotonic() + 60
        while avail(pbx) != len(PORTS) and time.monotonic() < deadline:
            time.sleep(1)               # a contact of an earlier assistant is dropped once it fails OPTIONS
        assert avail(pbx) == len(PORTS), pbx.cli("pjsip show contacts")
        yield ws
    finally:
        for w in ws:
            w.stop()


def records(w) -> list[dict]:
    wait_idle(w.store)
    return list(w.store.db.query("select id, outcome, end_reason from calls order by started_at"))


def test_calls_spread_over_the_workers_and_a_full_one_is_skipped(workers):
    silence = np.zeros(10 * RATE, np.int16)
    for _ in range(2):                  # one after the other: each call starts at the next worker
        assert place_call(silence, hangup_after=6).answered
        time.sleep(1)
    assert [len(records(w)) for w in workers] == [1, 1]

    results = []
    with Desk() as desk:                # three at once, two workers of one call each: the desk takes one
        callers = [threading.Thread(target=lambda: results.append(place_call(silence, hangup_after=10)))
                   for _ in range(3)]
        for c in callers:
            c.start()
            time.sleep(0.3)
        for c in callers:
            c.join(60)
        time.sleep(1)
        assert all(r.answered for r in results) and desk.calls_received() == 1, desk.calls_received()
    rows = [records(w)[1:] for w in workers]
    assert sorted(len([r for r in rs if r["outcome"] != "declined"]) for rs in rows) == [1, 1], rows
    # the call both workers declined has one record, by the last one tried
    declined = [r for rs in rows for r in rs if r["outcome"] == "declined"]
    assert len(declined) == 1 and declined[0]["end_reason"] == "busy", rows
