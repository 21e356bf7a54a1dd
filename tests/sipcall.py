"""Real SIP calls for tests: Asterisk (chroot), a SIPp caller (UAC) and a SIPp desk phone (UAS).

All on 127.0.0.1, as root (chroot, tcpdump, and SIPp's raw socket for pcap play). The caller's
audio and DTMF become one pcap (G.711 mu-law PT 0 + RFC 4733 PT 101, one RTP stream) replayed by
SIPp's play_pcap_audio; what an end receives is captured by tcpdump on its RTP port and decoded.

    with Asterisk(), Desk() as desk:
        r = place_call(tone(440, 3), extension="200", dtmf=[(1.0, "5")], hangup_after=4)
        assert r.answered and desk.calls_received() == 1
"""
from __future__ import annotations

import itertools, os, random, re, shutil, signal, socket, struct, subprocess, sys, tempfile, threading, time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RATE, FRAME = 8000, 160                      # 8 kHz, 20 ms packets
KEYS = "0123456789*#ABCD"                    # RFC 4733 event codes 0-15
DESK_PORT, DESK_RTP = 5080, 6100             # the desk contact in asterisk-conf/pjsip.conf


# ---- G.711 mu-law (bit-exact with audioop, which Python 3.13 removes) ------------------------
def ulaw_encode(pcm: np.ndarray) -> bytes:
    x = np.asarray(pcm, np.int16).astype(np.int32) >> 2
    mask = np.where(x < 0, 0x7F, 0xFF)
    x = np.minimum(np.abs(x), 8159) + 0x21
    seg = np.searchsorted([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], x)
    return (np.where(seg > 7, 0x7F, (seg << 4) | ((x >> (seg + 1)) & 0xF)) ^ mask).astype(np.uint8).tobytes()


def ulaw_decode(data: bytes) -> np.ndarray:
    u = ~np.frombuffer(data, np.uint8).astype(np.int32) & 0xFF
    x = ((((u & 0x0F) << 3) + 0x84) << ((u >> 4) & 7)) - 0x84
    return np.where(u & 0x80, -x, x).astype(np.int16)


