"""The commune's facts edited from the web console (/commune), in Debian's Chromium driven by
Playwright: a second, fictional commune is set up from its pages on its own copy of the corpus, and
`ivr ask` then answers with it. No telephony: the console runs alone (`ivr console`, a free port)."""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from ivr.store import Store
from tests.conftest import ADMIN, AGENT, ROOT, Console, Http, axe_clean, login_page, make_cfg, run_ivr

SHOTS = ROOT / "tests" / "artifacts" / "console"
NAME = "Saint-Aubin-des-Prés"


def _site(data: Path):
    """A data folder, a copy of the shipped (example) corpus, an admin and an agent, a console."""
    corpus = data / "corpus"
    shutil.copytree(ROOT / "corpus", corpus, ignore=shutil.ignore_patterns("devset", "testset"))
    env = dict(os.environ, IVR_DATA=str(data), IVR_PATHS__MODELS=str(ROOT / "data" / "models"),
               IVR_PATHS__CORPUS=str(corpus), IVR_PATHS__CACHE=str(ROOT / "data" / "cache"))
    for (name, pw), role in ((ADMIN, "admin"), (AGENT, "agent")):
        r = run_ivr(env, "users", "add", name, "--role", role, "--password-stdin", stdin=pw + "\n")
        assert r.returncode == 0, r.stderr
    return {"env": env, "data": data, "corpus": corpus, "file": corpus / "commune.yaml",
            "console": Console(env).start(), "store": Store(data / "ivr.db")}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    s = _site(tmp_path_factory.mktemp("commune-data"))
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        yield s
    finally:
        s["console"].stop()


def _ask(site, text: str, at: str) -> str:
    r = run_ivr(site["env"], "ask", "--at", at, text)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _save(page, text: str = "Modification enregistrée") -> None:
    page.click("form.card button[type=submit]:has-text('Enregistrer')")
    page.wait_for_selector(f"text={text}")


