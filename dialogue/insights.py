"""Questions the assistant did not answer well, grouped by meaning, largest groups first: what an
admin should add to the knowledge base next."""
from __future__ import annotations

import numpy as np


def group_similar(vectors: np.ndarray, threshold: float = 0.5) -> list[list[int]]:
    """Greedy grouping by cosine similarity: each item joins the group whose centroid is closest, if
    at least `threshold`, else starts a new group. Returns index lists, largest first."""
    if len(vectors) == 0:
        return []
    v = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)
    sums: list[np.ndarray] = []
    groups: list[list[int]] = []
    for i, x in enumerate(v):
        if sums:
            cents = np.stack(sums)
            cents = cents / np.maximum(np.linalg.norm(cents, axis=1, keepdims=True), 1e-9)
            sims = cents @ x
            j = int(np.argmax(sims))
            if sims[j] >= threshold:
                groups[j].append(i)
                sums[j] = sums[j] + x
                continue
        groups.append([i])
        sums.append(x.copy())
    return sorted(groups, key=lambda g: (-len(g), g[0]))


def group_questions(items: list[dict], embedder, threshold: float = 0.5) -> list[dict]:
    """`items`: dicts with a "text" key (and anything else, kept). Returns groups as
    {"size", "label" (the most central text), "items"}, largest first."""
    from dialogue.search import clean_query

    items = [it for it in items if clean_query(it.get("text") or "")]
    if not items:
        return []
    vecs = np.asarray(embedder.encode([clean_query(it["text"]) for it in items]), dtype=np.float32)
    out = []
    for g in group_similar(vecs, threshold):
        sub = vecs[g] / np.maximum(np.linalg.norm(vecs[g], axis=1, keepdims=True), 1e-9)
        central = g[int(np.argmax(sub @ sub.mean(axis=0)))]
        out.append({"size": len(g), "label": items[central]["text"], "items": [items[i] for i in g]})
    return out
