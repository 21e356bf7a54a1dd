"""A reactive test caller: a real SIP phone (pjsua2) that talks as people do.

    python tests/reactive_caller.py SPEC.json OUTDIR

SPEC: {"extension": "100", "sip_port": N, "rtp_port": N (optional), "steps": [...],
       "hangup_after_s": float | null, "timeout_s": float, "noise_dbfs": float | null}
Between steps the caller sends digital silence, or comfort noise at "noise_dbfs" (white, RMS).
Each step is {"audio": "x.wav"} (mono 8 kHz 16-bit) or {"dtmf": "0"}, plus when it starts:
  "at_s": t             t seconds after the answer, whatever is heard (over the greeting, say);
  "after_silence_s": s  once the assistant has spoken (>= 300 ms above -45 dBFS) since the previous
                        step ended, then stayed silent s seconds; "max_wait_s" (30) later it
                        starts anyway, marked "forced".
Steps run in order, each after the previous one has finished playing. After the last one the caller
hangs up `hangup_after_s` after the answer (a hard limit: pending steps are dropped), or waits for
the remote BYE; `timeout_s` (from the INVITE) stops everything.

OUTDIR gets heard.wav and sent.wav (8 kHz int16, sample 0 = the answer, one 20 ms frame per
conference-bridge tick, so the timeline is real time) and result.json. Exit status 0 even when the
call failed: result.json says so.

A separate process because pjsua2 is one library instance per process, and the assistant under test
is another one: a crash here must not take the test runner down.
"""
from __future__ import annotations

import gc
import json
import queue
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import soundfile as sf
import pjsua2 as pj

RATE, FRAME = 8000, 160                      # 8 kHz, 20 ms
TICK = FRAME / RATE
SILENCE_DB = -45.0                           # below: the assistant is silent
SPOKEN_FRAMES = 15                           # 300 ms above it: the assistant has spoken
ZERO = np.zeros(FRAME, np.int16)


def dbfs(pcm: np.ndarray) -> float:
    rms = np.sqrt(np.mean((pcm.astype(np.float64) / 32768.0) ** 2))
    return 20 * np.log10(max(rms, 1e-6))


class Script:
    """The caller's state, shared by the media thread (frames, step timing) and the main thread
    (answer, DTMF, hang-up). Time is counted in received frames since the answer: the bridge clock
    that also paces what we send."""

    def __init__(self, steps: list[dict], noise_dbfs: float | None = None):
        self.lock = threading.Lock()
        self.noise = None if noise_dbfs is None else 32768 * 10 ** (noise_dbfs / 20)
        self.rng = np.random.default_rng(0)
        self.steps, self.next = steps, 0
        self.rx, self.tx = [], []                   # one int16 frame per tick
        self.rx_t0 = self.tx_t0 = self.t_answer = None
        self.playing, self.pos = None, 0            # audio of the step being sent
        self.spoken = self.silent = 0               # since the previous step ended
        self.waiting_since = 0.0
        self.records: list[dict] = []
        self.dtmf: queue.Queue = queue.Queue()      # digits for the main thread (pjsua is main-thread-only)

    def now(self) -> float | None:
        if self.t_answer is None or self.rx_t0 is None:
            return None
        return (len(self.rx) - round((self.t_answer - self.rx_t0) / TICK)) * TICK

    def received(self, pcm: np.ndarray) -> None:
        with self.lock:
            if self.rx_t0 is None:
                self.rx_t0 = time.monotonic()
            self.rx.append(pcm)
            t = self.now()
            if t is None or t < 0:
                return
            if self.playing is None:
                loud = dbfs(pcm) > SILENCE_DB
                self.spoken += loud
                self.silent = 0 if loud else self.silent + 1
                self._maybe_start(t)

    def _maybe_start(self, t: float) -> None:
        if self.next >= len(self.steps):
            return
        step = self.steps[self.next]
        forced = False
        if "at_s" in step:
            go = t >= step["at_s"]
        else:
            go = self.spoken >= SPOKEN_FRAMES and self.silent * TICK >= step["after_silence_s"]
            forced = not go and t - self.waiting_since >= step.get("max_wait_s", 30.0)
        if not (go or forced):
            return
        self.records.append({"index": self.next, "start_s": round(t, 3), "end_s": None, "forced": forced})
        self.next += 1
        if "dtmf" in step:
            self.dtmf.put(step["dtmf"])
            # the digits last ~250 ms each on the wire: send silence meanwhile so the next step waits
            self.playing = np.zeros(int(0.25 * RATE) * len(step["dtmf"]), np.int16)
        else:
            self.playing = step["pcm"]
        self.pos = 0

    def requested(self) -> np.ndarray:
        with self.lock:
            if self.tx_t0 is None:
                self.tx_t0 = time.monotonic()
            pcm = ZERO if self.noise is None else \
                np.clip(self.rng.normal(0, self.noise, FRAME), -32768, 32767).astype(np.int16)
            if self.playing is not None:
                pcm = self.playing[self.pos:self.pos + FRAME]
                pcm = np.concatenate([pcm, ZERO[len(pcm):]]) if len(pcm) < FRAME else pcm
                self.pos += FRAME
                if self.pos >= len(self.playing):
                    t = self.now() or 0.0
                    self.records[-1]["end_s"] = round(t + TICK, 3)
                    self.playing, self.spoken, self.silent, self.waiting_since = None, 0, 0, t
            self.tx.append(pcm)
            return pcm

    def done(self) -> bool:
        with self.lock:
            return self.next >= len(self.steps) and self.playing is None

    def timeline(self, frames: list, t0: float | None) -> np.ndarray:
        """The frames from the answer on (zeros before the first frame if media started later)."""
        if self.t_answer is None or t0 is None:
            return np.zeros(0, np.int16)
        off = round((self.t_answer - t0) / TICK)
        frames = frames[off:] if off >= 0 else [ZERO] * -off + frames
        return np.concatenate(frames) if frames else np.zeros(0, np.int16)


