"""Real calls: Asterisk 22 (chroot), the assistant (`ivr serve`, pjsua2), a SIPp caller and a SIPp desk.

Caller speech is French (espeak-ng + MBROLA fr1) sent as G.711 RTP; what the caller hears is decoded
from the captured RTP and transcribed with the real Whisper model.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from audio.pcm import rms_dbfs
from ivr.store import Store
from tests.conftest import caller_voice
from tests.sipcall import Assistant, Desk, place_call, reactive_call

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="real calls need root (chroot, tcpdump)")
RATE = 8000


def speech_at(parts: list[tuple[float, str]], total: float) -> np.ndarray:
    """A caller's audio: each text spoken at its time (seconds after answer), silence elsewhere."""
    out = np.zeros(int(total * RATE), np.int16)
    for t, text in parts:
        v = caller_voice(text, phone=False)
        i = int(t * RATE)
        out[i:i + len(v)] = v[: len(out) - i]
    return out


def wait_idle(store: Store, timeout: float = 20) -> None:
    """Until no call is active in the records (the session writes its end when the call is over)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not list(store.db.query("select id from calls where status = 'active'")):
            return
        time.sleep(0.3)


def heard_text(engines, heard: np.ndarray, start: float, end: float | None = None) -> str:
    seg = heard[int(start * RATE): int(end * RATE) if end else None]
    return engines.transcriber.transcribe(seg, RATE).text.lower() if len(seg) else ""


def test_a_recorded_question_gets_the_right_spoken_answer(assistant, engines):
    audio = speech_at([(11.0, "Bonjour, quels sont les horaires de la déchetterie ?")], 40)
    r = place_call(audio, hangup_after=40)
    assert r.answered and rms_dbfs(r.heard[: 8 * RATE]) > -40           # the greeting was heard
    greeting = heard_text(engines, r.heard, 0, 9)
    assert "mairie" in greeting, greeting
    answer = heard_text(engines, r.heard, 14, 40)
    assert any(w in answer for w in ("déchetterie", "déchèterie", "décheterie", "heure", "h")), answer
    wait_idle(assistant.store)
    call = assistant.last_calls()[0]
    caller = [t for t in call["turns"] if t["speaker"] == "caller"]
    bot = [t for t in call["turns"] if t["speaker"] == "assistant" and t["entry_id"]]
    turns = [(t["speaker"], t["text"], t["entry_id"]) for t in call["turns"]]
    assert caller, turns          # the meaning is asserted (the entry), not Whisper's spelling
    assert bot and bot[0]["entry_id"].startswith("dechets.") and call["recording"], turns
    assert Path(call["recording"]).stat().st_size > 40 * RATE * 2      # both directions, whole call


def test_asking_for_a_person_transfers_to_the_desk_with_audio_and_a_summary(assistant, engines):
    audio = speech_at([(11.0, "Je voudrais parler à quelqu'un, s'il vous plaît."),
                       (22.0, "Allô, bonjour, je vous appelle pour mon dossier de mariage.")], 30)
    with Desk() as desk:
        r = place_call(audio, hangup_after=30)
        time.sleep(1)
    assert r.answered and desk.calls_received() == 1
    invite = desk.invite_headers()[0]
    assert "X-Mairie-Appel:" in invite and "ivr-call=" in invite
    heard = desk.heard()[0]
    # the caller's words after the transfer reach the desk (the ASR has the commune's name as a prompt,
    # so check a word of the sentence that is not in it)
    text = engines.transcriber.transcribe(heard, RATE).text.lower()
    assert rms_dbfs(heard) > -45 and any(w in text for w in ("appel", "dossier", "mariage")), text
    wait_idle(assistant.store)
    call = assistant.last_calls()[0]
    assert call["outcome"] == "transferred" and call["id"] in invite


def test_asking_for_a_named_service_rings_its_extension(assistant, engines):
    audio = speech_at([(9.0, "Bonjour, je voudrais parler au service urbanisme, s'il vous plaît.")], 24)
    with Desk() as desk:
        r = place_call(audio, hangup_after=24)
        time.sleep(1)
    assert r.answered and desk.calls_received() == 1
    invite = desk.invite_headers()[0]
    assert invite.startswith("INVITE sip:220@"), invite.splitlines()[0]        # urbanisme's extension
    assert "X-Mairie-Appel:" in invite and "urbanisme" in invite
    wait_idle(assistant.store)
    call = assistant.last_calls()[0]
    assert call["outcome"] == "transferred" and call["summary"].startswith("demande le service urbanisme")


def test_key_0_transfers_to_the_desk(assistant):
    with Desk() as desk:
        r = place_call(np.zeros(20 * RATE, np.int16), dtmf=[(10.0, "0")], hangup_after=20)
        time.sleep(1)
    assert r.answered and desk.calls_received() == 1
    wait_idle(assistant.store)
    assert assistant.last_calls()[0]["outcome"] == "transferred"


def say(text: str, after_silence_s: float = 1.0, **kw) -> dict:
    """A reactive caller's turn: spoken once the assistant has been silent for a moment."""
    return dict(audio=caller_voice(text, phone=False), after_silence_s=after_silence_s, **kw)


