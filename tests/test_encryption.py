"""SIP over TLS and SRTP between the assistant and Asterisk, for real: Asterisk configured by
`ivr pbx config` with [tls] (a certificate made at set-up) in one network namespace, `ivr serve`
([sip] transport = "tls", checking that certificate) in another, so that everything between them
crosses one veth pair, captured. A caller speaks on Asterisk's side over plain RTP: its own leg,
captured too, is the control that decodes as the speech that was sent."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

from tests.conftest import caller_voice, make_cfg

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and Asterisk need root")


def alaw_decode(data: bytes) -> np.ndarray:
    a = np.frombuffer(data, np.uint8) ^ 0x55
    seg, mant = (a & 0x70) >> 4, (a & 0x0F).astype(np.int32)
    mag = np.where(seg == 0, (mant << 4) + 8, ((mant << 4) + 0x108) << np.maximum(seg.astype(np.int32) - 1, 0))
    return np.where(a & 0x80, mag, -mag).astype(np.int16)


def g711_frames(pcap, dst_ports=None, dst_not=None) -> list[np.ndarray]:
    """The RTP payloads of a capture decoded as G.711 (as whoever listened on the wire would)."""
    from tests.sipcall import read_pcap_udp, ulaw_decode

    frames = []
    for _, sport, dport, rtp in read_pcap_udp(pcap):
        if len(rtp) < 60 or rtp[0] >> 6 != 2 or (dst_ports and dport not in dst_ports) or dport in (dst_not or ()):
            continue
        pt, body = rtp[1] & 0x7F, rtp[12 + 4 * (rtp[0] & 0x0F):]
        if pt in (0, 8):
            frames.append(ulaw_decode(body) if pt == 0 else alaw_decode(body))
    return frames


def envelope_match(frames: list[np.ndarray], sent: np.ndarray) -> float:
    """How well the loudness of the decoded frames, 20 ms each, follows that of the speech sent
    (best normalised correlation over shifts up to 5 s): near 1 for the speech, near 0 for noise."""
    def env(x):
        return np.log10(np.mean(np.asarray(x, np.float64) ** 2) + 1.0)
    got = np.array([env(f[:160]) for f in frames])
    want = np.array([env(sent[i:i + 160]) for i in range(0, len(sent) - 159, 160)])
    best = 0.0
    for lag in range(-250, 251):
        a = got[max(lag, 0):]
        b = want[max(-lag, 0):]
        n = min(len(a), len(b))
        if n < 100 or a[:n].std() == 0 or b[:n].std() == 0:
            continue
        best = max(best, float(np.corrcoef(a[:n], b[:n])[0, 1]))
    return best


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    from ivr.pbx import render, tls_files
    from tests.netlab import Lab, LabAsterisk
    from tests.sipcall import Assistant

    data = tmp_path_factory.mktemp("tls")
    with Lab() as lab:
        server, pbx_ns = lab.netns("serveur"), lab.netns("pbx")
        s_addr, p_addr = lab.link(server, pbx_ns)
        settings = data / "ivr.toml"
        settings.write_text(f"""[tls]
enabled = true
bind = "{p_addr}:5061"

[sip]
transport = "tls"
registrar = "sip:{p_addr}:5061;transport=tls"
bind = "{s_addr}"
tls_ca_file = "{data}/secrets/tls/asterisk.crt"
""")
        cfg = make_cfg(data, IVR_CONFIG=settings)
        files = render(cfg)                          # makes the certificate and the SIP secret
        assert tls_files(cfg)[0].exists()
        with LabAsterisk(pbx_ns, "mairie", files, password_file=data / "secrets" / "sip_password") as pbx:
            assistant = Assistant(data, pbx, netns=server, env={"IVR_CONFIG": str(settings)}).start()
            try:
                yield type("Secured", (), dict(lab=lab, server=server, pbx_ns=pbx_ns, pbx=pbx, assistant=assistant,
                                               data=data))
            finally:
                assistant.stop()


def test_a_call_over_tls_and_srtp_cannot_be_heard_on_the_wire(secured):
    from tests.sipcall import _stop, read_pcap_udp, reactive_call, start_capture
    from tests.test_calls import wait_idle

    wire, line = secured.data / "wire.pcap", secured.data / "caller-leg.pcap"
    caps = [start_capture(None, wire, secured.server, secured.lab.interface(secured.server, 1), "tcp or udp"),
            start_capture(None, line, secured.pbx_ns, "lo", "udp dst portrange 10000-10999")]
    try:
        question = caller_voice("Bonjour, quels sont les horaires d'ouverture de la mairie le samedi ?", phone=False)
        r = reactive_call([dict(audio=question, at_s=9.0)], hangup_after=20, netns=secured.pbx_ns, timeout=40)
        time.sleep(0.5)
    finally:
        for c in caps:
            _stop(c, 2)
    assert r.answered and not r.error, r.error
    wait_idle(secured.assistant.store)
    call = secured.assistant.last_calls()[0]
    heard = " ".join(t["text"] for t in call["turns"] if t["speaker"] == "caller").lower()
    assert "horaires" in heard or "samedi" in heard, call["turns"]     # the assistant heard it, decrypted

    raw = wire.read_bytes()
    assert len(raw) > 20000, len(raw)
    for clear in (b"SIP/2.0", b"REGISTER sip:", b"INVITE sip:", b"m=audio", b"a=crypto"):
        assert clear not in raw, f"{clear!r} readable on the wire"
    sent = r.sent
    encrypted = g711_frames(wire, dst_not=set(range(10000, 11000)) | {5061})   # Asterisk to the assistant
    plain = g711_frames(line)
    assert len(encrypted) > 500 and len(plain) > 500, (len(encrypted), len(plain))
    control, on_wire = envelope_match(plain, sent), envelope_match(encrypted, sent)
    print(f"speech envelope match: caller leg (plain) {control:.2f}, assistant leg (SRTP) {on_wire:.2f}, "
          f"{len(encrypted)} SRTP packets")
    assert control > 0.6, control            # the method recognises the speech where it is in clear
    assert on_wire < 0.3, on_wire            # and finds none of it between Asterisk and the assistant
    udp = list(read_pcap_udp(wire))
    assert all(p[1] != 5060 and p[2] != 5060 for p in udp), "plain SIP (UDP 5060) between them"