# ---- RTP and pcap ----------------------------------------------------------------------------
def rtp_packets(audio: np.ndarray, dtmf=()) -> list[tuple[float, bytes]]:
    """[(send time, RTP packet)]: 20 ms PT 0 frames; each DTMF (offset s, key) replaces the 8 frames
    it covers with PT 101 events (growing duration; the end packet sent 3 times, same seq)."""
    events = {}
    for t, key in dtmf:
        start = int(round(t * RATE / FRAME))
        events.update({start + k: (k, KEYS.index(key.upper()), start) for k in range(8)})
    n = max([-(-len(audio) // FRAME)] + [i + 1 for i in events])
    pcm = np.zeros(n * FRAME, np.int16)
    pcm[:len(audio)] = audio
    ssrc, seq, ts0 = random.getrandbits(32), random.getrandbits(16), random.getrandbits(32)
    out = []
    for i in range(n):
        if i in events:
            k, code, start = events[i]
            hdr = struct.pack("!BBHII", 0x80, (0x80 if k == 0 else 0) | 101, seq & 0xFFFF, (ts0 + start * FRAME) & 0xFFFFFFFF, ssrc)
            out.append((i * FRAME / RATE, hdr + struct.pack("!BBH", code, (0x80 if k >= 5 else 0) | 10, FRAME * min(k + 1, 6))))
            seq += k < 5 or k == 7
        else:
            hdr = struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, (ts0 + i * FRAME) & 0xFFFFFFFF, ssrc)
            out.append((i * FRAME / RATE, hdr + ulaw_encode(pcm[i * FRAME:(i + 1) * FRAME])))
            seq += 1
    return out


def _csum(data: bytes) -> int:
    s = sum(struct.unpack(f"!{len(data) // 2}H", data[:len(data) // 2 * 2])) + (data[-1] << 8 if len(data) % 2 else 0)
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF


def write_pcap(path: Path, packets, port: int = 6000) -> None:
    """Ethernet/IPv4/UDP pcap of the payloads, 127.0.0.1:port -> 127.0.0.1:port (SIPp rewrites
    addresses and ports; it paces packets on the pcap timestamps)."""
    lo = socket.inet_aton("127.0.0.1")
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for n, (t, data) in enumerate(packets):
            ulen = 8 + len(data)
            udp = struct.pack("!HHHH", port, port, ulen, 0)
            udp = udp[:6] + struct.pack("!H", _csum(lo + lo + struct.pack("!BBH", 0, 17, ulen) + udp + data) or 0xFFFF)
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, n & 0xFFFF, 0x4000, 64, 17, 0, lo, lo)
            frame = bytes(12) + b"\x08\x00" + ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:] + udp + data
            f.write(struct.pack("<IIII", int(t), int(round(t % 1 * 1e6)), len(frame), len(frame)) + frame)


def read_pcap_udp(path: Path):
    """Yield (time, src port, dst port, UDP payload) of the IPv4 UDP packets of a pcap."""
    data = Path(path).read_bytes() if Path(path).exists() else b""
    if len(data) < 24:
        return
    e = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    frac = 1e-9 if data[:4] in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 1e-6
    l2 = {1: 14, 113: 16, 276: 20, 0: 4}[struct.unpack(e + "I", data[20:24])[0]]
    off = 24
    while off + 16 <= len(data):
        sec, sub, incl, _ = struct.unpack(e + "IIII", data[off:off + 16])
        ip, off = data[off + 16 + l2:off + 16 + incl], off + 16 + incl
        if off > len(data):                         # truncated last record (capture still running)
            break
        if len(ip) >= 28 and ip[0] >> 4 == 4 and ip[9] == 17:
            udp = ip[(ip[0] & 15) * 4:]
            sport, dport, ulen = struct.unpack("!HHH", udp[:6])
            yield sec + sub * frac, sport, dport, udp[8:ulen]


def decode_rtp(packets, key=lambda p: 0) -> dict:
    """{key(packet): (int16 audio, [DTMF keys])} from (time, sport, dport, RTP) packets. PT 0 frames
    go in seq order to their timestamp position; a stream is re-anchored on arrival time when it
    starts or jumps (new SSRC, timestamp reset), so gaps are silence on the wall-clock timeline."""
    groups: dict = {}
    for p in packets:
        if len(p[3]) >= 12 and p[3][0] >> 6 == 2:
            groups.setdefault(key(p), {}).setdefault(p[3][8:12], []).append(p)
    result = {}
    for k, streams in groups.items():
        t0 = min(p[0] for s in streams.values() for p in s)
        chunks, digits, seen = [], [], set()
        for ssrc, pkts in streams.items():
            useq, last = [], None
            for p in pkts:                          # unwrap the 16-bit sequence numbers
                s = struct.unpack("!H", p[3][2:4])[0]
                last = s if last is None else last + ((s - last + 0x8000) & 0xFFFF) - 0x8000
                useq.append((last, p))
            anchor = base = None
            for _, (t, _, _, rtp) in sorted(useq, key=lambda x: x[0]):
                pt, ts, body = rtp[1] & 0x7F, struct.unpack("!I", rtp[4:8])[0], rtp[12 + 4 * (rtp[0] & 15):]
                if pt == 101 and len(body) >= 4 and (ssrc, ts) not in seen:
                    seen.add((ssrc, ts))
                    digits.append((t, KEYS[body[0]] if body[0] < 16 else "?"))
                if pt != 0:
                    continue
                arrival = int(round((t - t0) * RATE))
                pos = None if anchor is None else anchor + ((ts - base + 2**31) % 2**32 - 2**31)
                if pos is None or abs(pos - arrival) > RATE // 2:
                    anchor, base, pos = arrival, ts, arrival
                chunks.append((pos, ulaw_decode(body)))
        audio = np.zeros(max([pos + len(c) for pos, c in chunks], default=0), np.int16)
        for pos, c in chunks:
            if pos + len(c) > 0:            # a packet stamped before the stream's first one is dropped
                audio[max(pos, 0):pos + len(c)] = c[max(-pos, 0):]
        result[k] = (audio, [d for _, d in sorted(digits)])
    return result


# ---- processes and logs ----------------------------------------------------------------------
_port_lock, _ports = threading.Lock(), itertools.count(random.randrange(0, 40000, 8), 8)


def _udp_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port_pair() -> tuple[int, int]:
    """(SIP port, RTP port) for place_call, free now and never handed out twice by this process.
    RTP port p is even, p..p+3 are free (SIPp binds p and p+2), the SIP port is p+4."""
    with _port_lock:
        for _, p in zip(range(5000), _ports):
            p = 20000 + p % 40000                   # away from Asterisk's RTP range 10000-10999
            if all(_udp_free(q) for q in range(p, p + 5)):
                return p + 4, p
    raise RuntimeError("no free UDP ports on 127.0.0.1")


def _need(cmd: str, package: str) -> None:
    if not shutil.which(cmd):
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True, capture_output=True)


def _stop(proc: subprocess.Popen | None, sig=signal.SIGTERM) -> None:
    """Stop a process we started: `sig`, then SIGKILL if it still runs 3 s later."""
    if proc is not None and proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_capture(port: int | None, path: Path, netns=None, interface: str = "lo", filter: str = "") -> subprocess.Popen:
    """tcpdump of the UDP packets sent TO `port` (or matching `filter`) on `interface` into `path`,
    inside `netns` (tests/netlab.py) if given; returns once it listens."""
    _need("tcpdump", "tcpdump")
    log = path.with_suffix(".tcpdump.log")
    args = ["tcpdump", "-i", interface, "-nn", "-U", "-s", "0", "-w", str(path), filter or f"udp dst port {port}"]
    with open(log, "w") as err:
        proc = subprocess.Popen(netns.cmd(args) if netns else args, stdout=subprocess.DEVNULL, stderr=err)
    for _ in range(100):
        if "listening on" in _read(log) or proc.poll() is not None:
            break
        time.sleep(0.05)
    if proc.poll() is not None or "listening on" not in _read(log):
        _stop(proc)
        raise RuntimeError("tcpdump did not start: " + _read(log))
    return proc


def _sipp(work: Path, name: str, args: list[str], netns=None) -> subprocess.Popen:
    """SIPp running work/NAME.xml (inside `netns` if given); SIP messages logged to NAME.msg,
    errors to NAME.err."""
    _need("sipp", "sip-tester")
    cmd = ["sipp", "-sf", str(work / f"{name}.xml"), "-i", "127.0.0.1", "-mi", "127.0.0.1",
           "-nostdin", "-aa", "-trace_msg", "-message_file", str(work / f"{name}.msg"),
           "-trace_err", "-error_file", str(work / f"{name}.err"), *args]
    with open(work / f"{name}.out", "w") as out:
        return subprocess.Popen(netns.cmd(cmd) if netns else cmd, cwd=work, stdout=out, stderr=subprocess.STDOUT)


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def parse_messages(text: str) -> list[tuple[str, float, str]]:
    """SIPp -trace_msg log -> [("sent" | "received", unix time, SIP message)]."""
    out = []
    for m in re.finditer(r"-{10,} (\S+ \S+)\n\w+ message (sent|received).*?\n\n(.*?)(?=\n-{10,}|\Z)", text, re.S):
        day, sec = m.group(1).split(".")
        out.append((m.group(2), time.mktime(time.strptime(day, "%Y-%m-%d %H:%M:%S")) + float("0." + sec), m.group(3).strip() + "\n"))
    return out


def _is(msg: str, start: str, method: str) -> bool:
    return msg.startswith(start) and re.search(rf"^CSeq:\s*\d+\s+{method}\b", msg, re.M | re.I) is not None


def _callid(msg: str) -> str:
    m = re.search(r"^(?:Call-ID|i):\s*(\S+)", msg, re.M | re.I)
    return m.group(1) if m else ""


# ---- SIPp scenarios --------------------------------------------------------------------------
SDP = ("v=0\no=sipp 1 1 IN IP4 [local_ip]\ns=-\nc=IN IP4 [media_ip]\nt=0 0\nm=audio [media_port] RTP/AVP 0 101\n"
       "a=rtpmap:0 PCMU/8000\na=rtpmap:101 telephone-event/8000\na=fmtp:101 0-16\na=ptime:20\na=sendrecv\n")


def _send(msg: str, attrs: str = "") -> str:
    return f"<send{attrs}><![CDATA[\n{msg}\n]]></send>\n"


def _call_end(wait_ms: int, me: str, remote: str, cseq: int) -> str:
    """Once the call is up: answer the remote BYE, or send ours after wait_ms. ereg values
    ([$var]) keep the space after the header name, hence "To:[$x]"."""
    ok = "SIP/2.0 200 OK\n[last_Via:]\n[last_From:]\n[last_To:]\n[last_Call-ID:]\n[last_CSeq:]\nContent-Length: 0\n"
    bye = (f"BYE [next_url] SIP/2.0\n[routes]\nVia: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]\nFrom:{me}\n"
           f"To:{remote}\nCall-ID: [call_id]\nCSeq: {cseq} BYE\nMax-Forwards: 70\nContent-Length: 0\n")
    return (f'<recv request="BYE" timeout="{wait_ms}" ontimeout="hangup"/>\n' + _send(ok, ' next="done"')
            + '<label id="hangup"/>\n' + _send(bye, ' retrans="500"') + '<recv response="200" next="done"/>\n')


def _scenario(body: str) -> str:
    return f'<?xml version="1.0" encoding="ISO-8859-1" ?>\n<scenario name="sipcall">\n{body}<label id="done"/>\n</scenario>\n'


def uac_scenario(from_user: str, pcap: Path, ring_ms: int, wait_ms: int, caller_id: str | None = None) -> str:
    """INVITE; no answer within ring_ms (after the last provisional response): CANCEL. caller_id: the
    number an operator trunk asserts (P-Asserted-Identity), which Asterisk passes on as the caller's."""
    me = f" {from_user} <sip:{from_user}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]"
    via = "Via: SIP/2.0/[transport] [local_ip]:[local_port];branch="
    inv = f"{via}z9hG4bK-[pid]-[call_number]-invite\nFrom:{me}\nTo: <sip:[service]@[remote_ip]:[remote_port]>\nCall-ID: [call_id]\n"
    pai = f"P-Asserted-Identity: <sip:{caller_id}@[local_ip]>\n" if caller_id else ""
    invite = (f"INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0\n{inv}CSeq: 1 INVITE\nContact: <sip:{from_user}@[local_ip]:[local_port]>\n{pai}"
              f"Max-Forwards: 70\nContent-Type: application/sdp\nContent-Length: [len]\n\n{SDP}")
    ack = f"ACK [next_url] SIP/2.0\n[routes]\n{via}[branch]\nFrom:{me}\n[last_To:]\nCall-ID: [call_id]\nCSeq: 1 ACK\nMax-Forwards: 70\nContent-Length: 0\n"
    ring = f'timeout="{ring_ms}" ontimeout="cancel"'   # on every recv: SIPp times the current one only
    cancel = f"CANCEL sip:[service]@[remote_ip]:[remote_port] SIP/2.0\n{inv}CSeq: 1 CANCEL\nMax-Forwards: 70\nContent-Length: 0\n"
    ack487 = (f"ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0\n{inv.replace('To: <sip:[service]@[remote_ip]:[remote_port]>', '[last_To:]')}"
              "CSeq: 1 ACK\nMax-Forwards: 70\nContent-Length: 0\n")
    return _scenario(_send(invite, ' retrans="500"') + "".join(f'<recv response="{c}" optional="true" {ring}/>\n' for c in (100, 180, 183))
                     + f'<recv response="200" rrs="true" {ring}><action>'
                     '<ereg regexp=".*" search_in="hdr" header="To:" assign_to="rto"/></action></recv>\n'
                     + _send(ack) + f'<nop><action><exec play_pcap_audio="{pcap}"/></action></nop>\n' + _call_end(wait_ms, me, "[$rto]", 2)
                     + '<label id="cancel"/>\n' + _send(cancel, ' retrans="500"') + '<recv response="200"/>\n<recv response="487"/>\n'
                     + _send(ack487))


def uas_scenario(wait_ms: int, answer: bool = True, busy: bool = False, pcap: Path | None = None) -> str:
    """Each INVITE: 180, then 200 OK + the call (answer=False: ring until CANCEL, then 200 + 487;
    busy=True: 486 Busy Here at once); pcap: RTP played once answered."""
    tag = ";tag=[pid]SIPpTag01[call_number]"
    resp = f"SIP/2.0 {{}}\n[last_Via:]\n[last_From:]\n[last_To:]{tag}\n[last_Call-ID:]\n{{}}\nContact: <sip:desk@[local_ip]:[local_port]>\n"
    if busy:
        return _scenario('<recv request="INVITE"/>\n' + _send(resp.format("486 Busy Here", "[last_CSeq:]") + "Content-Length: 0\n")
                         + '<recv request="ACK"/>\n')
    save = "".join(f'<ereg regexp=".*" search_in="hdr" header="{h}:" assign_to="{v}"/>' for h, v in
                   ((("To", "lto"), ("From", "rfrom")) if answer else (("CSeq", "cseq"),)))   # SIPp rejects unused variables
    body = (f'<recv request="INVITE" rrs="true"><action>{save}</action></recv>\n'
            + _send(resp.format("180 Ringing", "[last_CSeq:]") + "Content-Length: 0\n"))
    if not answer:
        return _scenario(body + '<recv request="CANCEL"/>\n' + _send(resp.format("200 OK", "[last_CSeq:]") + "Content-Length: 0\n")
                         + _send(resp.format("487 Request Terminated", "CSeq:[$cseq]") + "Content-Length: 0\n") + '<recv request="ACK"/>\n')
    return _scenario(body + _send(resp.format("200 OK", "[last_CSeq:]") + f"Content-Type: application/sdp\nContent-Length: [len]\n\n{SDP}", ' retrans="500"')
                     + '<recv request="ACK"/>\n'
                     + (f'<nop><action><exec play_pcap_audio="{pcap}"/></action></nop>\n' if pcap else "")
                     + _call_end(wait_ms, "[$lto]" + tag, "[$rfrom]", 1))


# ---- public API ------------------------------------------------------------------------------
class Asterisk:
    """Asterisk installed, configured from asterisk-conf/ and running (scripts/asterisk.sh);
    stopped at exit only if this object started it."""

    def __init__(self, repo: Path = REPO):
        self.repo, data = Path(repo), Path(os.environ.get("IVR_DATA", "data"))
        self.data = data if data.is_absolute() else self.repo / data
        self.root = self.data / "asterisk" / "root"
        self.started = False

    def _script(self, cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.repo / "scripts/asterisk.sh"), cmd], capture_output=True, text=True, check=check)

    def configured(self) -> bool:
        """Configured, with exactly what `configure` installs (ivr pbx config)."""
        from ivr.config import load_config
        from ivr.pbx import render

        etc = self.root / "etc/asterisk"
        want = {k: v.encode() for k, v in render(load_config(env={**os.environ, "IVR_DATA": str(self.data)})).items()}
        return (self.root / "etc/asterisk.debian-dist").is_dir() and want == {p.name: p.read_bytes() for p in etc.glob("*.conf")}

    @property
    def password_file(self) -> Path:
        """The assistant's SIP secret, made by `scripts/asterisk.sh configure`."""
        return self.data / "secrets" / "sip_password"

    def cli(self, command: str) -> str:
        """Output of an Asterisk CLI command, e.g. cli("pjsip show contacts")."""
        return subprocess.run(["chroot", str(self.root), "/usr/sbin/asterisk", "-rx", command],
                              capture_output=True, text=True, timeout=20).stdout

    def __enter__(self) -> "Asterisk":
        if not ((self.root / ".ivr-asterisk-installed").is_file() and (self.root / "usr/sbin/asterisk").exists()):
            self._script("install")
        if not self.configured():
            self._script("configure")
        if self._script("status", check=False).returncode != 0:
            self._script("start")
            self.started = True
        return self

    def __exit__(self, *exc) -> None:
        if self.started:
            self._script("stop", check=False)
            self.started = False


