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