def caller_turns(call: dict) -> list[str]:
    return [t["text"].lower() for t in call["turns"] if t["speaker"] == "caller" and t["kind"] == "speech"]


def test_a_question_one_second_into_the_greeting_keeps_its_first_words(assistant):
    r = reactive_call([dict(audio=caller_voice("Bonjour, je voudrais les horaires de la piscine.", phone=False),
                            at_s=1.0), say("Non merci, au revoir.")], timeout=60)
    assert r.answered
    wait_idle(assistant.store)
    call = assistant.last_calls()[0]
    said = caller_turns(call)
    assert said and "bonjour" in said[0] and "voudrais" in said[0], said          # from the first word
    bot = [t for t in call["turns"] if t["speaker"] == "assistant" and t["entry_id"]]
    assert bot and bot[0]["entry_id"] == "sport_culture_loisirs.piscine_horaires", said


def test_a_spoken_report_ends_with_a_stored_ticket_read_back(assistant, engines):
    r = reactive_call([say("Il y a un lampadaire en panne dans ma rue."), say("Au douze, rue des Tanneurs."),
                       say("Il est éteint depuis trois jours."), say("Non merci."), say("Oui, c'est bien ça."),
                       say("Non merci, au revoir.")], timeout=150)
    assert r.answered and not r.error, r.error
    wait_idle(assistant.store)
    call = assistant.last_calls()[0]
    rows = list(assistant.store.db.query("select * from reports where call_id = ?", [call["id"]]))
    said = " | ".join(t["text"] for t in call["turns"])
    assert rows and rows[0]["category"] == "eclairage", said
    assert rows[0]["place"] and rows[0]["description"] and not rows[0]["callback"], rows[0]
    ticket = rows[0]["ticket"]
    assert ticket in said
    answer_to_yes = r.steps[4]["end_s"]
    end = heard_text(engines, r.heard, answer_to_yes, r.steps[5]["start_s"])
    assert "enregistr" in end or "signalement" in end, end
    assert call["outcome"] == "answered", said          # "non merci, au revoir", then no satisfaction answer


def test_a_caller_is_oriented_to_the_aids_that_fit_in_under_two_minutes(assistant):
    keys = ["3", "3", "1", "1", "3"]       # retired, 60 or more, alone, under 1 000 euros, home help
    r = reactive_call([say("Bonjour, je voudrais savoir à quoi j'ai droit.")] +
                      [dict(dtmf=k, after_silence_s=1.0) for k in keys] + [say("Non merci, au revoir.")],
                      timeout=240)
    assert r.answered and not r.error, r.error
    wait_idle(assistant.store)
    call = assistant.last_calls()[0]
    said = [t["text"] for t in call["turns"] if t["speaker"] == "assistant"]
    results = [t for t in said if "pourriez avoir droit" in t]
    assert results, said
    assert "autonomie" in results[0] and "RSA" not in results[0], results[0]          # the APA, not the RSA
    assert [t["text"] for t in call["turns"] if t["kind"] == "dtmf"] == keys
    # from the first words to the end of the list of aids (the caller's goodbye comes 1 s after it)
    assert r.steps[-1]["start_s"] - r.steps[0]["start_s"] < 120, r.steps


