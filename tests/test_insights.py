"""Questions to learn from: kept with their calls, grouped by meaning with the search engine's own
embeddings (`ivr insights`, and the console's /questions)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from dialogue.insights import group_similar
from ivr.store import Store
from tests.conftest import ROOT


def _ivr(tmp_path, *args):
    env = dict(os.environ, IVR_DATA=str(tmp_path), IVR_PATHS__CORPUS=str(ROOT / "corpus"),
               IVR_PATHS__CACHE=str(ROOT / "data" / "cache"), IVR_PATHS__MODELS=str(ROOT / "data" / "models"))
    return subprocess.run([sys.executable, "-m", "ivr.cli", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)


def test_group_similar_puts_close_vectors_together_largest_group_first():
    v = np.array([[1, 0, 0], [0, 1, 0], [0.95, 0.1, 0], [0.9, 0, 0.1], [0, 0.9, 0.1]], dtype=np.float32)
    assert group_similar(v, 0.8) == [[0, 2, 3], [1, 4]]
    assert group_similar(np.zeros((0, 3)), 0.8) == []


def _seed(store: Store) -> None:
    for text, action, conf, sat in [
            ("je voudrais louer la salle des fêtes pour un mariage", "clarify", 0.12, None),
            ("combien coûte la location de la salle des fêtes", "clarify", 0.15, None),
            ("ma poubelle n'a pas été ramassée", "answer", 0.2, None),
            ("le camion poubelle est pas passé ce matin", "transfer", 0.1, None),
            ("quels sont les horaires de la mairie le samedi", "answer", 0.9, None),        # well answered
            ("je voudrais une place à la crèche", "answer", 0.8, 2),                       # caller said "non"
            ("oui", "clarify", 0.1, None)]:                                                 # too short to learn from
        cid = store.start_call("test", "sip:0600000000@x")
        store.add_turn(cid, "caller", text, "speech", 1, 2, 0.9)
        store.add_turn(cid, "assistant", "…", "prompt", 2, 2, conf, action)
        store.end_call(cid, "answered", "test", 5)
        if sat:
            store.set_satisfaction(cid, sat)


def test_insights_groups_the_weak_questions_of_real_records(tmp_path):
    _seed(Store(tmp_path / "ivr.db"))
    r = _ivr(tmp_path, "insights", "--json")
    assert r.returncode == 0, r.stderr
    groups = json.loads(r.stdout)
    texts = [sorted(i["text"] for i in g["items"]) for g in groups]
    assert sorted(len(t) for t in texts) == [1, 2, 2]
    assert ["combien coûte la location de la salle des fêtes",
            "je voudrais louer la salle des fêtes pour un mariage"] in texts
    assert ["le camion poubelle est pas passé ce matin", "ma poubelle n'a pas été ramassée"] in texts
    assert ["je voudrais une place à la crèche"] in texts
    why = {i["text"]: i["why"] for g in groups for i in g["items"]}
    assert why["je voudrais une place à la crèche"] == "appelant insatisfait"
    assert why["le camion poubelle est pas passé ce matin"] == "transférée"
    assert "Aucune question" in _ivr(tmp_path, "insights", "--since", "2999-01-01").stdout
    r = _ivr(tmp_path, "insights", "--since", "hier")
    assert r.returncode != 0 and "AAAA-MM-JJ" in r.stderr
