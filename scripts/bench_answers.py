#!/usr/bin/env python3
"""Short answers over real calls (`scripts/bench_answers.py`, JSON out): yes/no and ten-digit phone
numbers, said by a test voice to a real `ivr serve` through Asterisk, as a caller does in a report.

One reactive call per round: a report, then cycles of place, description, phone number, and "no" to
"Est-ce correct ?" (which starts the report again); the last cycle ends with "yes". A number counts
as right when the assistant's recap reads back those ten digits; a "no" when the assistant starts
again ("Reprenons"), a "yes" when the report is stored. Anything else (a number not recognised, a
"no" taken for something else) counts as wrong.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ivr.bench import machine  # noqa: E402
from tests.conftest import caller_voice  # noqa: E402
from tests.sipcall import Assistant, Asterisk, reactive_call  # noqa: E402

NOS = ["Non.", "Non, ce n'est pas ça.", "Non, c'est pas correct.", "Non merci.", "Non, il y a une erreur."]
YESES = ["Oui.", "Oui, c'est bien ça.", "Oui, c'est correct.", "Oui, tout à fait."]


def phone_number(rng: random.Random) -> str:
    return "0" + rng.choice("1234567") + "".join(rng.choice("0123456789") for _ in range(8))


DIGITS = "zéro un deux trois quatre cinq six sept huit neuf".split()


def spoken(number: str) -> str:
    """As the assistant reads a number back (and as Whisper writes one said in pairs)."""
    return " ".join(number[i:i + 2] for i in range(0, 10, 2)) + "."


def said(number: str, style: str) -> str:
    """As the caller says it: digit by digit, as the assistant asks, or in pairs, as many people do."""
    return ", ".join(DIGITS[int(c)] for c in number) + "." if style == "digits" else spoken(number)


def one_call(rng: random.Random, cycles: int, style: str, voice: str) -> dict:
    plan: list[tuple[str, str]] = []         # (kind, expected) per caller turn, in order
    steps = [("report", "Il y a un lampadaire en panne dans ma rue.")]
    for c in range(cycles):
        number = phone_number(rng)
        steps += [("place", "Au douze, rue des Tanneurs."), ("description", "Il est éteint depuis trois jours."),
                  ("number", number), ("no" if c < cycles - 1 else "yes", "")]
    texts = []
    for kind, value in steps:
        text = {"number": lambda: said(value, style), "no": lambda: rng.choice(NOS), "yes": lambda: rng.choice(YESES)}.get(
            kind, lambda: value)()
        plan.append((kind, value))
        texts.append(text)
    r = reactive_call([{"audio": caller_voice(t, phone=False, voice=voice), "after_silence_s": 1.0} for t in texts],
                      timeout=90 + 60 * cycles, hangup_after=None)
    return {"said": plan, "texts": texts, "answered": r.answered, "error": r.error}


def score(call: dict, turns: list[dict], stored: bool) -> dict:
    """Pair each caller turn with the assistant's reply to it, in order."""
    replies = []
    for i, t in enumerate(turns):
        if t["speaker"] == "caller" and t["kind"] == "speech":
            nxt = next((u for u in turns[i + 1:] if u["speaker"] == "assistant"), None)
            replies.append((t["text"], nxt["text"] if nxt else ""))
    out = {"number": [0, 0], "no": [0, 0], "yes": [0, 0], "misses": []}
    for k, ((kind, value), text) in enumerate(zip(call["said"], call["texts"])):
        if kind not in ("number", "no", "yes"):
            continue
        heard, reply = replies[k] if k < len(replies) else ("", "")
        right = {"number": lambda: f"Rappel au {spoken(value)[:-1]}." in reply,
                 "no": lambda: reply.startswith("Reprenons"),
                 "yes": lambda: stored and "enregistré sous le numéro" in reply}[kind]()
        out[kind][0] += right
        out[kind][1] += 1
        if not right:
            out["misses"].append({"kind": kind, "said": text, "heard": heard, "reply": reply[:120]})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=4)
    p.add_argument("--cycles", type=int, default=6, help="numbers (and no/yes answers) per call")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--style", choices=["digits", "pairs"], default="digits", help="how numbers are said")
    p.add_argument("--voice", choices=["mbrola", "pico"], default="mbrola", help="the caller's voice")
    a = p.parse_args()
    rng = random.Random(a.seed)
    total = {"number": [0, 0], "no": [0, 0], "yes": [0, 0], "misses": []}
    with Asterisk() as ast, tempfile.TemporaryDirectory() as d:
        bot = Assistant(Path(d), ast).start()
        try:
            for _ in range(a.calls):
                call = one_call(rng, a.cycles, a.style, a.voice)
                last = bot.last_calls()[0]
                stored = bool(list(bot.store.db.query("select id from reports where call_id = ?", [last["id"]])))
                s = score(call, last["turns"], stored)
                for k in ("number", "no", "yes"):
                    total[k] = [total[k][0] + s[k][0], total[k][1] + s[k][1]]
                total["misses"] += s["misses"]
                print(json.dumps({k: s[k] for k in ("number", "no", "yes")}), file=sys.stderr)
        finally:
            bot.stop()
    right = lambda k: round(total[k][0] / total[k][1], 3) if total[k][1] else None  # noqa: E731
    yes_no = [total["no"][0] + total["yes"][0], total["no"][1] + total["yes"][1]]
    print(json.dumps({"benchmark": "answers", "calls": a.calls, "voice": a.voice, "numbers_said": a.style,
                      "ten_digit_numbers": total["number"][1],
                      "numbers_right": right("number"), "yes_no_answers": yes_no[1],
                      "yes_no_right": round(yes_no[0] / yes_no[1], 3) if yes_no[1] else None,
                      "misses": total["misses"], "machine": machine()}, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
