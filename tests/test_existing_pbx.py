"""The assistant on a town hall's own PBX, with no bundled Asterisk: a separately configured Asterisk
(its own extensions, its incoming context, the documented snippets of asterisk-conf/existing-pbx/
included as a PBX administrator would) in one network namespace, `ivr serve` ([pbx] mode =
"external") registered to it from another. Real calls from the PBX's own caller."""
from __future__ import annotations

import os
import time

import pytest

from tests.conftest import ROOT, caller_voice

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and Asterisk need root")

NUMBER, PASSWORD = "0199472000", "mot-de-passe-du-pbx"
SNIPPETS = ROOT / "asterisk-conf" / "existing-pbx"


def pbx_files(modules: str) -> dict[str, str]:
    """The town hall's PBX: the switchboard phone is extension 200 (a SIPp desk on the PBX's
    loopback), incoming calls arrive in its own context, the assistant's snippets are included."""
    pjsip = """[global]
type = global

[transport-udp]
type = transport
protocol = udp
bind = 0.0.0.0:5060

[200]
type = endpoint
context = interne
allow = !all,alaw,ulaw
aors = 200
direct_media = no

[200]
type = aor
contact = sip:200@127.0.0.1:5080

[operateur]
type = endpoint
context = entrants
allow = !all,alaw,ulaw
identify_by = username
direct_media = no
dtmf_mode = rfc4733

#include pjsip_mairie_assistant.conf
"""
    extensions = f"""[general]
static = yes
writeprotect = yes
autofallthrough = yes

[entrants]
exten => {NUMBER},1,Goto(mairie-assistant-in,s,1)

[interne]
exten => 200,1,Dial(PJSIP/200,20)

#include extensions_mairie_assistant.conf
"""
    snippet = (SNIPPETS / "pjsip_mairie_assistant.conf").read_text().replace("CHANGEZ-MOI", PASSWORD)
    return {"pjsip.conf": pjsip, "extensions.conf": extensions, "pjsip_mairie_assistant.conf": snippet,
            "extensions_mairie_assistant.conf": (SNIPPETS / "extensions_mairie_assistant.conf").read_text(),
            "modules.conf": modules, "logger.conf": "[logfiles]\nmessages.log => notice,warning,error,verbose\n",
            "rtp.conf": "[general]\nrtpstart = 14000\nrtpend = 14999\n"}


@pytest.fixture(scope="module")
def hall(tmp_path_factory):
    from ivr.config import load_config
    from ivr.pbx import render
    from tests.netlab import Lab, LabAsterisk
    from tests.sipcall import Assistant

    data = tmp_path_factory.mktemp("existing-pbx")
    (data / "secrets").mkdir(mode=0o700)
    (data / "secrets" / "sip_password").write_text(PASSWORD + "\n")
    modules = render(load_config(env={"IVR_DATA": str(data)}))["modules.conf"]
    with Lab() as lab:
        server, pbx_ns = lab.netns("serveur"), lab.netns("pbx")
        s_addr, p_addr = lab.link(server, pbx_ns)
        settings = data / "ivr.toml"
        settings.write_text(f"""[pbx]
mode = "external"

[sip]
registrar = "sip:{p_addr}:5060"
user = "mairie-assistant"
bind = "{s_addr}"
desk_uri = "sip:200@{p_addr}:5060"
end_uri = "sip:fin@{p_addr}:5060"
""")
        with LabAsterisk(pbx_ns, "pbx", pbx_files(modules)) as pbx:
            pbx.password_file = data / "secrets" / "sip_password"
            assistant = Assistant(data, pbx, netns=server, user="mairie-assistant",
                                  env={"IVR_CONFIG": str(settings)}).start()
            try:
                yield type("Hall", (), dict(lab=lab, server=server, pbx_ns=pbx_ns, pbx=pbx, assistant=assistant))
            finally:
                assistant.stop()


def say(text: str, after_silence_s: float = 1.0) -> dict:
    return dict(audio=caller_voice(text, phone=False), after_silence_s=after_silence_s)


def test_a_call_reaches_the_assistant_and_is_put_through_to_an_extension_with_its_reason(hall):
    from tests.sipcall import Desk, reactive_call
    from tests.test_calls import wait_idle

    with Desk(netns=hall.pbx_ns) as desk:
        r = reactive_call([say("Je voudrais parler à quelqu'un pour mon dossier de mariage, s'il vous plaît.")],
                          extension=NUMBER, netns=hall.pbx_ns, from_user="operateur", timeout=60)
        time.sleep(1)
    assert r.answered and not r.error, r.error
    wait_idle(hall.assistant.store)
    call = hall.assistant.last_calls()[0]
    assert call["outcome"] == "transferred", call
    assert desk.calls_received() == 1, desk.sip_log()[-2000:]
    invite = desk.invite_headers()[0]
    assert invite.startswith("INVITE sip:200@"), invite
    assert "X-Mairie-Appel:" in invite and f"ivr-call={call['id']}" in invite, invite


def test_the_pbx_sends_callers_to_the_switchboard_when_the_assistant_is_down(hall):
    from tests.sipcall import Desk, reactive_call

    hall.assistant.stop()
    with Desk(netns=hall.pbx_ns) as desk:
        t0 = time.monotonic()
        r = reactive_call([], extension=NUMBER, netns=hall.pbx_ns, from_user="operateur", hangup_after=2, timeout=30)
        waited = time.monotonic() - t0
        time.sleep(0.5)
    assert r.answered and not r.error, r.error
    assert desk.calls_received() == 1, desk.sip_log()[-2000:]
    assert "X-Mairie-Appel" not in desk.invite_headers()[0]
    assert waited < 15, waited
