"""The assistant installed as systemd services by scripts/install_services.sh, on a machine booted
under systemd: this very server in a container (`systemd-nspawn --boot` on an overlay of the host's
root, so the install and everything it writes stays in a tmpfs the test throws away), in a network
namespace of its own (its Asterisk's 5060 is not the host's). Real calls from a caller in that
namespace. Checks: a killed assistant, and a hung one (SIGSTOP: only the watchdog sees it), are
back and registered within 15 s; the services run sandboxed as their own user; after a reboot
everything starts again and answers a call."""
from __future__ import annotations

import json
import os
import re
import time

import pytest

from tests.conftest import ROOT, caller_voice
from tests.machine import UNITS, Machine

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containers and namespaces need root")


@pytest.fixture(scope="module")
def machine(tmp_path_factory):
    from tests.netlab import Lab

    with Lab() as lab:
        m = Machine(tmp_path_factory.mktemp("machine"), lab.netns("server"))
        try:
            m.boot()
            m.install()
            yield m
        finally:
            m.close()


def calls_in(m: Machine) -> list[dict]:
    """The container's call records: (id, turns said by the caller and by the assistant)."""
    code = (f"import json, os, sqlite3; os.chdir({str(ROOT)!r}); from ivr.config import load_config; "
            "db = sqlite3.connect(load_config().db_path); "
            "print(json.dumps([{'id': i, 'status': s, 'caller': c, 'assistant': a} for i, s, c, a in db.execute("
            "\"select c.id, c.status, sum(t.speaker = 'caller' and t.text != ''), sum(t.speaker = 'assistant') "
            "from calls c left join turns t on t.call_id = c.id group by c.id order by c.started_at\")]))")
    return json.loads(m.run(ROOT / ".venv/bin/python", "-c", code).stdout)


def question_is_answered(m: Machine) -> None:
    from tests.sipcall import reactive_call

    before = len(calls_in(m))
    r = reactive_call([{"audio": caller_voice("Quels sont les horaires d'ouverture de la mairie ?"),
                        "after_silence_s": 1.0}], netns=m.netns, hangup_after=14, timeout=40)
    assert r.answered, r.error
    calls = calls_in(m)
    assert len(calls) == before + 1, calls
    call = calls[-1]
    # greeted, heard the question, answered it
    assert call["caller"] >= 1 and call["assistant"] >= 2, (call, m.journal("mairie-assistant"))


def test_services_run_sandboxed_as_their_own_user_and_answer(machine):
    for unit in UNITS:
        assert machine.show(unit)["ActiveState"] == "active", machine.journal(unit)
    assert machine.show("mairie-assistant")["User"] == "mairie"
    pid = machine.show("mairie-assistant")["MainPID"]
    status = machine.run("cat", f"/proc/{pid}/status").stdout
    uid = machine.run("id", "-u", "mairie").stdout.strip()
    assert f"Uid:\t{uid}\t" in status and "NoNewPrivs:\t1" in status
    # inside the assistant's own view of the file system: the code and the system are read-only,
    # the data folder is not
    def write(path):
        return machine.run("nsenter", "-t", pid, "-m", "-S", uid, "-G", uid, "touch", path, check=False)
    assert "Read-only file system" in write(ROOT / "ivr/written-by-the-service").stderr
    assert "Read-only file system" in write("/etc/written-by-the-service").stderr
    assert write(ROOT / "data/run/written-by-the-service").returncode == 0
    assert "registration: 200" in machine.journal("mairie-assistant")       # its log is in the journal
    # the console, itself unprivileged, sees every part up (it asks Asterisk through its control socket)
    read = ("import urllib.request, urllib.error\ntry: r = urllib.request.urlopen('http://127.0.0.1:8080/sante/"
            "installation', timeout=10)\nexcept urllib.error.HTTPError as e: r = e\nprint(r.read().decode())")
    for _ in range(40):                   # checked every 15 s, from the console's start
        health = json.loads(machine.run("python3", "-c", read).stdout)
        if health["parts"].get("asterisk") == "ok" and health["parts"].get("assistant") == "ok":
            break
        time.sleep(1)
    assert health["parts"]["asterisk"] == "ok" and health["parts"]["assistant"] == "ok", health
    question_is_answered(machine)


def test_a_killed_or_hung_assistant_is_back_and_registered_within_15_s(machine):
    pid = machine.show("mairie-assistant")["MainPID"]
    t0 = time.monotonic()
    machine.run("kill", "-KILL", pid)
    killed = machine.back_after("mairie-assistant", pid, t0)

    pid = machine.show("mairie-assistant")["MainPID"]
    t0 = time.monotonic()
    machine.run("kill", "-STOP", pid)        # alive but hung: only the watchdog can tell
    hung = machine.back_after("mairie-assistant", pid, t0)
    journal = machine.journal("mairie-assistant")
    print(f"back and registered: {killed:.1f} s after SIGKILL, {hung:.1f} s after SIGSTOP")
    assert "Watchdog timeout" in journal
    assert "(most recent call first)" in journal     # the hang left every thread's stack in the log
    assert killed <= 15 and hung <= 15, (killed, hung)
    # Asterisk itself can reach it (a restarted assistant renews its contact, which Asterisk checks then)
    contacts = machine.run("chroot", ROOT / "data/asterisk/root", "/usr/sbin/asterisk", "-rx",
                           "pjsip show contacts").stdout
    assert re.search(r"assistant/\S+\s+\S+\s+Avail", contacts), contacts
    question_is_answered(machine)


def test_after_a_reboot_everything_is_back_and_answers(machine):
    machine.reboot()
    for unit in UNITS:
        t0 = time.monotonic()
        machine.back_after(unit, "-", t0, timeout=90)
    out = machine.run("python3", "-c", "import urllib.request; print(urllib.request.urlopen("
                      "'http://127.0.0.1:8080/connexion', timeout=5).status)", check=False)
    assert out.stdout.strip() == "200", out
    question_is_answered(machine)
