"""A caller put through to a person is never dropped: a desk or service that is busy, does not
answer within the ring time, or cannot be reached sends the caller back to the assistant, which says
so and takes a message for that service. Real calls: Asterisk, `ivr serve`, a pjsua2 caller and a
SIPp desk (busy, ringing forever, or absent). A desk that answers: tests/test_calls.py."""
from __future__ import annotations

import os
import time

import pytest

from tests.conftest import caller_voice

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="real calls need root (chroot, tcpdump)")


@pytest.fixture
def ring_s(pbx):
    """Sets how long a desk rings before the caller goes back (extensions.conf DESK_TIMEOUT)."""
    def set_(seconds: int) -> None:
        pbx.cli(f"dialplan set global DESK_TIMEOUT {seconds}")
    yield set_
    set_(30)


def say(text: str, after_silence_s: float = 1.0) -> dict:
    return dict(audio=caller_voice(text, phone=False), after_silence_s=after_silence_s)


AFTER_RINGING = 4.0     # the ringback (1.5 s on, 3.5 s off) is not the assistant: wait for its words


def the_two_calls(assistant) -> tuple[dict, dict]:
    """The call that was transferred, and the call that came back from the desk."""
    from tests.test_calls import wait_idle

    wait_idle(assistant.store)
    back, first = assistant.last_calls(2, returns=True)
    return first, back


def assistant_said(call: dict) -> list[str]:
    return [t["text"] for t in call["turns"] if t["speaker"] == "assistant"]


def test_a_busy_desk_sends_the_caller_back_and_a_message_is_taken(assistant):
    from tests.sipcall import Desk, reactive_call

    with Desk(busy=True) as desk:
        r = reactive_call([say("Je voudrais parler à quelqu'un, s'il vous plaît."), say("Oui, je veux bien.", AFTER_RINGING),
                           say("C'est monsieur Martin, pour mon dossier de mariage."),
                           dict(dtmf="0611223344", after_silence_s=1.0)], timeout=150)
        time.sleep(1)
    assert r.answered and not r.error, r.error
    assert len(desk.invite_headers()) == 1 and desk.calls_received() == 0          # it rang, busy
    first, back = the_two_calls(assistant)
    said = assistant_said(back)
    assert first["outcome"] == "transferred" and back["returned_from"] == first["id"], (first, back)
    assert said[0].startswith("L'accueil de la mairie est déjà en ligne"), said
    assert r.remote_hangup and back["outcome"] == "message" and "enregistré" in said[-1], said   # not dropped
    rows = list(assistant.store.db.query("select * from callbacks where call_id = ?", [back["id"]]))
    assert rows and rows[0]["service"] == "accueil" and rows[0]["phone"] == "0611223344", rows
    assert "martin" in rows[0]["message"].lower() or "mariage" in rows[0]["message"].lower(), rows


def test_a_service_that_never_answers_sends_the_caller_back_after_the_ring_time(assistant, ring_s):
    from tests.sipcall import Desk, reactive_call

    ring_s(6)
    with Desk(answer=False) as desk:
        r = reactive_call([say("Passez-moi le service urbanisme, s'il vous plaît."), say("Non merci, au revoir.", AFTER_RINGING)],
                          timeout=90)
        time.sleep(1)
    assert r.answered and not r.error, r.error
    assert desk.invite_headers() and desk.invite_headers()[0].startswith("INVITE sip:220@")
    first, back = the_two_calls(assistant)
    said = assistant_said(back)
    assert back["returned_from"] == first["id"] and said[0].startswith("Le service urbanisme ne répond pas"), said
    returned = [e for e in back["events"] if e["type"] == "returned"]
    assert returned and '"NOANSWER"' in returned[0]["data"] and '"220"' in returned[0]["data"], back["events"]
    assert r.remote_hangup and not [s for s in r.steps if s["forced"]], r.steps     # the goodbye ended it


def test_an_unreachable_desk_sends_the_caller_back(assistant, ring_s):
    """Nothing answers at the desk's address. Without OPTIONS probes (qualify_frequency, off for the
    test desk) Asterisk only learns it when the ring time runs out; the caller hears ringing."""
    from tests.sipcall import reactive_call

    ring_s(6)
    r = reactive_call([say("Je voudrais parler à quelqu'un, s'il vous plaît."), say("Non merci, au revoir.", AFTER_RINGING)],
                      timeout=90)                         # no desk phone is running
    assert r.answered and not r.error, r.error
    first, back = the_two_calls(assistant)
    said = assistant_said(back)
    assert back["returned_from"] == first["id"], (first, back)
    assert said[0].startswith(("L'accueil de la mairie ne répond pas", "L'accueil de la mairie n'est pas joignable")), said
    assert r.remote_hangup and not [s for s in r.steps if s["forced"]], r.steps