@dataclass
class CallResult:
    answered: bool               # a 200 OK to the INVITE came back
    remote_hangup: bool          # the other side sent the BYE (False: we hung up, or no call)
    heard: np.ndarray            # int16 8 kHz audio received on the caller's RTP port
    duration: float              # seconds from the 200 OK to the BYE (0.0 if not answered)
    sip_log: str                 # SIPp -trace_msg log, then its error log
    dtmf_heard: list = field(default_factory=list)   # RFC 4733 keys received
    returncode: int = 0          # SIPp exit status: 0 the scenario completed, 1 the call failed
    workdir: str = ""            # scenario, pcaps, logs (removed unless keep=True)


def place_call(audio: np.ndarray, *, extension: str = "100", from_user: str = "caller", dtmf=(),
               hangup_after: float | None = None, timeout: float = 60, local_port: int | None = None,
               rtp_port: int | None = None, keep: bool = False, caller_id: str | None = None, netns=None) -> CallResult:
    """A real call from SIPp (UAC on 127.0.0.1:local_port, RTP on rtp_port; None: free_port_pair())
    to Asterisk 127.0.0.1:5060 `extension`, as From user `from_user`. Once answered it plays `audio`
    (int16 8 kHz mono) and `dtmf` [(seconds after answer, key), keys >= 0.2 s apart], and hangs up
    `hangup_after` s after the answer, or waits up to `timeout` s for the remote BYE. No answer
    within `timeout` s of the last provisional response: CANCEL. Blocks until the call is over;
    SIPp is killed if it outlives that by 20 s. netns: from inside that network namespace (tests/netlab.py)."""
    if local_port is None or rtp_port is None:
        local_port, rtp_port = free_port_pair()
    work = Path(tempfile.mkdtemp(prefix="sipcall-"))
    write_pcap(work / "send.pcap", rtp_packets(np.asarray(audio, np.int16), dtmf))
    wait = timeout if hangup_after is None else hangup_after
    (work / "uac.xml").write_text(uac_scenario(from_user, work / "send.pcap", int(1000 * timeout), int(1000 * wait),
                                               caller_id))
    cap = sipp = None
    rc = -9
    try:
        cap = start_capture(rtp_port, work / "recv.pcap", netns)
        sipp = _sipp(work, "uac", ["-s", str(extension), "-p", str(local_port), "-mp", str(rtp_port), "-m", "1",
                                   "-timeout", f"{int(timeout + wait) + 10}s", "-timeout_error", "127.0.0.1:5060"], netns)
        rc = sipp.wait(timeout + wait + 20)
        time.sleep(0.2)                             # the last RTP packets reach the capture
    except subprocess.TimeoutExpired:
        pass
    finally:
        _stop(sipp, signal.SIGKILL)
        _stop(cap, signal.SIGINT)
    msgs = parse_messages(_read(work / "uac.msg"))
    ok = [t for d, t, m in msgs if d == "received" and _is(m, "SIP/2.0 200", "INVITE")]
    bye = [(d, t) for d, t, m in msgs if m.startswith("BYE ")]
    heard, keys = decode_rtp(read_pcap_udp(work / "recv.pcap")).get(0, (np.zeros(0, np.int16), []))
    result = CallResult(bool(ok), bool(ok and bye and bye[0][0] == "received"), heard,
                        bye[0][1] - ok[0] if ok and bye else 0.0, _read(work / "uac.msg") + _read(work / "uac.err"),
                        keys, rc, str(work))
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return result


