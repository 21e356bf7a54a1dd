"""Nothing lost: a killed assistant, a full disk, two processes writing the database at once, broken
settings or knowledge base.

All real: `ivr serve` killed with SIGKILL in the middle of a real SIP call through Asterisk, a data
folder on a small tmpfs filled to the last byte, the console (Flask) and call records written by two
processes on one SQLite file, and the command line refusing broken files.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audio.pcm import rms_dbfs
from ivr.store import Store
from tests.conftest import ROOT, caller_voice, make_cfg

RATE = 8000
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="real calls and tmpfs mounts need root")


# --- helpers ---------------------------------------------------------------------------------------
def speech_at(parts: list[tuple[float, str]], total: float) -> np.ndarray:
    out = np.zeros(int(total * RATE), np.int16)
    for t, text in parts:
        v = caller_voice(text, phone=False)
        i = int(t * RATE)
        out[i:i + len(v)] = v[: len(out) - i]
    return out


def copy_corpus(dst: Path) -> Path:
    shutil.copytree(ROOT / "corpus", dst, ignore=shutil.ignore_patterns("devset", "testset"))
    return dst


def wait_for(pred, timeout: float, what: str, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def serve_env(data: Path, pbx=None, **extra) -> dict:
    """What tests/sipcall.Assistant gives `ivr serve`, for runs that are expected to stop at once."""
    env = dict(os.environ, IVR_DATA=str(data), IVR_PATHS__MODELS=str(ROOT / "data" / "models"),
               IVR_PATHS__CORPUS=str(ROOT / "corpus"), IVR_PATHS__CACHE=str(ROOT / "data" / "cache"))
    if pbx is not None:
        env["IVR_SIP__PASSWORD_FILE"] = str(pbx.password_file)
    else:
        env["IVR_SIP__PASSWORD"] = "inutile"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_serve(env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ivr.cli", "serve", "--at", "2026-12-01T10:00"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def fill(folder: Path) -> Path:
    """Writes a file until the file system is full (ENOSPC)."""
    path = folder / "remplissage"
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
        try:
            while True:
                f.write(b"\0" * 512)
        except OSError:
            pass
    assert shutil.disk_usage(folder).free < 64 * 1024, shutil.disk_usage(folder)
    return path


def console_client(cfg):
    """The console (Flask test client) on that data folder, logged in as an admin."""
    from ivr.console.accounts import Accounts
    from ivr.console.web import create_app

    app = create_app(cfg)
    app.config["SESSION_COOKIE_SECURE"] = False
    accounts = Accounts(app.extensions["ivr"]["store"])
    if not accounts.get("alice"):
        accounts.add("alice", "admin", "mot-de-passe-admin")
    client = app.test_client()
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/connexion").text).group(1)
    assert client.post("/connexion", data={"nom": "alice", "mot_de_passe": "mot-de-passe-admin",
                                           "csrf_token": token}).status_code == 302
    return client


def iso_ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


# --- broken files: refused before anything starts ------------------------------------------------------
@pytest.mark.parametrize("settings, said", [
    ("[sip\nport = 5060\n", "invalid TOML"),
    ("[sip]\nport = \"cinq\"\n", "[sip]: port = 'cinq': expected a whole number"),
    ("[appel]\nduree = 3\n", "unknown setting 'appel'"),
])
def test_a_broken_settings_file_stops_the_assistant_before_it_starts(tmp_path, settings, said):
    path = tmp_path / "ivr.toml"
    path.write_text(settings)
    t0 = time.monotonic()
    r = run_serve(serve_env(tmp_path / "data", IVR_CONFIG=path))
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.startswith("Erreur de configuration : ") and said in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and time.monotonic() - t0 < 20       # no model was loaded


def test_a_broken_knowledge_base_stops_the_assistant_before_it_starts(tmp_path):
    corpus = copy_corpus(tmp_path / "corpus")
    with open(corpus / "commune.yaml", "a", encoding="utf-8") as f:
        f.write("\nhoraires: [non fermé\n")
    r = run_serve(serve_env(tmp_path / "data", IVR_PATHS__CORPUS=corpus))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert re.search(r"^Erreur : .*commune\.yaml: YAML invalide", r.stderr, re.M), r.stderr[-2000:]


# --- recordings -------------------------------------------------------------------------------------------
def test_a_recording_left_by_a_killed_process_is_repaired_and_one_in_use_is_not(tmp_path):
    from ivr.recording import RecordingWriter, repair_partial

    rng = np.random.default_rng(1)
    left = [rng.integers(-8000, 8000, 160).astype(np.int16) for _ in range(150)]
    right = [rng.integers(-8000, 8000, 160).astype(np.int16) for _ in range(150)]
    store = Store(tmp_path / "ivr.db")
    dead, live = store.start_call("sip"), store.start_call("sip")
    rec = tmp_path / "recordings"
    w_dead = RecordingWriter(rec / f"{dead}.wav", RATE)
    assert w_dead.write(left, right, 100)
    w_dead._fh.write(b"\x01\x02\x03")           # killed in the middle of a sample
    w_dead._fh.close()                          # what the kernel does for a dead process: its lock goes
    w_live = RecordingWriter(rec / f"{live}.wav", RATE)
    assert w_live.write(left, right, 50)

    store.close_interrupted("sip")
    assert repair_partial(rec, store) == [rec / f"{dead}.wav"]
    audio, rate = sf.read(rec / f"{dead}.wav", dtype="int16")
    assert rate == RATE and audio.shape == (100 * 160, 2)
    assert (audio[:, 0] == np.concatenate(left[:100])).all() and (audio[:, 1] == np.concatenate(right[:100])).all()
    assert store.call(dead)["recording"] == str(rec / f"{dead}.wav")
    assert (rec / f"{live}.wav.part").exists() and not store.call(live)["recording"]     # still being written
    assert w_live.finish(left, right[:120]) == rec / f"{live}.wav"
    audio, _ = sf.read(rec / f"{live}.wav", dtype="int16")
    assert audio.shape == (150 * 160, 2) and not audio[120 * 160:, 1].any()   # the shorter side: silence


# --- the console and the assistant writing at once -----------------------------------------------------
ASSISTANT_WRITER = r"""
import json, sys, threading, time
from ivr.store import Store
db, seconds, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
store, errors, done = Store(db), [], []

