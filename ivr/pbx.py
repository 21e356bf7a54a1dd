"""The bundled Asterisk's configuration, written from the settings: `asterisk-conf/*.conf` as they
are, the assistant's SIP secret, and the generated parts: the operator trunk ([trunk]) and the
TLS transport ([tls]). `scripts/asterisk.sh configure` runs `ivr pbx config --out ETC`.

Nothing here can route a call out through the trunk: its calls land in `from-operator`, which
only reaches the assistant's public number, and no context dials the trunk (no toll fraud)."""
from __future__ import annotations

import ipaddress
import re
import secrets
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONF_SRC = REPO / "asterisk-conf"
TRUNK_MODES = ("", "register", "ip")
TRANSPORTS = ("udp", "tcp", "tls")
CODECS = ("alaw", "ulaw", "g722")
SRTP = ("no", "offer", "require")


class PbxConfigError(ValueError):
    """A setting the Asterisk configuration cannot be written from (the message is in French)."""


def _host_port(value: str) -> tuple[str, int | None]:
    m = re.fullmatch(r"\[?([A-Za-z0-9.\-:]+?)\]?(?::(\d{1,5}))?", value.strip())
    if not m:
        raise PbxConfigError(f"adresse invalide : {value!r} (attendu : hôte ou hôte:port)")
    return m.group(1), int(m.group(2)) if m.group(2) else None


def sip_password_file(cfg) -> Path:
    return Path(cfg["sip"].get("password_file") or cfg.data_dir / "secrets" / "sip_password")


def sip_secret(cfg) -> str:
    """The assistant's SIP password; made (random, root only) on first use."""
    if cfg["sip"].get("password"):
        return str(cfg["sip"]["password"])
    path = sip_password_file(cfg)
    if not path.exists() or not path.read_text().strip():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        path.touch(0o600)
        path.write_text(secrets.token_urlsafe(24).replace("-", "").replace("_", ""))
    return path.read_text().strip()


def trunk_password_file(cfg) -> Path:
    return Path(cfg["trunk"]["password_file"] or cfg.data_dir / "secrets" / "trunk_password")


def numbers_variants(number: str) -> list[str]:
    """A French number as operators may send it: 0XXXXXXXXX, +33XXXXXXXXX, 33XXXXXXXXX."""
    n = re.sub(r"[\s.\-()]", "", number)
    if not re.fullmatch(r"\+?[0-9A-Za-z]+", n):
        raise PbxConfigError(f"numéro invalide dans [trunk] numbers : {number!r}")
    m = re.fullmatch(r"(?:0|\+33|0033|33)([1-9][0-9]{8})", n)
    if not m:
        return [n]
    return [f"0{m.group(1)}", f"+33{m.group(1)}", f"33{m.group(1)}"]


