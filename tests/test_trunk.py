"""The operator's SIP trunk, for real: the town hall's server (its Asterisk configured by
`ivr pbx config` from a [trunk] section, `ivr serve`, a SIPp desk) and the operator (a second
Asterisk that requires registration with a password, offers G.711 A-law only, and has its own
caller) each live in a network namespace made by the test, joined by a veth pair."""
from __future__ import annotations

import os
import re
import time

import pytest

from tests.conftest import caller_voice, make_cfg

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and Asterisk need root")

NUMBER, USER, SECRET = "0199472000", "mairie-montclair", "s3cret-operateur"


def operator_files(mairie_modules: str) -> dict[str, str]:
    """The operator's Asterisk: the town hall registers as USER/SECRET; its caller (a pjsua2 caller
    on the namespace's loopback) dials NUMBER, or any other number, which go to the town hall;
    whatever the town hall would send out is written down in the OUTBOUND global."""
    pjsip = f"""[global]
type = global
endpoint_identifier_order = ip,username

[transport-net]
type = transport
protocol = udp
bind = 0.0.0.0:5060

[{USER}]
type = endpoint
transport = transport-net
context = from-mairie
allow = !all,alaw
auth = {USER}-auth
aors = {USER}
identify_by = username,auth_username
direct_media = no
rtp_symmetric = yes
force_rport = yes
rewrite_contact = yes
dtmf_mode = rfc4733

[{USER}-auth]
type = auth
auth_type = userpass
username = {USER}
password = {SECRET}

[{USER}]
type = aor
max_contacts = 1
remove_existing = yes

[caller]
type = endpoint
transport = transport-net
context = from-caller
allow = !all,alaw,ulaw
identify_by = username
direct_media = no
dtmf_mode = rfc4733
"""
    extensions = f"""[general]
static = yes
writeprotect = yes
autofallthrough = yes

[from-caller]
exten => _X.,1,Dial(PJSIP/${{EXTEN}}@{USER},30)
 same => n,Hangup()
exten => _+X.,1,Dial(PJSIP/${{EXTEN}}@{USER},30)
 same => n,Hangup()

[from-mairie]
exten => _[+0-9a-zA-Z*#].,1,Set(GLOBAL(OUTBOUND)=${{GLOBAL(OUTBOUND)}}:${{EXTEN}})
 same => n,Hangup(21)
"""
    return {"pjsip.conf": pjsip, "extensions.conf": extensions, "logger.conf": "[logfiles]\nmessages.log => notice,warning,error,verbose\n",
            "modules.conf": mairie_modules + "load => func_global.so\n", "rtp.conf": "[general]\nrtpstart = 12000\nrtpend = 12999\n"}


def trunk_settings(data, server: str, bind: str, password: str = SECRET, extra: str = ""):
    """A town hall's settings file with the operator's trunk, its password in the secret file."""
    (data / "secrets").mkdir(parents=True, mode=0o700, exist_ok=True)
    (data / "secrets" / "trunk_password").write_text(password + "\n")
    (data / "secrets" / "trunk_password").chmod(0o600)       # as docs/trunk.md says (`ivr doctor` checks it)
    settings = data / "ivr.toml"
    settings.write_text(f"""[trunk]
mode = "register"
server = "{server}"
user = "{USER}"
numbers = ["01 99 47 20 00"]
bind = "{bind}"
{extra}""")
    return settings


@pytest.fixture(scope="module")
def town(tmp_path_factory):
    """The town hall (Asterisk with the trunk, `ivr serve`) and its operator, each in its namespace."""
    from ivr.pbx import render
    from tests.netlab import Lab, LabAsterisk
    from tests.sipcall import Assistant

    data = tmp_path_factory.mktemp("trunk")
    with Lab() as lab:
        mairie, op = lab.netns("mairie"), lab.netns("op")
        m_addr, op_addr = lab.link(mairie, op)
        settings = trunk_settings(data, op_addr, m_addr)
        cfg = make_cfg(data, IVR_CONFIG=settings)
        files = render(cfg)
        with LabAsterisk(op, "operator", operator_files(files["modules.conf"])) as operator, \
                LabAsterisk(mairie, "mairie", files, password_file=data / "secrets" / "sip_password") as pbx:
            assistant = Assistant(data, pbx, netns=mairie, env={"IVR_CONFIG": str(settings)}).start()
            try:
                yield type("Town", (), dict(lab=lab, mairie=mairie, op=op, operator=operator, pbx=pbx, cfg=cfg,
                                            assistant=assistant, data=data, m_addr=m_addr, op_addr=op_addr))
            finally:
                assistant.stop()


def registered(ast, name: str, timeout: float = 15) -> str:
    from ivr.doctor import registrations

    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = registrations(ast.cli("pjsip show registrations")).get(name, "")
        if state in ("Registered", "Rejected"):
            return state
        time.sleep(0.3)
    return state


def say(text: str, after_silence_s: float = 1.0) -> dict:
    return dict(audio=caller_voice(text, phone=False), after_silence_s=after_silence_s)


