#!/usr/bin/env python3
"""Voice-to-voice latency on the wire (`scripts/bench_call.py`, JSON out).

Real Asterisk, real `ivr serve`, SIPp callers asking French questions (espeak-ng + MBROLA voice) over
G.711. For each turn: from the end of the caller's speech in the RTP stream it sent to the first
packet of the assistant's reply in the RTP stream it received. Each question also interrupts the end
of the previous answer, which measures barge-in: how long the assistant kept talking over the caller.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ivr.bench import machine  # noqa: E402
from tests.conftest import caller_voice  # noqa: E402
from tests.sipcall import Assistant, Asterisk, place_call  # noqa: E402

RATE = 8000
QUESTIONS = [
    "Quels sont les horaires de la mairie ?", "Comment obtenir un acte de naissance ?",
    "Je voudrais refaire mon passeport.", "Quand passent les encombrants ?",
    "Comment inscrire mon fils à l'école ?", "Où se trouve la médiathèque ?",
    "Comment louer une salle pour une fête ?", "Je voudrais m'inscrire sur les listes électorales.",
    "Quels sont les horaires de la déchetterie ?", "Comment faire un permis de construire ?",
]
FIRST, GAP = 11.0, 14.0          # first question 11 s after the answer (over the old 16.7 s greeting, after
                                 # the new 7.4 s one), then one every GAP seconds


def frames_db(pcm: np.ndarray) -> np.ndarray:
    n = len(pcm) // 160
    f = pcm[: n * 160].reshape(n, 160).astype(np.float64) / 32768
    return 20 * np.log10(np.maximum(np.sqrt((f ** 2).mean(axis=1)), 1e-6))


def one_call(voices, turns: int, out: list, lock: threading.Lock) -> None:
    total = FIRST + GAP * turns + 4
    audio = np.zeros(int(total * RATE), np.int16)
    spans = []
    for k in range(turns):
        v = voices[k % len(voices)]
        i = int((FIRST + GAP * k) * RATE)
        audio[i:i + len(v)] = v
        nz = np.flatnonzero(np.abs(v) > 300)
        spans.append(((i + nz[0]) / RATE, (i + nz[-1]) / RATE))   # speech start/end as sent
    r = place_call(audio, hangup_after=total, timeout=total + 30)
    db = frames_db(r.heard)
    loud = db > -45
    res = []
    for k, (s, e) in enumerate(spans):
        a, b = int(e / 0.02), int((e + GAP - 1) / 0.02)
        after = np.flatnonzero(loud[a:b])
        latency = after[0] * 0.02 if len(after) else None
        barge = None
        if k > 0:
            # the previous answer was still playing when the caller began: when did it stop?
            i0 = int(s / 0.02)
            if i0 < len(loud) and loud[max(0, i0 - 3):i0].any():
                quiet = np.flatnonzero(~loud[i0:i0 + 100])
                barge = quiet[0] * 0.02 if len(quiet) else None
        res.append({"latency_s": latency, "barge_in_stop_s": barge})
    with lock:
        out.append({"answered": r.answered, "turns": res})


def run(concurrency: int, turns: int, voices, rounds: int = 1, store=None) -> dict:
    earlier = {r["call_id"] for r in store.db.query("select distinct call_id from turns")} if store else set()
    out: list = []
    lock = threading.Lock()
    for _ in range(rounds):
        threads = [threading.Thread(target=one_call, args=(voices, turns, out, lock)) for _ in range(concurrency)]
        for t in threads:
            t.start()
            time.sleep(0.2)
        for t in threads:
            t.join()
    lat = sorted(t["latency_s"] for c in out for t in c["turns"] if t["latency_s"] is not None)
    barge = sorted(t["barge_in_stop_s"] for c in out for t in c["turns"] if t["barge_in_stop_s"] is not None)
    pct = lambda xs, p: round(xs[min(len(xs) - 1, int(p * len(xs)))], 3) if xs else None  # noqa: E731
    return {"calls": concurrency, "answered": sum(c["answered"] for c in out), "turns_measured": len(lat),
            "turns_without_reply": sum(t["latency_s"] is None for c in out for t in c["turns"]),
            "latency_p50_s": pct(lat, 0.5), "latency_p95_s": pct(lat, 0.95),
            "barge_in_stop_p50_s": pct(barge, 0.5), "barge_in_stop_p95_s": pct(barge, 0.95),
            **({"stages": stage_times(store, earlier)} if store else {})}


def stage_times(store, skip_calls=frozenset()) -> dict:
    """Where the time of the turns went (ms), on the assistant's side; calls in skip_calls left out."""
    rows = [json.loads(r["latency_ms"]) for r in store.db.query(
        "select call_id, latency_ms from turns where speaker = 'assistant' and latency_ms like '%asr%'")
        if r["call_id"] not in skip_calls]
    out = {}
    for key in ("endpoint", "asr", "dialogue", "tts_first"):
        xs = sorted(r[key] for r in rows if key in r)
        if xs:
            out[key] = {"p50_ms": xs[len(xs) // 2], "p95_ms": xs[int(0.95 * (len(xs) - 1))]}
    if rows:
        out["asr_started_in_pause_share"] = round(sum(bool(r.get("asr_early")) for r in rows) / len(rows), 2)
    return out


def measure(ast, a, voices, code: Path = ROOT) -> dict:
    results = []
    with tempfile.TemporaryDirectory() as d:
        bot = Assistant(Path(d), ast, code=code).start()
        try:
            for n in (int(x) for x in a.concurrency.split(",")):
                rounds = max(1, -(-a.min_turns // (n * a.turns)))
                results.append(run(n, a.turns, voices, rounds, bot.store))
                print(json.dumps(results[-1]), file=sys.stderr)
            stages = stage_times(bot.store)
            outcomes = {f"{r['outcome']}/{r['end_reason']}": r["n"] for r in bot.store.db.query(
                "select outcome, end_reason, count(*) as n from calls group by outcome, end_reason")}
            for c in bot.store.db.query("select id from calls where outcome = 'transferred'"):
                turns = bot.store.call(c["id"])["turns"]        # why a caller would have reached a person
                print(json.dumps([(t["speaker"][0], t["text"][:70]) for t in turns[-6:]], ensure_ascii=False),
                      file=sys.stderr)
        finally:
            bot.stop()
    return {"results": results, "call_outcomes": outcomes, "stages_all_turns": stages}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", default="1,4,8", help="comma-separated numbers of simultaneous calls")
    p.add_argument("--turns", type=int, default=10, help="questions per call")
    p.add_argument("--min-turns", type=int, default=20, help="turns measured per setting, at least")
    p.add_argument("--before", metavar="REV", help="also measure this git revision first (same run, same load)")
    a = p.parse_args()
    voices = [caller_voice(q, phone=False) for q in QUESTIONS]
    out = {"benchmark": "call", "question_gap_s": GAP}
    with Asterisk() as ast:
        if a.before:
            with tempfile.TemporaryDirectory() as tree:
                subprocess.run(["git", "worktree", "add", "--detach", tree, a.before], cwd=ROOT, check=True,
                               capture_output=True)
                try:
                    out["before"] = dict(revision=a.before, **measure(ast, a, voices, Path(tree)))
                finally:
                    subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=ROOT, capture_output=True)
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        out["after" if a.before else "now"] = dict(revision=head.stdout.strip() + " + working tree",
                                                   **measure(ast, a, voices))
    out["machine"] = machine()
    print(json.dumps(out, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
