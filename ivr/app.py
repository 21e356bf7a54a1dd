"""Wiring: build the engines once per process from the configuration."""
from __future__ import annotations

import datetime as dt
import logging

from ivr.config import Config

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


def build_dialogue(cfg: Config, today: dt.date | None = None, progress=None):
    from dialogue.corpus import load_corpus
    from dialogue.search import load_index, make_embedder

    corpus = load_corpus(cfg.corpus_dir, today)
    index, built = load_index(corpus, make_embedder(cfg["dialogue"]["embedding"]), cfg.cache_dir, progress)
    if built:
        log.info("FAQ index built: %d entries", len(corpus.entries))
    return corpus, index


def asr_prompt(corpus) -> str:
    """Domain hint for Whisper: the commune's name and a few words callers use."""
    words = ["mairie", "état civil", "carte d'identité", "passeport", "urbanisme", "déchetterie",
             "encombrants", "cantine", "CCAS", "signalement", "lampadaire"]
    return f"Mairie de {corpus.commune.name}. " + ", ".join(words) + "."


def build_engines(cfg: Config, store=None, clock=None):
    from asr.transcriber import Transcriber
    from dialogue.conversation import Conversation
    from ivr.session import Engines
    from ivr.store import Store
    from tts.synthesizer import Speaker, make_synthesizer

    store = store or Store(cfg.db_path)
    corpus, index = build_dialogue(cfg)
    transcriber = Transcriber(cfg["asr"], cfg.models_dir, prompt=asr_prompt(corpus))
    synth = make_synthesizer(cfg["tts"], cfg.models_dir)
    speaker = Speaker(synth, int(cfg["audio"]["sample_rate"]),
                      cache_dir=cfg.cache_dir / "tts" if cfg["tts"]["cache"] else None)

    def new_conversation(call_id=None):
        return Conversation(corpus, index, cfg["dialogue"], store=store, call_id=call_id, clock=clock)

    return Engines(cfg=cfg, transcriber=transcriber, speaker=speaker, new_conversation=new_conversation,
                   store=store, recordings_dir=cfg.data_dir / "recordings")