def trunk_settings(cfg) -> dict | None:
    """[trunk], checked; None when no trunk is configured."""
    t = cfg["trunk"]
    mode = t["mode"]
    if mode not in TRUNK_MODES:
        raise PbxConfigError(f"[trunk] mode = {mode!r} : attendu register, ip ou vide (pas d'opérateur)")
    if not mode:
        return None
    if not t["server"]:
        raise PbxConfigError("[trunk] server : l'adresse du serveur SIP de l'opérateur manque")
    host, port = _host_port(t["server"])
    if t["transport"] not in TRANSPORTS:
        raise PbxConfigError(f"[trunk] transport = {t['transport']!r} : attendu udp, tcp ou tls")
    if t["srtp"] not in SRTP:
        raise PbxConfigError(f"[trunk] srtp = {t['srtp']!r} : attendu no, offer ou require")
    codecs = [c.lower() for c in t["codecs"]]
    if not codecs or any(c not in CODECS for c in codecs):
        raise PbxConfigError(f"[trunk] codecs = {t['codecs']!r} : choisir parmi {', '.join(CODECS)}")
    if not t["numbers"]:
        raise PbxConfigError("[trunk] numbers : indiquez le ou les numéros qui joignent l'assistant")
    password = None
    if mode == "register":
        if not t["user"]:
            raise PbxConfigError("[trunk] user : le nom d'utilisateur du compte SIP manque")
        pw_file = trunk_password_file(cfg)
        try:
            password = pw_file.read_text().strip()
        except OSError:
            raise PbxConfigError(f"mot de passe de l'opérateur introuvable : écrivez-le dans {pw_file} "
                                 "(lisible par root seulement)") from None
        if not password:
            raise PbxConfigError(f"{pw_file} est vide : écrivez-y le mot de passe du compte SIP")
    default_port = 5061 if t["transport"] == "tls" else 5062
    bind_host, bind_port = _host_port(t["bind"]) if t["bind"] else ("0.0.0.0", None)
    for net in t["local_nets"]:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise PbxConfigError(f"[trunk] local_nets : réseau invalide {net!r} (ex. 192.168.1.0/24)") from None
    if t["srtp"] != "no" and t["transport"] != "tls":
        raise PbxConfigError("[trunk] srtp demande transport = \"tls\" (les clés SRTP passent dans la signalisation)")
    numbers = []
    for n in t["numbers"]:
        numbers += [v for v in numbers_variants(str(n)) if v not in numbers]
    # operators may also send calls to the registered contact's user, the account name as it is
    if mode == "register" and re.fullmatch(r"[+\w.\-]+", t["user"]) and t["user"] not in numbers:
        numbers.append(t["user"])
    match = list(t["match"]) or [host]
    acl = _networks(match) + [str(ipaddress.ip_network(n, strict=False)) for n in t["local_nets"]]
    return {"mode": mode, "host": host, "port": port, "transport": t["transport"], "user": t["user"],
            "password": password, "domain": t["domain"] or host, "numbers": numbers, "match": match, "acl": acl,
            "bind": f"{bind_host}:{bind_port or default_port}", "bind_host": bind_host,
            "public_address": t["public_address"], "local_nets": list(t["local_nets"]), "codecs": codecs,
            "srtp": t["srtp"]}


def _networks(names: list[str]) -> list[str]:
    """Addresses or networks for an ACL; host names are resolved now (an ACL takes no names)."""
    import socket

    out = []
    for name in names:
        try:
            out.append(str(ipaddress.ip_network(name, strict=False)))
        except ValueError:
            try:
                addrs = {ai[4][0] for ai in socket.getaddrinfo(name, None, socket.AF_INET)}
            except OSError:
                raise PbxConfigError(f"[trunk] adresse de l'opérateur introuvable : {name!r} ; indiquez ses "
                                     "adresses IP dans [trunk] match") from None
            out += sorted(f"{a}/32" for a in addrs)
    return out


def _uri(host: str, port: int | None, transport: str, user: str = "") -> str:
    hostport = f"{host}:{port}" if port else host
    return f"sip:{user + '@' if user else ''}{hostport}" + ("" if transport == "udp" else f";transport={transport}")


def tls_files(cfg) -> tuple[Path, Path]:
    """(certificate, private key) of the TLS transport: [tls] or the generated ones."""
    d = cfg.data_dir / "secrets" / "tls"
    return (Path(cfg["tls"]["cert_file"]) if cfg["tls"]["cert_file"] else d / "asterisk.crt",
            Path(cfg["tls"]["key_file"]) if cfg["tls"]["key_file"] else d / "asterisk.key")


def self_signed(cert: Path, key: Path, cn: str, names: list[str], days: int = 825) -> None:
    """A self-signed certificate for `names` (addresses or host names); the key is 0600 in a 0700 folder."""
    import subprocess

    cert.parent.mkdir(parents=True, exist_ok=True)
    cert.parent.chmod(0o700)
    san = ",".join(f"IP:{n}" if re.fullmatch(r"[\d.]+|[0-9a-fA-F:]*:[0-9a-fA-F:.]*", n) else f"DNS:{n}" for n in names)
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", str(days),
                        "-subj", f"/CN={cn}", "-addext", f"subjectAltName={san}", "-keyout", str(key),
                        "-out", str(cert)], capture_output=True, text=True)
    if r.returncode:
        raise PbxConfigError(f"impossible de créer le certificat TLS ({r.stderr.strip()[-200:]})")
    key.chmod(0o600)