class Port(pj.AudioMediaPort):
    def __init__(self, script: Script):
        super().__init__()
        self.script = script

    def onFrameReceived(self, frame):
        pcm = ZERO
        if frame.type == pj.PJMEDIA_FRAME_TYPE_AUDIO and frame.size:
            pcm = np.frombuffer(bytes(frame.buf), dtype="<i2")[:FRAME]
            pcm = np.concatenate([pcm, ZERO[len(pcm):]]) if len(pcm) < FRAME else pcm
        self.script.received(pcm)

    def onFrameRequested(self, frame):
        pcm = self.script.requested()
        frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO
        frame.buf = pj.ByteVector(pcm.astype("<i2").tobytes())
        frame.size = FRAME * 2


class Call(pj.Call):
    def __init__(self, account, script: Script):
        super().__init__(account)
        self.script, self.port, self.media = script, None, None
        self.answered = self.disconnected = self.we_hung_up = False
        self.t_end = None
        self.reason = ""

    def onCallState(self, prm):
        ci = self.getInfo()
        if ci.state == pj.PJSIP_INV_STATE_CONFIRMED and not self.answered:
            self.answered = True
            self.script.t_answer = time.monotonic()
        elif ci.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.disconnected, self.t_end = True, time.monotonic()
            self.reason = f"{ci.lastStatusCode} {ci.lastReason}"

    def onCallMediaState(self, prm):
        ci = self.getInfo()                         # held: ci.media is a view into it
        for i, mi in enumerate(ci.media):
            if mi.type == pj.PJMEDIA_TYPE_AUDIO and mi.status == pj.PJSUA_CALL_MEDIA_ACTIVE and self.port is None:
                self.media = self.getAudioMedia(i)
                fmt = pj.MediaFormatAudio()
                fmt.init(pj.PJMEDIA_FORMAT_PCM, RATE, 1, 20000, 16)
                self.port = Port(self.script)
                self.port.createPort("caller", fmt)
                self.media.startTransmit(self.port)
                self.port.startTransmit(self.media)

    def end(self) -> None:
        if not self.disconnected and not self.we_hung_up:
            self.we_hung_up = True
            self.hangup(pj.CallOpParam(True))


