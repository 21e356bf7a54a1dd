"""Self-test of tests/sipcall.py against the real Asterisk (run as root; not a pytest module):

    .venv/bin/python tests/sipcall_selftest.py

Starts Asterisk and the desk, places real SIPp calls, prints a JSON summary; exit status 0 if
every check passed. Everything it started is stopped."""
from __future__ import annotations

import json
import re
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sipcall as sc  # noqa: E402

checks: dict[str, bool] = {}
timings: dict[str, float] = {}
details: dict[str, object] = {}


def check(name: str, ok: bool) -> None:
    checks[name] = bool(ok)
    print(("ok   " if ok else "FAIL ") + name, flush=True)


def timed(name: str, fn, *args, **kwargs):
    t0 = time.monotonic()
    try:
        return fn(*args, **kwargs)
    finally:
        timings[name] = round(time.monotonic() - t0, 2)


def near_440(audio) -> bool:
    return len(audio) >= sc.RATE and abs(sc.dominant_frequency(audio) - 440) < 10


def main() -> int:
    t_start = time.monotonic()
    ast = sc.Asterisk()
    timed("asterisk_up_s", ast.__enter__)
    started_here = ast.started
    try:
        with sc.Desk() as desk:
            # 1. the desk (200): 3 s of 440 Hz, DTMF 5 at 1.0 s, we hang up after 4 s
            r = timed("call_200_s", sc.place_call, sc.tone(440, 3), extension="200", dtmf=[(1.0, "5")], hangup_after=4)
            check("200: answered", r.answered)
            check("200: we hung up (no remote BYE)", not r.remote_hangup and r.returncode == 0)
            check("200: call lasted ~4 s", abs(r.duration - 4) < 0.5)
            check("200: desk received 1 call", desk.calls_received() == 1)
            heard = desk.heard()
            check("200: desk heard ~440 Hz", len(heard) == 1 and near_440(heard[0]))
            check("200: desk got DTMF 5 (RFC 4733)", desk.dtmf_heard() == [["5"]])

            # 2. the town-hall number (100) with no assistant registered: the dialplan sends it to the desk
            check("100: no assistant registered", "assistant/" not in ast.cli("pjsip show contacts"))
            r = timed("call_100_s", sc.place_call, sc.tone(440, 2), extension="100", hangup_after=2.5)
            check("100: answered", r.answered)
            check("100: desk received 2 calls", desk.calls_received() == 2)
            check("100: desk INVITE from Asterisk", desk.invite_headers()[-1].startswith("INVITE sip:desk@127.0.0.1:5080"))
            check("100: desk heard ~440 Hz", near_440(desk.heard()[-1]))

            # 3. two simultaneous calls to the desk, each on its own ports
            results: list = [None, None]

            def call(i: int) -> None:
                sip, rtp = sc.free_port_pair()
                results[i] = sc.place_call(sc.tone(440, 2), extension="200", hangup_after=3, local_port=sip, rtp_port=rtp)

            threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
            t0 = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            timings["two_parallel_calls_s"] = round(time.monotonic() - t0, 2)
            check("parallel: both answered", all(x is not None and x.answered for x in results))
            check("parallel: desk received 4 calls", desk.calls_received() == 4)
            check("parallel: desk heard ~440 Hz on both legs", all(near_440(a) for a in desk.heard()[-2:]))
            # what the desk got, per call: caller, seconds of audio, dominant Hz, DTMF keys
            details["desk_calls"] = [[re.search(r"^From:\s*(.*)$", m, re.M).group(1), round(len(a) / sc.RATE, 2),
                                      round(sc.dominant_frequency(a)), k]
                                     for m, a, k in zip(desk.invite_headers(), desk.heard(), desk.dtmf_heard())]

        # 4. the desk rings but nobody picks up: the caller CANCELs after `timeout` s, Asterisk cancels the desk.
        # (With no desk at all, Asterisk's INVITE to it would be retransmitted for 32 s, to whatever desk starts next.)
        with sc.Desk(answer=False) as desk:
            r = timed("call_unanswered_s", sc.place_call, sc.tone(440, 1), extension="200", hangup_after=2, timeout=3)
            time.sleep(0.3)
            check("no answer: not answered, CANCEL sent", not r.answered and "\nCANCEL sip:200@" in r.sip_log)
            check("no answer: the desk rang once, answered none, got the CANCEL",
                  len(desk.invite_headers()) == 1 and desk.calls_received() == 0 and "\nCANCEL sip:desk@" in desk.sip_log())

        # 5. the desk hangs up after 2 s and echoes RTP: the caller accepts the BYE and hears itself
        with sc.Desk(echo=True, hangup_after=2) as desk:
            r = timed("call_remote_hangup_s", sc.place_call, sc.tone(440, 3), extension="200", timeout=15)
            check("remote hangup: answered, BYE accepted", r.answered and r.remote_hangup and r.returncode == 0)
            check("remote hangup: after ~2 s", abs(r.duration - 2) < 0.5)
            check("remote hangup: caller heard its echo ~440 Hz", near_440(r.heard))

        # 6. the reactive caller (pjsua2) to an echoing desk: a step at 0.5 s, DTMF at 2 s, then one
        # waiting for speech that never comes (an echo is no speech: it arrives while we talk), forced
        # 1.5 s after the DTMF step ended; we hang up at 5 s
        with sc.Desk(echo=True) as desk:
            r = timed("reactive_call_s", sc.reactive_call, [{"audio": sc.tone(440, 1), "at_s": 0.5}, {"dtmf": "5", "at_s": 2.0},
                      {"audio": sc.tone(660, 0.5), "after_silence_s": 0.5, "max_wait_s": 1.5}], extension="200", hangup_after=5)
            time.sleep(0.3)
            s = r.steps
            check("reactive: answered, we hung up at ~5 s", r.answered and not r.remote_hangup and abs(r.duration - 5) < 0.3)
            check("reactive: steps at 0.5 s, 2.0 s, then forced", len(s) == 3 and abs(s[0]["start_s"] - 0.5) < 0.05
                  and abs(s[1]["start_s"] - 2.0) < 0.05 and s[2]["forced"] and not s[0]["forced"])
            check("reactive: heard its echo ~440 Hz from 0.5 s", near_440(r.heard[int(0.55 * sc.RATE):int(1.55 * sc.RATE)]))
            check("reactive: desk heard ~440 Hz and DTMF 5", near_440(desk.heard()[-1]) and desk.dtmf_heard()[-1] == ["5"])
            details["reactive_steps"] = s
    finally:
        timed("asterisk_down_s", ast.__exit__, None, None, None)
    timings["total_s"] = round(time.monotonic() - t_start, 2)
    print(json.dumps({"passed": all(checks.values()), "checks": checks, "timings": timings, **details,
                      "asterisk_started_here": started_here}, indent=2))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
