"""French speech recognition with faster-whisper, guarded against text invented on silence."""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import threading
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

PACKAGED_BASE = "base"

# Whisper's well-known inventions on silence/noise in French (from subtitle training data).
HALLUCINATIONS = [
    "sous-titres réalisés par la communauté d'amara.org",
    "sous-titres réalisés para la communauté d'amara.org",
    "sous-titrage st' 501",
    "sous-titrage société radio-canada",
    "sous-titrage fr",
    "merci d'avoir regardé",
    "merci d'avoir regardé cette vidéo",
    "abonnez-vous",
    "n'oubliez pas de vous abonner",
    "à la prochaine",
    "amara.org",
    "sous-titres",
    "...",
]


# Added to the prompt when the dialogue expects an answer (Conversation.expects): Whisper leans towards
# the words of its prompt, so a short "non merci" is not heard as English or as a number. Added, not
# in place of the commune's words: alone they turned "Quand passent les encombrants ?" into "On passe
# les rencontres".
HINTS = {
    "yes_no": "Oui. Non. Non merci. Oui, c'est bien ça. Non, ce n'est pas ça.",
    "choice": "Le premier. Le second. Le deuxième.",
    # digits one by one, as the assistant asks: on 40 numbers said so by the test voice, 24 right against
    # 18 with "06 12 34 56 78" (pairs: 5 against 7; Pico 39/40 with either)
    "phone": "Oui, au 0 6, 1 2, 3 4, 5 6, 7 8. Non merci.",
    "orient_situation": "Sans emploi. Retraité. Je suis étudiant. Je travaille. Je ne sais pas.",
    "orient_age": "J'ai 67 ans. Moins de 25 ans. 40 ans.",
    "orient_foyer": "Seul. En couple. Seule avec mes enfants. En couple avec deux enfants.",
    "orient_revenus": "Moins de 1 000 euros. Environ 1 500 euros. Plus de 2 000 euros. Je ne sais pas.",
    "orient_besoin": "Le logement. Le loyer. L'électricité. L'aide à domicile. Le handicap. Les enfants. La santé.",
}


class ModelMissing(Exception):
    """The ASR model is not provisioned: the message names the command that fixes it."""


@dataclass
class Transcript:
    text: str
    confidence: float                 # 0-1, from Whisper's own token probabilities
    no_speech_prob: float = 0.0
    audio_s: float = 0.0
    asr_ms: float = 0.0
    rejected: str | None = None       # why text was dropped (silence, no_speech, hallucination, prompt...)
    window_s: int = 0                 # seconds of audio the encoder saw
    temperature: float = 0.0          # 0: beam search; > 0: the fallback sampling was kept
    avg_logprob: float = 0.0
    alternatives: list[str] = field(default_factory=list)   # other beam results almost as likely
    wait_ms: float = 0.0              # of asr_ms, waiting for a free replica (the ASR queue)


def _norm(text: str) -> str:
    text = unicodedata.normalize("NFC", text.lower()).replace("’", "'")
    return re.sub(r"[\s.!?,;:…]+", " ", text).strip()


_HALLU = {_norm(h) for h in HALLUCINATIONS if _norm(h)}


def is_hallucination(text: str) -> bool:
    t = _norm(text)
    return not t or t in _HALLU or any(h in t for h in _HALLU if len(h) > 12)


def resolve_model(name: str, models_dir: Path) -> str:
    """A folder, the packaged base, or a faster-whisper model name (fetched into models_dir)."""
    p = Path(name)
    if p.is_dir():
        if not (p / "model.bin").exists():
            raise ModelMissing(f"{p} does not hold a CTranslate2 Whisper model (model.bin missing)")
        return str(p)
    if name == PACKAGED_BASE:
        local = models_dir / "whisper-base"
        if not (local / "model.bin").exists():
            raise ModelMissing(
                f"modèle de reconnaissance vocale absent ({local}). "
                "Lancez : scripts/setup.sh  (ou : ivr models provision)")
        return str(local)
    local = models_dir / f"whisper-{name}"
    if (local / "model.bin").exists():
        return str(local)
    raise ModelMissing(
        f"modèle Whisper {name!r} absent de {models_dir}. "
        f"Lancez : ivr models provision --whisper-model {name}  (nécessite l'accès au dépôt de modèles)")


