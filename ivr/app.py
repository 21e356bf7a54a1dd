"""Wiring: build the engines once per process from the configuration."""
from __future__ import annotations

import datetime as dt
import logging
import threading
import time

from ivr.communes import load_communes
from ivr.config import Config, ConfigError

log = logging.getLogger(__name__)


def setup_logging(cfg: Config, verbose: bool = False) -> None:
    level = "DEBUG" if verbose else str(cfg["log"]["level"]).upper()
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if cfg["log"]["file"]:
        handlers.append(logging.FileHandler(cfg["log"]["file"]))
    logging.basicConfig(level=level, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    for noisy in ("faster_whisper", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(max(logging.getLevelName(level), logging.WARNING))


def build_dialogue(cfg: Config, today: dt.date | None = None, progress=None, corpus_dir=None):
    from dialogue.corpus import load_corpus
    from dialogue.search import load_index, make_embedder

    corpus = load_corpus(corpus_dir or cfg.corpus_dir, today)
    index, built = load_index(corpus, make_embedder(cfg["dialogue"]["embedding"]), cfg.cache_dir, progress)
    if built:
        log.info("FAQ index built: %d entries", len(corpus.entries))
    return corpus, index


class Knowledge:
    """The corpus and its index as a long-running service sees them: re-rendered when the day changes
    (events, works, closures are relative to today) and reloaded when an admin edits the corpus. The
    new version is built in the background while calls go on with the old one; an edit that does not
    load is logged and the previous version keeps serving."""

    def __init__(self, cfg: Config, clock=None, check_every_s: float = 30.0, on_reload=None, corpus_dir=None):
        from dialogue.corpus import fingerprint

        self.cfg, self.check_every_s, self.on_reload = cfg, check_every_s, on_reload
        self.corpus_dir = corpus_dir or cfg.corpus_dir
        self.clock = clock or dt.datetime.now
        self._fingerprint = lambda: fingerprint(self.corpus_dir)
        self._key = (self.clock().date(), self._fingerprint())
        self._pair = build_dialogue(cfg, self._key[0], corpus_dir=self.corpus_dir)   # (corpus, index), swapped as one
        self.error: str | None = None           # why the latest edit was refused, until a good one
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()

    def start_watching(self, poll_s: float = 1.0) -> None:
        """Check every check_every_s even when no call comes, so that the first call of a day hears today;
        and at once when a corpus file's date or size changes (an edit saved from the console), which
        costs a stat per file every poll_s."""
        def loop():
            stamp, last = _stamp(self.corpus_dir), time.monotonic()
            while not self._stop.wait(poll_s):
                try:
                    now = _stamp(self.corpus_dir)
                    if now != stamp or time.monotonic() - last >= self.check_every_s:
                        stamp, last = now, time.monotonic()
                        self.refresh()
                except Exception:  # a watcher that dies would freeze the corpus: log and go on
                    log.exception("corpus check failed")

        threading.Thread(target=loop, name="corpus-watch", daemon=True).start()

    def stop_watching(self) -> None:
        self._stop.set()

    @property
    def corpus(self):
        return self._pair[0]

    def current(self):
        """(corpus, index) for a new call."""
        return self._pair

    def refresh(self, wait: bool = False) -> None:
        with self._lock:
            key = (self.clock().date(), self._fingerprint())
            if key == self._key or (self._worker and self._worker.is_alive()):
                return
            self._key = key                     # a refused edit is not retried until the files change again
            self._worker = threading.Thread(target=self._reload, args=(key,), name="corpus-reload", daemon=True)
            self._worker.start()
        if wait:
            self._worker.join()

    def _reload(self, key) -> None:
        from dialogue.corpus import CorpusError

        try:
            pair = build_dialogue(self.cfg, key[0], corpus_dir=self.corpus_dir)
        except CorpusError as e:
            self.error = str(e)
            log.error("corpus edit refused, the previous version keeps answering: %s", e)
            return
        except Exception:
            self.error = "erreur inattendue au rechargement (voir le journal)"
            log.exception("corpus reload failed, the previous version keeps answering")
            return
        self._pair, self.error = pair, None
        log.info("corpus %s reloaded for %s: %d entries", self.corpus_dir.name, key[0].isoformat(), len(pair[0].entries))
        if self.on_reload:
            self.on_reload(pair[0])


def _stamp(corpus_dir) -> tuple:
    """The corpus files' dates and sizes: cheap to read every second, unlike their fingerprint."""
    from pathlib import Path

    out = []
    for p in [Path(corpus_dir, n) for n in ("commune.yaml", "hors_sujet.yaml", "aides.yaml")] + \
            sorted(Path(corpus_dir, "faq").glob("*.yaml")):
        try:
            st = p.stat()
            out.append((p.name, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((p.name, 0, 0))
    return tuple(out)


def asr_prompt(corpus) -> str:
    """Domain hint for Whisper: the commune's name and a few words callers use."""
    words = ["mairie", "état civil", "carte d'identité", "passeport", "urbanisme", "déchetterie",
             "encombrants", "cantine", "CCAS", "signalement", "lampadaire"]
    return f"Mairie de {corpus.commune.name}. " + ", ".join(words) + "."


def build_engines(cfg: Config, store=None, clock=None):
    from asr.transcriber import Transcriber
    from dialogue.conversation import Conversation
    from ivr.session import Engines
    from ivr.store import open_store
    from tts.synthesizer import Speaker, make_synthesizer

    store = store or open_store(cfg)
    communes = load_communes(cfg)
    knowledges = {cid: Knowledge(cfg, clock, corpus_dir=c.corpus_dir) for cid, c in communes.items()}
    for k in knowledges.values():
        k.start_watching()
    knowledge = next(iter(knowledges.values()))
    transcriber = Transcriber(cfg["asr"], cfg.models_dir, prompt=asr_prompt(knowledge.corpus), cache_dir=cfg.cache_dir)
    knowledge.on_reload = lambda corpus: setattr(transcriber, "prompt", asr_prompt(corpus) if transcriber.prompt else "")
    synth = make_synthesizer(cfg["tts"], cfg.models_dir)
    speaker = Speaker(synth, int(cfg["audio"]["sample_rate"]),
                      cache_dir=cfg.cache_dir / "tts" if cfg["tts"]["cache"] else None,
                      emphasis=float(cfg["tts"].get("emphasis", 0.0)))

    def new_conversation(call_id=None, caller="", commune=""):
        corpus, index = knowledges.get(commune, knowledge).current()
        return Conversation(corpus, index, cfg["dialogue"], store=store, call_id=call_id, clock=clock, caller=caller)

    return Engines(cfg=cfg, transcriber=transcriber, speaker=speaker, new_conversation=new_conversation,
                   store=store, recordings_dir=cfg.recordings_dir, knowledge=knowledge,
                   turn_model=build_turn_model(cfg), communes=communes, knowledges=knowledges,
                   prompt_for=lambda commune: asr_prompt(knowledges[commune].corpus)
                   if transcriber.prompt and knowledges.get(commune, knowledge) is not knowledge else None)


def build_turn_model(cfg: Config):
    """The end-of-turn model ([turn] model), or None for a fixed silence."""
    name = cfg["turn"]["model"]
    if name == "silence":
        return None
    if name != "smart-turn":
        raise ConfigError(f"[turn] model = {name!r} : valeurs possibles smart-turn ou silence")
    from asr.turn import SmartTurn
    from ivr.models import smart_turn_path

    path = smart_turn_path(cfg.models_dir)
    if not path.exists():
        raise RuntimeError(f"modèle de fin de tour absent ({path}) : lancez ivr models provision "
                           "(ou réglez [turn] model = \"silence\")")
    return SmartTurn(path, threads=int(cfg["turn"]["threads"]))


def warm_engines(engines) -> dict:
    """Load and run every model once (VAD, ASR windows, embeddings and search, TTS of the fixed
    prompts) so that the first call is as fast as the tenth. Returns seconds per part."""
    import time

    import numpy as np

    from asr.vad import make_detector

    took, t = {}, time.perf_counter()
    rate = int(engines.cfg["audio"]["sample_rate"])
    detector = make_detector(engines.cfg["vad"], rate)
    noise = np.random.default_rng(0).normal(0, 300, rate).astype(np.int16)
    for i in range(0, rate - rate // 50 + 1, rate // 50):
        detector(noise[i:i + rate // 50])
    took["vad"], t = time.perf_counter() - t, time.perf_counter()
    if engines.turn_model is not None:
        # on the thread that runs it during calls: its first run there took ~1 s (measured)
        verdict = threading.Event()
        engines.check_turn(np.concatenate([noise] * 3), rate, lambda p: verdict.set())
        verdict.wait(30)
        took["turn"], t = time.perf_counter() - t, time.perf_counter()
    took["asr"] = engines.transcriber.warm()
    t = time.perf_counter()
    conversation = engines.new_conversation(None)
    conversation.on_text("Quels sont les horaires de la mairie ?")
    # a misheard word loads the French word list of the near-miss correction (1 s when cold)
    engines.new_conversation(None).on_text("Quels sont les horaires de la déchétrie ?")
    took["dialogue"], t = time.perf_counter() - t, time.perf_counter()
    fresh = engines.new_conversation(None)
    for text in (fresh.greet().text, fresh.on_silence().text, "Je vous passe un agent, ne quittez pas."):
        engines.speaker.say(text)
    for commune in list(engines.communes)[1:]:       # several communes: each one's own greeting
        engines.speaker.say(engines.new_conversation(None, "", commune).greet().text)
    took["tts"] = time.perf_counter() - t
    took = {k: round(v, 2) for k, v in took.items()}
    log.info("models warm in %.1f s %s", sum(took.values()), took)
    return took
