"""Kamailio in front of several Asterisk boxes: `asterisk-conf/kamailio/kamailio.cfg` as it is, plus
what differs per site, written by `ivr kamailio config`: the addresses it listens on
(kamailio-local.cfg) and the Asterisks it spreads calls over (dispatcher.list).

Each Asterisk sees Kamailio as its operator: `[trunk] mode = "ip"`, `server` = Kamailio's address."""
from __future__ import annotations

import ipaddress
from pathlib import Path

from ivr.pbx import PbxConfigError, _host_port

TEMPLATE = Path(__file__).resolve().parents[1] / "asterisk-conf" / "kamailio" / "kamailio.cfg"
# an Asterisk's trunk transport listens there unless [trunk] bind says otherwise (ivr/pbx.py)
ASTERISK_PORT = 5062


def _address(value: str, what: str) -> tuple[str, int | None]:
    host, port = _host_port(value)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise PbxConfigError(f"{what} : {value!r} n'est pas une adresse IP (Kamailio écoute sur des "
                             "adresses, pas des noms)") from None
    return host, port


def render(listen: list[str], asterisks: list[str], etc: str = "/etc/kamailio",
           ctl_socket: str = "unix:/run/kamailio/kamailio_ctl", ping_interval: int = 5) -> dict[str, str]:
    """{file name: text}: kamailio.cfg, kamailio-local.cfg, dispatcher.list."""
    if not listen:
        raise PbxConfigError("--listen : au moins une adresse où Kamailio reçoit les appels")
    if not asterisks:
        raise PbxConfigError("--asterisk : au moins un serveur Asterisk vers qui envoyer les appels")
    listens = []
    for value in listen:
        host, port = _address(value, "--listen")
        listens.append(f"listen=udp:{host}:{port or 5060}\n")
    targets = []
    for value in asterisks:
        host, port = _address(value, "--asterisk")
        target = f"sip:{host}:{port or ASTERISK_PORT}"
        if target in targets:
            raise PbxConfigError(f"--asterisk : {value!r} est donné deux fois")
        targets.append(target)
    local = ("# Written by `ivr kamailio config`: this site's addresses and paths.\n"
             f'#!define CTL_SOCKET "{ctl_socket}"\n'
             f'#!define DISPATCHER_LIST "{etc}/dispatcher.list"\n'
             f"#!define PING_INTERVAL {int(ping_interval)}\n" + "".join(listens))
    dispatcher = ("# set destination flags priority: the Asterisk boxes, calls spread round robin\n"
                  + "".join(f"1 {t} 0 0\n" for t in targets))
    return {"kamailio.cfg": TEMPLATE.read_text(), "kamailio-local.cfg": local, "dispatcher.list": dispatcher}


def write(out: Path, **kw) -> list[str]:
    files = render(etc=str(out), **kw)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out / name).write_text(text)
    return sorted(files)