def test_a_call_from_the_operator_is_answered_and_put_through_to_a_desk(town):
    from tests.sipcall import Desk, reactive_call
    from tests.test_calls import wait_idle

    assert registered(town.pbx, "trunk-reg") == "Registered", town.pbx.cli("pjsip show registrations")
    contacts = town.operator.cli(f"pjsip show aor {USER}")
    assert town.m_addr in contacts, contacts
    iface = town.lab.interface(town.mairie, 1)
    from tests.sipcall import _stop, read_pcap_udp, start_capture
    cap_path = town.data / "trunk.pcap"
    cap = start_capture(None, cap_path, town.mairie, iface, "udp port 5060 or udp port 5062")
    try:
        with Desk(netns=town.mairie) as desk:
            r = reactive_call([say("Quels sont les horaires d'ouverture de la mairie ?"),
                               say("Je voudrais parler à quelqu'un, s'il vous plaît.", 1.5)],
                              extension=NUMBER, netns=town.op, timeout=90)
            time.sleep(1)
    finally:
        _stop(cap, 2)
    assert r.answered and not r.error, r.error
    wait_idle(town.assistant.store)
    call = town.assistant.last_calls()[0]
    heard = " ".join(t["text"] for t in call["turns"] if t["speaker"] == "caller").lower()
    said = " ".join(t["text"] for t in call["turns"] if t["speaker"] == "assistant")
    assert "horaires" in heard, call["turns"]
    assert re.search(r"\d+ ?h", said) and "lundi" in said.lower(), said          # the hours, spoken
    assert call["outcome"] == "transferred", call
    assert desk.calls_received() == 1, desk.sip_log()[-2000:]
    invite = desk.invite_headers()[0]
    assert "X-Mairie-Appel:" in invite and f"ivr-call={call['id']}" in invite, invite
    # the operator offered A-law only, and the town hall answered with it
    sip = [p[3].decode("latin-1") for p in read_pcap_udp(cap_path)]
    answers = [m for m in sip if m.startswith("SIP/2.0 200") and "m=audio" in m]
    assert answers, sip[:3]
    m_line = re.search(r"^m=audio \d+ RTP/AVP ([\d ]+)", answers[0], re.M).group(1).split()
    assert m_line[0] == "8" and "0" not in m_line, answers[0]


def test_nothing_can_be_called_out_through_the_trunk(town):
    """Numbers the town hall does not own, dialled from the operator side, and any number dialled
    from the town hall's own phones, go nowhere: the operator never gets a call from the town hall."""
    from tests.sipcall import reactive_call

    for number in ("0612345678", "0033612345678", "+33899123456", "3615", "*97"):
        r = reactive_call([], extension=number, netns=town.op, timeout=8)
        assert not r.answered, number
    for user in ("caller", "desk"):
        for number in ("0612345678", "00447700900123", "9", "trunk"):
            r = reactive_call([], extension=number, netns=town.mairie, from_user=user, timeout=8)
            assert not r.answered, (user, number)
    assert "OUTBOUND" not in town.operator.cli("dialplan show globals"), town.operator.cli("dialplan show globals")
    # and the dialplan has no way out at all
    dialplan = town.pbx.cli("dialplan show")
    assert "@trunk" not in dialplan and "PJSIP/trunk" not in dialplan


def test_a_wrong_password_is_reported_and_not_retried(town):
    """A second town hall server, with the wrong password: the operator refuses it, the
    registration says so (Rejected) and stops, instead of retrying for ever."""
    from ivr.pbx import render
    from tests.netlab import LabAsterisk

    data = town.data / "wrong"
    ns = town.lab.netns("mairie2")
    m2, op2 = town.lab.link(ns, town.op)
    settings = trunk_settings(data, op2, m2, password="pas-le-bon")
    with LabAsterisk(ns, "mairie-wrong", render(make_cfg(data, IVR_CONFIG=settings))) as pbx:
        assert registered(pbx, "trunk-reg", timeout=20) == "Rejected", pbx.cli("pjsip show registrations")
        # REGISTER only: the trunk's OPTIONS keepalive is refused too, and is not a retry
        refused = lambda: len(re.findall(  # noqa: E731
            rf"Request 'REGISTER' from '[^']*' failed for '{re.escape(m2)}:", town.operator.log()))
        tried = refused()
        time.sleep(6)
        assert registered(pbx, "trunk-reg") == "Rejected"
        assert tried >= 1 and refused() == tried, town.operator.log()[-2000:]
        assert "stopping outbound registration" in pbx.log(), pbx.log()[-2000:]
    # the right one still is registered
    assert registered(town.pbx, "trunk-reg") == "Registered"


def test_a_stranger_on_the_operator_side_cannot_pose_as_a_local_phone(town):
    """Someone on the Internet side (not the operator) calls the town hall's internal number 100
    through the trunk's port as the test caller, the desk or the assistant: SIP requests from there
    are refused (the trunk's ACL). Without that ACL, the call as "caller" is answered: the test
    can tell."""
    from tests.sipcall import reactive_call

    stranger = town.lab.netns("inconnu")
    m3, s3 = town.lab.link(town.mairie, stranger)
    stranger.run("ip", "route", "add", f"{town.m_addr}/32", "via", m3)
    trunk_port = f"{town.m_addr}:5062"
    for user in ("caller", "desk", "assistant"):
        r = reactive_call([], extension="100", netns=stranger, target=trunk_port, from_user=user, bind=s3, timeout=8)
        assert not r.answered, user
    conf = town.pbx.files["pjsip_trunk.conf"]
    try:
        town.pbx.stop()
        town.pbx.files["pjsip_trunk.conf"] = conf.split("[acl-trunk]")[0]
        town.pbx.start()
        r = reactive_call([], extension="100", netns=stranger, target=trunk_port, from_user="caller", bind=s3,
                          hangup_after=2, timeout=15)
        assert r.answered, r.error
    finally:
        town.pbx.stop()
        town.pbx.files["pjsip_trunk.conf"] = conf
        town.pbx.start()
