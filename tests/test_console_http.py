"""Console rules that need no browser nor telephony: Flask's test client over a real SQLite file."""
from __future__ import annotations

import re

from ivr.console.accounts import Accounts
from ivr.console.web import create_app
from tests.conftest import make_cfg


def _client(tmp_path):
    cfg = make_cfg(tmp_path)
    app = create_app(cfg)
    app.config["SESSION_COOKIE_SECURE"] = False           # the test client speaks plain http
    store = app.extensions["ivr"]["store"]
    Accounts(store).add("alice", "admin", "mot-de-passe-admin")
    return app.test_client(), store


def _login(client, suite=""):
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/connexion").text).group(1)
    return client.post("/connexion", data={"nom": "alice", "mot_de_passe": "mot-de-passe-admin",
                                           "csrf_token": token, "suite": suite})


def test_the_login_redirect_never_leaves_the_console(tmp_path):
    for suite, where in (("/appels?du=2026-11-01", "/appels?du=2026-11-01"), ("//evil.example/x", "/"),
                         ("/\\evil.example", "/"), ("https://evil.example/", "/")):
        client, _ = _client(tmp_path / str(abs(hash(suite))))
        r = _login(client, suite)
        assert r.status_code == 302 and r.headers["Location"] == where, (suite, r.headers["Location"])


def test_csv_export_cannot_carry_a_spreadsheet_formula(tmp_path):
    client, store = _client(tmp_path)
    store.add_report(None, "voirie", "rue des Lilas", '=HYPERLINK("http://evil";"x")')
    _login(client)
    text = client.get("/signalements.csv").text
    assert "'=HYPERLINK" in text and ";=HYPERLINK" not in text
