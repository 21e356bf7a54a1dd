"""Import service-public.fr "vosdroits" XML fiches (DILA, Licence Ouverte) as draft FAQ entries.

Each fiche (F1427.xml...) becomes one entry: theme guessed from the title and the breadcrumb, spoken
style questions from the title, a short answer from the description or the introduction, steps from
the first chapter. The result is a review file: a person reads it before moving entries to faq/.
"""
from __future__ import annotations

import datetime as dt
import logging
import re
import unicodedata
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml

from dialogue.corpus import EXTRA_THEMES, THEMES

log = logging.getLogger(__name__)

DC = "{http://purl.org/dc/elements/1.1/}"
ATTRIBUTION = "service-public.fr (DILA), Licence Ouverte"
HEADER = ("# Source : service-public.fr, Direction de l'information légale et administrative (DILA),\n"
          "# Licence Ouverte. Entrées générées automatiquement : à relire avant publication.\n")
MAX_ANSWER_SENTENCES, MAX_ANSWER_WORDS = 3, 50
MAX_STEPS, MAX_STEP_WORDS = 6, 25

# Theme rules: a regex on the lowercase, accent-free text; the first rule that matches wins.
# The title is tried first, then the breadcrumb from its deepest level up to the broad theme.
THEME_RULES: list[tuple[str, str]] = [
    ("identite", r"carte d'identite|carte nationale d'identite|passeport"),
    ("cimetiere", r"cimetiere|concession funeraire|obseques|inhumation"),
    ("etat_civil", r"acte de naissance|mariage|\bpacs\b|deces|livret de famille|\bnom\b|\bprenoms?\b"
                   r"|reconnaissance d'un enfant|etat civil"),
    ("citoyennete", r"elect|\bvote|recensement|procuration|nationalite"),
    ("urbanisme", r"permis de construire|declaration prealable|urbanisme|cadastre|travaux"),
    ("enfance_scolarite", r"ecole|creche|cantine|enfant"),
    ("social", r"handicap|aide sociale|logement social|\brsa\b|\bapa\b|personnes? agees"),
    ("dechets", r"dechet|ordures"),
    ("voirie_stationnement", r"stationnement|fourriere|voirie"),
    ("eclairage", r"eclairage public|lampadaire"),
    ("securite_tranquillite", r"bruit|nuisance|animaux dangereux|chien"),
]

# First words of titles ending in -er/-ir/-re that are nouns, not verbs.
NOT_VERBS = {"dossier", "casier", "papier", "fichier", "loyer", "foyer", "metier", "courrier",
             "chantier", "quartier", "calendrier", "avenir", "loisir", "lettre", "titre", "livre",
             "centre", "registre", "ordre", "chambre", "nombre", "membre", "timbre"}
# Article for the spoken label ("Votre question concerne-t-elle l'acte de naissance ?").
ARTICLES = {"acte": "l'", "extrait": "l'", "carte": "la", "passeport": "le", "permis": "le",
            "certificat": "le", "livret": "le", "declaration": "la", "demande": "la", "copie": "la",
            "inscription": "l'", "impot": "l'", "recensement": "le", "mariage": "le", "pacs": "le",
            "changement": "le", "concession": "la", "allocation": "l'", "aide": "l'"}


def _plain(s: str) -> str:
    """Lowercase, accents removed, curly apostrophes straightened: the text the rules read."""
    s = unicodedata.normalize("NFKD", s.lower().replace("\u2019", "'"))
    return "".join(c for c in s if not unicodedata.combining(c))


def _text(el: ET.Element | None) -> str:
    """All text of an element, inline tags (links, emphasis...) included, whitespace collapsed.
    Braces are removed: answers are Jinja templates."""
    if el is None:
        return ""
    s = re.sub(r"[{}]", "", "".join(el.itertext()))
    s = " ".join(s.split()).replace("\u2019", "'")
    return re.sub(r"\s+([,.)])", r"\1", s).strip()


def _sentences(text: str) -> list[str]:
    # same boundary as the corpus loader's sentence count
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def _words(s: str) -> int:
    return len(s.split())


def _cut(text: str, max_sentences: int, max_words: int) -> str:
    """Whole sentences, as many as the limits allow (at least the first one)."""
    out: list[str] = []
    for s in _sentences(text):
        if out and (len(out) >= max_sentences or _words(" ".join(out + [s])) > max_words):
            break
        out.append(s)
    return " ".join(out)


def _as_sentence(s: str) -> str:
    s = s.strip().rstrip(";:,").strip()
    if s and s[-1] not in ".!?":
        s += "."
    return s[:1].upper() + s[1:]


def guess_theme(title: str, breadcrumb: list[str]) -> str:
    for text in [title, *reversed(breadcrumb)]:
        plain = _plain(text)
        for theme, pattern in THEME_RULES:
            if re.search(pattern, plain):
                return theme
    return "hors_competence"


def _label(head: str) -> str:
    low = head.lower().rstrip(" ?!.:")
    art = ARTICLES.get(_plain(low.split(" ", 1)[0])) if low else None
    if not art:
        return low
    return art + low if art.endswith("'") else f"{art} {low}"


def _starts_with_verb(s: str) -> bool:
    first = _plain(s.split(" ", 1)[0]) if s else ""
    return bool(re.fullmatch(r"[a-z]+(er|ir|re)", first)) and first not in NOT_VERBS


