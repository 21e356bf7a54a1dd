"""Several Asterisk boxes behind one address, for real: Kamailio (Debian's package, configured by
`ivr kamailio config`) in its own network namespace, which is also the router, in front of two
town hall servers (each its Asterisk with Kamailio as its operator, `[trunk] mode = "ip"`, and its
`ivr serve`), each in its namespace; the operator's caller in a fourth."""
from __future__ import annotations

import os
import re
import signal

import pytest

from tests.cluster import NUMBER
from tests.conftest import make_cfg

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and Asterisk need root")


@pytest.fixture(scope="module")
def front(tmp_path_factory):
    from ivr.pbx import render
    from tests.cluster import Kamailio
    from tests.netlab import Lab, LabAsterisk
    from tests.sipcall import Assistant

    base = tmp_path_factory.mktemp("kamailio")
    with Lab() as lab:
        op, edge = lab.netns("op"), lab.netns("edge")
        boxes = [lab.netns("ast1"), lab.netns("ast2")]
        o_addr, e_op = lab.link(op, edge)
        links = [lab.link(edge, ns) for ns in boxes]
        # the edge box routes: media goes straight between the caller and the Asterisk that answered
        edge.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        op.run("ip", "route", "add", "default", "via", e_op)
        for ns, (e_addr, _) in zip(boxes, links):
            ns.run("ip", "route", "add", "default", "via", e_addr)
        kam = Kamailio(edge, base / "kamailio", [e_op, *(e for e, _ in links)], [a for _, a in links])
        stack, pbxs, assistants = [], [], []
        try:
            for i, (ns, (e_addr, a_addr)) in enumerate(zip(boxes, links), 1):
                data = base / f"ast{i}"
                data.mkdir()
                settings = data / "ivr.toml"
                # Kamailio is this Asterisk's operator: calls from its address, no registration
                settings.write_text(f'[trunk]\nmode = "ip"\nserver = "{e_addr}"\nnumbers = ["01 99 47 20 00"]\n'
                                    f'bind = "{a_addr}"\n')
                files = render(make_cfg(data, IVR_CONFIG=settings))
                pbx = LabAsterisk(ns, f"ast{i}", files, password_file=data / "secrets" / "sip_password").start()
                stack.append(pbx)
                pbxs.append(pbx)
                assistants.append(Assistant(data, pbx, netns=ns, env={"IVR_CONFIG": str(settings)}).start())
            yield type("Front", (), dict(lab=lab, op=op, edge=edge, kam=kam, pbxs=pbxs, assistants=assistants,
                                         o_addr=o_addr, e_op=e_op, asterisks=[a for _, a in links]))
        finally:
            for a in assistants:
                a.stop()
            for p in stack:
                p.__exit__(None, None, None)
            kam.stop()


def call(front, steps=(), **kw):
    from tests.sipcall import reactive_call

    return reactive_call(list(steps), extension=NUMBER, netns=front.op, target=f"{front.e_op}:5060",
                         bind=front.o_addr, **kw)


def calls_in(assistant) -> int:
    return assistant.store.db.execute("select count(*) from calls").fetchone()[0]


def test_calls_are_spread_over_both_asterisks(front):
    from tests.test_calls import wait_idle
    from tests.test_trunk import say

    a1, a2 = front.asterisks
    got = front.kam.wait({a1: "AP", a2: "AP"})
    assert got == {a1: "AP", a2: "AP"}, (got, front.kam.log.read_text(errors="replace")[-2000:])
    before = [calls_in(a) for a in front.assistants]
    r = call(front, [say("Quels sont les horaires d'ouverture de la mairie ?")], hangup_after=25, timeout=40)
    assert r.answered and not r.error, r.error
    r2 = call(front, hangup_after=3, timeout=20)
    assert r2.answered and not r2.error, r2.error
    for a in front.assistants:
        wait_idle(a.store)
    after = [calls_in(a) for a in front.assistants]
    assert [x - y for x, y in zip(after, before)] == [1, 1], (before, after)
    # the question went through Kamailio, the answer came back on the media path it does not touch
    turns = [c for a in front.assistants for c in a.last_calls(2) if any(t["speaker"] == "caller" for t in c["turns"])]
    assert turns, [a.last_calls(2) for a in front.assistants]
    said = " ".join(t["text"] for t in turns[0]["turns"] if t["speaker"] == "assistant").lower()
    assert "lundi" in said and re.search(r"\d+ ?h", said), said