def calls(k):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            cid = store.start_call("sip", f"sip:06112233{k}{len(done) % 10}@x")
            for i in range(8):
                store.add_turn(cid, "caller" if i % 2 == 0 else "assistant", f"tour {i}", t_start=i)
                store.add_event(cid, "speech-start", float(i), n=i)
            store.add_report(cid, "eclairage", "rue des Lilas", "lampadaire éteint")
            store.add_callback(cid, "rappelez-moi", "0611223344")
            store.end_call(cid, "answered", "goodbye", 8.0)
            done.append(cid)
        except Exception as exc:
            errors.append(repr(exc))

threads = [threading.Thread(target=calls, args=(k,)) for k in range(3)]   # three calls at a time
for t in threads: t.start()
for t in threads: t.join()
json.dump({"calls": done, "errors": errors}, open(out, "w"))
"""

CONSOLE_WRITER = r"""
import json, sys, time
sys.path.insert(0, sys.argv[4])
from tests.conftest import make_cfg
from tests.test_nothing_lost import console_client
from ivr.store import Store
from pathlib import Path
cfg = make_cfg(Path(sys.argv[1]))
seconds, out = float(sys.argv[2]), sys.argv[3]
client = console_client(cfg)
store = Store(cfg.db_path)
statuses, pages, changes, failures, last = ["transmis", "traité", "nouveau"], 0, 0, [], {}
token = None
end = time.monotonic() + seconds
i = 0
while time.monotonic() < end:
    ids = [r["id"] for r in store.db.query("select id from reports order by id desc limit 5")]
    if not ids:
        time.sleep(0.01)
        continue
    if token is None:
        import re
        token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/signalements").text).group(1)
    rid, status = ids[i % len(ids)], statuses[i % 3]
    r = client.post(f"/signalements/{rid}/statut", data={"statut": status, "csrf_token": token})
    if r.status_code == 302:
        last[rid], changes = status, changes + 1
    else:
        failures.append(("statut", rid, r.status_code))
    call = store.db.execute("select id from calls order by rowid desc limit 1").fetchone()[0]
    r = client.get(f"/appels/{call}")                     # each view is written to the audit log
    pages += r.status_code == 200
    if r.status_code != 200:
        failures.append(("appel", call, r.status_code))
    i += 1
json.dump({"status_changes": changes, "last": last, "pages": pages, "failures": failures},
          open(out, "w"))