def test_a_new_commune_is_set_up_from_the_console_and_the_assistant_answers_with_it(site, browser):
    url, before = site["console"].url, site["file"].read_text(encoding="utf-8")
    # an admin's first log-in on an install still showing the example commune: the guided set-up
    page = login_page(browser, url)
    assert page.url.endswith("/commune/identite")
    assert "étape 1 sur 6" in page.inner_text(".guide")
    axe_clean(page, "/commune/identite")
    page.fill("#nom", NAME)
    page.fill("#adresse", f"4 place de l'Église, 27310 {NAME}")
    page.fill("#telephone", "02 35 11 22 33")
    page.fill("#email", "mairie@saint-aubin-des-pres.fr")
    page.fill("#site_web", "saint-aubin-des-pres.fr")
    page.fill("#message_accueil", "Bonjour, vous êtes bien à la mairie de {{ commune.nom }}. "
                                  "Appel enregistré. Tapez 0 pour parler à un agent.")
    _save(page)
    assert page.input_value("#nom") == NAME
    assert NAME in page.inner_text("header")          # the console names the commune it serves
    page.click("button:has-text('Étape suivante')")
    page.wait_for_url("**/commune/services")
    assert "étape 2 sur 6" in page.inner_text(".guide")
    axe_clean(page, "/commune/services")
    # the main desk's week, and a new service
    page.click("a:has-text('Modifier'):has-text(\"l'accueil de la mairie\")")
    page.wait_for_url("**/commune/services/accueil")
    axe_clean(page, "/commune/services/ID")
    for day in ("lundi", "mardi", "mercredi", "jeudi", "vendredi"):
        page.fill(f"#h_{day}", "09:00-12:00, 14:00-17:00")
    page.fill("#h_samedi", "10:00-12:00")
    page.fill("#lieu", "au rez-de-chaussée de la mairie, 4 place de l'Église")
    page.fill("#telephone", "02 35 11 22 33")
    _save(page)
    page.click("a:has-text('Ajouter un service')")
    page.fill("#identifiant", "ludotheque")
    page.fill("#nom", "la ludothèque")
    page.fill("#poste", "295")
    page.fill("#appels", "ludothèque\nprêt de jeux")
    page.fill("#lieu", "au 7 rue des Prés")
    page.fill("#telephone", "02 35 11 22 95")
    page.fill("#h_mercredi", "14:00-18:00")
    page.fill("#h_samedi", "10:00-12:00")
    _save(page)
    assert "la ludothèque" in page.inner_text("table")
    # a closure, on a given day
    page.click("button:has-text('Étape suivante')")
    page.wait_for_url("**/commune/fermetures")
    axe_clean(page, "/commune/fermetures")
    page.click("a:has-text('Ajouter une fermeture')")
    axe_clean(page, "/commune/fermetures/nouveau")
    page.fill("#du", "12/07/2027")
    page.check("#type-ferme")
    page.fill("#motif", "fête de la Saint-Aubin")
    page.check("#svc-accueil")
    _save(page)
    assert "fête de la Saint-Aubin" in page.inner_text("table")
    for step, path in ((4, "travaux"), (5, "evenements"), (6, "infos")):
        page.click("button:has-text('Étape suivante')")
        page.wait_for_url(f"**/commune/{path}")
        assert f"étape {step} sur 6" in page.inner_text(".guide")
        axe_clean(page, f"/commune/{path}")
    page.screenshot(path=str(SHOTS / "commune-infos.png"), full_page=True)
    page.click("button:has-text('Terminer')")
    page.wait_for_selector("text=Configuration terminée")
    assert page.locator(".guide").count() == 0

    # the file: the edits in the file's own format, its comments where they were
    after = site["file"].read_text(encoding="utf-8")
    assert f"nom: {NAME}" in after and '      samedi: ["10:00-12:00"]' in after
    assert "  - date: 2027-07-12\n    ferme: true\n    motif: fête de la Saint-Aubin\n    services: [accueil]" in after
    assert [x for x in before.splitlines() if x.strip().startswith("#")] == \
        [x for x in after.splitlines() if x.strip().startswith("#")]
    assert after.count("# its extension on the town hall's switchboard (transfers)") == \
        before.count("# its extension on the town hall's switchboard (transfers)")
    assert run_ivr(site["env"], "corpus", "check").returncode == 0

    # the assistant, run after the save, answers with the new commune
    said = _ask(site, "quelle est l'adresse de la mairie", "2027-07-05T10:00")
    assert NAME in said and "Montclair" not in said, said
    said = _ask(site, "quels sont les horaires de la mairie", "2027-07-05T10:00")
    assert "du lundi au vendredi de 9 h à 12 h et de 14 h à 17 h, et le samedi de 10 h à 12 h" in said, said
    said = _ask(site, "la mairie est ouverte lundi ?", "2027-07-08T10:00")          # Thursday: next Monday is the 12th
    assert "Fermeture exceptionnelle, fête de la Saint-Aubin" in said and "12 juillet" in said, said
    said = _ask(site, "la mairie est ouverte lundi ?", "2027-07-15T10:00")          # the Monday after: a usual day
    assert "Fermeture" not in said and "9 h" in said, said
    said = _ask(site, "passez-moi la ludothèque s'il vous plaît", "2027-07-07T15:00")    # Wednesday afternoon: open
    assert "ludothèque" in said, said
    chat = run_ivr(site["env"], "chat", "--at", "2027-07-05T10:00", stdin="")
    assert f"Bonjour, vous êtes bien à la mairie de {NAME}. Appel enregistré." in chat.stdout, chat.stdout

    # the journal: who, which section, what
    page.goto(url + "/journal")
    journal = page.inner_text("table")
    assert "modification de la commune" in journal
    assert "Identité — identité : nom, adresse, telephone, email, site_web, message d'accueil modifié(s)" in journal
    assert "Services — service ludotheque ajouté (la ludothèque)" in journal
    assert "Fermetures — fermeture ajoutée : 12/07/2027 (fête de la Saint-Aubin)" in journal
    assert "configuration guidée terminée" in journal
    rows = list(site["store"].db.query("select * from audit where action = 'modification de la commune'"))
    assert {r["user"] for r in rows} == {ADMIN[0]} and len(rows) == 4


