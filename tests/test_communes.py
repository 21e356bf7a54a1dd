"""Several communes on one install: the number dialled picks the commune (its knowledge, greeting,
hours, desk), and a console account of one commune never sees another's calls. Real Asterisk, a
real SIP caller, the real models and a real SQLite file."""
from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest
import yaml

from ivr.console.accounts import Accounts
from ivr.console.web import create_app
from tests.conftest import ROOT, make_cfg
from tests.sipcall import Assistant, reactive_call
from tests.test_calls import say, wait_idle

# Valbois: its own name, greeting, opening hours and reception extension
VALBOIS_HOURS = {d: ["07:45-11:15"] for d in ("lundi", "mardi", "mercredi", "jeudi", "vendredi")}


def make_communes(folder: Path) -> Path:
    """Two communes: Montclair (the example knowledge, number 100) and Valbois (a copy with its own
    facts, number 101)."""
    for name in ("montclair", "valbois"):
        shutil.copytree(ROOT / "corpus", folder / name, ignore=shutil.ignore_patterns("devset", "testset"))
    for name, number in (("montclair", "100"), ("valbois", "101")):
        path = folder / name / "commune.yaml"
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        data["commune"]["numeros"] = [number]
        if name == "valbois":
            data["commune"]["nom"] = "Valbois"
            data["commune"]["message_accueil"] = ("Bonjour, ici la mairie de Valbois. Appel enregistré. "
                                                  "Tapez 0 pour un agent.")
            data["services"]["accueil"]["horaires"] = VALBOIS_HOURS
            data["services"]["accueil"]["poste"] = "201"
        path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def communes(tmp_path_factory):
    return make_communes(tmp_path_factory.mktemp("communes"))


@pytest.fixture(scope="module")
def served(pbx, communes, tmp_path_factory):
    a = Assistant(tmp_path_factory.mktemp("serve"), pbx, env={"IVR_PATHS__COMMUNES": str(communes)}).start()
    yield a
    a.stop()


def _hours_turn(call: dict) -> str:
    said = [t["text"] for t in call["turns"] if t["speaker"] == "assistant" and t["entry_id"] == "mairie_pratique.horaires"]
    assert said, [(t["speaker"], t["text"]) for t in call["turns"]]
    return said[0]


def test_each_number_answers_with_its_own_communes_hours(served):
    from dialogue.corpus import spoken_hours

    answers = {}
    for number in ("101", "100"):
        r = reactive_call([say("Quels sont les horaires de la mairie ?"), say("Non merci, au revoir.")],
                          extension=number, timeout=90)
        assert r.answered, r.error
        wait_idle(served.store)
        call = served.last_calls()[0]
        answers[number] = (call["commune"], _hours_turn(call), call["turns"][0]["text"])
    commune, hours, greeting = answers["101"]
    assert commune == "valbois" and "Valbois" in greeting, answers["101"]
    assert spoken_hours(VALBOIS_HOURS) in hours, hours
    commune, hours, greeting = answers["100"]
    assert commune == "montclair" and "Montclair" in greeting, answers["100"]
    assert "7 h 45" not in hours and "8 h 30" in hours, hours


def test_a_commune_asking_for_a_person_reaches_its_own_reception(served):
    from tests.sipcall import Desk

    with Desk() as desk:
        r = reactive_call([say("Je voudrais parler à quelqu'un.")], extension="101", timeout=60)
        deadline = time.monotonic() + 10
        while not desk.calls_received() and time.monotonic() < deadline:
            time.sleep(0.5)
        invites = desk.invite_headers()
    assert r.answered, r.error
    assert invites and re.search(r"^INVITE sip:201@", invites[0], re.M), invites[:1]


def _client(cfg):
    app = create_app(cfg)
    app.config["SESSION_COOKIE_SECURE"] = False           # the test client speaks plain http
    return app.test_client(), app.extensions["ivr"]["store"]


