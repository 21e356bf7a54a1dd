"""`ivr corpus import-service-public`: vosdroits XML fiches turned into draft FAQ entries."""
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from dialogue.corpus import load_corpus
from dialogue.service_public import ATTRIBUTION, parse_fiche, parse_path, write_theme_files
from tests.conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "service_public"


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sp")
    out = tmp / "review" / "sp.yaml"
    env = {"IVR_DATA": str(tmp), "IVR_PATHS__CORPUS": str(ROOT / "corpus"), "PATH": "/usr/bin:/bin"}
    p = subprocess.run([sys.executable, "-m", "ivr.cli", "corpus", "import-service-public", str(FIXTURES),
                        "--out", str(out)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    return p, out


def test_cli_imports_the_three_good_fiches(imported):
    p, out = imported
    assert p.returncode == 0, p.stderr
    assert re.match(r"3 fiches importées", p.stdout), p.stdout
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# Source : service-public.fr, Direction de l'information légale")
    assert "à relire avant publication" in text
    entries = {e["id"]: e for e in yaml.safe_load(text)["entries"]}
    assert set(entries) == {"etat_civil.sp_f1427", "identite.sp_f21089", "hors_competence.sp_f359"}
    birth, card, tax = (entries["etat_civil.sp_f1427"], entries["identite.sp_f21089"],
                        entries["hors_competence.sp_f359"])
    assert (birth["theme"], birth["source"], str(birth["reviewed"])) == ("etat_civil", "F1427", "2025-06-10")
    assert (card["theme"], card["source"], str(card["reviewed"])) == ("identite", "F21089", "2025-03-02")
    assert (tax["theme"], tax["action"], str(tax["reviewed"])) == ("hors_competence", "transfer", "2024-11-28")
    assert "action" not in birth and "action" not in card
    assert birth["label"] == "l'acte de naissance" and card["label"] == "la carte d'identité d'un majeur"
    for e in entries.values():
        assert e["attribution"] == ATTRIBUTION
        assert 2 <= len(e["questions"]) <= 4 and e["questions"][0] != e["questions"][1]
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", e["answer"]) if s]
        assert 1 <= len(sentences) <= 3 and len(e["answer"].split()) <= 50, e["answer"]
        for text_ in [e["answer"], *e["steps"], *e["questions"]]:
            assert not re.search(r"[<>{}]|  ", text_), text_
        assert all(len(s.split()) <= 25 for s in e["steps"]) and len(e["steps"]) <= 6
    # the answer comes from the introduction when there is no description
    assert tax["answer"].startswith("Chaque printemps")
    assert "impôt sur le revenu, comment faire pour déclarer en ligne" in tax["questions"]
    assert "comment faire pour obtenir la carte d'identité d'un majeur" in card["questions"]


def test_inline_markup_text_is_kept(imported):
    _, out = imported
    entries = {e["id"]: e for e in yaml.safe_load(out.read_text(encoding="utf-8"))["entries"]}
    steps = entries["etat_civil.sp_f1427"]["steps"]
    assert steps[0] == "Préparez les informations sur la personne concernée."
    assert "Ses nom et prénoms tels qu'ils figurent sur l'acte." in steps       # MiseEnEvidence
    assert any("téléservice de demande d'acte, sans inscription" in s for s in steps)  # LienExterne
    assert "l'ANTS" in " ".join(entries["identite.sp_f21089"]["steps"])          # Expression
    assert "espace particulier" in entries["hors_competence.sp_f359"]["answer"]  # link in the intro
    # Jinja braces removed, the over-long list item dropped
    card_steps = entries["identite.sp_f21089"]["steps"]
    assert card_steps[0] == "Prenez rendez-vous dans une mairie équipée. Le code rdv vous est donné par SMS."
    assert not any("photo" in s for s in card_steps)


def test_bad_files_are_skipped_with_a_warning(imported):
    p, _ = imported
    assert "Traceback" not in p.stderr
    assert "F0001.xml ignoré : fichier illisible" in p.stderr
    assert "F0002.xml ignoré : DTD ou entité XML refusée" in p.stderr
    assert parse_fiche(FIXTURES / "F0001.xml") is None
    assert parse_fiche(FIXTURES / "F0002.xml") is None
    assert parse_fiche(FIXTURES / "absent.xml") is None


def test_theme_files_load_with_the_corpus_loader(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(ROOT / "corpus" / "commune.yaml", corpus / "commune.yaml")
    written = write_theme_files(parse_path(FIXTURES), corpus / "faq")
    assert sorted(p.name for p in written) == ["etat_civil.yaml", "hors_competence.yaml", "identite.yaml"]
    doc = yaml.safe_load((corpus / "faq" / "identite.yaml").read_text(encoding="utf-8"))
    assert doc["theme"] == "identite" and "theme" not in doc["entries"][0]
    c = load_corpus(corpus)
    assert {e.id for e in c.entries} == {"etat_civil.sp_f1427", "identite.sp_f21089", "hors_competence.sp_f359"}
    assert c.by_id("hors_competence.sp_f359").action == "transfer"
    assert c.by_id("etat_civil.sp_f1427").reviewed == "2025-06-10"
    with pytest.raises(FileExistsError):
        write_theme_files(parse_path(FIXTURES), corpus / "faq")
