"""The orientation questionnaire: five questions at most, answered by voice or keys, then the aids that
fit (rules in corpus/aides.yaml and commune.yaml's aides_locales)."""
import datetime as dt
import json
import re

import pytest

from dialogue.corpus import CorpusError, load_corpus
from dialogue.orientation import NEEDS, QUESTIONS, orient, parse, review_due
from tests.conftest import CLOSED_TIME, ROOT
from tests.test_dialogue import _ivr, conv, kb  # noqa: F401  (fixtures)


def aids_of(reply) -> list[str]:
    return reply.aids or []


def test_a_retired_woman_living_alone_is_oriented_by_voice_to_old_age_aids(conv):
    c = conv()
    r = c.on_text("bonjour je suis retraitée je vis toute seule à quoi j'ai droit")
    assert r.action == "orientation" and "âge" in r.text          # situation and household already said
    assert c.expects == "orient_age"
    r = c.on_text("j'ai soixante-dix-huit ans")
    assert "par mois" in r.text and c.expects == "orient_revenus"
    r = c.on_text("à peu près neuf cents euros")
    assert "besoin" in r.text
    r = c.on_text("de l'aide à la maison, je n'arrive plus à faire le ménage")
    found = aids_of(r)
    assert r.action == "orientation" and found, r.text
    assert {"apa", "aide_menagere"} & set(found), found
    assert not {"rsa", "prime_activite", "bourse_college", "bourse_lycee"} & set(found), found
    assert "CAF" in r.text or "Département" in r.text or "CCAS" in r.text
    r = c.on_text("la deuxième")                                   # the details of one of them
    second = next(a for a in c.corpus.aids if a.id == found[1])
    assert second.say in r.text and second.where in r.text
    r = c.on_text("le CCAS")                                        # put through to the CCAS desk
    assert r.transfer and r.transfer_to == c.commune.data["services"]["ccas"]["poste"]


def test_keys_answer_every_question(conv):
    c = conv()
    r = c.on_text("je suis en difficulté")
    assert r.action == "orientation" and "situation" in r.text
    for key in "1", "2", "3", "2":        # in work, 25-59, alone with children, 1 000-2 000 euros
        r = c.on_dtmf(key)
        assert r.action == "orientation"
    assert c.s.orient["profile"] == {"situation": ["emploi"], "age": ["de_25_a_59"], "foyer": ["seul_enfants"],
                                     "revenus": ["moyens"]}
    r = c.on_dtmf("4")                    # children and school
    found = aids_of(r)
    assert found and any(re.search("bourse|rentree|familiales", a) for a in found), found
    assert not {"apa", "aspa"} & set(found), found
    r = c.on_dtmf("1")                    # the first aid's details
    assert c.corpus.aids and r.action == "orientation" and "À demander" in r.text


def test_dont_know_and_unclear_answers_never_block_and_stop_leaves(conv):
    c = conv()
    c.on_text("quelles aides je peux avoir")
    r = c.on_text("je ne sais pas")                       # situation unknown: next question
    assert "âge" in r.text
    r = c.on_text("le vélo de mon voisin")                # not an age: asked again once...
    assert r.text.startswith("Je n'ai pas compris") and "âge" in r.text
    r = c.on_text("bleu")                                 # ...then left unknown
    assert "Vivez-vous" in r.text
    r = c.on_dtmf("#")                                    # '#' skips a question
    assert "par mois" in r.text
    r = c.on_text("stop, j'arrête")
    assert r.action == "answer" and "autre question" in r.text and c.s.stage == "after_answer"


def test_an_unknown_answer_rules_nothing_out():
    c = load_corpus(ROOT / "corpus")
    everyone = orient(c.aids, {}, limit=100).aids
    assert len(everyone) == len(c.aids)
    young_worker = orient(c.aids, {"situation": ["emploi"], "age": ["moins_25"], "foyer": ["seul"],
                                   "revenus": ["moyens"], "besoin": ["revenu"]}, limit=100).aids
    assert "prime_activite" in [a.id for a in young_worker]
    assert "rsa" not in [a.id for a in young_worker]                  # under 25 without children


def test_a_question_mid_answer_is_still_heard_and_the_questionnaire_is_left(conv):
    c = conv()
    c.on_text("à quoi j'ai droit")
    for said in ("retraité", "soixante-dix ans", "en couple", "je ne sais pas", "la santé"):
        r = c.on_text(said)
    assert r.action == "orientation" and c.s.stage == "orient_result"
    r = c.on_text("au fait quels sont les horaires de la mairie")
    assert r.action == "answer" and r.entry_id == "mairie_pratique.horaires"


