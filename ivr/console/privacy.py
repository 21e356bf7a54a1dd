"""Everything the assistant holds about one caller number: exported on request, or deleted
(the right of access and the right to erasure), recordings included."""
from __future__ import annotations

from pathlib import Path

from ivr.console.queries import caller_number
from ivr.store import Store


def _digits(s: str | None) -> str:
    return "".join(c for c in (s or "") if c.isdigit())


def _same(number: str, other: str | None) -> bool:
    a, b = _digits(number), _digits(other)
    return bool(a) and bool(b) and (a == b or a[-9:] == b[-9:] and len(a) >= 9 and len(b) >= 9)


def _calls(store: Store, number: str, commune: str = "") -> list[str]:
    return [r["id"] for r in store.db.query("select id, caller, commune from calls")
            if _same(number, caller_number(r["caller"])) and (not commune or r["commune"] == commune)]


def export_caller(store: Store, number: str, commune: str = "") -> dict:
    """Everything kept about a number; `commune`: only what that commune's calls left."""
    ids = _calls(store, number, commune)
    theirs = {r["id"] for r in store.db.query("select id from calls where commune = ?", [commune])} if commune else None
    mine = lambda r, phone: r["call_id"] in ids or _same(number, phone) and (theirs is None or r["call_id"] in theirs)  # noqa: E731
    calls = [store.call(i) for i in ids]
    reports = [r for r in store.db.query("select * from reports") if mine(r, r["callback"])]
    callbacks = [r for r in store.db.query("select * from callbacks") if mine(r, r["phone"])]
    return {"numero": number, "calls": calls, "reports": reports, "callbacks": callbacks}


def delete_caller(store: Store, number: str, commune: str = "") -> dict:
    data = export_caller(store, number, commune)
    with store._lock, store.db.conn:
        for c in data["calls"]:
            if c["recording"]:
                Path(c["recording"]).unlink(missing_ok=True)
            for table in ("turns", "events"):
                store.db.execute(f"delete from {table} where call_id = ?", [c["id"]])
            store.db.execute("delete from calls where id = ?", [c["id"]])
        for r in data["reports"]:
            store.db.execute("delete from deliveries where report_id = ?", [r["id"]])
            store.db.execute("delete from reports where id = ?", [r["id"]])
        for r in data["callbacks"]:
            store.db.execute("delete from callbacks where id = ?", [r["id"]])
    return {"calls": len(data["calls"]), "reports": len(data["reports"]), "callbacks": len(data["callbacks"])}