class Desk:
    """The desk phone: SIPp UAS on 127.0.0.1:`port` (pjsip.conf's desk contact) answering every
    call, concurrent ones included (answer=False: it only rings, until CANCEL; busy=True: 486). It sends no audio
    (echo=True: echoes the RTP it gets) and records what it receives on `rtp_port`. hangup_after:
    it hangs up that many seconds after answering (None: it waits for the caller's BYE).
    Results stay readable after exit."""

    def __init__(self, port: int = DESK_PORT, rtp_port: int = DESK_RTP, echo: bool = False,
                 hangup_after: float | None = None, answer: bool = True, busy: bool = False, netns=None,
                 voice: np.ndarray | None = None):
        """netns: run inside that network namespace (tests/netlab.py), on its loopback. voice: what
        the person at the desk says once they answer (int16 8 kHz), instead of silence."""
        self.port, self.rtp_port, self.echo, self.hangup_after, self.answer = port, rtp_port, echo, hangup_after, answer
        self.busy, self.netns, self.voice = busy, netns, voice
        self.work = self.sipp = self.cap = None
        self._log, self._err, self._media = "", "", {}

    def __enter__(self) -> "Desk":
        if not self.netns and not _udp_free(self.port):
            raise RuntimeError(f"UDP port {self.port} is taken (another desk?): ss -lunp 'sport = :{self.port}'")
        self.work = Path(tempfile.mkdtemp(prefix="sipdesk-"))
        pcap = None
        if self.voice is not None:
            pcap = self.work / "voice.pcap"
            write_pcap(pcap, rtp_packets(np.asarray(self.voice, np.int16)))
        (self.work / "desk.xml").write_text(uas_scenario(int(1000 * (86400 if self.hangup_after is None else self.hangup_after)),
                                                            self.answer, self.busy, pcap))
        try:
            self.cap = start_capture(self.rtp_port, self.work / "recv.pcap", self.netns)
            self.sipp = _sipp(self.work, "desk", ["-p", str(self.port), "-mp", str(self.rtp_port), "-m", "1000000"]
                              + ["-rtp_echo"] * self.echo, self.netns)
            for _ in range(50):                     # ready once it holds its SIP port
                if self.sipp.poll() is not None or (not self.netns and not _udp_free(self.port)):
                    break
                time.sleep(0.1)
            if self.netns:
                time.sleep(1.0)
            if self.sipp.poll() is not None:
                raise RuntimeError("desk SIPp exited: " + _read(self.work / "desk.out") + _read(self.work / "desk.err"))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        _stop(self.sipp)
        _stop(self.cap, signal.SIGINT)
        if self.work:
            self._log, self._err, self._media = _read(self.work / "desk.msg"), _read(self.work / "desk.err"), self._decoded()
            shutil.rmtree(self.work, ignore_errors=True)
            self.work = None

    def _msgs(self):
        return parse_messages(_read(self.work / "desk.msg") if self.work else self._log)

    def sip_log(self) -> str:
        """The desk's SIPp -trace_msg log so far, then its error log."""
        return _read(self.work / "desk.msg") + _read(self.work / "desk.err") if self.work else self._log + self._err

    def calls_received(self) -> int:
        """Calls the desk answered (a 200 OK sent to an INVITE), counted by Call-ID."""
        return len({_callid(m) for d, _, m in self._msgs() if d == "sent" and _is(m, "SIP/2.0 200", "INVITE")})

    def _invites(self) -> dict:
        out: dict = {}                              # Call-ID -> (time, INVITE), first copy only
        for d, t, m in self._msgs():
            if d == "received" and m.startswith("INVITE "):
                out.setdefault(_callid(m), (t, m))
        return out

    def invite_headers(self) -> list[str]:
        """The raw INVITE messages the desk received, one per call, in order."""
        return [m for _, m in self._invites().values()]

    def _decoded(self) -> dict:
        """{Call-ID: (audio, keys)}: a packet belongs to the latest call whose INVITE's SDP names
        its source port (Asterisk sends from the port it announces)."""
        if not self.work:
            return self._media
        legs = [(t, int(p.group(1)), cid) for cid, (t, m) in self._invites().items() if (p := re.search(r"^m=audio (\d+)", m, re.M))]
        def call_of(pkt):
            return next((cid for t, port, cid in reversed(legs) if port == pkt[1] and t <= pkt[0] + 1), f"port {pkt[1]}")
        return decode_rtp(read_pcap_udp(self.work / "recv.pcap"), key=call_of)

    def heard(self) -> list[np.ndarray]:
        """Audio the desk received, one int16 8 kHz array per call, in invite_headers() order."""
        media = self._decoded()
        return [media.get(cid, (np.zeros(0, np.int16), []))[0] for cid in self._invites()]

    def dtmf_heard(self) -> list[list[str]]:
        """RFC 4733 keys the desk received, one list per call, in invite_headers() order."""
        media = self._decoded()
        return [media.get(cid, (None, []))[1] for cid in self._invites()]