def ensure_tls_files(cfg) -> tuple[Path, Path]:
    """The TLS certificate and key; the default ones are made (self-signed, 825 days) if missing."""
    cert, key = tls_files(cfg)
    if not cfg["tls"]["cert_file"] and not (cert.exists() and key.exists()):
        self_signed(cert, key, "mairie-pbx", [_host_port(cfg["tls"]["bind"])[0]])
    for f in (cert, key):
        if not f.exists():
            raise PbxConfigError(f"[tls] fichier introuvable : {f}")
    return cert, key


ETC = "/etc/asterisk"       # where Asterisk reads its files (inside its chroot)


def render_tls(cfg, cert: str, key: str) -> str:
    """The TLS transport, and the assistant's account moved onto it with SRTP required."""
    host, port = _host_port(cfg["tls"]["bind"])
    out = f"""; --- SIP over TLS, written from [tls] (ivr pbx config): do not edit here --------------------
[transport-tls]
type = transport
protocol = tls
bind = {host}:{port or 5061}
cert_file = {cert}
priv_key_file = {key}
method = tlsv1_2
"""
    if cfg["sip"]["transport"] == "tls":
        media = "" if host in ("0.0.0.0", "::") else f"media_address = {host}\n"
        out += f"""
; The assistant registers over TLS; its audio is SRTP (keys in the TLS signalling), never plain RTP.
[assistant](+)
transport = transport-tls
media_encryption = sdes
rewrite_contact = yes
{media}"""
    return out


def render_trunk(t: dict, tls: tuple[str, str] | None) -> tuple[str, str]:
    """(pjsip lines, dialplan lines) of the operator trunk."""
    nat = ""
    if t["public_address"]:
        nat = (f"external_media_address = {t['public_address']}\n"
               f"external_signaling_address = {t['public_address']}\n")
    nat += "".join(f"local_net = {n}\n" for n in t["local_nets"])
    tls_lines = ""
    if t["transport"] == "tls":
        if not tls:
            raise PbxConfigError("[trunk] transport = \"tls\" : configurez [tls] (certificat)")
        tls_lines = (f"cert_file = {tls[0]}\npriv_key_file = {tls[1]}\nmethod = tlsv1_2\n"
                     "verify_server = no\n")
    media = ""
    if t["bind_host"] not in ("0.0.0.0", "::"):
        media = f"media_address = {t['bind_host']}\nbind_rtp_to_media_address = yes\n"
    srtp = {"no": "", "offer": "media_encryption = sdes\nmedia_encryption_optimistic = yes\n",
            "require": "media_encryption = sdes\n"}[t["srtp"]]
    server = _uri(t["host"], t["port"], t["transport"])
    auth = reg = ""
    if t["mode"] == "register":
        secret = t["password"].replace("\n", "").replace(";", "\\;")     # ";" starts a comment there
        auth = (f"\n[trunk-auth]\ntype = auth\nauth_type = userpass\nusername = {t['user']}\n"
                f"password = {secret}\n")
        reg = ("\n; Registration: a refused password stops it (auth_rejection_permanent) and `ivr doctor`\n"
               "; says so, instead of retrying for ever.\n"
               f"[trunk-reg]\ntype = registration\ntransport = transport-trunk\noutbound_auth = trunk-auth\n"
               f"server_uri = {server}\nclient_uri = {_uri(t['domain'], None, 'udp', t['user'])}\n"
               f"contact_user = {t['user']}\nexpiration = 600\nretry_interval = 60\n"
               "forbidden_retry_interval = 0\nauth_rejection_permanent = yes\nmax_retries = 10\n"
               "line = yes\nendpoint = trunk\n")
    pjsip = f"""; --- the operator trunk, written from [trunk] (ivr pbx config): do not edit here ----------
[transport-trunk]
type = transport
protocol = {t['transport']}
bind = {t['bind']}
{nat}{tls_lines}
[trunk]
type = endpoint
transport = transport-trunk
; Calls from the operator may only reach the assistant's number (from-operator).
context = from-operator
allow = !all,{','.join(t['codecs'])}
aors = trunk
{'outbound_auth = trunk-auth' + chr(10) if t['mode'] == 'register' else ''}from_user = {t['user'] or t['numbers'][0]}
from_domain = {t['domain']}
direct_media = no
rtp_symmetric = yes
force_rport = yes
rewrite_contact = yes
dtmf_mode = rfc4733
trust_id_inbound = yes
allow_subscribe = no
allow_transfer = no
{media}{srtp}
[trunk]
type = aor
contact = {server}
; OPTIONS every 60 s: `ivr doctor` and the dashboard see an unreachable operator.
qualify_frequency = 60
qualify_timeout = 3.0
{auth}{reg}
; The operator's calls are told apart by the address they come from.
[trunk-identify]
type = identify
endpoint = trunk
{''.join(f'match = {m}' + chr(10) for m in t['match'])}
; Once the server faces the operator's network, SIP requests are taken only from the operator, this
; machine and the town hall's own networks ([trunk] local_nets): a scanner cannot pose as the test
; caller or the desk, nor try the assistant's password.
[acl-trunk]
type = acl
deny = 0.0.0.0/0.0.0.0
permit = 127.0.0.0/8
{''.join(f'permit = {n}' + chr(10) for n in t['acl'])}"""
    exts = "".join(f"exten => {n},1,Set(__MAIRIE_NUMERO={n})\n same => n,Goto(from-trunk,100,1)\n"
                   for n in t["numbers"])
    dialplan = f"""; --- calls from the operator, written from [trunk] (ivr pbx config): do not edit here -----
; Only the commune's numbers are answered; anything else is refused, and no context of this
; dialplan ever dials the trunk: nothing can be called out through it.
[from-operator]
{exts}exten => _[+0-9a-zA-Z*#].,1,Verbose(1,Refused call from the operator to ${{EXTEN}})
 same => n,Hangup(1)
"""
    return pjsip, dialplan


