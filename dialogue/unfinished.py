"""Does a transcript stop in the middle of a sentence? "Je voudrais savoir...", "c'est pour le",
"alors euh": the caller paused, they have not finished. Used before answering: such a turn waits a
little for the rest (ivr/session.py) instead of being answered on its first half."""
from __future__ import annotations

import re
import unicodedata

# words a French sentence does not end on, question mark or not: hesitations, connectors,
# prepositions, determiners, subject pronouns
_OPEN_WORDS = set("""
euh heu hum hmm bah ben alors donc et mais puis parce que qu qui dont si comme car
de d du des le la l les un une au aux a à pour par sur sous dans en avec sans chez vers entre depuis pendant
mon ma mes ton ta tes son sa ses notre nos votre vos leur leurs ce cet cette ces quel quelle quels quelles
je j tu il elle on nous vous ils elles me m te t se s y lui enfin genre bref
""".split())
# ... nor, unless asked as a question ("C'est où ?"), on the verbs that announce one
_ANNOUNCING = set("""
voudrais voudrait voulais veux aimerais aimerait souhaiterais souhaite savoir demander connaitre
faire parler comment combien quand où ou quoi est-ce c'est qu'est-ce
""".split())
# a lone greeting or politeness is followed by the question
_OPENERS = {"bonjour", "bonsoir", "allo", "bonjour madame", "bonjour monsieur", "excusez-moi", "pardon",
            "bonjour excusez-moi"}
_FILLERS = {"oui", "euh", "ben", "bah", "alors", "allo", "hum"}


def _plain(text: str) -> str:
    t = unicodedata.normalize("NFKD", text.lower()).encode("ascii", "ignore").decode()
    return " ".join(re.findall(r"[a-z0-9'-]+", t.replace("’", "'")))


_OPEN = {_plain(w) for w in _OPEN_WORDS}
_ANNOUNCE = {_plain(w) for w in _ANNOUNCING}


def unfinished(text: str) -> bool:
    """True when `text` (a transcript) reads as the first part of a sentence."""
    stripped = text.strip()
    if not stripped:
        return False
    if stripped.endswith(("...", "…", ",")):
        return True                  # Whisper marks a trailing-off voice so
    words = _plain(stripped).split()
    if not words:
        return False
    while len(words) > 1 and words[0] in _FILLERS:
        words = words[1:]
    if " ".join(words) in _OPENERS:
        return True
    last = words[-1]
    if last in _OPEN or last.endswith("'"):
        return True
    return last in _ANNOUNCE and not stripped.endswith(("?", "!"))