def run(spec: dict, out: Path) -> dict:
    steps = []
    for s in spec["steps"]:
        s = dict(s)
        if "audio" in s:
            pcm, rate = sf.read(s["audio"], dtype="int16")
            if rate != RATE or pcm.ndim != 1:
                raise ValueError(f"{s['audio']}: need mono {RATE} Hz, got {rate} Hz, shape {pcm.shape}")
            s["pcm"] = pcm
        steps.append(s)
    script = Script(steps, spec.get("noise_dbfs"))
    result = {"answered": False, "remote_hangup": False, "duration_s": 0.0, "steps": script.records, "error": None}

    ep = pj.Endpoint()
    ep.libCreate()
    ec = pj.EpConfig()
    ec.uaConfig.threadCnt = 0
    ec.uaConfig.mainThreadOnly = True
    ec.uaConfig.userAgent = "reactive-caller"
    ec.logConfig.level = ec.logConfig.consoleLevel = 1
    ec.medConfig.clockRate = ec.medConfig.sndClockRate = RATE
    ec.medConfig.noVad = True
    ec.medConfig.ecTailLen = 0
    ep.libInit(ec)
    account = call = None
    try:
        ep.audDevManager().setNullDev()
        tc = pj.TransportConfig()
        tc.port, tc.boundAddress = int(spec["sip_port"]), spec.get("bind", "127.0.0.1")
        ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tc)
        ep.libStart()
        ac = pj.AccountConfig()
        ac.idUri = f"sip:{spec.get('from_user', 'caller')}@127.0.0.1"   # the PBX's endpoint, identified by user name
        ac.mediaConfig.transportConfig.boundAddress = spec.get("bind", "127.0.0.1")
        ac.mediaConfig.transportConfig.port = int(spec.get("rtp_port") or 0)
        account = pj.Account()
        account.create(ac)
        call = Call(account, script)
        t_start = time.monotonic()
        call.makeCall(f"sip:{spec['extension']}@{spec.get('target', '127.0.0.1:5060')}", pj.CallOpParam(True))
        hangup_after, deadline = spec.get("hangup_after_s"), t_start + float(spec["timeout_s"])
        while not call.disconnected:
            ep.libHandleEvents(10)
            while not script.dtmf.empty():
                call.dialDtmf(script.dtmf.get())
            t = time.monotonic()
            if t >= deadline or (call.answered and hangup_after is not None and t - script.t_answer >= hangup_after):
                call.end()
                if t >= deadline + 5:               # no answer to our BYE/CANCEL
                    break
        result["answered"] = call.answered
        result["remote_hangup"] = call.answered and call.disconnected and not call.we_hung_up
        if call.answered:
            result["duration_s"] = round((call.t_end or time.monotonic()) - script.t_answer, 3)
        elif call.disconnected:
            result["error"] = f"not answered: {call.reason}"
    except Exception:
        result["error"] = traceback.format_exc(limit=3)
    finally:
        # every Call and port goes before libDestroy, or the process aborts
        if call is not None:
            if call.port is not None and call.media is not None:
                try:
                    call.media.stopTransmit(call.port)
                    call.port.stopTransmit(call.media)
                except pj.Error:
                    pass
            for _ in range(20):
                ep.libHandleEvents(10)
            port, call.port, call.media = call.port, None, None
            del port
            del call
        if account is not None:
            account.shutdown()
            del account
        gc.collect()
        heard, sent = script.timeline(script.rx, script.rx_t0), script.timeline(script.tx, script.tx_t0)
        ep.libDestroy()
    n = int(result["duration_s"] * RATE)            # frames after the call ended are not the call
    sf.write(out / "heard.wav", heard[:n], RATE, subtype="PCM_16")
    sf.write(out / "sent.wav", sent[:n], RATE, subtype="PCM_16")
    return result


def main() -> int:
    spec, out = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    try:
        result = run(spec, out)
    except Exception:
        result = {"answered": False, "remote_hangup": False, "duration_s": 0.0, "steps": [],
                  "error": traceback.format_exc(limit=3)}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