class Assistant:
    """`ivr serve` as a separate process, as a town hall runs it."""

    def __init__(self, data: Path, asterisk: "Asterisk", at: str = "2026-12-01T10:00", env: dict | None = None,
                 code: Path = REPO, netns=None, user: str = "assistant"):
        """env: extra settings (IVR_*); code: the source tree to run (another checkout, to compare);
        netns: run inside that network namespace (tests/netlab.py); user: its name at the PBX."""
        self.data, self.asterisk, self.proc, self.at = Path(data), asterisk, None, at
        self.netns, self.user = netns, user
        self.env, self.code = dict(env or {}), Path(code)
        self.log = self.data / "serve.log"

    def start(self) -> "Assistant":
        env = dict(os.environ, IVR_DATA=str(self.data), IVR_PATHS__MODELS=str(REPO / "data" / "models"),
                   IVR_PATHS__CORPUS=str(REPO / "corpus"), IVR_PATHS__CACHE=str(REPO / "data" / "cache"),
                   IVR_SIP__PASSWORD_FILE=str(self.asterisk.password_file))
        env.update(self.env)
        if self.code != REPO:      # another checkout may predate the secret file: give the password itself
            env["IVR_SIP__PASSWORD"] = self.asterisk.password_file.read_text().strip()
        # a fixed time (a weekday morning by default) so transfers do not depend on when tests run
        cmd = [sys.executable, "-m", "ivr.cli", "serve", "--at", self.at]
        self.proc = subprocess.Popen(self.netns.cmd(cmd) if self.netns else cmd, cwd=self.code,
                                     env=env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("ivr serve exited: " + self.log.read_text()[-2000:])
            if self.reachable():
                return self
            time.sleep(0.5)
        raise RuntimeError("the assistant did not register: " + self.log.read_text()[-2000:])

    def reachable(self) -> bool:
        return any(l.strip().startswith("Contact:") and f"{self.user}/" in l and "Avail" in l
                   for l in self.asterisk.cli("pjsip show contacts").splitlines())

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGUSR1)       # a hung assistant writes its threads' stacks
                time.sleep(1)
                self.proc.kill()
                self.proc.wait(5)

    @property
    def store(self):
        from ivr.store import Store

        return Store(self.data / "ivr.db")

    def last_calls(self, n: int = 1, returns: bool = False) -> list[dict]:
        """The latest calls placed, newest first; returns=True: with the calls that came back to the
        assistant from a desk that did not answer (a caller left silent at the end of a test is
        transferred, and comes back)."""
        where = "" if returns else "where returned_from is null "
        ids = [r["id"] for r in self.store.db.query(f"select id from calls {where}order by started_at desc limit ?", [n])]
        return [self.store.call(i) for i in ids]


