"""`ivr serve`'s /metrics (Prometheus text format) and /health: the exposition parses strictly, and
its figures follow a real call through Asterisk (SIPp caller, SIPp desk) and agree with the call's
record."""
from __future__ import annotations

import json
import os
import re
import threading
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ivr.monitoring import Metrics, transfer_reason
from tests.conftest import free_port

RATE = 8000
SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"'
                    r'(,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*")*\})? (-?[0-9.e+-]+|\+Inf|-Inf|NaN)$')
META = re.compile(r"^# (HELP [a-zA-Z_:][a-zA-Z0-9_:]* .+|TYPE [a-zA-Z_:][a-zA-Z0-9_:]* (counter|gauge|histogram))$")


def parse(text: str) -> dict:
    """{(sample name, frozenset of labels): value}, after a strict check of every line, and with
    prometheus_client's own parser agreeing."""
    assert text.endswith("\n")
    for line in text.splitlines():
        assert SAMPLE.match(line) or META.match(line), f"not Prometheus 0.0.4 text: {line!r}"
    samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_the_exposition_is_strict_prometheus_text_with_cumulative_buckets():
    m = Metrics()
    m.count_call("answered")
    m.count_transfer(transfer_reason("touche 0 ; dit : bonjour"))
    m.count_error("session")
    for total in (0.3, 0.9, 1.2, 12.0):
        m.observe_turn(total, total / 2)
    text = m.render({"calls_in_progress": 2, "registered": True, "code": 200, "asr_backlog_s": 0.5,
                     "disk_free_bytes": 10, "disk_size_bytes": 100})
    s = parse(text)
    assert value(s, "ivr_calls_total", outcome="answered") == 1 and value(s, "ivr_calls_total", outcome="declined") == 0
    assert value(s, "ivr_transfers_total", reason="person") == 1
    assert value(s, "ivr_errors_total", component="session") == 1
    assert value(s, "ivr_calls_in_progress") == 2 and value(s, "ivr_sip_registered") == 1
    buckets = [(float(dict(k[1])["le"]), v) for k, v in s.items() if k[0] == "ivr_turn_latency_seconds_bucket"]
    counts = [v for _, v in sorted(buckets)]
    assert counts == sorted(counts) and counts[-1] == 4          # cumulative, +Inf holds every turn
    assert value(s, "ivr_turn_latency_seconds_bucket", le="1.0") == 2
    assert value(s, "ivr_turn_latency_seconds_count") == 4
    assert value(s, "ivr_turn_latency_seconds_sum") == pytest.approx(14.4)
    assert "# TYPE ivr_turn_latency_seconds histogram" in text and "# TYPE ivr_calls_total counter" in text


def test_transfer_reasons_are_a_few_fixed_labels():
    assert transfer_reason("demande à parler à un agent ; dit : un agent") == "person"
    assert transfer_reason("demande le service urbanisme ; dit : ...", "220") == "service"
    assert transfer_reason("incompréhension répétée ; dit : ...") == "not_understood"
    assert transfer_reason("erreur technique") == "error"
    assert transfer_reason("appelant silencieux") == "silence"
    assert transfer_reason("n'importe quoi") == "other"


# --- a real assistant -------------------------------------------------------------------------------
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="real calls need root (chroot, tcpdump)")


@pytest.fixture(scope="module")
def serve(pbx, tmp_path_factory):
    from tests.sipcall import Assistant

    port = free_port()
    a = Assistant(tmp_path_factory.mktemp("monitored"), pbx, env={"IVR_MONITORING__PORT": str(port)}).start()
    a.url = f"http://127.0.0.1:{port}"
    yield a
    a.stop()


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@needs_root
def test_a_real_call_moves_the_figures_as_its_record_says(serve):
    from tests.sipcall import Desk, place_call
    from tests.test_calls import speech_at, wait_idle

    code, body = get(serve.url + "/health")
    health = json.loads(body)
    assert code == 200 and health["ok"] and health["registered"] and health["registration"]["code"] == 200, health
    assert health["calls_in_progress"] == 0 and health["disk"]["free_bytes"] > 0 and health["uptime_s"] > 0
    code, text = get(serve.url + "/metrics")
    before = parse(text)
    assert value(before, "ivr_sip_registered") == 1 and value(before, "ivr_sip_registration_status_code") == 200

    # a question, then key 0 for a person: the desk takes the call
    audio = speech_at([(10.0, "Quels sont les horaires de la mairie ?")], 30)
    during = []
    with Desk():
        t = threading.Thread(target=lambda: during.append(place_call(audio, dtmf=[(22.0, "0")], hangup_after=30)))
        t.start()
        in_progress = 0.0
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline and not in_progress:
            in_progress = value(parse(get(serve.url + "/metrics")[1]), "ivr_calls_in_progress")
            time.sleep(0.5)
        t.join(60)
    assert during and during[0].answered
    assert in_progress == 1
    wait_idle(serve.store)
    call = serve.last_calls()[0]
    after = parse(get(serve.url + "/metrics")[1])
    moved = {o: value(after, "ivr_calls_total", outcome=o) - value(before, "ivr_calls_total", outcome=o)
             for o in ("answered", "transferred", "message", "abandoned", "error", "declined")}
    assert moved == {o: int(o == call["outcome"]) for o in moved}, (moved, call["outcome"])
    assert call["outcome"] == "transferred", [(t["speaker"], t["text"]) for t in call["turns"]]
    assert value(after, "ivr_transfers_total", reason="person") - value(before, "ivr_transfers_total", reason="person") == 1
    caller_turns = [t for t in call["turns"] if t["speaker"] == "caller"]
    turns = value(after, "ivr_turn_latency_seconds_count") - value(before, "ivr_turn_latency_seconds_count")
    assert turns == len(caller_turns) >= 2, [(t["kind"], t["text"]) for t in caller_turns]   # speech and key 0
    spoken = value(after, "ivr_asr_turn_seconds_count") - value(before, "ivr_asr_turn_seconds_count")
    assert spoken == sum(t["kind"] == "speech" for t in caller_turns) >= 1
    assert value(after, "ivr_asr_queue_wait_seconds_count") - value(before, "ivr_asr_queue_wait_seconds_count") == spoken
    waited = value(after, "ivr_turn_latency_seconds_sum") - value(before, "ivr_turn_latency_seconds_sum")
    assert 0 < waited < 10 * turns
    assert value(after, "ivr_calls_in_progress") == 0
    health = json.loads(get(serve.url + "/health")[1])
    assert health["calls_in_progress"] == 0 and health["errors"]["recent"] == 0, health


@needs_root
def test_the_listener_goes_with_the_assistant(serve):
    serve.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(serve.url + "/health", timeout=3)
