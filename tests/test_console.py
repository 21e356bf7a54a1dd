"""The web console, served by `ivr console` (waitress) as a town hall runs it, driven in Debian's
Chromium by Playwright, over the calls of a real `ivr serve` behind a real Asterisk. Screenshots are
kept in tests/artifacts/console/."""
from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from ivr.store import Store
from tests.conftest import ADMIN, AGENT, Console, Http, login_page
from tests.conftest import axe_clean as _axe
from tests.conftest import run_ivr as _ivr
from tests.sipcall import REPO, Assistant, Asterisk, Desk, place_call
from tests.test_calls import speech_at, wait_idle

SHOTS = REPO / "tests" / "artifacts" / "console"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Asterisk, an assistant and the console sharing one data folder (and a copy of the corpus that
    the console may edit); an admin and an agent account made with `ivr users`."""
    data = tmp_path_factory.mktemp("console-data")
    corpus = data / "corpus"
    shutil.copytree(REPO / "corpus", corpus, ignore=shutil.ignore_patterns("devset"))
    env = dict(os.environ, IVR_DATA=str(data), IVR_PATHS__MODELS=str(REPO / "data" / "models"),
               IVR_PATHS__CORPUS=str(corpus), IVR_PATHS__CACHE=str(REPO / "data" / "cache"))
    for (name, pw), role in ((ADMIN, "admin"), (AGENT, "agent")):
        r = _ivr(env, "users", "add", name, "--role", role, "--password-stdin", stdin=pw + "\n")
        assert r.returncode == 0, r.stderr
    SHOTS.mkdir(parents=True, exist_ok=True)
    with Asterisk() as pbx:
        assistant = Assistant(data, pbx, env={"IVR_PATHS__CORPUS": str(corpus)}).start()
        console = Console(env).start()
        try:
            yield {"env": env, "data": data, "corpus": corpus, "console": console, "assistant": assistant,
                   "store": Store(data / "ivr.db")}
        finally:
            console.stop()
            assistant.stop()


def _page(browser, site, who=ADMIN):
    return login_page(browser, site["console"].url, who)


# --- the switchboard: a real escalated call appears live, then opens with its recording ------------

def test_an_escalated_sip_call_appears_live_then_replays_with_its_turns(site, browser):
    page = _page(browser, site)
    page.goto(site["console"].url + "/direct")
    page.wait_for_selector("text=Aucun appel en ce moment")
    _axe(page, "/direct")
    audio = speech_at([(9.0, "Je voudrais parler à quelqu'un, s'il vous plaît."),
                       (20.0, "Allô, bonjour, c'est pour mon dossier de mariage.")], 28)
    result = {}

    def call():
        with Desk() as desk:
            result["r"] = place_call(audio, hangup_after=28, caller_id="0612345678")
            time.sleep(1)
            result["invite"] = desk.invite_headers()

    t = threading.Thread(target=call)
    t.start()
    try:
        # no reload: the card arrives by the event stream, masked number first, then the escalation
        page.wait_for_selector("article.call-card:has-text('06 •• •• •• 78')", timeout=30000)
        page.wait_for_selector("article.call-card.escalated", timeout=40000)
        page.screenshot(path=str(SHOTS / "direct.png"), full_page=True)
        card = page.inner_text("article.call-card.escalated")
        assert "parler" in card.lower() or "agent" in card.lower(), card
        assert "0612345678" not in page.content()
    finally:
        t.join(90)
    assert result["r"].answered and result["invite"]
    wait_idle(site["store"])
    call_id = re.search(r"ivr-call=([0-9a-f]+)", result["invite"][0]).group(1)
    # the desk's header gives the call page directly
    page.goto(site["console"].url + f"/appels/{call_id}")
    turns = page.locator("#transcript .turn")
    assert turns.count() >= 3
    assert "Transféré".lower() in page.inner_text(".facts").lower()
    page.wait_for_function("document.getElementById('audio').readyState >= 1", timeout=15000)
    duration = page.evaluate("document.getElementById('audio').duration")
    assert duration > 8, duration          # the assistant records until the transfer
    # clicking a caller turn seeks there and highlights it while it plays
    caller_turn = page.locator("#transcript .turn.caller").first
    start = float(caller_turn.get_attribute("data-start"))
    caller_turn.locator("button.seek").click()
    page.wait_for_function("document.getElementById('audio').currentTime > 0", timeout=10000)
    now = page.evaluate("document.getElementById('audio').currentTime")
    assert start - 0.1 <= now <= start + 3, (start, now)
    page.wait_for_selector("#transcript .turn.playing", timeout=5000)
    page.screenshot(path=str(SHOTS / "appel.png"), full_page=True)
    _axe(page, "/appels/ID")
    # listening was logged
    page.goto(site["console"].url + "/journal")
    assert "écoute d'enregistrement" in page.inner_text("table") and call_id in page.inner_text("table")


def test_an_agent_sees_masked_numbers_and_cannot_reach_admin_pages(site, browser):
    page = _page(browser, site, AGENT)
    assert page.url.endswith("/direct")
    nav = page.inner_text("nav")
    assert "Rappels" in nav and "Tableau de bord" not in nav
    for path in ("/appels", "/signalements", "/questions", "/connaissances", "/tableau-de-bord", "/journal",
                 "/appelants", "/signalements.csv"):
        resp = page.goto(site["console"].url + path)
        assert resp.status == 403, path
    call = [c for c in site["store"].recent_calls(50) if "0612345678" in (c["caller"] or "")][0]
    resp = page.goto(site["console"].url + f"/appels/{call['id']}/enregistrement")
    assert resp.status == 403
    page.goto(site["console"].url + f"/appels/{call['id']}")
    assert "06 •• •• •• 78" in page.content() and "0612345678" not in page.content()
    assert page.locator("audio").count() == 0
    page.goto(site["console"].url + "/rappels")
    _axe(page, "/rappels")


# --- admins ---------------------------------------------------------------------------------------

def test_reports_move_to_transmis_reach_the_webhook_and_export_as_csv(site, browser, tmp_path):
    received = []

    class Hook(http.server.BaseHTTPRequestHandler):
        fails = 1

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            code = 503 if Hook.fails > 0 else 200        # the first delivery fails: it is retried
            Hook.fails -= 1
            self.send_response(code)
            self.end_headers()

        def log_message(self, *a):
            pass

    hook = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    env = dict(site["env"], IVR_CONSOLE__WEBHOOK_URL=f"http://127.0.0.1:{hook.server_port}/tickets")
    console = Console(env).start()
    try:
        ticket = site["store"].add_report(None, "eclairage", "12 rue des Tanneurs", "lampadaire éteint <b>depuis</b> hier")
        page = _page(browser, {"console": console})
        page.goto(console.url + "/signalements")
        row = page.locator("tr", has_text=ticket)
        assert "<b>depuis</b>" in row.inner_text()             # shown as text, not markup
        row.locator("select").select_option("transmis")
        row.locator("button").click()
        page.wait_for_selector(f"text=Signalement {ticket} : transmis")
        deadline = time.monotonic() + 15
        while len(received) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(received) == 2 and received[1]["ticket"] == ticket and received[1]["status"] == "transmis"
        page.reload()
        assert "envoyé, essai 2" in page.locator("tr", has_text=ticket).inner_text()
        page.screenshot(path=str(SHOTS / "signalements.png"), full_page=True)
        _axe(page, "/signalements")
        with page.expect_download() as dl:
            page.click("text=Exporter en CSV")
        path = tmp_path / "export.csv"
        dl.value.save_as(path)
        text = path.read_text(encoding="utf-8-sig")
        assert text.splitlines()[0].startswith("ticket;") and ticket in text and "transmis" in text
    finally:
        console.stop()
        hook.shutdown()
    rows = list(site["store"].db.query("select * from deliveries order by id"))
    assert [r["ok"] for r in rows[-2:]] == [0, 1]
    assert any(r["action"] == "export CSV des signalements" for r in site["store"].db.query("select * from audit"))


def test_an_entry_edit_is_saved_and_a_broken_one_is_refused(site, browser):
    page = _page(browser, site)
    page.goto(site["console"].url + "/connaissances?question=" + urllib.parse.quote("à quelle heure ferme le cimetière"))
    assert "cimetiere.horaires" in page.inner_text("#essai")
    _axe(page, "/connaissances")
    page.goto(site["console"].url + "/connaissances/cimetiere.horaires")
    path = site["corpus"] / "faq" / "cimetiere.yaml"
    before = path.read_text(encoding="utf-8")
    # broken: a placeholder the commune file does not have
    page.fill("#reponse", "Le cimetière ouvre à {{ services.inconnu.horaires }}.")
    page.click("button:has-text('Enregistrer')")
    assert "n'a pas été enregistrée" in page.inner_text("[role=alert]") and "balise inconnue « inconnu »" in page.inner_text("[role=alert]")
    page.screenshot(path=str(SHOTS / "fiche-refusee.png"), full_page=True)
    assert path.read_text(encoding="utf-8") == before
    # a good edit: one more phrasing
    page.goto(site["console"].url + "/connaissances/cimetiere.horaires")
    questions = page.input_value("#questions") + "\nle cimetière ferme à quelle heure en hiver"
    page.fill("#questions", questions)
    page.click("button:has-text('Enregistrer')")
    page.wait_for_selector("text=Fiche enregistrée")
    after = path.read_text(encoding="utf-8")
    assert "le cimetière ferme à quelle heure en hiver" in after
    assert [l for l in before.splitlines() if l.strip().startswith("#")] == \
        [l for l in after.splitlines() if l.strip().startswith("#")]            # comments kept
    from dialogue.corpus import load_corpus

    entry = load_corpus(site["corpus"]).by_id("cimetiere.horaires")
    assert "le cimetière ferme à quelle heure en hiver" in entry.questions
    _axe(page, "/connaissances/ID")


def test_the_dashboard_shows_its_charts_and_the_call_list_filters(site, browser):
    store = site["store"]
    for outcome, summary, sat in (("answered", "", 1), ("answered", "", 2), ("transferred", "touche 0", None)):
        cid = store.start_call("test", "sip:0611223344@x")
        store.add_turn(cid, "caller", "les horaires de la mairie", "speech", 1, 2, 0.9)
        store.add_turn(cid, "assistant", "…", "prompt", 2, 2, 0.8, "answer", "mairie_pratique",
                       "mairie_pratique.horaires", {"endpoint": 600, "asr": 400, "dialogue": 20, "tts_first": 30})
        store.end_call(cid, outcome, "test", 20.0, summary=summary)
        if sat:
            store.set_satisfaction(cid, sat)
    page = _page(browser, site)
    assert page.url.endswith("/tableau-de-bord")
    imgs = page.locator(".chart img")
    assert imgs.count() == 6
    for i in range(6):
        assert page.evaluate("(img) => img.complete && img.naturalWidth > 0", imgs.nth(i).element_handle())
        assert imgs.nth(i).get_attribute("alt")
    assert int(page.inner_text(".kpis li:first-child .n")) >= 3
    assert page.inner_text(".kpis li:nth-child(4) .n") == "1050"          # 600 + 400 + 20 + 30 ms
    assert "touche 0" in page.text_content("#graphique-reasons")          # the data table under the chart
    page.screenshot(path=str(SHOTS / "tableau-de-bord.png"), full_page=True)
    _axe(page, "/tableau-de-bord")
    page.goto(site["console"].url + "/appels")
    page.select_option("#issue", "transferred")
    page.click("button:has-text('Filtrer')")
    assert "transféré" in page.inner_text("tbody")
    page.fill("#texte", "zorglub-introuvable")
    page.click("button:has-text('Filtrer')")
    assert "0 appel" in page.inner_text("caption")
    _axe(page, "/appels")
    page.goto(site["console"].url + "/questions")
    _axe(page, "/questions")
    for path in ("/appelants", "/journal"):
        page.goto(site["console"].url + path)
        _axe(page, path)


def test_a_call_where_the_caller_was_not_heard_is_flagged_and_found(site, browser):
    store = site["store"]
    cid = store.start_call("sip", "sip:0611223399@x")
    store.add_turn(cid, "assistant", "Je ne vous entends pas.", "prompt", 14, 14, 0.0, "clarify")
    store.end_call(cid, "transferred", "transfer", 31.0, summary="appelant silencieux", unheard_speech_s=3.4, deaf=True)
    heard = store.start_call("sip", "sip:0611223388@x")
    store.end_call(heard, "answered", "goodbye", 20.0)
    page = _page(browser, site)
    page.click("text=appel(s) où l'appelant n'a pas été entendu")
    page.wait_for_load_state()
    assert page.is_checked("#non_entendu")
    rows = page.inner_text("tbody")
    assert "appelant non entendu" in rows and "silencieux" in rows
    assert page.locator(f"a[href$='/appels/{heard}']").count() == 0          # heard calls are filtered out
    _axe(page, "/appels?non_entendu=1")
    page.click(f"a[href$='/appels/{cid}']")
    page.wait_for_load_state()
    assert "rien entendu de ce que l'appelant a dit (3,4 s de parole)" in page.inner_text(".facts")
    page.screenshot(path=str(SHOTS / "appel-non-entendu.png"), full_page=True)


# --- security, over plain HTTP -----------------------------------------------------------------------

def test_every_page_refuses_an_anonymous_visitor(site):
    http = Http(site["console"].url)
    call_id = site["store"].recent_calls(1)[0]["id"]
    for path in ("/", "/direct", "/direct/flux", "/rappels", "/appels", f"/appels/{call_id}",
                 f"/appels/{call_id}/enregistrement", "/signalements", "/signalements.csv", "/questions",
                 "/connaissances", "/connaissances/cimetiere.horaires", "/tableau-de-bord", "/appelants", "/journal"):
        r = http.request(path)
        assert r.status == 302 and "/connexion" in r.headers["Location"], path


def test_session_cookie_flags_csrf_and_login_rate_limit(site):
    http = Http(site["console"].url)
    r = http.login(*ADMIN)
    assert r.status == 302
    cookie = r.headers.get_all("Set-Cookie")[0].lower()
    assert "httponly" in cookie and "secure" in cookie and "samesite=strict" in cookie
    # a form without its token is refused
    r = http.request("/signalements/1/statut", {"statut": "traité"})
    assert r.status == 400 and "expiré" in r.text
    # guessing: five wrong passwords for an account, then it is blocked from that address for a while
    assert _ivr(site["env"], "users", "add", "denise", "--role", "agent", "--password-stdin",
                stdin="mot-de-passe-denise\n").returncode == 0
    other = Http(site["console"].url)
    assert other.login("denise", "mot-de-passe-denise").status == 302     # a success does not count
    codes = [other.login("denise", f"mauvais-{i}").status for i in range(7)]
    assert codes[:5] == [401] * 5 and codes[-1] == 429, codes
    assert other.login("denise", "mot-de-passe-denise").status == 429     # until the minute is over
    stored = list(site["store"].db.query("select pw_hash from users where name = 'alice'"))[0]["pw_hash"]
    assert stored.startswith("$argon2") and ADMIN[1] not in stored


def test_recordings_are_served_only_from_the_recordings_folder(site):
    store = site["store"]
    secret = site["data"] / "secret.txt"
    secret.write_text("not a recording")
    bad = []
    for path in (str(secret), str(site["data"] / "recordings" / ".." / "secret.txt"), "/etc/passwd"):
        cid = store.start_call("test", "sip:0700000000@x")
        store.end_call(cid, "answered", "test", 1.0, recording=path)
        bad.append(cid)
    http = Http(site["console"].url)
    http.login(*ADMIN)
    for cid in bad:
        assert http.request(f"/appels/{cid}/enregistrement").status == 404
    assert http.request("/appels/..%2F..%2Fetc%2Fpasswd/enregistrement").status == 404
    good = [c for c in store.recent_calls(20) if c["recording"] and "recordings" in c["recording"]
            and ".." not in c["recording"]][0]
    r = http.request(f"/appels/{good['id']}/enregistrement", headers={"Range": "bytes=0-99"})
    assert r.status == 206 and r.headers["Content-Type"] == "audio/wav"


def test_transcripts_with_html_are_shown_escaped(site, browser):
    store = site["store"]
    cid = store.start_call("test", "sip:0700000001@x")
    store.add_turn(cid, "caller", '<img src=x onerror="document.title=\'pwned\'"> horaires ?', "speech", 1, 2, 0.9)
    store.end_call(cid, "transferred", "test", 3.0, summary="test <script>alert(1)</script>")
    page = _page(browser, site)
    page.goto(site["console"].url + f"/appels/{cid}")
    assert page.title() != "pwned" and page.locator("#transcript img").count() == 0
    assert "<img src=x" in page.inner_text("#transcript")


def test_caller_data_export_and_erasure_and_the_daily_purge(site):
    store = site["store"]
    cid = store.start_call("test", '"X" <sip:0655443322@127.0.0.1>')
    store.add_turn(cid, "caller", "ma question", "speech", 1, 2, 0.9)
    store.end_call(cid, "message", "test", 3.0)
    store.add_callback(cid, "rappelez-moi", "0655443322")
    http = Http(site["console"].url)
    http.login(*ADMIN)
    tok = http.csrf("/appelants")
    r = http.request("/appelants", {"numero": "06 55 44 33 22", "action": "exporter", "csrf_token": tok})
    data = json.loads(r.text)
    assert [c["id"] for c in data["calls"]] == [cid] and data["callbacks"][0]["phone"] == "0655443322"
    r = http.request("/appelants", {"numero": "0655443322", "action": "supprimer", "confirmer": "oui",
                                    "csrf_token": tok})
    assert r.status == 302 and store.call(cid) is None
    assert not list(store.db.query("select * from callbacks where phone = '0655443322'"))
    audit = [r["action"] for r in store.db.query("select action from audit")]
    assert "export des données d'un appelant" in audit and "suppression des données d'un appelant" in audit
    # retention: `ivr console` purges at start (then daily); a call older than the limit goes
    old = store.start_call("test", "sip:0600000000@x")
    store.db.execute("update calls set started_at = '2020-01-01T00:00:00+00:00' where id = ?", [old])
    store.db.conn.commit()
    console = Console(site["env"]).start()
    try:
        deadline = time.monotonic() + 10
        while store.call(old) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert store.call(old) is None
    finally:
        console.stop()


def test_users_cli_lists_and_removes_accounts(site):
    env = site["env"]
    r = _ivr(env, "users", "add", "carla", "--role", "agent", "--password-stdin", stdin="court\n")
    assert r.returncode != 0 and "trop court" in r.stderr
    assert _ivr(env, "users", "add", "carla", "--role", "agent", "--password-stdin", stdin="assez-long-mdp\n").returncode == 0
    listed = _ivr(env, "users", "list").stdout
    assert "carla" in listed and "alice" in listed and "assez-long-mdp" not in listed
    assert _ivr(env, "users", "remove", "carla").returncode == 0
    assert "carla" not in _ivr(env, "users", "list").stdout
    assert _ivr(env, "users", "init").stdout == ""          # accounts exist: no new admin, nothing printed