def test_the_ccas_outside_its_hours_takes_a_message(conv):
    c = conv(at=CLOSED_TIME)
    c.on_text("à quoi j'ai droit")
    for key in "3", "3", "1", "1", "3":
        r = c.on_dtmf(key)
    assert c.s.stage == "orient_result"
    r = c.on_text("le c c a s")
    assert r.action == "message" and not r.transfer and r.service == "ccas"


def test_every_aid_has_a_source_a_recent_check_and_known_values():
    c = load_corpus(ROOT / "corpus")
    assert len([a for a in c.aids if not a.local]) >= 12 and [a for a in c.aids if a.local]
    for a in c.aids:
        assert set(a.needs) <= set(NEEDS), a.id
        assert a.local or a.source.startswith("https://www.service-public.fr/"), a.id
        assert a.say and a.where and a.name, a.id
    assert review_due(c.aids, dt.date(2026, 12, 1)) == []
    assert review_due(c.aids, dt.date(2028, 1, 1))                     # a year later, all are due
    for need in NEEDS:                                                 # every need has somewhere to go
        assert any(need in a.needs for a in c.aids), need


def test_a_broken_aid_is_refused_with_a_french_reason(tmp_path):
    import shutil

    shutil.copytree(ROOT / "corpus", tmp_path / "corpus")
    p = tmp_path / "corpus" / "aides.yaml"
    p.write_text(p.read_text("utf-8").replace("besoins: [revenu]", "besoins: [vacances]", 1), "utf-8")
    with pytest.raises(CorpusError) as e:
        load_corpus(tmp_path / "corpus")
    assert "besoin inconnu" in str(e.value)


def test_an_edit_of_the_aids_is_seen_by_a_running_assistant(tmp_path):
    import shutil

    from dialogue.corpus import fingerprint

    shutil.copytree(ROOT / "corpus", tmp_path / "corpus")
    before = fingerprint(tmp_path / "corpus")            # what `ivr serve` watches to reload
    p = tmp_path / "corpus" / "aides.yaml"
    p.write_text(p.read_text("utf-8").replace("verifie: 2026-11-30", "verifie: 2026-12-01", 1), "utf-8")
    assert fingerprint(tmp_path / "corpus") != before


@pytest.mark.parametrize("key,said,expected", [
    ("situation", "je suis au chômage depuis six mois", ["sans_emploi"]),
    ("situation", "je bosse en intérim", ["emploi"]),
    ("age", "trente-deux ans", ["de_25_a_59"]),
    ("age", "deux", ["de_25_a_59"]),
    ("foyer", "avec mon mari et nos trois enfants", ["couple_enfants"]),
    ("foyer", "je suis veuve", ["seul"]),
    ("foyer", "avec mes enfants", ["seul_enfants", "couple_enfants"]),
    ("revenus", "mille deux cents euros à peu près", ["moyens"]),
    ("revenus", "on touche le RSA c'est tout", ["faibles"]),
    ("besoin", "payer le loyer et le chauffage", ["logement"]),
    ("besoin", "un peu de tout", list(NEEDS)),
])
def test_spoken_answers_are_understood(key, said, expected):
    assert parse(key, said) == expected


def test_questions_are_five_at_most_and_each_says_its_keys():
    assert len(QUESTIONS) <= 5
    for q in QUESTIONS:
        assert "tapez" in q.prompt.lower(), q.key


def test_orientation_over_ask_state(tmp_path):
    state = tmp_path / "state.json"
    at = ["--at", "2026-12-01T10:00"]
    turns = ["je ne m'en sors plus, à quoi j'ai droit ?", "key:2", "quarante ans", "key:1", "key:1",
             "l'électricité et le loyer"]
    replies = []
    for said in turns:
        p = _ivr(["ask", said, "--json", "--state", str(state), *at], tmp_path)
        assert p.returncode == 0, p.stderr
        replies.append(json.loads(p.stdout))
    assert all(r["action"] == "orientation" for r in replies), replies
    last = replies[-1]
    assert last["aids"] and {"aides_logement", "rsa", "fsl", "cheque_energie"} & set(last["aids"]), last
    assert "apa" not in last["aids"]
