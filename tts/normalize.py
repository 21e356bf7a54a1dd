"""French text normalisation for speech: what is written on a page becomes what is said on a phone."""
from __future__ import annotations

import re

from num2words import num2words

MONTHS = ["janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre",
          "octobre", "novembre", "décembre"]

# Spelled-out acronyms are written with spaced letters so every engine reads them letter by letter.
ABBREVIATIONS = {
    r"\brdv\b": "rendez-vous",
    r"\bRDV\b": "rendez-vous",
    r"\bCNI\b": "carte d'identité",
    r"\bCCAS\b": "C. C. A. S.",
    r"\bANTS\b": "A. N. T. S.",
    r"\bPLU\b": "P. L. U.",
    r"\bCAF\b": "la CAF",
    r"\bAPA\b": "A. P. A.",
    r"\bRSA\b": "R. S. A.",
    r"\bEHPAD\b": "é-pade",
    r"\bPACS\b": "pacs",
    r"\bSAMU\b": "samu",
    r"\bn°\s*": "numéro ",
    r"\bN°\s*": "numéro ",
    r"\bM\.\s": "Monsieur ",
    r"\bMme\b": "Madame",
    r"\bst\b": "saint",
    r"\bbd\b": "boulevard",
    r"\bav\.\s": "avenue ",
    r"\bcf\.\s": "voir ",
    r"\betc\.": "et cetera.",
    r"\bh\.\s": "heures ",
    r"\bmin\b": "minutes",
    r"\bkm\b": "kilomètres",
    r"\bm²": "mètres carrés",
    r"\bm2\b": "mètres carrés",
    r"\b1er\b": "premier",
    r"\b1re\b": "première",
    r"\bJO\b": "jeux Olympiques",
    r"\bFrance Services\b": "France Services",
}

_DIGITS = "zéro un deux trois quatre cinq six sept huit neuf".split()


def words(n: int) -> str:
    return num2words(n, lang="fr")


def digits(s: str) -> str:
    """Read a string of digits one by one: '000123' -> 'zéro, zéro, zéro, un, deux, trois'."""
    return ", ".join(_DIGITS[int(c)] for c in s if c.isdigit())


def _time(m: re.Match) -> str:
    h, mn = int(m.group(1)), m.group(2)
    if h > 24 or (mn and int(mn) > 59):
        return m.group(0)
    hours = f"{words(h)} heure{'s' if h > 1 else ''}"
    if mn and int(mn):
        return f"{hours} {words(int(mn))}"
    return hours


def _phone(m: re.Match) -> str:
    digits = re.sub(r"\D", "", m.group(0))
    out = []
    if m.group(0).startswith("+"):               # +33 1 99 ...: "plus trente-trois, un, ..."
        out = ["plus trente-trois", _DIGITS[int(digits[2])]]
        digits = digits[3:]
    pairs = re.findall(r"\d\d", digits)
    for p in pairs:
        out.append(f"zéro {_DIGITS[int(p[1])]}" if p[0] == "0" else words(int(p)))
    return ", ".join(out)


def _date_iso(m: re.Match) -> str:
    y, mo, d = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if not (1 <= mo <= 12 and 1 <= d <= 31):
        return m.group(0)
    day = "premier" if d == 1 else words(d)
    return f"{day} {MONTHS[mo - 1]} {words(y)}"


def _date_fr(m: re.Match) -> str:
    d, mo, y = int(m.group(1)), int(m.group(2)), m.group(3)
    if not (1 <= mo <= 12 and 1 <= d <= 31):
        return m.group(0)
    day = "premier" if d == 1 else words(d)
    return f"{day} {MONTHS[mo - 1]}" + (f" {words(int(y))}" if y else "")


def _euros(m: re.Match) -> str:
    units = int(m.group(1).replace(" ", "").replace("\u202f", ""))
    cents = m.group(2)
    s = f"{words(units)} euro{'s' if units > 1 else ''}"
    if cents and int(cents):
        s += f" {words(int(cents.ljust(2, '0')))}"
    return s


def _ticket(m: re.Match) -> str:
    return f"S. I. G., {digits(m.group(1))}, {digits(m.group(2))}"


def _address(m: re.Match) -> str:
    return m.group(0).replace("@", " arobase ").replace(".", " point ").replace("-", " tiret ")


def normalize(text: str) -> str:
    t = text.replace("’", "'").replace("\u00a0", " ")
    # e-mail and web addresses, read the way a person dictates them
    t = re.sub(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b", _address, t)
    t = re.sub(r"\b(?:www\.)?[\w-]+(?:\.[\w-]+)*\.(?:fr|com|org|net|eu|gouv\.fr)\b", _address, t)
    t = re.sub(r"\bSIG-(\d{4})-(\d{6})\b", _ticket, t)
    t = re.sub(r"(?<![\d-])(?:\+33\s?|0)\d(?:([ .-]?)\d\d(?:\1\d\d){3})(?![\d-])", _phone, t)
    t = re.sub(r"\b(\d{4})-(\d{2})-(\d{2})\b", _date_iso, t)
    t = re.sub(r"\b(\d{1,2})/(\d{1,2})(?:/(\d{4}))?\b", _date_fr, t)
    t = re.sub(r"\b(\d{1,3}(?:[ \u202f]\d{3})*|\d+)(?:[,.](\d{1,2}))?\s?(?:€|euros?\b)", _euros, t)
    t = re.sub(r"\b([01]?\d|2[0-4])\s?[hH:]\s?([0-5]\d)?\b(?!\w)", _time, t)
    for pattern, repl in ABBREVIATIONS.items():
        t = re.sub(pattern, repl, t)
    t = re.sub(r"\.\.(?!\.)", ".", t)   # "C. C. A. S." at the end of a sentence
    t = re.sub(r"\s+", " ", t).strip()
    return t


_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+(?=[A-ZÀ-ÖØ-Ý«\"0-9])")


def sentences(text: str) -> list[str]:
    """Split for sentence-by-sentence synthesis; very short pieces are kept with the next one."""
    parts = [p.strip() for p in _SENTENCE_END.split(text.strip()) if p.strip()]
    out: list[str] = []
    for p in parts:
        if out and len(out[-1]) < 12:
            out[-1] = f"{out[-1]} {p}"
        else:
            out.append(p)
    return out