@functools.lru_cache(maxsize=2)
def _load(path: str, device: str, compute_type: str, threads: int, workers: int = 1):
    from faster_whisper import WhisperModel

    t = time.perf_counter()
    model = WhisperModel(path, device=device, compute_type=compute_type, cpu_threads=threads,
                         num_workers=workers)
    log.info("ASR model loaded from %s in %.1f s", path, time.perf_counter() - t)
    return model


def cpu_id() -> str:
    """The CPU as /proc/cpuinfo names it, with its family/model/stepping: two generations of EPYC both call
    themselves "AMD EPYC" under a hypervisor, and measured 2-3x apart."""
    info: dict[str, str] = {}
    try:
        for line in open("/proc/cpuinfo"):
            k, _, v = line.partition(":")
            if k.strip() in ("model name", "cpu family", "model", "stepping"):
                info.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    return (f"{info.get('model name', '?')} (family {info.get('cpu family', '?')}, model {info.get('model', '?')}, "
            f"stepping {info.get('stepping', '?')})")


def _probe_ms(models: dict, beam: int) -> dict:
    """A lone caller's short turn on each model: a 10 s window and 12 beam-search tokens (end of text
    suppressed, so every model does the same work); the best of 3 after one untimed run, the models
    taking turns so that a change in the machine's speed meanwhile touches them alike."""
    from faster_whisper.tokenizer import Tokenizer

    first = next(iter(models.values()))
    tok = Tokenizer(first.hf_tokenizer, True, task="transcribe", language="fr")
    audio = np.random.default_rng(0).normal(0, 0.01, 16000 * 10).astype(np.float32)
    features = first.feature_extractor(audio)[:, :1000]
    prompt = [tok.sot_prev] + tok.encode(" Mairie de la commune, état civil, passeport.") + \
        list(tok.sot_sequence) + [tok.no_timestamps]
    best = dict.fromkeys(models, math.inf)
    for i in range(4):
        for name, model in models.items():
            t = time.perf_counter()
            model.model.generate(model.encode(features), [prompt], beam_size=beam, max_length=len(prompt) + 12,
                                 suppress_tokens=_suppressed(tok) + [tok.eot])
            if i:
                best[name] = min(best[name], (time.perf_counter() - t) * 1000)
    return {name: round(ms, 1) for name, ms in best.items()}


def choose_layout(path: str, cfg: dict, cache_dir: Path | None = None) -> dict:
    """`asr.threads = 0`: callers share one 1-thread replica per core (under load they decode side by
    side), and a lone caller's turn runs on one model using every core if that is faster on this CPU.
    It is on some and not on others: on one 2-core AMD EPYC the decoder ran faster on 1 thread (19 vs
    32 ms a token), on a Zen 1 EPYC 1.6x slower (28 vs 18 ms), its encoder 1.8x slower. Measured once
    per CPU and model, then read from the cache."""
    cores = len(os.sched_getaffinity(0))
    key = f"{cpu_id()}|{cores} cores|{Path(path).resolve()}|{cfg['compute_type']}|beam {cfg['beam_size']}"
    cache = Path(cache_dir) / "asr_layout.json" if cache_dir else None
    known = {}
    if cache and cache.exists():
        try:
            known = json.loads(cache.read_text())
        except (OSError, ValueError):
            known = {}
    if key in known:
        return known[key]
    models = {f"{n}_thread": _load.__wrapped__(path, cfg["device"], cfg["compute_type"], n, 1)   # not kept
              for n in sorted({1, cores})}
    probes = _probe_ms(models, int(cfg["beam_size"]))
    del models
    solo = cores > 1 and probes[f"{cores}_thread"] < 0.95 * probes["1_thread"]
    choice = {"solo": solo, "probe_ms": probes}
    log.info("ASR layout for %s: a lone caller on %s, probe %s", key, "every core" if solo else "one replica", probes)
    if cache:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(dict(known, **{key: choice}), indent=1))
        except OSError as exc:
            log.warning("ASR layout not cached (%s): measured again at the next start", exc)
    return choice


