#!/usr/bin/env python3
"""The intercommunal set-up under load, with faults (JSON out): Kamailio, two Asterisk boxes with
their workers and desks, PostgreSQL, each in its own network namespace (tests/cluster.py).

`--callers` callers (24 by default) ring the commune's number at Kamailio over `--ramp` seconds and
each asks a real question (espeak-ng + MBROLA), listens, then asks for a person or hangs up.
During the load one worker is killed (`--kill-at` s) and the second Asterisk is stopped
(`--stop-at` s); the killed worker is started again, as systemd would. Reported: each caller's fate
(answered by a worker, reached a desk), the records in PostgreSQL (one per caller?), calls per worker,
the reply delay of the answered turns, and what the console lists. Needs root; about 4 minutes.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ivr.bench import machine  # noqa: E402
from tests.cluster import Cluster  # noqa: E402
from tests.conftest import caller_voice  # noqa: E402
from tests.netlab import CHROOT  # noqa: E402

QUESTIONS = [
    "Quels sont les horaires de la mairie ?", "Comment obtenir un acte de naissance ?",
    "Je voudrais refaire mon passeport.", "Quand passent les encombrants ?",
    "Comment inscrire mon fils à l'école ?", "Où se trouve la médiathèque ?",
    "Comment louer une salle pour une fête ?", "Je voudrais m'inscrire sur les listes électorales.",
]


def pct(values: list[float], p: float) -> float | None:
    v = sorted(values)
    return round(v[min(len(v) - 1, int(p * len(v)))], 3) if v else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--callers", type=int, default=24)
    ap.add_argument("--ramp", type=float, default=12.0, help="seconds over which the callers ring")
    ap.add_argument("--workers", default="2,1", help="workers per Asterisk box")
    ap.add_argument("--max-calls", type=int, default=8, help="calls one worker takes at once")
    ap.add_argument("--kill-at", type=float, default=20.0, help="s after the first call: a worker is killed (0: never)")
    ap.add_argument("--stop-at", type=float, default=30.0, help="s after the first call: Asterisk 2 stops (0: never)")
    args = ap.parse_args()
    per_box = tuple(int(x) for x in args.workers.split(","))
    voices = [caller_voice(q, phone=False) for q in QUESTIONS]
    ask = [{"audio": v, "after_silence_s": 1.0} for v in voices]
    person = {"audio": caller_voice("Je voudrais parler à quelqu'un, s'il vous plaît.", phone=False),
              "after_silence_s": 1.5}
    out = {"machine": machine(), "callers": args.callers, "workers": list(per_box), "max_calls": args.max_calls,
           "kill_at_s": args.kill_at, "stop_at_s": args.stop_at}
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp, \
            Cluster(Path(tmp), workers=per_box, max_calls=args.max_calls) as c:
        results, threads, faults = {}, [], {}

        def caller(i):
            steps = [ask[i % len(ask)]] + ([person] if i % 3 == 0 else [])
            results[i] = c.call(i, steps, hangup_after=None if i % 3 == 0 else 30, timeout=75)

        t0 = time.monotonic()
        pending = sorted([(args.ramp * i / max(1, args.callers - 1), "call", i) for i in range(args.callers)]
                         + [(args.kill_at, "kill", 0)] * bool(args.kill_at) + [(args.stop_at, "stop", 0)] * bool(args.stop_at))
        killed = None
        for at, what, i in pending:
            time.sleep(max(0.0, at - (time.monotonic() - t0)))
            if what == "call":
                threads.append(threading.Thread(target=caller, args=(i,)))
                threads[-1].start()
            elif what == "kill":
                killed = c.kill_worker(c.boxes[0], 0)
                faults["worker_killed_at_s"] = round(time.monotonic() - t0, 1)
            else:
                c.boxes[1].pbx.stop()
                faults["asterisk_stopped_at_s"] = round(time.monotonic() - t0, 1)
        for t in threads:
            t.join(120)
        if killed:
            # started again, as systemd would: until it has registered (its log says so)
            before = killed.log.read_text(errors="replace").count("registration: 200")
            start = time.monotonic()
            killed.start()
            while killed.log.read_text(errors="replace").count("registration: 200") == before \
                    and time.monotonic() - start < 120:
                time.sleep(0.2)
            faults["worker_back_registered_s"] = round(time.monotonic() - start, 1)
        desk_calls = sum(b.desk.calls_received() for b in c.boxes)
        store = c.store()
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and (store.db.execute(
                "select count(*) from calls where status = 'active'").fetchone()[0] or
                list((CHROOT / "var/spool/mairie").glob("*.call"))):
            time.sleep(0.5)
        rows = list(store.db.query("select id, caller, worker, outcome, end_reason, status from calls "
                                   "where returned_from is null"))
        per_caller: dict[int, int] = {}
        for r in rows:
            m = re.search(r"sip:c(\d+)\b", r["caller"] or "")
            if m:
                per_caller[int(m.group(1))] = per_caller.get(int(m.group(1)), 0) + 1
        per_worker: dict[str, int] = {}
        for r in rows:
            per_worker[r["worker"] or "(desk, no worker)"] = per_worker.get(r["worker"] or "(desk, no worker)", 0) + 1
        outcomes: dict[str, int] = {}
        for r in rows:
            key = f"{r['outcome']}/{r['end_reason']}"
            outcomes[key] = outcomes.get(key, 0) + 1
        from ivr.console.queries import Queries, reply_ms

        waits = [reply_ms(t["latency_ms"]) for t in store.db.query(
            "select latency_ms from turns where speaker = 'assistant' and latency_ms is not null")]
        waits = [w / 1000 for w in waits if w is not None]
        listed = Queries(store).calls()[1]
        out.update(faults)
        out.update({
            "answered": sum(1 for r in results.values() if r.answered),
            "not_answered": sorted(i for i, r in results.items() if not r.answered),
            "desk_calls": desk_calls,
            "records": len(rows), "callers_with_one_record": sum(1 for n in per_caller.values() if n == 1),
            "callers_without_record": sorted(set(range(args.callers)) - set(per_caller)),
            "callers_with_several": sorted(i for i, n in per_caller.items() if n > 1),
            "left_active": sum(1 for r in rows if r["status"] == "active"),
            "calls_per_worker": dict(sorted(per_worker.items())), "outcomes": dict(sorted(outcomes.items())),
            "reply_s": {"turns": len(waits), "p50": pct(waits, 0.5), "p95": pct(waits, 0.95), "max": pct(waits, 1.0)},
            "console_lists": listed,
            "kamailio": c.kamailio.destinations(),
        })
    print(json.dumps(out, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
