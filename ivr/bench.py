"""Benchmarks: ASR, VAD, TTS and the FAQ engine. Each returns a JSON-ready dict."""
from __future__ import annotations

import datetime as dt
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import yaml

from audio.pcm import iter_frames, phone_line, read_audio
from ivr.metrics import edit_distance, words_for_scoring

ROOT = Path(__file__).resolve().parents[1]
SOUNDS_TSV = ROOT / "scripts" / "data" / "core_sounds_fr.tsv"
BENCH_DAY = dt.date(2026, 12, 1)


def machine() -> dict:
    import os

    from asr.transcriber import cpu_id

    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cpu_id": cpu_id(), "cores": os.cpu_count(), "python": platform.python_version()}


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
ASR_VARIANTS = {"full_30s": {"window_s": 30}, "windowed_1_thread_per_core": {"threads": 1, "workers": 0},
                "windowed_2_threads": {"threads": 2, "workers": 1}, "windowed": {}}
ASR_EXPLORE = {"windowed_beam_8": {"beam_size": 8}, "windowed_beam_3": {"beam_size": 3},
               "windowed_beam_1": {"beam_size": 1},
               "windowed_from_6s": {"windows_s": [6, 10, 20, 30], "window_margin_s": 2.5},
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
        tr = Transcriber(dict(base, **table[name]), cfg.models_dir, cache_dir=cfg.cache_dir)
        tr.warm()
        errors = words = 0
        audio_s = compute_s = 0.0
        short, every, worst, retried, rejected = [], [], [], 0, 0
        for line, ref in lines:
            t = time.perf_counter()
            out = tr.transcribe(line, 8000, alone=True)     # one caller: the layout a lone turn gets
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
            "settings": dict({k: tr.cfg.get(k) for k in ("window_s", "windows_s", "beam_size", "temperatures",
                                                        "fallback_logprob")}, threads=tr.threads, workers=tr.workers,
                             all_cores_when_alone=tr.solo is not None),
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


HEARING_LINES = ["Quels sont les horaires de la mairie ?", "Non merci, au revoir.", "Oui.",
                 "Je voudrais un acte de naissance.", "Bonjour, il y a un lampadaire cassé dans ma rue.",
                 "Comment inscrire mon enfant à la cantine ?"]


def bench_hearing(cfg, voices=("mb-fr1", "mb-fr4", "pico"), levels=(-36, -24, -18, -12, -6),
                  waits=(1.0, 10.0, 30.0)) -> dict:
    """Whether each line a caller says starts an utterance, after the caller has been silent a while
    (digital silence, or line noise at -60 dBFS), by voice and level (RMS through G.711, clipped past
    full scale); the detector as configured against the plain Silero model."""
    from asr.vad import SileroVad, SpeechStarted, VoiceSegmenter
    from audio.pcm import at_level, resample
    from tts.synthesizer import EspeakSynthesizer, PicoSynthesizer

    rng = np.random.default_rng(0)
    clips = {}
    for voice in voices:
        synth = PicoSynthesizer() if voice == "pico" else EspeakSynthesizer(voice, speed=90)
        for i, text in enumerate(HEARING_LINES):
            pcm = resample(synth.synth(text), synth.native_rate, 8000)
            for db in levels:
                clips[(voice, db, i)] = phone_line(at_level(pcm, db), 8000)
    detectors = {"silero": lambda: SileroVad(8000),
                 "silero_plain": lambda: SileroVad(8000, idle_reset_s=0, agc_target_dbfs=0, settled=False)}
    out = {"benchmark": "hearing", "lines": HEARING_LINES, "voices": list(voices), "levels_dbfs": list(levels),
           "waits_s": list(waits), "detectors": {}, "machine": machine()}
    for name, make in detectors.items():
        res = {"heard": 0, "lines": 0, "by_wait": {}, "by_level": {}, "by_voice": {}, "missed": []}
        for kind in ("digital_silence", "line_noise"):
            for wait in waits:
                n = int(wait * 8000) // 160 * 160
                lead = np.zeros(n, np.int16) if kind == "digital_silence" else \
                    rng.normal(0, 32768 * 10 ** (-60 / 20), n).astype(np.int16)
                for (voice, db, i), clip in clips.items():
                    det, seg = make(), VoiceSegmenter.from_config(cfg["vad"], 8000)
                    heard = False
                    for f in iter_frames(np.concatenate([lead, clip, np.zeros(4000, np.int16)]), 8000):
                        heard |= any(isinstance(e, SpeechStarted) for e in seg.process(f, det(f)))
                    res["heard"] += heard
                    res["lines"] += 1
                    for key, val in (("by_wait", f"{kind} {wait:g} s"), ("by_level", str(db)), ("by_voice", voice)):
                        h, t = res[key].get(val, (0, 0))
                        res[key][val] = (h + heard, t + 1)
                    if not heard:
                        res["missed"].append(f"{voice} {db} dBFS after {kind} {wait:g} s: {HEARING_LINES[i]}")
        for key in ("by_wait", "by_level", "by_voice"):
            res[key] = {k: f"{h}/{t}" for k, (h, t) in res[key].items()}
        out["detectors"][name] = res
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


def split_part(item: dict) -> str:
    """The development set's held-out quarter, chosen by a hash of the question (stable, not by
    theme): "test" is never used to tune thresholds or phrasings, "tuning" is."""
    import hashlib

    return "test" if hashlib.sha1(item["q"].encode()).digest()[0] % 4 == 0 else "tuning"


def _kind(item: dict, corpus) -> str:
    if item.get("kind"):
        return item["kind"]
    if not item.get("entry"):
        return "out_of_scope"
    e = corpus.by_id(item["entry"])
    return {"signalement": "report", "transfer": "person"}.get(e.action if e else "answer", "question")


def _score(items: list[dict], corpus, index, cfg, errors: bool) -> dict:
    import datetime as dt

    from dialogue.conversation import Conversation

    open_clock = lambda: dt.datetime(2026, 12, 1, 10, 0)  # noqa: E731 (a weekday morning: transfers allowed)
    c = {k: 0 for k in ("top_theme", "top_entry", "answered", "answered_ok", "clarified", "clarify_ok", "right",
                        "right_or_offered", "routed", "oos_safe", "wrong")}
    kinds: dict[str, int] = {}
    times, misses = [], []
    for q in items:
        kind = _kind(q, corpus)
        kinds[kind] = kinds.get(kind, 0) + 1
        conv = Conversation(corpus, index, cfg["dialogue"], store=None, clock=open_clock)
        t = time.perf_counter()
        r = conv.on_text(q["q"])
        times.append((time.perf_counter() - t) * 1000)
        ok = False
        if kind in ("question", "report"):
            best = index.search(q["q"]).best
            c["top_entry"] += bool(best and best.entry.id == q["entry"])
            c["top_theme"] += bool(best and best.entry.theme == q["theme"])
            if r.entry_id and r.action in ("answer", "signalement", "guide", "transfer"):
                c["answered"] += 1
                c["answered_ok"] += corpus.by_id(r.entry_id).theme == q["theme"]
            elif r.action == "clarify" and conv.s.candidates:
                c["clarified"] += 1
                c["clarify_ok"] += q["entry"] in conv.s.candidates
            if kind == "question":      # the right entry answered
                ok = r.entry_id == q["entry"] and r.action in ("answer", "guide", "transfer")
            else:                       # taken as a report, of the right kind
                ok = r.action == "signalement" and corpus.by_id(r.entry_id).theme == q["theme"]
            c["right"] += ok
            c["wrong"] += (not ok and r.action in ("answer", "guide", "signalement")
                           and (r.entry_id != q["entry"]))
            c["right_or_offered"] += ok or (r.action == "clarify" and q["entry"] in conv.s.candidates)
        elif kind in ("person", "service"):
            # a person: the desk; a service: its own extension, its message box when closed, or its
            # number said when it is not on the town hall's switchboard
            ok = (r.service == q["service"] if kind == "service" and q.get("service")
                  else r.action in ("transfer", "message") and not r.service)
            c["routed"] += ok
        else:
            ok = r.action not in ("answer", "guide", "signalement")
            c["oos_safe"] += ok
        if not ok and errors:
            misses.append({"q": q["q"], "kind": kind, "want": q.get("entry") or q.get("service"),
                           "got": r.entry_id, "action": r.action, "conf": r.confidence})
    times.sort()
    n = max(1, kinds.get("question", 0) + kinds.get("report", 0))
    routed_n = kinds.get("person", 0) + kinds.get("service", 0)
    out = {"queries": len(items), "kinds": kinds,
           "theme_accuracy_top1": round(c["top_theme"] / n, 4),
           "entry_accuracy_top1": round(c["top_entry"] / n, 4),
           "right_answer_or_report": round(c["right"] / n, 4),
           "right_or_offered_in_clarification": round(c["right_or_offered"] / n, 4),
           "wrong_answer_or_report": round(c["wrong"] / n, 4),
           "answered_directly": round(c["answered"] / n, 4),
           "theme_accuracy_when_answered": round(c["answered_ok"] / max(1, c["answered"]), 4),
           "clarified": round(c["clarified"] / n, 4),
           "clarify_offers_right_entry": round(c["clarify_ok"] / max(1, c["clarified"]), 4),
           "person_or_service_routed": round(c["routed"] / routed_n, 4) if routed_n else None,
           "out_of_scope_safe": (round(c["oos_safe"] / kinds["out_of_scope"], 4)
                                 if kinds.get("out_of_scope") else None),
           "ms_per_query_median": round(times[len(times) // 2], 2) if times else None,
           "ms_per_query_p95": round(times[int(len(times) * 0.95)], 2) if times else None}
    if errors:
        out["misses"] = misses
    return out


def bench_faq(cfg, devset: Path | None = None, errors: bool = False) -> dict:
    """What the conversation does with each query (top-1 theme/entry, right answer or report, routing,
    out of scope), on the development set's tuning and held-out parts and on the independent test set
    (corpus/testset/, written without reading the corpus's phrasings), or on one given file/folder."""
    from ivr.app import build_dialogue

    corpus, index = build_dialogue(cfg)
    if devset:
        parts = {"given": load_devset(devset, cfg.corpus_dir)}
    else:
        dev = load_devset(None, cfg.corpus_dir)
        parts = {"tuning": [q for q in dev if split_part(q) == "tuning"],
                 "test": [q for q in dev if split_part(q) == "test"]}
        if (cfg.corpus_dir / "testset").is_dir():
            parts["independent"] = load_devset(cfg.corpus_dir / "testset", cfg.corpus_dir)
    out = {"benchmark": "faq", "embedding": index.embedder.name, "entries": len(corpus.entries),
           "parts": {name: _score(items, corpus, index, cfg, errors) for name, items in parts.items()},
           "machine": machine()}
    return out