def render(cfg) -> dict[str, str]:
    """{file name: text} of the bundled Asterisk's /etc/asterisk."""
    if cfg["pbx"]["mode"] not in ("bundled", "external"):
        raise PbxConfigError(f"[pbx] mode = {cfg['pbx']['mode']!r} : attendu bundled ou external")
    files = {p.name: p.read_text() for p in sorted(CONF_SRC.glob("*.conf"))}
    files["pjsip.conf"] = files["pjsip.conf"].replace("@SIP_PASSWORD@", sip_secret(cfg))
    tls, tls_conf = None, "; no TLS ([tls] enabled = false)\n"
    if cfg["sip"]["transport"] not in ("udp", "tls"):
        raise PbxConfigError(f"[sip] transport = {cfg['sip']['transport']!r} : attendu udp ou tls")
    if cfg["tls"]["enabled"]:
        # copied next to the configuration: Asterisk runs in a chroot and sees nothing else
        cert, key = ensure_tls_files(cfg)
        files["tls.crt"], files["tls.key"] = cert.read_text(), key.read_text()
        tls = (f"{ETC}/tls.crt", f"{ETC}/tls.key")
        tls_conf = render_tls(cfg, *tls)
    elif cfg["sip"]["transport"] == "tls":
        raise PbxConfigError("[sip] transport = \"tls\" demande [tls] enabled = true")
    trunk = trunk_settings(cfg)
    pjsip_extra, dialplan_extra = "; no operator trunk ([trunk] mode is empty)\n", "; no operator trunk\n"
    if trunk:
        pjsip_extra, dialplan_extra = render_trunk(trunk, tls)
    files["pjsip_trunk.conf"] = tls_conf + "\n" + pjsip_extra
    files["extensions_trunk.conf"] = dialplan_extra
    return files


def write(cfg, out: Path) -> list[str]:
    """Write render(cfg) into `out` (mode 0600: pjsip*.conf and tls.key hold secrets, Asterisk runs as
    root); files of ours no longer rendered are removed."""
    files = render(cfg)
    out.mkdir(parents=True, exist_ok=True)
    for p in [*out.glob("*.conf"), out / "tls.crt", out / "tls.key"]:
        if p.name not in files and p.exists():
            p.unlink()
    for name, text in files.items():
        tmp = out / f".{name}.tmp"
        tmp.unlink(missing_ok=True)
        tmp.touch(0o600)
        tmp.write_text(text)
        tmp.replace(out / name)
    return sorted(files)