def tone(freq: float = 440.0, seconds: float = 3.0, amplitude: int = 8000) -> np.ndarray:
    """A sine tone, int16 8 kHz."""
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(int(seconds * RATE)) / RATE)).astype(np.int16)


def dominant_frequency(audio: np.ndarray) -> float:
    """Frequency (Hz) of the strongest FFT bin above DC; 0.0 for silence."""
    x = np.asarray(audio, np.float64)
    if len(x) < 2 or not x.any():
        return 0.0
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / RATE)[1 + int(np.argmax(spec[1:]))])


# ---- a reactive caller (pjsua2): speaks when the assistant has stopped, as people do ----------
@dataclass
class ReactiveResult:
    answered: bool               # the call was answered (CONFIRMED)
    remote_hangup: bool          # the other side ended the call
    duration: float              # seconds from the answer to the end of the call
    heard: np.ndarray            # int16 8 kHz received, sample 0 = the answer, real-time timeline
    sent: np.ndarray             # int16 8 kHz sent, same timeline
    steps: list                  # [{"index", "start_s", "end_s", "forced"}], seconds after the answer
    error: str | None            # why the call failed (None: it did not)
    workdir: str = ""            # spec, WAVs, result.json, caller log (removed unless keep=True)


def reactive_call(steps: list[dict], *, extension: str = "100", hangup_after: float | None = None,
                  timeout: float = 60, keep: bool = False, noise_dbfs: float | None = None, netns=None,
                  target: str = "127.0.0.1:5060", from_user: str = "caller", bind: str = "127.0.0.1") -> ReactiveResult:
    """A call from tests/reactive_caller.py (pjsua2 in its own process: one library per process,
    and the assistant's is another). Each step is {"audio": int16 8 kHz} or {"dtmf": "0"}, plus
    "at_s" (seconds after the answer, whatever is heard) or "after_silence_s" (once the assistant
    has spoken, then been silent that long; "max_wait_s", default 30, forces it). Steps run in
    order. Then it hangs up `hangup_after` s after the answer, or waits for the remote BYE;
    `timeout` s from the INVITE ends it anyway. The caller is killed if it outlives that by 30 s.
    Between steps it sends digital silence, or white comfort noise at `noise_dbfs` (RMS).
    It calls `extension`@`target` as `from_user` from address `bind`, inside `netns` (tests/netlab.py)
    if given."""
    import json

    import soundfile as sf

    work = Path(tempfile.mkdtemp(prefix="reactive-"))
    spec_steps = []
    for i, step in enumerate(steps):
        s = {k: v for k, v in step.items() if k != "audio"}
        if "audio" in step:
            s["audio"] = str(work / f"step{i}.wav")
            sf.write(s["audio"], np.asarray(step["audio"], np.int16), RATE, subtype="PCM_16")
        spec_steps.append(s)
    sip_port, rtp_port = free_port_pair()
    spec = {"extension": str(extension), "sip_port": sip_port, "rtp_port": rtp_port, "steps": spec_steps,
            "hangup_after_s": hangup_after, "timeout_s": timeout, "noise_dbfs": noise_dbfs, "target": target,
            "from_user": from_user, "bind": bind}
    (work / "spec.json").write_text(json.dumps(spec, indent=1))
    out, log = work / "out", work / "caller.log"
    try:
        with open(log, "w") as f:
            cmd = [sys.executable, str(REPO / "tests" / "reactive_caller.py"), str(work / "spec.json"), str(out)]
            subprocess.run(netns.cmd(cmd) if netns else cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, timeout=timeout + 30)
    except subprocess.TimeoutExpired:                # subprocess.run kills it
        pass
    res = json.loads(_read(out / "result.json") or "null") or {
        "answered": False, "remote_hangup": False, "duration_s": 0.0, "steps": [],
        "error": "the caller left no result: " + _read(log)[-2000:]}
    wav = lambda name: sf.read(out / name, dtype="int16")[0] if (out / name).exists() else np.zeros(0, np.int16)  # noqa: E731
    result = ReactiveResult(res["answered"], res["remote_hangup"], res["duration_s"], wav("heard.wav"), wav("sent.wav"),
                            res["steps"], res["error"], str(work))
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return result
