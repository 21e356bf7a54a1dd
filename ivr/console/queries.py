"""What the console reads from the call database: calls with filters, the live board, reports,
callbacks, the figures of the dashboard and the questions to learn from."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import re

from ivr.store import Store

OUTCOMES = {"answered": "répondu", "transferred": "transféré", "message": "message laissé",
            "abandoned": "abandonné", "declined": "refusé (surcharge)", "error": "erreur"}
ACTIONS = {"answer": "réponse", "clarify": "demande de précision", "transfer": "transfert", "greeting": "accueil",
           "goodbye": "fin d'appel", "signalement": "signalement", "message": "message", "repeat": "répétition",
           "guide": "démarche pas à pas", "orientation": "orientation vers les aides"}
REPORT_STATUSES = ["nouveau", "transmis", "traité"]
PAGE = 25
_THEME = ("(select theme from turns t where t.call_id = c.id and t.speaker = 'assistant' "
          "and t.theme is not null order by seq limit 1)")


def caller_number(uri: str | None) -> str:
    """The user part of a SIP URI ('"X" <sip:0612345678@host>' -> '0612345678')."""
    m = re.search(r"sips?:([^@;>]+)", uri or "")
    return m.group(1) if m else (uri or "")


def mask_number(uri: str | None) -> str:
    """What an agent sees of a caller: 06 •• •• •• 78, or the first letter of a name."""
    n = caller_number(uri)
    digits = re.sub(r"\D", "", n)
    if len(digits) >= 6 and len(digits) >= len(n) - 1:
        return f"{digits[:2]} {'•• ' * ((len(digits) - 4 + 1) // 2)}{digits[-2:]}"
    return (n[:1] + "•••") if n else "inconnu"


def hash_number(uri: str | None) -> str:
    """Statistics count callers without knowing them."""
    return hashlib.sha256(caller_number(uri).encode()).hexdigest()[:12]


def reason_of(summary: str | None) -> str:
    """"demande à parler à un agent ; dit : ... | what was said" -> "demande à parler à un agent"."""
    return (summary or "").split(" | ")[0].split(" ; dit : ")[0].strip() or "—"


def reply_ms(latency: str | dict | None) -> float | None:
    """From the end of the caller's speech to the first audio of the reply (a spoken turn only)."""
    lat = json.loads(latency) if isinstance(latency, str) else (latency or {})
    if "asr" not in lat or "tts_first" not in lat:
        return None
    return float(lat.get("endpoint", 0)) + float(lat["asr"]) + float(lat.get("dialogue", 0)) + float(lat["tts_first"])


def _elapsed(started_at: str) -> float:
    start = dt.datetime.fromisoformat(started_at)
    return max(0.0, (dt.datetime.now(dt.timezone.utc) - start).total_seconds())


