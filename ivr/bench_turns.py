"""`ivr bench turns`: does the assistant answer before the caller has finished, and how long does it
wait after a finished sentence? Each turn-taking policy is run on the same utterances, through the
call's own detector and segmenter (and the turn model, its verdict applied after the time it really
took), then the ASR and the transcript check.

Held out from the tests: human recordings (asterisk-core-sounds-fr lines the tests never use) with one
of their own pauses stretched to 0.5-1.2 s, and two MBROLA voices the tests never use (fr2, fr6)
saying citizens' questions with a pause or a hesitation ("euh", "alors") in the middle.
"""
from __future__ import annotations

import hashlib
import re
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from audio.pcm import iter_frames, phone_line, read_audio

RATE = 8000
PAUSES_S = (0.5, 0.8, 1.0, 1.2)
VOICES = ("mb-fr2", "mb-fr6")
FIRST_UNUSED_RECORDING = 40          # the tests use the first lines of the recordings' list
# "|" is where the caller pauses
SENTENCES = [
    "Je voudrais savoir | à quelle heure ferme la déchetterie le samedi.",
    "Bonjour, | je voudrais un acte de naissance pour mon fils.",
    "Alors euh | c'est pour refaire ma carte d'identité.",
    "C'est pour euh | inscrire ma fille à la cantine.",
    "Est-ce que la mairie est ouverte | le samedi matin ?",
    "Je voudrais signaler | un lampadaire en panne dans ma rue.",
    "Comment on fait pour | s'inscrire sur les listes électorales ?",
    "J'ai perdu mon passeport | et je pars en voyage dans un mois.",
    "Quand est-ce que passent | les encombrants dans mon quartier ?",
    "Je voudrais louer la salle des fêtes | pour un anniversaire.",
    "Il y a un nid de poule | devant l'école.",
    "Euh bonjour, | j'appelle pour un permis de construire.",
    "Je cherche les horaires | de la médiathèque.",
    "Est-ce qu'il faut prendre rendez-vous | pour une carte d'identité ?",
    "Je voudrais parler | à quelqu'un du service urbanisme.",
    "Mon voisin fait brûler ses déchets, | c'est autorisé ?",
]
POLICIES = {
    "silence_600ms": {"turn": "silence", "end_silence_ms": 600, "text": False},
    "silence_250ms_and_transcript": {"turn": "silence", "end_silence_ms": 250, "text": True},
    "smart_turn": {"turn": "smart-turn", "text": False},
    "smart_turn_and_transcript": {"turn": "smart-turn", "text": True},
    "smart_turn_transcript_and_knowledge": {"turn": "smart-turn", "text": True, "knowledge": True},
}


def _espeak(text: str, voice: str, pause_ms: int | None) -> np.ndarray:
    ssml = text.replace("|", f'<break time="{pause_ms}ms"/>' if pause_ms else "")
    with tempfile.TemporaryDirectory() as d:
        wav = Path(d) / "v.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-m", "-w", str(wav), f"<speak>{ssml}</speak>"],
                       check=True, capture_output=True)
        pcm, _ = read_audio(wav, RATE)
    return phone_line(pcm, RATE)


def _loud(pcm: np.ndarray) -> np.ndarray:
    n = len(pcm) // 160
    f = pcm[: n * 160].reshape(n, 160).astype(np.float64)
    return 20 * np.log10(np.sqrt((f ** 2).mean(axis=1)) / 32768 + 1e-9) > -45


def _trim(pcm: np.ndarray) -> np.ndarray:
    on = np.flatnonzero(_loud(pcm))
    return pcm[on[0] * 160:(on[-1] + 1) * 160] if len(on) else pcm


def _widest_gap(pcm: np.ndarray, lo: float = 0.25, hi: float = 0.8) -> tuple[int, int] | None:
    """The longest silence between lo and hi of the way through (frames): where the speaker paused."""
    on = _loud(pcm)
    n, best = len(on), None
    i = int(n * lo)
    while i < int(n * hi):
        if not on[i] and on[:i].any():
            j = i
            while j < n and not on[j]:
                j += 1
            if j < n and (best is None or j - i > best[1] - best[0]):
                best = (i, j)
            i = j
        i += 1
    return best