def test_a_wrong_input_shows_its_reason_and_leaves_the_file_as_it_was(site, browser):
    url = site["console"].url
    page = login_page(browser, url)
    before = site["file"].read_bytes()
    logged = len(list(site["store"].db.query("select id from audit where action = 'modification de la commune'")))

    def refused(reason: str, shot: str = "") -> None:
        alert = page.inner_text("[role=alert]")
        assert "n'a pas été enregistrée" in alert and reason in alert, alert
        if shot:
            page.screenshot(path=str(SHOTS / shot), full_page=True)
        assert site["file"].read_bytes() == before

    page.goto(url + "/commune/services/accueil")
    page.fill("#h_lundi", "8h-12h")
    page.click("form.card button:has-text('Enregistrer')")
    refused("Horaires du lundi : « 8h-12h » n'est pas un créneau HH:MM-HH:MM", "commune-refusee.png")
    axe_clean(page, "/commune/services/ID refusé")
    assert page.input_value("#h_lundi") == "8h-12h"              # what was typed is kept, to correct it
    page.goto(url + "/commune/services/accueil")
    page.fill("#poste", "210")                                   # the état civil's extension
    page.click("form.card button:has-text('Enregistrer')")
    refused("Poste : le 210 est déjà celui du service état civil")
    page.goto(url + "/commune/fermetures/nouveau")
    page.fill("#du", "14/07/2027")
    page.fill("#au", "13/07/2027")
    page.fill("#motif", "fête nationale")
    page.check("#svc-accueil")
    page.click("form.card button:has-text('Enregistrer')")
    refused("Dernier jour : le 13/07/2027 est avant le premier jour (14/07/2027)")
    page.goto(url + "/commune/travaux/nouveau")
    page.fill("#rue", "rue des Prés")
    page.fill("#du", "2027-03-10")
    page.fill("#au", "01/03/2027")
    page.fill("#description", "Rue barrée, déviation par la place de l'Église.")
    page.click("form.card button:has-text('Enregistrer')")
    refused("Fin prévue : le 01/03/2027 est avant le début (10/03/2027)")
    page.goto(url + "/commune/evenements/nouveau")
    page.fill("#date", "31/02/2027")
    page.fill("#titre", "bal")
    page.fill("#lieu", "salle des fêtes")
    page.click("form.card button:has-text('Enregistrer')")
    refused("« 31/02/2027 » n'est pas une date valide")
    page.goto(url + "/commune/identite")
    page.fill("#nom", "")
    page.fill("#message_accueil", "Bonjour, la mairie vous écoute.")
    page.eval_on_selector("form.card", "f => f.noValidate = true")  # what the browser would not let through
    page.click("form.card button:has-text('Enregistrer')")
    refused("Nom de la commune : ce champ est obligatoire")
    # a local fact that an answer quotes cannot go: every answer is rendered on a copy first
    page.goto(url + "/commune/infos")
    page.check("#s-marche-jour")
    page.click("button:has-text('Enregistrer')")
    refused("La réponse de la fiche vie_locale.marche_hebdomadaire utilise « jour »")
    # a service the closures name cannot go either
    page.goto(url + "/commune/services/etat_civil")
    page.check("#confirmer")
    page.click("button:has-text('Supprimer le service')")
    refused("Ce service est cité par")
    now = len(list(site["store"].db.query("select id from audit where action = 'modification de la commune'")))
    assert now == logged                                         # nothing saved, nothing logged


