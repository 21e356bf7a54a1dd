"""Benchmarks: ASR, VAD, TTS and the FAQ engine. Each returns a JSON-ready dict."""
from __future__ import annotations

import datetime as dt
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import yaml

from ivr.audio import iter_frames, phone_line, read_audio
from ivr.metrics import edit_distance, words_for_scoring

ROOT = Path(__file__).resolve().parents[1]
SOUNDS_TSV = ROOT / "scripts" / "data" / "core_sounds_fr.tsv"
BENCH_DAY = dt.date(2026, 12, 1)


def machine() -> dict:
    import os

    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def load_recordings(sounds_dir: Path, limit: int | None = None) -> list[tuple[Path, str]]:
    rows = []
    for line in SOUNDS_TSV.read_text(encoding="utf-8").splitlines()[1:]:
        if line.strip():
            name, text = line.split("\t", 1)
            rows.append((sounds_dir / f"{name}.wav", text))
    missing = [p for p, _ in rows if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{missing[0]} absent : lancez scripts/fetch_french_sounds.sh")
    return rows[:limit] if limit else rows


# ASR settings compared by `ivr bench asr`: Whisper's full 30 s window against the windowed encoder,
# and (--explore) ways to spend the time the window saves.
ASR_VARIANTS = {"full_30s": {"window_s": 30}, "windowed": {}}
ASR_EXPLORE = {"windowed_beam_8": {"beam_size": 8}, "windowed_beam_1": {"beam_size": 1},
               "windowed_no_fallback": {"temperatures": [0.0]},
               "windowed_retry_below_-0.6": {"fallback_logprob": -0.6, "temperatures": [0.0, 0.2, 0.4]}}


def bench_asr(cfg, sounds_dir: Path, limit: int | None = None, beam: int | None = None,
              variants: list[str] | None = None, explore: bool = False) -> dict:
    """Every variant on the same recordings in one run (same machine state), so they compare."""
    from asr.transcriber import Transcriber

    table = dict(ASR_VARIANTS, **(ASR_EXPLORE if explore else {}))
    names = variants or list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"variante inconnue : {unknown[0]} (connues : {', '.join(table)})")
    rows = load_recordings(sounds_dir, limit)
    lines = [(phone_line(read_audio(path, 8000)[0], 8000), ref) for path, ref in rows]   # 8 kHz G.711 round trip
    base = dict(cfg["asr"], **({"beam_size": beam} if beam else {}))
    results = {}
    for name in names:
        tr = Transcriber(dict(base, **table[name]), cfg.models_dir)
        tr.warm()
        errors = words = 0
        audio_s = compute_s = 0.0
        short, every, worst, retried, rejected = [], [], [], 0, 0
        for line, ref in lines:
            t = time.perf_counter()
            out = tr.transcribe(line, 8000)
            took = time.perf_counter() - t
            r = words_for_scoring(ref)
            e = edit_distance(r, words_for_scoring(out.text))
            errors, words = errors + e, words + len(r)
            audio_s, compute_s = audio_s + len(line) / 8000, compute_s + took
            every.append(took * 1000)
            if 2.0 <= len(line) / 8000 <= 3.0:
                short.append(took * 1000)
            retried += out.temperature > 0          # the sampled retry was kept
            rejected += bool(out.rejected)
            worst.append((e / max(1, len(r)), ref, out.text))
        worst.sort(reverse=True)
        results[name] = {
            "settings": {k: tr.cfg.get(k) for k in ("window_s", "windows_s", "beam_size", "temperatures",
                                                   "fallback_logprob")},
            "wer": round(errors / max(1, words), 4), "rtf": round(compute_s / audio_s, 3),
            "ms_median": round(statistics.median(every)), "ms_p95": round(float(np.percentile(every, 95))),
            "ms_per_2_5s_utterance_median": round(statistics.median(short)) if short else None,
            "sampled_retry_kept": retried, "rejected": rejected,
            "worst": [{"wer": round(w, 2), "ref": r, "hyp": h} for w, r, h in worst[:3]]}
    return {"benchmark": "asr", "model": str(cfg["asr"]["model"]), "compute_type": cfg["asr"]["compute_type"],
            "line": "8 kHz G.711 mu-law", "utterances": len(lines),
            "audio_s": round(sum(len(l) for l, _ in lines) / 8000, 1),
            "utterances_2_to_3s": sum(1 for l, _ in lines if 2.0 <= len(l) / 8000 <= 3.0),
            "variants": results, "machine": machine()}


