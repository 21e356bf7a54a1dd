"""Word error rate with French-aware normalisation (digits, times and amounts said as words)."""
from __future__ import annotations

import re
import unicodedata

from num2words import num2words

from tts.normalize import normalize


def words_for_scoring(text: str) -> list[str]:
    t = normalize(text).lower().replace("’", "'")
    t = re.sub(r"\d+", lambda m: " " + num2words(int(m.group(0)), lang="fr") + " ", t)
    t = unicodedata.normalize("NFC", t)
    t = re.sub(r"[^\w']+", " ", t.replace("-", " "))
    return t.split()


def edit_distance(r: list[str], h: list[str]) -> int:
    d = list(range(len(h) + 1))
    for i in range(1, len(r) + 1):
        prev, d[0] = d[0], i
        for j in range(1, len(h) + 1):
            cur = min(d[j] + 1, d[j - 1] + 1, prev + (r[i - 1] != h[j - 1]))
            prev, d[j] = d[j], cur
    return d[len(h)]


def wer(ref: str, hyp: str) -> float:
    r = words_for_scoring(ref)
    return edit_distance(r, words_for_scoring(hyp)) / max(1, len(r))


_IPA: dict[str, str] = {}


def sounds_like(words: list[str]) -> list[str]:
    """Each word as espeak-ng French IPA, so that homophones ("allumés"/"allumées") compare equal.

    Words are sent one per clause so that no liaison leaks from one word into the next."""
    import shutil
    import subprocess

    def clean(ipa: str) -> str:
        return ipa.strip().replace("ˈ", "").replace("ˌ", "").rstrip("-")

    todo = sorted({w for w in words if w not in _IPA})
    if todo:
        if not shutil.which("espeak-ng"):
            raise RuntimeError("espeak-ng est introuvable : lancez scripts/setup.sh")
        out = subprocess.run(["espeak-ng", "-v", "fr", "-q", "--ipa"], input="".join(w + ".\n" for w in todo),
                             capture_output=True, text=True, check=True).stdout
        ipa = [clean(line) for line in out.splitlines() if line.strip()]
        if len(ipa) != len(todo):                          # a word espeak split or merged: one call each
            ipa = [clean(subprocess.run(["espeak-ng", "-v", "fr", "-q", "--ipa", w], capture_output=True, text=True,
                                        check=True).stdout) for w in todo]
        _IPA.update(zip(todo, ipa))
    return [_IPA[w] for w in words]


def errors(ref: str, hyp: str, homophones: bool = False) -> tuple[int, int]:
    """(word errors, reference words); homophones=True counts a word heard as its homophone as right."""
    r, h = words_for_scoring(ref), words_for_scoring(hyp)
    if homophones:
        r, h = sounds_like(r), sounds_like(h)
    return edit_distance(r, h), len(r)
