"""Editing one knowledge-base entry from the console: the YAML file is changed in place (comments and
layout kept, by ruamel.yaml), and only after the whole corpus, with the edit, passes the same checks
as `ivr corpus check`. A running `ivr serve` sees the file change and reloads it."""
from __future__ import annotations

import datetime as dt
import io
import os
import shutil
import tempfile
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.scalarstring import FoldedScalarString

from dialogue.corpus import CorpusError, load_corpus


def _yaml() -> YAML:
    y = YAML()
    y.preserve_quotes = True
    y.width = 4096          # never re-wrap the lines of other entries
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def _folded(text: str, width: int = 92) -> FoldedScalarString:
    """A `>-` block folded at spaces, as the corpus files are written."""
    out = FoldedScalarString(text)
    spaces = [i for i, c in enumerate(text) if c == " " and text.count("{{", 0, i) == text.count("}}", 0, i)]
    out.fold_pos, line_start = [], 0
    for n, i in enumerate(spaces):
        if n + 1 < len(spaces) and spaces[n + 1] - line_start > width:
            out.fold_pos.append(i)               # the next break would make the line too long
            line_start = i + 1
    return out


def find_entry(corpus_dir: Path, entry_id: str) -> tuple[Path, dict] | None:
    """The FAQ file holding this entry and the entry as written (placeholders not rendered)."""
    theme = entry_id.split(".")[0]
    path = Path(corpus_dir) / "faq" / f"{theme}.yaml"
    candidates = [path] if path.exists() else sorted((Path(corpus_dir) / "faq").glob("*.yaml"))
    for f in candidates:
        doc = _yaml().load(f.read_text(encoding="utf-8")) or {}
        for e in doc.get("entries") or []:
            if e.get("id") == entry_id:
                return f, {"id": entry_id, "label": str(e.get("label", "")),
                           "questions": [str(q) for q in e.get("questions") or []],
                           "answer": str(e.get("answer", "")), "action": str(e.get("action", "answer")),
                           "source": str(e.get("source", "")), "reviewed": str(e.get("reviewed", ""))}
    return None


def save_entry(corpus_dir: Path, entry_id: str, questions: list[str], answer: str,
               reviewed: str | None = None) -> list[str]:
    """Writes the edit if the corpus still loads; returns the problems otherwise (nothing written)."""
    corpus_dir = Path(corpus_dir)
    found = find_entry(corpus_dir, entry_id)
    if not found:
        return [f"fiche inconnue : {entry_id}"]
    path, _ = found
    questions = [q.strip() for q in questions if q.strip()]
    answer = " ".join(answer.split())
    y = _yaml()
    doc = y.load(path.read_text(encoding="utf-8"))
    for e in doc["entries"]:
        if e.get("id") == entry_id:
            e["questions"] = questions
            e["answer"] = _folded(answer) if len(answer) > 80 else answer
            if reviewed:
                e["reviewed"] = dt.date.fromisoformat(reviewed)
    buf = io.StringIO()
    y.dump(doc, buf)
    text = buf.getvalue()
    with tempfile.TemporaryDirectory() as tmp:
        trial = Path(tmp) / "corpus"
        shutil.copytree(corpus_dir, trial, ignore=shutil.ignore_patterns("devset", "*.tmp"))
        (trial / "faq" / path.name).write_text(text, encoding="utf-8")
        try:
            load_corpus(trial)
        except CorpusError as exc:
            return list(exc.problems) if hasattr(exc, "problems") else [str(exc)]
    tmp_path = path.with_suffix(".yaml.tmp")
    tmp_path.write_text(text, encoding="utf-8")
    os.replace(tmp_path, path)
    return []