class Queries:
    """What the console shows. `commune`: only that commune's calls (an account of one commune, on
    an install that serves several); "" for every call."""

    def __init__(self, store: Store, commune: str = ""):
        self.store, self.commune = store, commune

    def _mine(self, alias: str = "c") -> tuple[str, list]:
        """SQL condition (and its argument) keeping this commune's calls."""
        return (f"{alias}.commune = ?", [self.commune]) if self.commune else ("1 = 1", [])

    @property
    def db(self):
        return self.store.db

    # --- calls ------------------------------------------------------------------------------------
    def calls(self, since: str = "", until: str = "", outcome: str = "", theme: str = "", text: str = "",
              page: int = 1, unheard: bool = False) -> tuple[list[dict], int]:
        mine, args = self._mine()
        where = [mine]
        if unheard:         # the caller spoke and (some of) it was not heard: calls to listen to
            where.append("(c.deaf = 1 or c.unheard_speech_s >= 1.0)")
        if since:
            where.append("date(c.started_at, 'localtime') >= ?")
            args.append(since)
        if until:
            where.append("date(c.started_at, 'localtime') <= ?")
            args.append(until)
        if outcome:
            where.append("c.outcome = ?")
            args.append(outcome)
        if theme:
            where.append(f"{_THEME} = ?")
            args.append(theme)
        if text:
            where.append("exists (select 1 from turns t where t.call_id = c.id and t.text like ?)")
            args.append(f"%{text}%")
        cond = " and ".join(where)
        total = self.db.execute(f"select count(*) from calls c where {cond}", args).fetchone()[0]
        rows = list(self.db.query(
            f"select c.*, {_THEME} as theme, (select count(*) from turns t where t.call_id = c.id) as n_turns "
            f"from calls c where {cond} order by c.started_at desc limit ? offset ?",
            args + [PAGE, (max(1, page) - 1) * PAGE]))
        return rows, total

    def call(self, call_id: str) -> dict | None:
        c = self.store.call(call_id)
        if not c:
            return None
        for t in c["turns"]:
            t["reply_ms"] = reply_ms(t["latency_ms"]) if t["speaker"] == "assistant" else None
        c["theme"] = next((t["theme"] for t in c["turns"] if t["speaker"] == "assistant" and t["theme"]), None)
        c["reason"] = reason_of(c["summary"]) if c["outcome"] == "transferred" else ""
        c["reports"] = list(self.db.query("select * from reports where call_id = ?", [call_id]))
        return c

    def live(self, recent_minutes: int = 15) -> list[dict]:
        """Calls talking to the assistant now, and those transferred in the last minutes."""
        since = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=recent_minutes)).isoformat()
        mine, args = self._mine()
        rows = list(self.db.query(
            f"select * from calls c where {mine} and (status = 'active' or (outcome = 'transferred' and ended_at >= ?)) "
            "order by started_at desc limit 50", args + [since]))
        out = []
        for c in rows:
            turns = list(self.db.query("select speaker, text, theme, action from turns where call_id = ? "
                                       "order by seq", [c["id"]]))
            said = [t["text"] for t in turns if t["speaker"] == "caller" and t["text"]]
            theme = next((t["theme"] for t in turns if t["theme"]), None)
            transferring = c["status"] == "active" and any(t["action"] == "transfer" for t in turns)
            why = ""
            if transferring:
                ev = list(self.db.query("select data from events where call_id = ? and type = 'transfer' "
                                        "order by id desc limit 1", [c["id"]]))
                why = reason_of(json.loads(ev[0]["data"] or "{}").get("summary")) if ev else "transfert demandé"
            state = "transféré" if c["status"] != "active" else ("en transfert" if transferring else "avec l'assistant")
            summary = []
            if theme:
                from dialogue.corpus import THEMES
                summary.append("Sujet : " + THEMES.get(theme, theme))
            if said:
                summary.append("Dernière demande : « " + said[-1][:160] + " »")
            out.append({
                "id": c["id"], "caller": mask_number(c["caller"]), "state": state,
                "duration_s": round(c["duration_s"] if c["status"] != "active" and c["duration_s"]
                                    else _elapsed(c["started_at"])),
                "reason": reason_of(c["summary"]) if c["outcome"] == "transferred" else why,
                "summary": " — ".join(summary) or "Pas encore de demande",
                "transcript": [{"speaker": t["speaker"], "text": t["text"]} for t in turns[-8:]],
            })
        return out

    # --- reports and callbacks ----------------------------------------------------------------------
    def reports(self, status: str = "") -> list[dict]:
        mine, args = self._mine()
        cond = f"r.call_id in (select c.id from calls c where {mine})" if self.commune else "1 = 1"
        if status:
            cond, args = f"{cond} and r.status = ?", args + [status]
        return list(self.db.query(f"select r.* from reports r where {cond} order by r.created_at desc", args))

    def callbacks(self, done: bool = False) -> list[dict]:
        cond = "done_at is not null" if done else "done_at is null"
        mine, args = self._mine()
        rows = list(self.db.query(f"select cb.*, c.caller from callbacks cb left join calls c on c.id = cb.call_id "
                                  f"where {cond} and {mine} order by cb.created_at desc limit 200", args))
        return rows

    # --- dashboard ----------------------------------------------------------------------------------
    def figures(self, since: str, until: str) -> dict:
        mine, scope = self._mine()
        args = [since, until] + scope
        span = f"date(c.started_at, 'localtime') between ? and ? and {mine}"
        calls = list(self.db.query(f"select c.*, {_THEME} as theme from calls c where {span} "
                                   "order by started_at", args))
        per_day: dict[str, int] = {}
        d = dt.date.fromisoformat(since)
        while d <= dt.date.fromisoformat(until):
            per_day[d.isoformat()] = 0
            d += dt.timedelta(days=1)
        for c in calls:
            day = self.db.execute("select date(?, 'localtime')", [c["started_at"]]).fetchone()[0]
            per_day[day] = per_day.get(day, 0) + 1
        handled = [c for c in calls if c["outcome"] in ("answered", "transferred", "message", "abandoned")]
        answered = sum(1 for c in handled if c["outcome"] == "answered")
        reasons: dict[str, int] = {}
        for c in calls:
            if c["outcome"] == "transferred":
                r = reason_of(c["summary"])
                reasons[r] = reasons.get(r, 0) + 1
        themes: dict[str, int] = {}
        for c in calls:
            if c["theme"]:
                themes[c["theme"]] = themes.get(c["theme"], 0) + 1
        sat = {"oui": sum(1 for c in calls if c["satisfaction"] == 1),
               "non": sum(1 for c in calls if c["satisfaction"] == 2)}
        lat = [reply_ms(r["latency_ms"]) for r in self.db.query(
            f"select t.latency_ms from turns t join calls c on c.id = t.call_id where {span} "
            "and t.speaker = 'assistant' and t.latency_ms is not null", args)]
        lat = sorted(x for x in lat if x is not None)

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))]) if lat else None

        return {"since": since, "until": until, "calls": len(calls), "per_day": per_day,
                "answered_share": round(answered / len(handled), 3) if handled else None,
                "answered": answered, "handled": len(handled),
                "reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
                "themes": dict(sorted(themes.items(), key=lambda kv: -kv[1])[:10]),
                "satisfaction": sat, "latency_p50_ms": pct(0.5), "latency_p95_ms": pct(0.95),
                "latency_turns": len(lat),
                "distinct_callers": len({hash_number(c["caller"]) for c in calls}),
                "deaf": sum(1 for c in calls if c["deaf"])}

    # --- questions to learn from -------------------------------------------------------------------
    def weak_questions(self, since: str = "", low_confidence: float = 0.4) -> list[dict]:
        """Caller turns the assistant clarified, transferred or answered with low confidence, and the
        questions of calls whose caller said "non" to the satisfaction question."""
        mine, scope = self._mine()
        rows = list(self.db.query(
            "select t.call_id, t.seq, t.text, t.t_start, c.started_at, c.satisfaction, "
            "(select a.action from turns a where a.call_id = t.call_id and a.seq > t.seq "
            " and a.speaker = 'assistant' order by a.seq limit 1) as action, "
            "(select a.confidence from turns a where a.call_id = t.call_id and a.seq > t.seq "
            " and a.speaker = 'assistant' order by a.seq limit 1) as confidence "
            "from turns t join calls c on c.id = t.call_id "
            f"where t.speaker = 'caller' and t.kind = 'speech' and t.text != '' and c.started_at >= ? and {mine} "
            "order by c.started_at desc limit 2000", [since or "0"] + scope))
        out = []
        for r in rows:
            why = None
            if r["action"] in ("clarify", "transfer"):
                why = "clarifiée" if r["action"] == "clarify" else "transférée"
            elif r["action"] == "answer" and r["confidence"] is not None and r["confidence"] < low_confidence:
                why = "réponse peu sûre"
            elif r["satisfaction"] == 2 and r["action"] == "answer":
                why = "appelant insatisfait"
            if why and len(r["text"].split()) >= 3:
                out.append(dict(r, why=why))
        return out
