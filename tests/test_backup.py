"""`ivr backup` and `ivr restore` as an admin runs them (the CLI in a subprocess), on a real SQLite
file that is being written during the backup, real recordings, secrets, settings and a corpus copy."""
from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import threading
import time

import pytest

from tests.conftest import MODELS, ROOT, run_ivr

TABLES = ("calls", "turns", "events", "reports", "callbacks", "users", "audit")


def env_for(base) -> dict:
    """A town hall's server in folder `base`: data/, corpus/, and ivr.toml once it exists."""
    env = {k: v for k, v in os.environ.items() if k != "IVR_CONFIG"}
    env.update(IVR_DATA=str(base / "data"), IVR_PATHS__CORPUS=str(base / "corpus"), IVR_PATHS__MODELS=str(MODELS),
               IVR_PATHS__CACHE=str(ROOT / "data" / "cache"))
    if (base / "ivr.toml").exists():
        env["IVR_CONFIG"] = str(base / "ivr.toml")
    return env


def restore(base, archive, *extra):
    return run_ivr(env_for(base), "restore", str(archive), "--settings", str(base / "ivr.toml"), *extra)


def rows(db, table: str) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return sorted(con.execute(f"select * from {table}").fetchall(), key=repr)
    finally:
        con.close()


@pytest.fixture
def hall(tmp_path):
    """A town hall's data: calls with turns and events, a report, a callback, two accounts, a
    recording, secrets, settings, and a corpus edited by the admin."""
    from ivr.console.accounts import Accounts
    from ivr.store import Store

    src = tmp_path / "mairie"
    shutil.copytree(ROOT / "corpus", src / "corpus", ignore=shutil.ignore_patterns("devset", "testset"))
    commune = src / "corpus" / "commune.yaml"
    commune.write_text(commune.read_text(encoding="utf-8").replace('telephone: "01 99 47 20 00"',
                                                                   'telephone: "01 99 47 20 99"', 1), encoding="utf-8")
    (src / "ivr.toml").write_text("[call]\nretention_days = 60\n")
    data = src / "data"
    store = Store(data / "ivr.db")
    ids = []
    for i in range(3):
        cid = store.start_call("sip", caller=f"06112233{i:02d}")
        store.add_turn(cid, "caller", f"Question numéro {i} sur les horaires")
        store.add_turn(cid, "assistant", "La mairie est ouverte du lundi au vendredi.")
        store.add_event(cid, "answer", 1.5, entry="horaires")
        store.end_call(cid, "answered", "", 12.0)
        ids.append(cid)
    store.add_report(ids[0], "voirie", "rue des Lilas", "Un nid-de-poule devant le 12", "0611223300")
    store.add_callback(ids[1], "Rappeler pour le dossier de mariage", "0611223301", "etat_civil")
    accounts = Accounts(store)
    accounts.add("alice", "admin", "mot-de-passe-admin")
    accounts.add("bruno", "agent", "mot-de-passe-agent")
    (data / "recordings").mkdir()
    (data / "recordings" / f"{ids[0]}.wav").write_bytes(os.urandom(32000))
    (data / "secrets").mkdir(mode=0o700)
    for name, value in (("sip_password", "secret-sip"), ("trunk_password", "secret-operateur"),
                        ("console_session_key", "k" * 32)):
        (data / "secrets" / name).write_text(value)
    store.db.conn.close()
    return src, ids