"""


def test_the_console_and_the_assistant_writing_at_once_lose_nothing(tmp_path):
    cfg = make_cfg(tmp_path)
    store = Store(cfg.db_path)
    assert store.db.execute("pragma journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("pragma busy_timeout").fetchone()[0] >= 5000
    console_client(cfg)                       # the account and the console's secret exist before both start
    seconds = 10
    a_out, c_out = tmp_path / "assistant.json", tmp_path / "console.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    args = [[ASSISTANT_WRITER, cfg.db_path, seconds, a_out], [CONSOLE_WRITER, tmp_path, seconds, c_out, ROOT]]
    procs = [subprocess.Popen([sys.executable, "-c", *map(str, a)], cwd=ROOT, env=env, stderr=subprocess.PIPE,
                              text=True) for a in args]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
    a, c = json.loads(a_out.read_text()), json.loads(c_out.read_text())
    assert not a["errors"], a["errors"][:5]
    assert not c["failures"], c["failures"][:5]
    assert len(a["calls"]) >= 30 and c["pages"] >= 30, (len(a["calls"]), c["pages"])   # they did overlap

    store = Store(cfg.db_path)
    n = lambda sql, *args: store.db.execute(sql, args).fetchone()[0]   # noqa: E731
    calls = a["calls"]
    marks = ",".join("?" * len(calls))
    assert n(f"select count(*) from calls where status = 'ended' and id in ({marks})", *calls) == len(calls)
    for table, each in (("turns", 8), ("events", 8), ("reports", 1), ("callbacks", 1)):
        assert n(f"select count(*) from {table} where call_id in ({marks})", *calls) == each * len(calls), table
    seqs = {tuple(r["s"] for r in store.db.query("select seq as s from turns where call_id = ? order by seq", [cid]))
            for cid in calls}
    assert seqs == {tuple(range(8))}
    for rid, status in c["last"].items():      # every status change kept, the latest one last
        assert store.db["reports"].get(int(rid))["status"] == status
    audit = n("select count(*) from audit where action like 'signalement %'")
    views = n("select count(*) from audit where action = 'consultation d''appel'")
    assert audit == c["status_changes"] and views == c["pages"], (audit, views, c)


# --- a real call, and `kill -9` in the middle of it -----------------------------------------------------
@as_root
def test_a_killed_assistant_keeps_the_call_said_so_far_and_its_recording(pbx, tmp_path):
    from tests.sipcall import Assistant, Desk, place_call

    corpus = copy_corpus(tmp_path / "corpus")
    data = tmp_path / "data"
    data.mkdir()
    a = Assistant(data, pbx, env={"IVR_PATHS__CORPUS": str(corpus)}).start()
    try:
        # an admin saves a broken knowledge base: the running assistant refuses it, keeps the last good one
        commune = corpus / "commune.yaml"
        good = commune.read_text(encoding="utf-8")
        commune.write_text(good + "\nhoraires: [non fermé\n", encoding="utf-8")
        wait_for(lambda: "corpus edit refused" in a.log.read_text(), 20, "the refused corpus edit")

        store = Store(data / "ivr.db")
        killed: dict = {}

        def kill_while_answering():
            # once the answer is being spoken (its turn in the records), 3 s more, then SIGKILL
            row = wait_for(lambda: store.db.execute(
                "select c.id, c.started_at from turns t join calls c on c.id = t.call_id where c.status = 'active' "
                "and t.speaker = 'assistant' and t.entry_id is not null").fetchone(), 40, "the answer")
            time.sleep(3.0)
            a.proc.send_signal(signal.SIGKILL)
            killed.update(call=row[0], started=iso_ts(row[1]), at=time.time())

        total = 36.0
        audio = speech_at([(11.0, "Bonjour, quels sont les horaires de la piscine ?")], total)
        with Desk() as desk:
            killer = threading.Thread(target=kill_while_answering)
            killer.start()
            r = place_call(audio, hangup_after=total)
            killer.join()
            time.sleep(1)
        assert killed, "the assistant never answered"
        assert r.answered and desk.calls_received() == 1, "the caller must reach the desk after the kill"
        a.proc.wait(10)
        cid, said_s = killed["call"], killed["at"] - killed["started"]

        # before any restart: what was said is in the records, the recording is on disk so far
        call = store.call(cid)
        assert call["status"] == "active"
        part = data / "recordings" / f"{cid}.wav.part"
        assert part.exists() and part.stat().st_size >= 44 + 4 * RATE * (said_s - 2.5), (part.stat().st_size, said_s)

        # a restart with the broken knowledge base is refused, and touches nothing
        r2 = run_serve(serve_env(data, pbx, IVR_PATHS__CORPUS=corpus))
        assert r2.returncode == 2 and "commune.yaml: YAML invalide" in r2.stderr, r2.stderr[-2000:]
        assert store.call(cid)["status"] == "active" and part.exists()

        # with no assistant, a new caller goes to the desk
        with Desk() as desk:
            r3 = place_call(np.zeros(8 * RATE, np.int16), hangup_after=8)
            time.sleep(1)
        assert r3.answered and desk.calls_received() == 1

        # the knowledge base fixed, the assistant starts: the call is closed as interrupted, its recording kept
        commune.write_text(good, encoding="utf-8")
        a.start()
        wait_for(lambda: store.call(cid)["status"] == "ended" and store.call(cid)["recording"], 90,
                 "the interrupted call closed")
        call = store.call(cid)
        assert call["outcome"] == "error" and call["end_reason"] == "assistant_restart" and call["ended_at"]
        turns = [(t["speaker"], t["action"], t["entry_id"]) for t in call["turns"]]
        assert turns[0][:2] == ("assistant", "greeting"), turns
        assert any(s == "caller" for s, _, _ in turns), turns
        answers = [e for s, _, e in turns if s == "assistant" and e]
        assert answers and answers[0] == "sport_culture_loisirs.piscine_horaires", turns   # the last good corpus

        rec = Path(call["recording"])
        assert rec == data / "recordings" / f"{cid}.wav" and not part.exists()
        audio, rate = sf.read(rec, dtype="int16")
        assert rate == RATE and audio.ndim == 2 and audio.shape[1] == 2
        assert said_s - 2.5 <= len(audio) / RATE <= said_s + 0.5, (len(audio) / RATE, said_s)
        caller, bot = audio[:, 0], audio[:, 1]
        assert rms_dbfs(bot[: 6 * RATE]) > -40                               # the greeting
        assert rms_dbfs(caller[int(11.5 * RATE): int(13.5 * RATE)]) > -40    # the question
        assert rms_dbfs(caller[2 * RATE: 9 * RATE]) < -60                    # the caller was silent before
        assert rms_dbfs(bot[-int(2.5 * RATE):]) > -45                        # the answer, up to the kill

        # the console shows it interrupted, with its recording
        client = console_client(make_cfg(data, IVR_PATHS__CORPUS=corpus))
        page = client.get(f"/appels/{cid}").text
        assert "Appel interrompu" in page and f"/appels/{cid}/enregistrement" in page
        assert client.get(f"/appels/{cid}/enregistrement").status_code == 200
    finally:
        a.stop()


# --- a full disk --------------------------------------------------------------------------------------------
@as_root
def test_a_full_disk_never_leaves_a_caller_in_silence(pbx, tmp_path, tmpfs):
    from tests.sipcall import Assistant, Desk, place_call

    data = tmpfs("96M")
    cache = data / "cache"                      # as installed: the caches in the data folder, on the same disk
    (cache / "index").mkdir(parents=True)
    for f in (ROOT / "data" / "cache" / "index").glob("faq-*.pkl"):
        shutil.copy(f, cache / "index" / f.name)
    shutil.copy(ROOT / "data" / "cache" / "asr_layout.json", cache / "asr_layout.json")
    a = Assistant(data, pbx, env={"IVR_PATHS__CACHE": ""})
    a.log = tmp_path / "serve.log"              # the log elsewhere, to read what was said about it
    a.start()
    try:
        filler = fill(data)
        total, free_at = 32.0, 25.0
        audio = speech_at([(11.0, "Quels sont les horaires de la déchetterie ?")], total)
        # space comes back near the end of the call: what could not be written then is written at its end
        freer = threading.Timer(free_at, filler.unlink)
        with Desk() as desk:
            freer.start()
            r = place_call(audio, hangup_after=total)
            freer.join()
            time.sleep(1)
        assert r.answered and a.proc.poll() is None
        heard = r.heard
        assert rms_dbfs(heard[: 6 * RATE]) > -40, "the greeting"
        assert rms_dbfs(heard[14 * RATE: 24 * RATE]) > -40, "an answer to the question, the disk still full"
        assert desk.calls_received() == 0, "the assistant answered itself, no needless transfer"
        log = a.log.read_text()
        assert re.search(r"ERROR\s+ivr\.store: disk full or database not writable: call \w+: recording .*"
                         r"No space left on device", log), log[-3000:]

        store = Store(data / "ivr.db")
        call = wait_for(lambda: next((c for c in store.recent_calls(1) if c["status"] == "ended"), None), 20,
                        "the call's record")
        events = {e["type"]: json.loads(e["data"] or "{}") for e in store.call(call["id"])["events"]}
        assert events["storage-error"]["recording_failures"] >= 1, events.get("storage-error")
        assert events["storage-error"]["recording_complete"] is True
        audio, _ = sf.read(call["recording"], dtype="int16")
        assert abs(len(audio) / RATE - call["duration_s"]) < 0.5           # all of it, from memory
        assert rms_dbfs(audio[int(11.5 * RATE): int(13.5 * RATE), 0]) > -40
    finally:
        a.stop()