def test_goodbye_ends_the_call_normally_and_keeps_the_satisfaction(assistant):
    with Desk() as desk:
        r = reactive_call([say("Quels sont les horaires de la mairie ?"), say("Non merci, au revoir."),
                           say("Oui, tout à fait.")], timeout=120)
        time.sleep(1)
    assert r.answered and r.remote_hangup, r.error                   # the assistant ended the call...
    assert desk.calls_received() == 0                                # ...without sending it to the desk
    assert not [s for s in r.steps if s["forced"]], r.steps          # each turn came after the assistant's
    wait_idle(assistant.store)
    call = assistant.last_calls()[0]
    assert call["satisfaction"] == 1 and call["outcome"] == "answered", [t["text"] for t in call["turns"]]
    events = [e["type"] for e in assistant.store.db.query("select type from events where call_id = ?", [call["id"]])]
    assert "silence" not in events, events                           # no reprompt over a reply


def test_caller_hanging_up_mid_answer_leaves_a_complete_record(assistant, pbx):
    audio = speech_at([(11.0, "Comment faire une demande de passeport ?")], 17)
    r = place_call(audio, hangup_after=17)
    assert r.answered and not r.remote_hangup
    wait_idle(assistant.store)
    call = assistant.last_calls()[0]
    assert call["status"] == "ended" and call["end_reason"] == "caller_hangup" and call["ended_at"]
    assert any(t["speaker"] == "caller" for t in call["turns"])
    assert "0 active channels" in pbx.cli("core show channels") and assistant.proc.poll() is None


def test_four_simultaneous_calls_are_all_answered(assistant):
    questions = {"Quels sont les horaires de la piscine ?": "sport_culture_loisirs",
                 "Comment inscrire mon enfant à la cantine ?": "enfance_scolarite",
                 "Je voudrais un acte de naissance.": "etat_civil",
                 "Quels sont les jours de collecte des poubelles ?": "dechets"}
    results = {}

    def call(q):
        results[q] = place_call(speech_at([(11.0, q)], 32), hangup_after=32)

    threads = [threading.Thread(target=call, args=(q,)) for q in questions]
    for t in threads:
        t.start()
        time.sleep(0.3)
    for t in threads:
        t.join()
    assert all(r.answered for r in results.values())
    wait_idle(assistant.store)
    calls = assistant.last_calls(4)
    themes = sorted(t["theme"] for c in calls for t in c["turns"] if t["speaker"] == "assistant" and t["theme"])
    assert themes == sorted(questions.values()), [t["text"] for c in calls for t in c["turns"]]


def test_models_are_warm_before_the_assistant_registers(assistant):
    log = assistant.log.read_text()
    warm, registered = log.find("models warm in"), log.find("registration: 200")
    assert 0 <= warm < registered, log[-2000:]
    parts = json.loads(log[warm:].split("\n")[0].split(" s ", 1)[1].replace("'", '"'))
    assert set(parts) == {"vad", "turn", "asr", "dialogue", "tts"}


def test_an_overloaded_assistant_sends_new_calls_to_the_desk_at_once(assistant, pbx, tmp_path):
    assistant.stop()                   # the same assistant, told it is always overloaded
    busy = Assistant(tmp_path, pbx, env={"IVR_SIP__OVERLOAD_BACKLOG_S": "-1"}).start()
    try:
        with Desk() as desk:
            r = place_call(np.zeros(8 * RATE, np.int16), hangup_after=8)
            time.sleep(1)
        assert r.answered and desk.calls_received() == 1
        call = busy.last_calls()[0]
        assert call["outcome"] == "declined" and call["end_reason"] == "overloaded" and call["status"] == "ended"
    finally:
        busy.stop()
        assistant.start()


def test_a_killed_assistant_fails_over_to_the_desk_then_comes_back(assistant):
    a = assistant                      # last test of the module: it kills the shared assistant
    killer = threading.Timer(8.0, a.stop, args=(signal.SIGKILL,))
    with Desk() as desk:
        killer.start()                 # dies in the middle of the greeting
        r = place_call(np.zeros(20 * RATE, np.int16), hangup_after=20)
        time.sleep(1)
        assert r.answered and desk.calls_received() == 1, "a call in progress must reach the desk"
        r = place_call(np.zeros(8 * RATE, np.int16), hangup_after=8)
        time.sleep(1)
    assert r.answered and desk.calls_received() == 2, "the next call too"
    a.start()
    r = place_call(np.zeros(10 * RATE, np.int16), hangup_after=10)
    assert r.answered and rms_dbfs(r.heard[: 6 * RATE]) > -40          # the assistant greets again
    wait_idle(a.store)
    assert a.store.call(a.store.recent_calls(1)[0]["id"])["transport"] == "sip"
    assert not list(a.store.db.query("select id from calls where status = 'active'"))