def _suppressed(tok) -> list[int]:
    """Whisper's usual suppressed tokens: non-speech symbols and the special tokens."""
    return sorted(set(tok.non_speech_tokens) | {tok.transcribe, tok.translate, tok.sot, tok.sot_prev, tok.sot_lm,
                                                 tok.no_speech})


def _cut_loop(tokens: list[int]) -> list[int]:
    """Cut a repetition loop at the end of a decoding ("la mairie la mairie la mairie..."): a block of
    k tokens repeated at least 4 times (a single token 8 times) is kept once."""
    n = len(tokens)
    for k in range(1, 13):
        block, reps = tokens[n - k:], 1
        while n - (reps + 1) * k >= 0 and tokens[n - (reps + 1) * k: n - reps * k] == block:
            reps += 1
        if reps >= (8 if k == 1 else 4):
            return tokens[: n - (reps - 1) * k]
    return tokens


def _echoes(text: str, prompt: str) -> bool:
    """The text is only a piece of the prompt (Whisper repeating its prompt on noise)."""
    t, p = _norm(text).split(), _norm(prompt).split()
    if len(t) < 3:
        return False
    return any(p[i:i + len(t)] == t for i in range(len(p) - len(t) + 1))


class Transcriber:
    """One loaded Whisper model, shared by every call of the process.

    The encoder only sees as much as the utterance needs: the audio is padded with silence to the
    smallest window of `asr.windows_s` that leaves `asr.window_margin_s` after it (Whisper was trained
    on 30 s windows, but CTranslate2 encodes shorter ones, and on 2 cores the encoder is most of the
    time). The decoded length is capped by the duration, and repetition loops are cut or retried.
    """

    def __init__(self, asr_cfg: dict, models_dir: Path, prompt: str = "", cache_dir: Path | None = None):
        from faster_whisper.tokenizer import Tokenizer

        self.cfg = asr_cfg
        path = resolve_model(str(asr_cfg["model"]), Path(models_dir))
        cores = len(os.sched_getaffinity(0))
        self.threads = int(asr_cfg["threads"]) or 1
        self.workers = int(asr_cfg.get("workers", 1)) or cores
        self.model = _load(path, asr_cfg["device"], asr_cfg["compute_type"], self.threads, self.workers)
        self.solo = None                # a model on every core, for a lone caller (choose_layout)
        if int(asr_cfg["threads"]) == 0:
            if choose_layout(path, asr_cfg, cache_dir)["solo"]:
                self.solo = _load(path, asr_cfg["device"], asr_cfg["compute_type"], cores, 1)
        self.prompt = prompt if asr_cfg.get("hotwords", True) else ""
        self.tokenizer = Tokenizer(self.model.hf_tokenizer, self.model.model.is_multilingual,
                                   task="transcribe", language="fr")
        self._suppress = _suppressed(self.tokenizer)
        # one transcription per model replica; more wait (on 2 cores, 2 replicas of 1 thread each
        # decode faster than one of 2 threads: the decoder's small matrices do not pay for the sync)
        self._slots = threading.Semaphore(self.workers)
        self._count = threading.Lock()
        self._queued = 0               # transcriptions waiting or running
        self._recent_s = 1.0           # moving average of one transcription's compute time

    def window_for(self, seconds: float) -> int:
        """Seconds of audio the encoder sees for an utterance this long."""
        windows = sorted(int(w) for w in self.cfg.get("windows_s", [10, 20, 30]))
        need = seconds + float(self.cfg.get("window_margin_s", 3.0))
        return next((w for w in windows if w >= need), 30)

    def has_spare(self, alone: bool = False) -> bool:
        """Room for a guess: a replica stays free for a turn that has really ended (`alone`: no other
        call is in progress, so an idle replica is enough)."""
        return self._queued == 0 if alone else self._queued + 1 < self.workers

    def backlog_s(self) -> float:
        """How long a new utterance would wait before its own transcription starts (an estimate)."""
        return max(0, self._queued - self.workers + 1) / self.workers * self._recent_s

    def warm(self) -> float:
        """Run every window once on every replica (the first run of each shape is slow); returns seconds
        spent."""
        from concurrent.futures import ThreadPoolExecutor

        t = time.perf_counter()
        rng = np.random.default_rng(0)
        windows = sorted({self.window_for(s) for s in (1.0, 10.0, 20.0)})
        noise = [(rng.normal(0, 300, 8000 * max(1, w - 4))).astype(np.int16) for w in windows]

        def run(_):
            for pcm in noise:
                self.transcribe(pcm, 8000, force=True)
        with ThreadPoolExecutor(self.workers) as pool:
            list(pool.map(run, range(self.workers)))
        if self.solo is not None:
            for pcm in noise:
                self.transcribe(pcm, 8000, force=True, alone=True)
        return time.perf_counter() - t

    def transcribe(self, pcm: np.ndarray, sample_rate: int, hint: str | None = None,
                   force: bool = False, alone: bool = False, prompt: str | None = None) -> Transcript:
        """`hint`: what the caller is expected to say now (e.g. "Oui. Non."), added to the end of the
        prompt (the commune's vocabulary): a caller may still ask a question instead. `prompt`: another
        commune's vocabulary than this transcriber's own. `force`: skip
        the speech gates (warm-up). `alone`: no other call is in progress, so with the ASR idle this
        turn may have every core."""
        from audio.pcm import pcm_to_float, resample, rms_dbfs

        audio_s = len(pcm) / sample_rate
        if not force:
            if audio_s < 0.1 or rms_dbfs(pcm) < float(self.cfg.get("min_dbfs", -55)):
                return Transcript("", 0.0, 1.0, audio_s, 0.0, rejected="silence")
            if self._speech_seconds(pcm, sample_rate) < float(self.cfg.get("min_speech_s", 0.15)):
                return Transcript("", 0.0, 1.0, audio_s, 0.0, rejected="no_speech")
        audio = pcm_to_float(resample(pcm, sample_rate, 16000))
        if audio_s > 30:         # longer than Whisper's window (not an utterance: a file): 30 s pieces
            parts = [self.transcribe(pcm[i:i + 30 * sample_rate], sample_rate, hint, force, alone, prompt)
                     for i in range(0, len(pcm), 30 * sample_rate)]
            kept = [p for p in parts if p.text]
            return Transcript(" ".join(p.text for p in kept), min((p.confidence for p in kept), default=0.0),
                              min(p.no_speech_prob for p in parts), audio_s, sum(p.asr_ms for p in parts),
                              rejected=None if kept else parts[0].rejected, window_s=30)
        window = int(self.cfg.get("window_s", 0)) or self.window_for(audio_s)
        t0 = time.perf_counter()
        base = self.prompt if prompt is None else prompt
        prompt_text = f"{base} {hint}".strip() if hint else base
        with self._count:
            solo = alone and self.solo is not None and self._queued == 0
            self._queued += 1
        held = self.workers if solo else 1          # the all-core model holds every replica's slot
        try:
            for _ in range(held):
                self._slots.acquire()
            try:
                t_run = time.perf_counter()
                wait_ms = (t_run - t0) * 1000
                result = self._decode(self.solo if solo else self.model, audio, window, prompt_text)
                self._recent_s = 0.8 * self._recent_s + 0.2 * (time.perf_counter() - t_run)
            finally:
                for _ in range(held):
                    self._slots.release()
        finally:
            with self._count:
                self._queued -= 1
        asr_ms = (time.perf_counter() - t0) * 1000
        text, avg_logprob, no_speech, temperature, alternatives = result
        tr = Transcript(text, 0.0, no_speech, audio_s, asr_ms, window_s=window, temperature=temperature,
                        avg_logprob=round(avg_logprob, 3), alternatives=alternatives, wait_ms=round(wait_ms, 1))
        tr.rejected = None if force else self._reject(text, avg_logprob, no_speech, base)
        if tr.rejected or not text:
            tr.text, tr.rejected = "", tr.rejected or "empty"
            return tr
        tr.confidence = round(math.exp(avg_logprob) * (1.0 - 0.5 * no_speech), 3)
        return tr

    # --- internals ---------------------------------------------------------------------------------
    def _speech_seconds(self, pcm: np.ndarray, rate: int) -> float:
        """Seconds the Silero VAD takes for speech: noise, tones and hum never reach Whisper. Frames in
        Silero's unsure band count: it scores short synthetic or phone-band words 0.35-0.5 (a number said
        digit by digit had 0.0-0.12 s above 0.5, 0.3-0.6 s above 0.35), line noise and music score none."""
        from asr.vad import speech_seconds

        if rate not in (8000, 16000):
            return len(pcm) / rate
        return speech_seconds(pcm, rate, threshold=0.35)

    def _reject(self, text: str, avg_logprob: float, no_speech: float, prompt: str) -> str | None:
        if not _norm(text):
            return "empty"
        if no_speech > self.cfg["no_speech_threshold"] and (avg_logprob < -0.5 or no_speech > 0.9):
            return "no_speech"
        if avg_logprob < self.cfg["min_avg_logprob"]:
            return "unsure"
        if is_hallucination(text):
            return "hallucination"
        if prompt and _echoes(text, prompt):
            return "prompt"
        return None

    def _decode(self, model, audio: np.ndarray, window: int,
                prompt_text: str) -> tuple[str, float, float, float, list[str]]:
        fe = model.feature_extractor
        padded = np.zeros(window * 16000, dtype=np.float32)
        padded[: len(audio)] = audio                       # the log-mel of silence after the speech
        features = fe(padded)[:, : window * 100]
        encoded = model.encode(features)
        tok = self.tokenizer
        prompt = []
        if prompt_text:
            prompt = [tok.sot_prev] + tok.encode(" " + prompt_text.strip())[-200:]
        prompt += list(tok.sot_sequence) + [tok.no_timestamps]
        seconds = len(audio) / 16000
        # French speech is 4-5 tokens a second; a repetition loop runs on to the cap
        max_new = min(220, int(seconds * float(self.cfg.get("max_tokens_per_s", 8))) + 10)
        tried, alternatives = [], []
        n_alt = int(self.cfg.get("alternatives", 2))
        for temperature in [float(t) for t in self.cfg.get("temperatures", [0.0, 0.4])]:
            beam = int(self.cfg["beam_size"])
            kwargs = ({"beam_size": beam, "num_hypotheses": min(beam, 1 + n_alt)} if temperature == 0
                      else {"beam_size": 1, "sampling_temperature": temperature, "sampling_topk": 0})
            r = model.model.generate(
                encoded, [prompt], max_length=len(prompt) + max_new, return_scores=True,
                return_no_speech_prob=True, suppress_blank=True, suppress_tokens=self._suppress, **kwargs)[0]
            raw = r.sequences_ids[0]
            tokens = _cut_loop(raw)
            looped = len(tokens) < len(raw) or len(raw) >= max_new
            avg = r.scores[0] * len(raw) / (len(raw) + 1)      # faster-whisper's average log-probability
            tried.append((not looped, avg, tok.decode(tokens).strip(), r.no_speech_prob, temperature))
            if temperature == 0:
                alternatives = self._alternatives(r, tried[-1][2], r.scores[0])
            # a clean, confident result, or silence: no second try
            if not looped and (avg >= float(self.cfg.get("fallback_logprob", -1.0))
                               or r.no_speech_prob > self.cfg["no_speech_threshold"]):
                break
        _, avg, text, no_speech, temperature = max(tried, key=lambda c: (c[0], c[1]))
        return text, avg, no_speech, temperature, alternatives if temperature == 0 else []

    def _alternatives(self, r, best: str, best_score: float) -> list[str]:
        """The beam's other results that differ in words (not only case or punctuation) and score
        nearly as well: the dialogue may try them when the best one matches nothing for sure."""
        seen, out = {_norm(best)}, []
        for ids, score in zip(r.sequences_ids[1:], r.scores[1:]):
            text = self.tokenizer.decode(_cut_loop(ids)).strip()
            if score >= best_score - float(self.cfg.get("alternative_margin", 0.15)) and _norm(text) not in seen:
                seen.add(_norm(text))
                out.append(text)
        return out
