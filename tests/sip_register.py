"""A tiny SIP registering client (UDP, digest MD5), run as a process inside a network namespace:
a phone with the right password, or a stranger guessing passwords. Prints one JSON line: the final
status code of each REGISTER (None when nothing answered).

    python tests/sip_register.py --server 10.77.1.1:5062 --user assistant --password x --count 8
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import socket
import time


def _md5(s: str) -> str:
    return hashlib.md5(s.encode()).hexdigest()


def _request(user: str, host: str, port: int, local: tuple[str, int], call_id: str, cseq: int, tag: str,
             auth: str = "", expires: int = 60) -> bytes:
    lhost, lport = local
    uri = f"sip:{host}:{port}"
    branch = f"z9hG4bK{random.getrandbits(48):x}"
    return (f"REGISTER {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {lhost}:{lport};branch={branch};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:{user}@{host}>;tag={tag}\r\nTo: <sip:{user}@{host}>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{user}@{lhost}:{lport}>\r\n"
            f"Expires: {expires}\r\n{auth}User-Agent: sip-register-test\r\nContent-Length: 0\r\n\r\n").encode()


def _exchange(sock: socket.socket, msg: bytes, call_id: str, timeout: float) -> str | None:
    """Send (retransmitted once, as timer A would) and return the first final response to it."""
    deadline = time.monotonic() + timeout
    sock.send(msg)
    resent = False
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(min(left, timeout / 2))
        try:
            data = sock.recv(65535).decode(errors="replace")
        except socket.timeout:
            if not resent:
                sock.send(msg)
                resent = True
            continue
        except ConnectionRefusedError:           # ICMP unreachable
            return None
        if f"Call-ID: {call_id}" in data or f"i: {call_id}" in data:
            code = int(data.split(" ", 2)[1])
            if code >= 200:
                return data
    return None


def _authorization(resp: str, user: str, password: str, uri: str) -> str:
    challenges = re.findall(r"^WWW-Authenticate:\s*Digest\s+(.+)$", resp, re.M | re.I)
    params = {}
    for ch in challenges:
        p = dict(re.findall(r'(\w+)="?([^",]*)"?', ch))
        if p.get("algorithm", "MD5").upper() == "MD5":
            params = p
            break
    ha1 = _md5(f"{user}:{params['realm']}:{password}")
    ha2 = _md5(f"REGISTER:{uri}")
    nc, cnonce = "00000001", f"{random.getrandbits(64):x}"
    if "auth" in params.get("qop", "").split(","):
        response = _md5(f"{ha1}:{params['nonce']}:{nc}:{cnonce}:auth:{ha2}")
        qop = f", qop=auth, nc={nc}, cnonce=\"{cnonce}\""
    else:
        response = _md5(f"{ha1}:{params['nonce']}:{ha2}")
        qop = ""
    opaque = f", opaque=\"{params['opaque']}\"" if "opaque" in params else ""
    return (f'Authorization: Digest username="{user}", realm="{params["realm"]}", nonce="{params["nonce"]}", '
            f'uri="{uri}", response="{response}", algorithm=MD5{qop}{opaque}\r\n')


def register(server: str, user: str, password: str, bind: str = "0.0.0.0", timeout: float = 1.0) -> int | None:
    """One registration attempt: REGISTER, then with the digest answer to the challenge."""
    host, port = server.rsplit(":", 1)
    port = int(port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((bind, 0))
        sock.connect((host, port))
        local = sock.getsockname()
        call_id, tag = f"{random.getrandbits(64):x}@test", f"{random.getrandbits(32):x}"
        resp = _exchange(sock, _request(user, host, port, local, call_id, 1, tag), call_id, timeout)
        if resp is None:
            return None
        code = int(resp.split(" ", 2)[1])
        if code != 401:
            return code
        auth = _authorization(resp, user, password, f"sip:{host}:{port}")
        resp = _exchange(sock, _request(user, host, port, local, call_id, 2, tag, auth), call_id, timeout)
        return None if resp is None else int(resp.split(" ", 2)[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--bind", default="0.0.0.0")
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=1.0)
    ap.add_argument("--pause", type=float, default=0.0)
    a = ap.parse_args()
    codes = []
    for _ in range(a.count):
        codes.append(register(a.server, a.user, a.password, a.bind, a.timeout))
        time.sleep(a.pause)
    print(json.dumps(codes))


if __name__ == "__main__":
    main()