def test_a_backup_taken_while_calls_are_written_restores_everything(hall, tmp_path):
    src, ids = hall
    db = src / "data" / "ivr.db"
    before = {t: rows(db, t) for t in TABLES}
    stop = threading.Event()

    def writer():                               # the assistant goes on answering during the backup
        from ivr.store import Store

        store = Store(db)
        while not stop.is_set():
            cid = store.start_call("sip", caller="0600000000")
            store.add_turn(cid, "caller", "Pendant la sauvegarde")
            time.sleep(0.01)
        store.db.conn.close()

    t = threading.Thread(target=writer)
    t.start()
    try:
        archive = tmp_path / "sauvegardes" / "mairie.tar.gz"
        r = run_ivr(env_for(src), "backup", str(archive))
    finally:
        stop.set()
        t.join()
    assert r.returncode == 0, r.stderr
    assert "Sauvegarde écrite" in r.stdout, r.stdout
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600           # personal data and secrets

    dst = tmp_path / "nouveau-serveur"
    r = restore(dst, archive)
    assert r.returncode == 0, r.stderr
    assert "restaurée" in r.stdout, r.stdout
    new_db = dst / "data" / "ivr.db"
    con = sqlite3.connect(new_db)
    assert con.execute("pragma integrity_check").fetchone()[0] == "ok"
    orphans = con.execute("select count(*) from turns where call_id not in (select id from calls)").fetchone()[0]
    con.close()
    assert orphans == 0
    for table in TABLES:
        restored = rows(new_db, table)
        assert all(row in restored for row in before[table]), table      # every row, as it was
    after_ids = {r[0] for r in rows(new_db, "calls")}
    assert set(ids) <= after_ids and len(after_ids) > len(ids)          # and the calls written meanwhile
    wav = f"recordings/{ids[0]}.wav"
    assert (dst / "data" / wav).read_bytes() == (src / "data" / wav).read_bytes()
    for name in ("sip_password", "trunk_password", "console_session_key"):
        p = dst / "data" / "secrets" / name
        assert p.read_text() == (src / "data" / "secrets" / name).read_text()
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert '"01 99 47 20 99"' in (dst / "corpus" / "commune.yaml").read_text(encoding="utf-8")
    assert (dst / "ivr.toml").read_text() == (src / "ivr.toml").read_text()
    # the restored install works: the admin logs in, the corpus loads, the calls are listed
    from ivr.console.accounts import Accounts
    from ivr.store import Store

    assert Accounts(Store(new_db)).verify("alice", "mot-de-passe-admin")
    r = run_ivr(env_for(dst), "calls", "show", ids[0])
    assert r.returncode == 0 and "Question numéro 0" in r.stdout, r.stdout + r.stderr
    assert run_ivr(env_for(dst), "corpus", "check").returncode == 0


def test_restore_refuses_a_data_folder_in_use_unless_forced(hall, tmp_path):
    src, ids = hall
    archive = tmp_path / "mairie.tar.gz"
    assert run_ivr(env_for(src), "backup", str(archive)).returncode == 0
    from ivr.store import Store

    store = Store(src / "data" / "ivr.db")
    late = store.start_call("sip", caller="0699999999")             # made after the backup
    store.db.conn.close()
    db_bytes = (src / "data" / "ivr.db").read_bytes()
    r = restore(src, archive)
    assert r.returncode == 2 and "n'est pas vide" in r.stderr and "--force" in r.stderr, r.stderr
    assert (src / "data" / "ivr.db").read_bytes() == db_bytes          # nothing changed
    r = restore(src, archive, "--force")
    assert r.returncode == 0, r.stderr
    restored = {row[0] for row in rows(src / "data" / "ivr.db", "calls")}
    assert set(ids) <= restored and late not in restored               # back to the backup's state


def test_a_damaged_backup_is_refused_and_nothing_is_written(hall, tmp_path):
    src, _ = hall
    archive = tmp_path / "mairie.tar.gz"
    assert run_ivr(env_for(src), "backup", str(archive)).returncode == 0
    raw = bytearray(archive.read_bytes())
    for i in range(len(raw) // 2, len(raw) // 2 + 64):
        raw[i] ^= 0xFF
    archive.write_bytes(raw)
    dst = tmp_path / "vide"
    r = restore(dst, archive)
    assert r.returncode == 2 and ("abîmée" in r.stderr or "pas une sauvegarde lisible" in r.stderr), r.stderr
    assert "Traceback" not in r.stderr
    assert not (dst / "data" / "ivr.db").exists() and not (dst / "corpus").exists()


def test_a_backup_from_an_older_version_is_migrated_on_restore(tmp_path):
    from ivr.store import MIGRATIONS
    import sqlite_utils

    src = tmp_path / "ancien"
    (src / "data").mkdir(parents=True)
    db = sqlite_utils.Database(src / "data" / "ivr.db")
    db["migrations"].create({"name": str, "applied_at": str}, pk="name")
    for name, fn in MIGRATIONS[:4]:                                    # a schema from four migrations ago
        fn(db)
        db["migrations"].insert({"name": name, "applied_at": "2026-10-01T00:00:00"})
    db.conn.close()
    shutil.copytree(ROOT / "corpus", src / "corpus", ignore=shutil.ignore_patterns("devset", "testset"))
    archive = tmp_path / "ancien.tar.gz"
    assert run_ivr(env_for(src), "backup", str(archive)).returncode == 0
    dst = tmp_path / "neuf"
    r = restore(dst, archive)
    assert r.returncode == 0, r.stderr
    done = [r[0] for r in rows(dst / "data" / "ivr.db", "migrations")]
    assert done == sorted(name for name, _ in MIGRATIONS)