def build_cases(sounds_dir: Path, limit: int | None = None) -> list[dict]:
    """{"id", "audio", "speech_end_s" (last word of the first part), "resume_s" (None: complete)}."""
    from ivr.bench import load_recordings

    z = lambda s: np.zeros(int(s * RATE), np.int16)  # noqa: E731
    lead, tail = z(0.6), z(2.5)
    cases = []
    rows = load_recordings(sounds_dir)[FIRST_UNUSED_RECORDING:]
    for k, (path, text) in enumerate(rows[:limit] if limit else rows):
        pcm = _trim(phone_line(read_audio(path, RATE)[0], RATE))
        if len(pcm) < RATE * 1.2:
            continue
        cases.append({"id": f"rec:{path.stem}", "kind": "recording", "text": text,
                      "audio": np.concatenate([lead, pcm, tail]), "speech_end_s": 0.6 + len(pcm) / RATE,
                      "resume_s": None})
        if re.search(r"[.?!]\s", text.strip()):
            continue                # several sentences: their widest gap is an end, not a pause
        gap = _widest_gap(pcm)
        if gap is None or gap[1] - gap[0] < 3:          # no pause of 60 ms to stretch
            continue
        pause = PAUSES_S[k % len(PAUSES_S)]
        a, b = pcm[: gap[0] * 160], pcm[gap[1] * 160:]
        cases.append({"id": f"rec:{path.stem}:pause", "kind": "recording", "text": text, "pause_s": pause,
                      "audio": np.concatenate([lead, a, z(pause), b, tail]), "speech_end_s": 0.6 + len(a) / RATE,
                      "resume_s": 0.6 + len(a) / RATE + pause})
    for v, voice in enumerate(VOICES):
        for k, sentence in enumerate(SENTENCES[:limit] if limit else SENTENCES):
            whole = _trim(_espeak(sentence, voice, None))
            cases.append({"id": f"{voice}:{k}", "kind": "voice", "text": sentence.replace("| ", ""),
                          "audio": np.concatenate([lead, whole, tail]), "speech_end_s": 0.6 + len(whole) / RATE,
                          "resume_s": None})
            pause = PAUSES_S[(k + v) % len(PAUSES_S)]
            pcm = _trim(_espeak(sentence, voice, int(pause * 1000)))
            gap = _widest_gap(pcm, 0.05, 0.95)
            if gap is None:
                continue
            cases.append({"id": f"{voice}:{k}:pause", "kind": "voice", "text": sentence, "pause_s": round((gap[1] - gap[0]) * 0.02, 2),
                          "audio": np.concatenate([lead, pcm, tail]), "speech_end_s": 0.6 + gap[0] * 0.02,
                          "resume_s": 0.6 + gap[1] * 0.02})
    return cases


def _first_turn(cfg, case: dict, policy: dict, model) -> dict:
    """The first end of turn the segmenter makes, on the call's own detector."""
    from asr.vad import SileroVad, SpeechEnded, SpeechStarted, TurnCheck, VoiceSegmenter

    vad = dict(cfg["vad"])
    smart = policy["turn"] == "smart-turn"
    if smart:
        vad.update(turn_check_ms=int(cfg["turn"]["check_ms"]), complete_threshold=float(cfg["turn"]["complete_threshold"]),
                   max_wait_ms=int(cfg["turn"]["max_wait_ms"]))
    else:
        vad.update(end_silence_ms=policy["end_silence_ms"], turn_check_ms=0)
    det, seg = SileroVad(RATE), VoiceSegmenter.from_config(vad, RATE)
    pending, model_ms, t, opened = None, [], 0.0, None
    for frame in iter_frames(case["audio"], RATE):
        t += 0.02
        if pending and pending[0] <= t:              # the verdict arrives after the model's own time
            seg.verdict(pending[1], pending[2])
            pending = None
        for ev in seg.process(frame, det(frame)):
            if isinstance(ev, SpeechStarted) and opened is None:
                opened = ev.t
            elif isinstance(ev, TurnCheck):          # as the session does: the turn since its first words
                a = case["audio"][int(round(opened * RATE)):int(round(ev.t * RATE))]
                t0 = time.perf_counter()
                p = model(a, RATE)
                ms = (time.perf_counter() - t0) * 1000
                model_ms.append(ms)
                pending = (t + ms / 1000, ev.n, p)
            elif isinstance(ev, SpeechEnded):
                return {"t_end": ev.t_end, "audio": ev.audio, "reason": ev.reason, "complete_p": ev.complete_p,
                        "model_ms": model_ms}
    return {"t_end": None, "audio": None, "reason": "none", "complete_p": None, "model_ms": model_ms}