def test_one_asterisk_down_new_calls_go_to_the_other(front):
    """A frozen Asterisk (a hung box, or one whose network is gone: no answer at all), then a stopped
    one: callers are answered by the other; the dead one is marked down, and up again once back."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.test_calls import wait_idle

    a1, a2 = front.asterisks
    assert front.kam.wait({a1: "AP", a2: "AP"}) == {a1: "AP", a2: "AP"}
    before = [calls_in(a) for a in front.assistants]
    os.kill(front.pbxs[0].proc.pid, signal.SIGSTOP)
    try:
        # two callers at once, before any probe can have timed out (2 s): one of them is sent to the
        # frozen box, gets no reply within 2 s and is moved to the other
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda _: call(front, hangup_after=3, timeout=30), range(2)))
        assert all(r.answered and not r.error for r in results), [r.error for r in results]
        log = front.kam.log.read_text(errors="replace")
        assert f"Asterisk sip:{a1}:5062 failed (408)" in log, log[-3000:]
        assert front.kam.destinations() == {a1: "IP", a2: "AP"}
        r = call(front, hangup_after=2, timeout=20)
        assert r.answered and not r.error, r.error
        assert front.kam.log.read_text(errors="replace").count("failed (408)") == log.count("failed (408)")
    finally:
        os.kill(front.pbxs[0].proc.pid, signal.SIGCONT)
    wait_idle(front.assistants[1].store)
    after = [calls_in(a) for a in front.assistants]
    assert after[1] - before[1] == 3, (before, after)
    # (woken, that box answers the INVITE it had queued: a call no caller hears, docs/scaling.md)
    assert front.kam.wait({a1: "AP"}).get(a1) == "AP"

    # stopped for good: the probes mark it down, calls go to the other; started again: back
    front.pbxs[0].stop()
    assert front.kam.wait({a1: "IP"}).get(a1) == "IP"
    r = call(front, hangup_after=2, timeout=20)
    assert r.answered and not r.error, r.error
    wait_idle(front.assistants[1].store)
    assert calls_in(front.assistants[1]) - before[1] == 4
    front.pbxs[0].start()
    assert front.kam.wait({a1: "AP"}).get(a1) == "AP"


def test_a_flood_from_one_source_is_ignored(front):
    """A scanner sending OPTIONS as fast as it can: after the first 60 in 2 s, Kamailio stops
    answering that source (and says so in its log)."""
    burst = f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("{front.o_addr}", 0)); s.settimeout(1)
port = s.getsockname()[1]
answered = 0
for i in range(150):
    s.sendto((f"OPTIONS sip:{front.e_op} SIP/2.0\\r\\nVia: SIP/2.0/UDP {front.o_addr}:{{port}};branch=z9hG4bK-flood{{i}}\\r\\n"
              f"From: <sip:scan@{front.o_addr}>;tag=f{{i}}\\r\\nTo: <sip:{front.e_op}>\\r\\nCall-ID: flood{{i}}\\r\\n"
              f"CSeq: 1 OPTIONS\\r\\nMax-Forwards: 70\\r\\nContent-Length: 0\\r\\n\\r\\n").encode(), ("{front.e_op}", 5060))
try:
    while True:
        s.recv(4096); answered += 1
except socket.timeout:
    pass
print(answered)
"""
    answered = int(front.op.run("python3", "-c", burst).stdout.strip())
    assert 20 <= answered <= 100, answered
    assert f"too many requests from {front.o_addr}" in front.kam.log.read_text(errors="replace")