def _questions(title: str, label: str, description: str) -> list[str]:
    low = title.lower().rstrip(" ?!.:")
    head, _, tail = low.partition(" : ")
    qs = [title, low.replace(" : ", ", ")]
    if "?" not in title:
        if tail and _starts_with_verb(tail):
            qs.append(f"{head}, comment faire pour {tail}")
        elif _starts_with_verb(low):
            qs.append(f"comment faire pour {low}")
        elif label != low:
            qs.append(f"comment faire pour obtenir {label}")
    first = _sentences(description)[:1]
    if first and _words(first[0]) <= 15:
        qs.append(first[0])
    if len(qs) < 3:
        qs.append(f"j'ai une question sur {label}")
    return list(dict.fromkeys(qs))[:4]


def _steps(texte: ET.Element | None) -> list[str]:
    """Short sentences from the first chapter: its paragraphs and list items, in order."""
    chapter = texte.find(".//Chapitre") if texte is not None else None
    if chapter is None:
        return []
    blocks: list[str] = []
    for child in chapter:
        if child.tag == "Paragraphe":
            blocks.append(_text(child))
        elif child.tag == "Liste":
            blocks += [" ".join(_text(p) for p in item.findall("Paragraphe")) for item in child.findall("Item")]
    steps = []
    for block in blocks:
        step = _cut(block, MAX_STEPS, MAX_STEP_WORDS)
        if step and _words(step) <= MAX_STEP_WORDS:
            steps.append(_as_sentence(step))
    return steps[:MAX_STEPS]


def parse_fiche(path: str | Path) -> dict | None:
    """One fiche as a draft FAQ entry (with its `theme`), or None with a warning."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if b"<!DOCTYPE" in raw or b"<!ENTITY" in raw:
            log.warning("%s ignoré : DTD ou entité XML refusée", path.name)
            return None
        root = ET.fromstring(raw)
        fid = root.get("ID", "")
        if root.tag != "Publication" or not re.fullmatch(r"F\d+", fid):
            log.warning("%s ignoré : ce n'est pas une fiche vosdroits", path.name)
            return None
        title = _text(root.find(f"{DC}title"))
        if not title:
            log.warning("%s ignoré : fiche sans titre", path.name)
            return None
        description = _text(root.find(f"{DC}description"))
        intro = _text(root.find("Introduction"))
        breadcrumb = [_text(n) for n in root.findall("FilDAriane/Niveau")]
        breadcrumb += [_text(root.find(f"{tag}/Titre")) for tag in ("Theme", "SousThemePere", "DossierPere")]
        dates = [_text(d) for d in root.findall(f"{DC}date")]
        modified = next((d for d in dates if "modified" in d), dates[0] if dates else "")
    except (OSError, ET.ParseError, ValueError) as exc:
        log.warning("%s ignoré : fichier illisible (%s)", path.name, exc)
        return None

    theme = guess_theme(title, [b for b in breadcrumb if b])
    label = _label(title.partition(" : ")[0])
    answer_src = " ".join(s for s in (description, intro) if s)
    entry: dict = {
        "id": f"{theme}.sp_{fid.lower()}",
        "theme": theme,
        "questions": _questions(title, label, description),
        "answer": _cut(answer_src or title, MAX_ANSWER_SENTENCES, MAX_ANSWER_WORDS),
    }
    steps = _steps(root.find("Texte"))
    if steps:
        entry["steps"] = steps
    if theme == "hors_competence":
        entry["action"] = "transfer"
    entry["source"] = fid
    m = re.search(r"\d{4}-\d{2}-\d{2}", modified)
    if m:
        entry["reviewed"] = dt.date.fromisoformat(m.group())
    entry["label"] = label
    entry["attribution"] = ATTRIBUTION
    return entry


def parse_path(path: Path) -> list[dict]:
    """Entries of a fiche file or of every *.xml of a folder (sorted), bad files skipped."""
    files = sorted(path.glob("*.xml")) if path.is_dir() else [path]
    entries, seen = [], set()
    for f in files:
        e = parse_fiche(f)
        if e is None:
            continue
        if e["id"] in seen:
            log.warning("%s ignoré : fiche %s déjà importée", f.name, e["source"])
            continue
        seen.add(e["id"])
        entries.append(e)
    return entries


class _Dumper(yaml.SafeDumper):
    """Indents list items under their key, like the hand-written faq/*.yaml files."""

    def increase_indent(self, flow=False, indentless=False):
        return super().increase_indent(flow, False)


def _dump(doc: dict) -> str:
    return HEADER + yaml.dump(doc, Dumper=_Dumper, allow_unicode=True, sort_keys=False, width=100)


def import_path(path: Path, out: Path) -> int:
    """Write the review file `out` (every entry with its theme) and return the number of entries."""
    entries = parse_path(Path(path))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_dump({"entries": entries}), encoding="utf-8")
    return len(entries)


def write_theme_files(entries: list[dict], folder: Path, overwrite: bool = False) -> list[Path]:
    """Write `<folder>/<theme>.yaml` files in the faq/ format (theme + entries)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    by_theme: dict[str, list[dict]] = {}
    for e in entries:
        if e["theme"] not in THEMES and e["theme"] not in EXTRA_THEMES:
            raise ValueError(f"thème inconnu : {e['theme']}")
        by_theme.setdefault(e["theme"], []).append({k: v for k, v in e.items() if k != "theme"})
    written = []
    for theme, items in by_theme.items():
        target = folder / f"{theme}.yaml"
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} existe déjà : fusionnez les entrées à la main")
        target.write_text(_dump({"theme": theme, "entries": items}), encoding="utf-8")
        written.append(target)
    return written