def _login(client, name):
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/connexion").text).group(1)
    r = client.post("/connexion", data={"nom": name, "mot_de_passe": "mot-de-passe-" + name, "csrf_token": token})
    assert r.status_code == 302, r.text


def test_an_account_of_one_commune_cannot_open_anothers_calls(tmp_path):
    folder = make_communes(tmp_path / "communes")
    cfg = make_cfg(tmp_path, IVR_PATHS__COMMUNES=folder)
    client, store = _client(cfg)
    accounts = Accounts(store)
    for name, role, commune in (("agent-valbois", "agent", "valbois"), ("admin-valbois", "admin", "valbois"),
                                ("admin-interco", "admin", "")):
        accounts.add(name, role, "mot-de-passe-" + name, commune)
    ours, theirs = (store.start_call("sip", f"sip:06123456{i}@x", commune=c) for i, c in ((1, "valbois"), (2, "montclair")))
    callbacks = []
    for call_id in (ours, theirs):
        store.end_call(call_id, "transferred", "asked_for_agent", 20.0, summary="Demande un agent")
        callbacks.append(store.add_callback(call_id, "Rappeler pour un acte de naissance", "0612345678"))
        store.add_report(call_id, "voirie", "rue des Lilas", "Un nid de poule")
    report_ids = [r["id"] for r in store.db.query("select id from reports order by id")]
    # the command line says which commune each call was for
    from click.testing import CliRunner

    from ivr.cli import cli

    listed = CliRunner().invoke(cli, ["calls", "list"], env={"IVR_DATA": str(tmp_path),
                                                            "IVR_PATHS__COMMUNES": str(folder)}).output
    assert re.search(rf"{ours}\s.*valbois", listed) and re.search(rf"{theirs}\s.*montclair", listed), listed

    _login(client, "agent-valbois")
    assert client.get(f"/appels/{ours}").status_code == 200
    assert client.get(f"/appels/{theirs}").status_code == 403
    live = client.get("/direct/flux?once=1").text
    assert ours in live and theirs not in live
    assert client.get("/rappels").text.count("Rappeler pour un acte de naissance") == 1
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/rappels").text).group(1)
    assert client.post(f"/rappels/{callbacks[1]}/fait", data={"csrf_token": token}).status_code == 403
    assert client.post(f"/rappels/{callbacks[0]}/fait", data={"csrf_token": token}).status_code == 302

    client, _ = _client(cfg)
    _login(client, "admin-valbois")
    assert client.get(f"/appels/{theirs}").status_code == 403
    assert client.get(f"/appels/{theirs}/enregistrement").status_code in (403, 404)
    listing = client.get("/appels").text
    assert ours in listing and theirs not in listing
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/signalements").text).group(1)
    assert client.post(f"/signalements/{report_ids[1]}/statut", data={"statut": "transmis", "csrf_token": token}
                       ).status_code == 403
    # its knowledge pages are its own commune's
    assert "Valbois" in client.get("/commune/identite").text

    client, _ = _client(cfg)
    _login(client, "admin-interco")
    listing = client.get("/appels").text
    assert ours in listing and theirs in listing
    assert client.get(f"/appels/{theirs}").status_code == 200


def test_a_number_given_to_two_communes_is_refused_with_a_clear_message(tmp_path):
    from ivr.communes import commune_for, load_communes
    from ivr.config import ConfigError

    folder = make_communes(tmp_path / "communes")
    cfg = make_cfg(tmp_path, IVR_PATHS__COMMUNES=folder)
    communes = load_communes(cfg)
    assert list(communes) == ["montclair", "valbois"]
    assert commune_for(communes, "101").id == "valbois" and commune_for(communes, "").id == "montclair"
    path = folder / "valbois" / "commune.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace("'101'", "'1 00'"), encoding="utf-8")
    with pytest.raises(ConfigError, match="le numéro 100 est à la fois à montclair et à valbois"):
        load_communes(cfg)