def bench_turns(cfg, sounds_dir: Path, limit: int | None = None, policies: list[str] | None = None) -> dict:
    from asr.transcriber import Transcriber
    from asr.turn import SmartTurn
    from dialogue.unfinished import unfinished
    from ivr.bench import machine
    from ivr.models import smart_turn_path

    from dialogue.conversation import Conversation
    from ivr.app import build_dialogue

    cases = build_cases(sounds_dir, limit)
    corpus, index = build_dialogue(cfg)
    model = SmartTurn(smart_turn_path(cfg.models_dir))
    asr = Transcriber(cfg["asr"], cfg.models_dir, cache_dir=cfg.cache_dir)
    asr.warm()
    texts: dict[str, tuple[str, float]] = {}
    hold_s = float(cfg["turn"]["unfinished_wait_ms"]) / 1000

    def transcribe(pcm: np.ndarray) -> tuple[str, float]:
        key = hashlib.sha1(pcm.tobytes()).hexdigest()
        if key not in texts:
            t0 = time.perf_counter()
            text = asr.transcribe(pcm, RATE).text
            texts[key] = (text, time.perf_counter() - t0)
        return texts[key]

    out = {"benchmark": "turns", "machine": machine(), "settings": dict(cfg["turn"]),
           "cases": {"complete": sum(c["resume_s"] is None for c in cases),
                     "paused": sum(c["resume_s"] is not None for c in cases),
                     "pauses_s": sorted({c["pause_s"] for c in cases if "pause_s" in c})},
           "policies": {}}
    def held(policy: dict, text: str) -> bool:
        """The session's checks on the transcript: such a turn waits until hold_s after the last word."""
        if not policy["text"]:
            return False
        return unfinished(text) or bool(policy.get("knowledge")) and Conversation(corpus, index, cfg["dialogue"]).unsure(text)

    for name in policies or list(POLICIES):
        policy = POLICIES[name]
        waits, cut, cut_1s, ended_early, over, n_paused, n_paused_1s, model_ms, missed = [], [], [], 0, 0, 0, 0, [], []
        by_kind = {"recording": [0, 0], "voice": [0, 0]}          # [cut off, paused utterances]
        by_kind_1s = {"recording": [0, 0], "voice": [0, 0]}       # the same, pauses up to 1 s
        waits_by_kind: dict[str, list[float]] = {"recording": [], "voice": []}
        for case in cases:
            r = _first_turn(cfg, case, policy, model)
            model_ms += r["model_ms"]
            if case["resume_s"] is None:             # a finished sentence: how long until it is answered
                if r["t_end"] is None:
                    missed.append(case["id"])
                    continue
                wait = r["t_end"] - case["speech_end_s"]
                if held(policy, transcribe(r["audio"])[0]):
                    wait = max(wait, hold_s)
                waits.append(wait)
                waits_by_kind[case["kind"]].append(wait * 1000)
                continue
            n_paused += 1
            n_paused_1s += case["pause_s"] <= 1.0
            early = r["t_end"] is not None and r["t_end"] < case["resume_s"]
            answered = False
            if early:
                ended_early += 1
                text, asr_s = transcribe(r["audio"])
                # nothing understood ("alors euh" may give no text) is no turn: the caller is not answered.
                # A reply is held (and the rest joined to the turn) if the caller speaks again before it
                # is ready, or before hold_s after their last word when the transcript is held.
                if text:
                    ready = case["speech_end_s"] + hold_s if held(policy, text) else r["t_end"] + asr_s
                    answered = ready < case["resume_s"]
                    over += r["t_end"] + asr_s < case["resume_s"]
            if answered:
                cut.append(case["id"])
                by_kind[case["kind"]][0] += 1
                if case["pause_s"] <= 1.0:
                    cut_1s.append(case["id"])
                    by_kind_1s[case["kind"]][0] += 1
            by_kind[case["kind"]][1] += 1
            by_kind_1s[case["kind"]][1] += case["pause_s"] <= 1.0
        w = np.array(waits) * 1000
        out["policies"][name] = {
            "cut_off_pct": round(100 * len(cut) / max(n_paused, 1), 1),
            "cut_off_pct_pauses_to_1s": round(100 * len(cut_1s) / max(n_paused_1s, 1), 1),
            "cut_off_pct_by_kind": {k: round(100 * c / max(n, 1), 1) for k, (c, n) in by_kind.items()},
            "cut_off_pct_pauses_to_1s_by_kind": {k: round(100 * c / max(n, 1), 1) for k, (c, n) in by_kind_1s.items()},
            "wait_after_complete_p50_ms_by_kind": {k: round(float(np.median(v))) if v else None
                                                   for k, v in waits_by_kind.items()},
            "turn_ended_in_pause_pct": round(100 * ended_early / max(n_paused, 1), 1),
            "reply_ready_in_pause_pct": round(100 * over / max(n_paused, 1), 1),
            "wait_after_complete_ms": {"p50": round(float(np.percentile(w, 50))), "p90": round(float(np.percentile(w, 90))),
                                       "max": round(float(w.max()))} if len(w) else None,
            "complete_waiting_over_1s": int((w > 1000).sum()),
            "model_ms_p50": round(float(np.median(model_ms)), 1) if model_ms else None,
            "cut_off": cut, "not_ended": missed,
        }
    out["asr_ms_p50"] = round(1000 * float(np.median([s for _, s in texts.values()])), 0) if texts else None
    return out