def synthetic_call(sounds_dir: Path, n: int = 12, snr_db: float = 10.0, seed: int = 0):
    """Real recordings separated by 0.6-1.5 s pauses, in white noise at `snr_db`; truth per 20 ms frame."""
    rng = np.random.default_rng(seed)
    rows = load_recordings(sounds_dir)
    picks = rng.choice(len(rows), size=n, replace=False)
    parts, truth = [], []
    for i in picks:
        pcm, _ = read_audio(rows[i][0], 8000)
        pcm = np.concatenate([pcm, np.zeros(-len(pcm) % 160, np.int16)])   # whole frames
        gap = np.zeros(int(rng.uniform(0.6, 1.5) * 50) * 160, np.int16)
        parts += [gap, pcm]
        fr = np.array([np.sqrt(np.mean(f.astype(np.float64) ** 2)) for f in iter_frames(pcm, 8000)])
        speech = fr > max(fr.max() * 10 ** (-35 / 20), 100)     # frames within 35 dB of the peak
        # fill short gaps inside words (< 200 ms) so truth is "talking", not "voiced"
        idx = np.flatnonzero(speech)
        if len(idx):
            filled = speech.copy()
            for a, b in zip(idx[:-1], idx[1:]):
                if b - a <= 10:
                    filled[a:b] = True
            speech = filled
        truth += [False] * (len(gap) // 160) + list(speech)
    parts.append(np.zeros(8000, np.int16))
    truth += [False] * 50
    clean = np.concatenate(parts).astype(np.float64)
    n_frames = len(clean) // 160
    truth = np.array(truth[:n_frames])
    p_speech = np.mean(clean[: n_frames * 160].reshape(-1, 160)[truth] ** 2)
    noise = rng.normal(0, np.sqrt(p_speech / 10 ** (snr_db / 10)), len(clean))
    noisy = np.clip(clean + noise, -32768, 32767).astype(np.int16)
    return noisy[: n_frames * 160], truth


def bench_vad(cfg, sounds_dir: Path, snr_db: float = 10.0, collar: int = 2) -> dict:
    """Per-frame precision/recall; frames within `collar` frames of a speech/silence boundary of the
    reference are not scored (the usual collar of VAD evaluations: boundaries are fuzzy)."""
    from asr.vad import SileroVad, WebRtcVad

    pcm, truth = synthetic_call(sounds_dir, snr_db=snr_db)
    edges = np.flatnonzero(np.diff(truth.astype(int))) + 1
    scored = np.ones(len(truth), bool)
    for e in edges:
        scored[max(0, e - collar):e + collar] = False
    out = {"benchmark": "vad", "audio_s": round(len(pcm) / 8000, 1), "snr_db": snr_db, "frame_ms": 20,
           "collar_frames": collar, "speech_share": round(float(truth.mean()), 3), "detectors": {},
           "machine": machine()}
    dets = {"silero": lambda: SileroVad(8000), "webrtc_mode2": lambda: WebRtcVad(8000, 2),
            "webrtc_mode3": lambda: WebRtcVad(8000, 3)}
    for name, make in dets.items():
        det = make()
        t = time.perf_counter()
        # the segmenter's own rule: enter speech at `threshold`, leave below threshold - 0.15
        on, off = float(cfg["vad"]["threshold"]), max(float(cfg["vad"]["threshold"]) - 0.15, 0.01)
        state, decisions = False, []
        for f in iter_frames(pcm, 8000):
            p = det(f)
            state = p >= on if not state else p >= off
            decisions.append(state)
        pred = np.array(decisions)[: len(truth)]
        cost = time.perf_counter() - t
        p, t = pred[scored], truth[scored]
        tp = int((p & t).sum())
        out["detectors"][name] = {"precision": round(tp / max(1, p.sum()), 3),
                                  "recall": round(tp / max(1, t.sum()), 3), "cost_s": round(cost, 3)}
    return out


def bench_tts(cfg, sounds_dir: Path, n: int = 20, limit: int | None = None) -> dict:
    """Time to first audio, real-time factor, and intelligibility: the project's ASR (without the
    commune prompt) transcribes the voice back after an 8 kHz G.711 line. Two text sets: `n` answers
    of the knowledge base, and the recorded phone prompts, whose human recordings go through the same
    judge so that the voice's score can be read against a real speaker's."""
    from asr.transcriber import Transcriber
    from dialogue.corpus import load_corpus
    from ivr.metrics import errors
    from tts.synthesizer import Speaker, make_synthesizer

    corpus = load_corpus(cfg.corpus_dir, BENCH_DAY)    # a fixed day: the same texts on every run
    answers = [e.answer for e in corpus.entries[:: max(1, len(corpus.entries) // n)]][:n]
    prompts = load_recordings(sounds_dir, limit)
    synth = make_synthesizer(cfg["tts"], cfg.models_dir)
    speaker = Speaker(synth, 8000, emphasis=float(cfg["tts"].get("emphasis", 0.0)))   # no cache: measure synthesis
    judge = Transcriber(cfg["asr"], cfg.models_dir)
    first, rtf = [], []

    def speak(text: str) -> np.ndarray:
        t0 = time.perf_counter()
        chunks = []
        for c in speaker.stream(text, cache=False):
            if not chunks:
                first.append((time.perf_counter() - t0) * 1000)
            chunks.append(c.pcm)
        pcm = np.concatenate(chunks)
        rtf.append((time.perf_counter() - t0) / (len(pcm) / 8000))
        return pcm

    def score(pairs) -> dict:
        tot = {"errors": 0, "homophone_errors": 0, "words": 0}
        worst = []
        for text, pcm in pairs:
            hyp = judge.transcribe(phone_line(pcm, 8000), 8000).text
            e, w = errors(text, hyp)
            tot["errors"] += e
            tot["homophone_errors"] += errors(text, hyp, homophones=True)[0]
            tot["words"] += w
            worst.append((e / max(1, w), text, hyp))
        worst.sort(key=lambda x: -x[0])
        return {"texts": len(worst), "words": tot["words"], "wer": round(tot["errors"] / max(1, tot["words"]), 4),
                "wer_homophones_as_right": round(tot["homophone_errors"] / max(1, tot["words"]), 4),
                "worst": [{"wer": round(w, 2), "ref": r, "hyp": h} for w, r, h in worst[:3]]}

    result = {"benchmark": "tts", "engine": synth.name, "emphasis": speaker.emphasis, "rate": 8000,
              "line": "8 kHz G.711 mu-law", "judge": f"{cfg['asr']['model']} beam {cfg['asr']['beam_size']}, no prompt"}
    result["answers"] = score((t, speak(t)) for t in answers)
    result["prompts"] = score((t, speak(t)) for _, t in prompts)
    result["prompts_human_speaker"] = score((t, read_audio(p, 8000)[0]) for p, t in prompts)
    result.update({"first_audio_ms_median": round(statistics.median(first), 1),
                   "first_audio_ms_max": round(max(first), 1), "rtf_median": round(statistics.median(rtf), 4),
                   "machine": machine()})
    return result


def load_devset(path: Path | None, corpus_dir: Path) -> list[dict]:
    path = path or corpus_dir / "devset"
    files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    items = []
    for f in files:
        items += yaml.safe_load(f.read_text(encoding="utf-8")) or []
    return items


def bench_faq(cfg, devset: Path | None = None, errors: bool = False) -> dict:
    """Search quality (top-1 theme/entry) and what the conversation does with each query."""
    import datetime as dt

    from dialogue.conversation import Conversation
    from ivr.app import build_dialogue

    corpus, index = build_dialogue(cfg)
    items = load_devset(devset, cfg.corpus_dir)
    open_clock = lambda: dt.datetime(2026, 12, 1, 10, 0)  # noqa: E731 (a weekday morning: transfers allowed)
    in_scope = [q for q in items if q.get("entry")]
    oos = [q for q in items if not q.get("entry")]
    top_theme = top_entry = answered = answered_ok = clarified = clarify_ok = oos_ok = 0
    times, misses = [], []
    for q in items:
        conv = Conversation(corpus, index, cfg["dialogue"], store=None, clock=open_clock)
        t = time.perf_counter()
        r = conv.on_text(q["q"])
        times.append((time.perf_counter() - t) * 1000)
        if q.get("entry"):
            best = index.search(q["q"]).best
            top_entry += bool(best and best.entry.id == q["entry"])
            top_theme += bool(best and best.entry.theme == q["theme"])
            if r.entry_id and r.action in ("answer", "signalement", "guide", "transfer"):
                answered += 1
                ok = corpus.by_id(r.entry_id).theme == q["theme"]
                answered_ok += ok
                if not ok and errors:
                    misses.append({"q": q["q"], "want": q["entry"], "got": r.entry_id, "conf": r.confidence})
            elif r.action == "clarify" and conv.s.candidates:
                clarified += 1
                clarify_ok += q["entry"] in conv.s.candidates
        else:
            person = r.entry_id and corpus.by_id(r.entry_id).action == "transfer"
            ok = r.action in ("transfer", "clarify", "message") or bool(person)
            oos_ok += ok
            if not ok and errors:
                misses.append({"q": q["q"], "want": q.get("expect"), "got": r.entry_id, "action": r.action,
                               "conf": r.confidence})
    times.sort()
    n = max(1, len(in_scope))
    out = {"benchmark": "faq", "queries": len(items), "in_scope": len(in_scope), "out_of_scope": len(oos),
           "theme_accuracy_top1": round(top_theme / n, 4),
           "entry_accuracy_top1": round(top_entry / n, 4),
           "answered_directly": round(answered / n, 4),
           "theme_accuracy_when_answered": round(answered_ok / max(1, answered), 4),
           "clarified": round(clarified / n, 4),
           "clarify_offers_right_entry": round(clarify_ok / max(1, clarified), 4),
           "out_of_scope_safe": round(oos_ok / max(1, len(oos)), 4),
           "ms_per_query_median": round(times[len(times) // 2], 2),
           "ms_per_query_p95": round(times[int(len(times) * 0.95)], 2),
           "embedding": index.embedder.name, "entries": len(corpus.entries), "machine": machine()}
    if errors:
        out["misses"] = misses
    return out
