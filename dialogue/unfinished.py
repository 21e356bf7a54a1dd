"""Does a transcript stop in the middle of a sentence? "Je voudrais savoir...", "c'est pour le",
"alors euh": the caller paused, they have not finished. Used before answering: such a turn waits a
little for the rest (ivr/session.py) instead of being answered on its first half."""
from __future__ import annotations

import re
import unicodedata

# words a French sentence does not end on: hesitations, connectors, prepositions, determiners,
# subject pronouns, and the verbs that announce a question ("je voudrais savoir")
_OPEN_WORDS = set("""
euh heu hum hmm bah ben alors donc et ou mais puis parce que qu qui quoi dont si comme car
de d du des le la l les un une au aux a à pour par sur sous dans en avec sans chez vers entre depuis pendant
mon ma mes ton ta tes son sa ses notre nos votre vos leur leurs ce cet cette ces quel quelle quels quelles
je j tu il elle on nous vous ils elles me m te t se s y lui
voudrais voudrait voulais veux aimerais aimerait souhaiterais souhaite savoir demander connaitre
faire comment combien quand où ou est-ce c'est qu'est-ce enfin genre bref voila
""".split())
# a lone greeting or politeness is followed by the question
_OPENERS = {"bonjour", "bonsoir", "allo", "oui bonjour", "allo bonjour", "bonjour madame", "bonjour monsieur",
            "oui allo", "excusez-moi", "pardon", "bonjour excusez-moi"}


def _plain(text: str) -> str:
    t = unicodedata.normalize("NFKD", text.lower()).encode("ascii", "ignore").decode()
    return " ".join(re.findall(r"[a-z'-]+", t.replace("’", "'")))


_OPEN = {_plain(w) for w in _OPEN_WORDS}


def unfinished(text: str) -> bool:
    """True when `text` (a transcript) reads as the first part of a sentence."""
    stripped = text.strip()
    if not stripped:
        return False
    if stripped.endswith(("...", "…", ",")):
        return True                  # Whisper marks a trailing-off voice so
    if stripped.endswith(("?", "!")):
        return False                 # ... and a question as one ("C'est où ?")
    plain = _plain(stripped)
    if not plain:
        return False
    if plain in _OPENERS:
        return True
    last = plain.split()[-1]
    return last in _OPEN or last.endswith("'")
