"""`ivr doctor` on a real install: the town hall's server (its Asterisk rendered by `ivr pbx config`
with an operator trunk, `ivr serve`, `ivr console`, a SIPp desk) in a network namespace, the
operator's Asterisk in another. The doctor runs inside the town hall's namespace, as its IT
provider would run it on the server; then each failure it reports is produced for real, once.

The tests share one install and run in file order: those that stop a part come last."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import MODELS, ROOT, make_cfg
from tests.test_trunk import USER, operator_files, registered, trunk_settings

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces, mounts and Asterisk need root")

CONSOLE_PORT = 8088                    # on the namespace's own loopback: no clash with the host


def _wait_console(ns, port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    probe = (f"import time, urllib.request\nend = time.time() + {timeout}\nwhile time.time() < end:\n"
             f"    try:\n        urllib.request.urlopen('http://127.0.0.1:{port}/sante', timeout=2); break\n"
             "    except OSError:\n        time.sleep(0.3)\nelse:\n    raise SystemExit(1)\n")
    if ns.run(sys.executable, "-c", probe, check=False).returncode != 0 or proc.poll() is not None:
        raise RuntimeError("ivr console did not start: " + log.read_text()[-2000:])


@pytest.fixture(scope="module")
def town(tmp_path_factory):
    from ivr.pbx import render
    from tests.netlab import CHROOT, Lab, LabAsterisk
    from tests.sipcall import Assistant

    data = tmp_path_factory.mktemp("doctor")
    with Lab() as lab:
        mairie, op = lab.netns("mairie"), lab.netns("op")
        m_addr, op_addr = lab.link(mairie, op)
        settings = trunk_settings(data, op_addr, m_addr, extra=f"\n[console]\nport = {CONSOLE_PORT}\n")
        cfg = make_cfg(data, IVR_CONFIG=settings)
        files = render(cfg)
        with LabAsterisk(op, "operator", operator_files(files["modules.conf"])) as operator, \
                LabAsterisk(mairie, "mairie", files, password_file=data / "secrets" / "sip_password") as pbx:
            env = dict(os.environ, IVR_CONFIG=str(settings), IVR_DATA=str(data), IVR_PATHS__MODELS=str(MODELS),
                       IVR_PATHS__CORPUS=str(ROOT / "corpus"), IVR_PATHS__CACHE=str(ROOT / "data" / "cache"),
                       IVR_SIP__PASSWORD_FILE=str(pbx.password_file), IVR_PBX__ASTERISK_ROOT=str(CHROOT),
                       IVR_PBX__ASTERISK_CONF=f"{pbx.etc}/asterisk.conf")
            assistant = Assistant(data, pbx, netns=mairie, env={"IVR_CONFIG": str(settings)})
            console = None
            try:
                assistant.start()
                log = data / "console.log"
                console = mairie.popen([sys.executable, "-m", "ivr.cli", "console", "--port", CONSOLE_PORT], cwd=ROOT,
                                       env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT)
                _wait_console(mairie, CONSOLE_PORT, console, log)
                assert registered(pbx, "trunk-reg") == "Registered", pbx.cli("pjsip show registrations")
                yield type("Town", (), dict(lab=lab, mairie=mairie, op=op, operator=operator, pbx=pbx, data=data,
                                            env=env, settings=settings, assistant=assistant, console=console,
                                            m_addr=m_addr, op_addr=op_addr))
            finally:
                if console is not None and console.poll() is None:
                    console.terminate()
                    console.wait(10)
                assistant.stop()


def doctor(ns, env: dict, text: bool = False, **overrides) -> tuple[int, dict | str]:
    """`ivr doctor --json` inside `ns`: (exit code, {check: item}); text=True: the printed text."""
    env = dict(env, **{k: str(v) for k, v in overrides.items()})
    args = ["doctor"] if text else ["doctor", "--json"]
    t = time.monotonic()
    proc = ns.run(sys.executable, "-m", "ivr.cli", *args, check=False, env=env, cwd=ROOT, timeout=60)
    assert time.monotonic() - t < 20, "the doctor should answer within seconds"
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    if text:
        return proc.returncode, proc.stdout
    items = json.loads(proc.stdout)
    assert [i["check"] for i in items] == ["asterisk", "assistant", "trunk", "desks", "communes", "models", "disk",
                                           "database", "console", "certificate", "clock", "security"]
    assert all(set(i) == {"check", "status", "detail", "fix"} for i in items)
    return proc.returncode, {i["check"]: i for i in items}


def failed(result, check: str, *words: str) -> dict:
    """The item of `check`, asserted failed, with a French detail holding `words`, a fix, and exit code 1."""
    rc, items = result
    item = items[check]
    assert item["status"] == "fail", item
    assert all(w in item["detail"] for w in words), item
    assert item["fix"], item
    assert rc == 1, items
    return item


def test_a_healthy_install_passes(town):
    from tests.sipcall import Desk

    with Desk(netns=town.mairie):
        rc, items = doctor(town.mairie, town.env)
        rc_text, text = doctor(town.mairie, town.env, text=True)
    print(text)
    expected = {"asterisk": "ok", "assistant": "ok", "trunk": "ok", "desks": "ok", "models": "ok",
                "database": "ok", "console": "ok", "certificate": "skip"}
    assert {k: items[k]["status"] for k in expected} == expected, items
    assert items["disk"]["status"] in ("ok", "warn") and items["clock"]["status"] in ("ok", "warn"), items
    assert rc == 0 and rc_text == 0, items
    assert "Asterisk le joint" in items["assistant"]["detail"]
    assert "enregistré auprès de l'opérateur" in items["trunk"]["detail"]
    desks = items["desks"]["detail"]
    assert "sip:desk@127.0.0.1:5080" in desks and "le service urbanisme (220)" in desks
    assert "✔ Standard (Asterisk)" in text and "– Certificat TLS" in text and "✘" not in text


def test_an_unreachable_desk(town):
    # no SIPp desk in the namespace: nothing answers at the desk's contact
    item = failed(doctor(town.mairie, town.env), "desks", "le poste desk (sip:desk@127.0.0.1:5080) ne répond pas")
    assert "le service urbanisme (220)" in item["detail"]


def test_missing_models(town, tmp_path):
    item = failed(doctor(town.mairie, town.env, IVR_PATHS__MODELS=tmp_path), "models",
                  "manquant", "modèle de reconnaissance vocale absent", str(tmp_path / "whisper-base"),
                  "modèle de fin de tour Smart Turn absent")
    assert "ivr models provision" in item["fix"]


def test_a_full_disk(town, tmpfs):
    data = tmpfs("2M")
    with open(data / "remplissage", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    item = failed(doctor(town.mairie, town.env, IVR_DATA=data), "disk", "disque presque plein", str(data))
    assert "ivr purge" in item["fix"]


def test_a_read_only_database(town, tmpfs):
    from ivr.store import Store

    data = tmpfs("16M")
    Store(data / "ivr.db").db.conn.close()
    subprocess.run(["mount", "-o", "remount,ro", str(data)], check=True)
    item = failed(doctor(town.mairie, town.env, IVR_DATA=data), "database",
                  "n'est pas accessible en écriture", "lecture seule")
    assert "remount,rw" in item["fix"]


def test_a_certificate_expiring_tomorrow(town, tmp_path):
    cert, key = tmp_path / "asterisk.crt", tmp_path / "asterisk.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=mairie",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    item = failed(doctor(town.mairie, town.env, IVR_TLS__ENABLED="true", IVR_TLS__CERT_FILE=cert,
                         IVR_TLS__KEY_FILE=key), "certificate", f"le certificat {cert} expire le")
    assert "renouvelez" in item["fix"]


def test_a_clock_behind_the_newest_call(town):
    import sqlite3
    from datetime import datetime, timezone

    next_year = datetime.now(timezone.utc).replace(year=datetime.now().year + 1).isoformat(timespec="milliseconds")
    with sqlite3.connect(town.data / "ivr.db") as db:
        db.execute("insert into calls (id, started_at, transport, caller, status) values (?, ?, 'sip', '', 'ended')",
                   ["from-the-future", next_year])
    try:
        item = failed(doctor(town.mairie, town.env), "clock", "l'horloge du système retarde",
                      "un appel est enregistré le")
        assert "chrony" in item["fix"]
    finally:
        with sqlite3.connect(town.data / "ivr.db") as db:
            db.execute("delete from calls where id = 'from-the-future'")


def test_a_wrong_trunk_password(town):
    """A second town hall server whose operator password is wrong: the operator refuses it."""
    from ivr.pbx import render
    from tests.netlab import LabAsterisk

    data = town.data / "wrong"
    ns = town.lab.netns("mairie2")
    m2, op2 = town.lab.link(ns, town.op)
    settings = trunk_settings(data, op2, m2, password="pas-le-bon")
    with LabAsterisk(ns, "mairie-wrong", render(make_cfg(data, IVR_CONFIG=settings))) as pbx:
        assert registered(pbx, "trunk-reg", timeout=20) == "Rejected", pbx.cli("pjsip show registrations")
        item = failed(doctor(ns, town.env, IVR_CONFIG=settings, IVR_DATA=data,
                             IVR_PBX__ASTERISK_CONF=f"{pbx.etc}/asterisk.conf"),
                      "trunk", "l'opérateur refuse l'identifiant ou le mot de passe", USER)
    print(json.dumps(item, ensure_ascii=False, indent=1))
    assert str(data / "secrets" / "trunk_password") in item["fix"] and "scripts/asterisk.sh configure" in item["fix"]


def test_external_mode_with_an_unreachable_registrar(town):
    # the town hall's own PBX: here the lab Asterisk answers OPTIONS; then an address where none listens
    rc, items = doctor(town.mairie, town.env, IVR_PBX__MODE="external", IVR_SIP__REGISTRAR="sip:127.0.0.1:5060")
    assert items["asterisk"]["status"] == "ok" and "répond" in items["asterisk"]["detail"], items["asterisk"]
    assert items["trunk"]["status"] == "skip", items["trunk"]
    item = failed(doctor(town.mairie, town.env, IVR_PBX__MODE="external", IVR_SIP__REGISTRAR="sip:127.0.0.1:5999"),
                  "asterisk", "le standard (sip:127.0.0.1:5999) ne répond pas en 2 s")
    assert "[sip] registrar" in item["fix"]
    # a TLS-only PBX: its port must accept a connection (nothing listens on 5061 here)
    tls = "sip:127.0.0.1:5061;transport=tls"
    failed(doctor(town.mairie, town.env, IVR_PBX__MODE="external", IVR_SIP__REGISTRAR=tls), "asterisk", "le standard (sip:127.0.0.1:5061;transport=tls) ne répond pas")


def test_a_check_that_raises_is_a_failure_not_a_traceback(monkeypatch, tmp_path):
    from ivr import doctor as doc

    def broken(cfg):
        raise RuntimeError("panne simulée")

    monkeypatch.setattr(doc, "CHECKS", [("disk", broken), ("clock", doc.check_clock)])
    results = doc.run_checks(make_cfg(tmp_path))
    assert results[0].status == "fail" and "panne simulée" in results[0].detail and results[0].fix
    assert results[1].check == "clock" and results[1].status in ("ok", "warn")


# --- these stop a part of the install: last -------------------------------------------------------
def test_the_console_stopped(town):
    town.console.terminate()
    town.console.wait(10)
    item = failed(doctor(town.mairie, town.env), "console",
                  f"la console ne répond pas sur http://127.0.0.1:{CONSOLE_PORT}/sante", "connexion refusée")
    assert "ivr console" in item["fix"]


def test_the_assistant_stopped(town):
    town.assistant.stop()
    item = failed(doctor(town.mairie, town.env), "assistant", "ivr serve est arrêté")
    assert "ivr serve" in item["fix"]


def test_asterisk_stopped(town):
    town.pbx.stop()
    rc, text = doctor(town.mairie, town.env, text=True)
    print(text)
    item = failed(doctor(town.mairie, town.env), "asterisk", "Asterisk ne répond pas")
    assert "scripts/asterisk.sh start" in item["fix"]
    assert rc == 1 and "✘ Standard (Asterisk)" in text and "→ à faire : démarrez Asterisk" in text