def test_an_agent_cannot_reach_the_commune_pages(site, browser):
    url = site["console"].url
    page = login_page(browser, url, AGENT)
    assert "Commune" not in page.inner_text("nav")
    for path in ("/commune", "/commune/identite", "/commune/services", "/commune/services/accueil",
                 "/commune/services/nouveau", "/commune/fermetures", "/commune/fermetures/nouveau",
                 "/commune/travaux", "/commune/evenements", "/commune/infos"):
        assert page.goto(url + path).status == 403, path
    before = site["file"].read_bytes()
    http = Http(url)
    assert http.login(*AGENT).status == 302
    token = http.csrf("/rappels")
    r = http.request("/commune/identite", {"csrf_token": token, "nom": "Pirate", "adresse": "x", "telephone": "01",
                                           "email": "a@b.fr", "site_web": "x.fr", "version": ""})
    assert r.status == 403 and site["file"].read_bytes() == before
    anonymous = Http(url)
    for path in ("/commune", "/commune/services/accueil", "/commune/infos"):
        r = anonymous.request(path)
        assert r.status == 302 and "/connexion" in r.headers["Location"], path


def test_a_saved_edit_reaches_a_running_assistant_at_once(site):
    """`ivr serve` keeps the corpus in ivr.app.Knowledge: it sees a console save within seconds, not 30 s."""
    from ivr.app import Knowledge

    cfg = make_cfg(site["data"], IVR_PATHS__CORPUS=site["corpus"])
    knowledge = Knowledge(cfg)                   # check_every_s stays 30 s: only the file's change can explain it
    knowledge.start_watching()
    try:
        old = knowledge.corpus.commune.data["services"]["accueil"]["telephone"]
        http = Http(site["console"].url)
        http.login(*ADMIN)
        page = http.request("/commune/services/accueil").text
        form = {m.group(1): m.group(2) for m in re.finditer(r'<input id="(\w+)" name="\w+" value="([^"]*)"', page)}
        form.update(csrf_token=http.csrf("/commune/services/accueil"), telephone="02 35 11 22 00",
                    version=re.search(r'name="version" value="(\w+)"', page).group(1),
                    appels="l'accueil\nle standard", description="Renseignements et formulaires.")
        form = {k: v.replace("&#39;", "'") for k, v in form.items()}
        saved = time.monotonic()
        r = http.request("/commune/services/accueil", form)
        assert r.status == 302, r.text[-2000:]
        while knowledge.corpus.commune.data["services"]["accueil"]["telephone"] == old and time.monotonic() - saved < 10:
            time.sleep(0.1)
        took = time.monotonic() - saved
        assert knowledge.corpus.commune.data["services"]["accueil"]["telephone"] == "02 35 11 22 00"
        assert took < 5, took
    finally:
        knowledge.stop_watching()


def test_a_first_admin_may_skip_the_guided_set_up(tmp_path, browser):
    s = _site(tmp_path)
    try:
        url = s["console"].url
        page = login_page(browser, url)
        assert page.url.endswith("/commune/identite") and "étape 1 sur 6" in page.inner_text(".guide")
        page.click("button:has-text('Passer la configuration guidée')")
        page.wait_for_selector("text=Configuration guidée interrompue")
        assert page.url.endswith("/tableau-de-bord")
        assert run_ivr(s["env"], "users", "add", "chloe", "--role", "admin", "--password-stdin",
                       stdin="mot-de-passe-chloe\n").returncode == 0
        other = login_page(browser, url, ("chloe", "mot-de-passe-chloe"))
        assert other.url.endswith("/tableau-de-bord")            # skipped once for the whole install
        other.goto(url + "/commune")
        assert "encore la commune d'exemple" in other.inner_text("main")
        axe_clean(other, "/commune")
        other.click("button:has-text('Lancer la configuration guidée')")
        other.wait_for_url("**/commune/identite")
        assert "étape 1 sur 6" in other.inner_text(".guide")
        other.goto(url + "/journal")
        assert "configuration guidée passée" in other.inner_text("table")
    finally:
        s["console"].stop()
