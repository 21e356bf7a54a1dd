import re
import sqlite3

from ivr.store import Store


def test_schema_is_created_and_migrations_run_once(tmp_path):
    db = tmp_path / "ivr.db"
    s = Store(db)
    s2 = Store(db)                                     # reopening migrates nothing twice
    names = [r["name"] for r in s2.db["migrations"].rows]
    assert names == ["001_calls_turns_events", "002_reports_callbacks", "003_console", "004_callback_service",
                     "005_unheard_speech", "006_returned_calls", "007_alerts", "008_communes", "009_postgresql", "010_workers"]
    assert {"calls", "turns", "events", "reports", "callbacks", "users", "audit", "deliveries"} <= set(s.db.table_names())
    assert {"service", "done_at", "done_by"} <= set(s.db["callbacks"].columns_dict)
    assert sqlite3.connect(db).execute("pragma journal_mode").fetchone()[0] == "wal"


def test_a_database_from_before_the_newer_columns_keeps_its_calls(tmp_path, monkeypatch):
    import ivr.store

    monkeypatch.setattr(ivr.store, "MIGRATIONS", ivr.store.MIGRATIONS[:4])
    old = Store(tmp_path / "ivr.db")
    cid = "0123456789abcdef"
    old.db["calls"].insert({"id": cid, "started_at": "2026-11-30T10:00:00+00:00", "transport": "sip",
                            "caller": "sip:0611223344@x", "status": "ended", "outcome": "answered"})
    monkeypatch.undo()
    new = Store(tmp_path / "ivr.db")
    call = new.call(cid)
    assert call["outcome"] == "answered" and call["deaf"] is None and call["returned_from"] is None
    assert call["commune"] == ""                       # the one commune of an install that had only one
    new.end_call(new.start_call("sip"), "transferred", "transfer", 9.0, unheard_speech_s=2.5, deaf=True)
    assert [r["deaf"] for r in new.db.query("select deaf from calls order by started_at")] == [None, 1]


def test_a_call_keeps_its_turns_and_events(tmp_path):
    s = Store(tmp_path / "ivr.db")
    cid = s.start_call("test", "caller")
    s.add_turn(cid, "caller", "bonjour", t_start=0.5, t_end=1.2, confidence=0.9, latency_ms={"asr": 300})
    s.add_turn(cid, "assistant", "Bonjour !", kind="prompt", action="answer", theme="mairie_pratique")
    s.add_event(cid, "speech-start", 0.5, x=1)
    s.end_call(cid, "answered", "goodbye", 12.5, summary="bonjour")
    c = s.call(cid)
    assert c["outcome"] == "answered" and c["duration_s"] == 12.5
    assert [t["seq"] for t in c["turns"]] == [0, 1] and c["turns"][0]["latency_ms"] == '{"asr": 300}'
    assert c["events"][0]["type"] == "speech-start"


def test_report_tickets_are_unique_and_well_formed(tmp_path):
    s = Store(tmp_path / "ivr.db")
    t1 = s.add_report(None, "eclairage", "rue des Lilas", "lampadaire éteint")
    t2 = s.add_report(None, "voirie_stationnement", "place du Marché", "nid-de-poule", "0612345678")
    assert re.fullmatch(r"SIG-\d{4}-\d{6}", t1) and t1 != t2
    assert s.db["reports"].get(2)["callback"] == "0612345678"


def test_purge_applies_retention(tmp_path):
    s = Store(tmp_path / "ivr.db")
    rec = tmp_path / "old.wav"
    rec.write_bytes(b"x")
    old = s.start_call("test")
    s.end_call(old, "answered", "goodbye", 1.0, recording=str(rec))
    s.db.execute("update calls set started_at = '2020-01-01T00:00:00+00:00' where id = ?", [old])
    new = s.start_call("test")
    assert s.purge(90)["calls_deleted"] == 1
    assert s.call(old) is None and s.call(new) is not None and not rec.exists()


def test_calls_left_active_by_a_dead_process_are_closed(tmp_path):
    s = Store(tmp_path / "ivr.db")
    dead = s.start_call("sip")
    done = s.start_call("sip")
    s.end_call(done, "answered", "goodbye", 3.0)
    other = s.start_call("simulate")
    assert s.close_interrupted("sip") == 1
    assert s.call(dead)["outcome"] == "error" and s.call(dead)["end_reason"] == "assistant_restart"
    assert s.call(done)["outcome"] == "answered" and s.call(other)["status"] == "active"


def test_each_commune_keeps_its_calls_for_its_own_retention(tmp_path):
    from datetime import datetime, timedelta, timezone

    s = Store(tmp_path / "ivr.db")
    old = (datetime.now(timezone.utc) - timedelta(days=20)).isoformat()
    for cid, commune in (("a" * 16, "valbois"), ("b" * 16, "montclair")):
        s.db["calls"].insert({"id": cid, "started_at": old, "transport": "sip", "status": "ended", "commune": commune})
    assert s.purge(90, {"valbois": 10})["calls_deleted"] == 1
    assert s.call("a" * 16) is None and s.call("b" * 16) is not None
    assert s.purge(15)["calls_deleted"] == 1
