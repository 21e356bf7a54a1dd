"""`ivr serve`: the assistant as a SIP endpoint (pjsua2) registered with Asterisk.

pjsua2 runs with threadCnt=0 and mainThreadOnly: every SIP action happens on the thread that calls
libHandleEvents. Media callbacks arrive on the conference-bridge thread and only move 20 ms frames in
and out of the CallSession (no ASR/TTS there). Transfers and hang-ups requested by a session are
queued to the main thread.
"""
from __future__ import annotations

import functools
import gc
import logging
import queue
import re
import signal
import threading
import time
import unicodedata
from urllib.parse import quote

import numpy as np

from ivr.communes import commune_for

log = logging.getLogger(__name__)


def _pj():
    try:
        import pjsua2
    except ImportError:
        raise RuntimeError("le module pjsua2 est absent : lancez scripts/setup.sh --with-telephony "
                           "(ou scripts/build_pjsua2.sh)") from None
    return pjsua2


def ascii_header(text: str, limit: int = 200) -> str:
    """SIP header values must be plain ASCII on one line."""
    t = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return " ".join(t.replace('"', "'").split())[:limit]


def returned_call(invite: str) -> dict | None:
    """What the dialplan says in X-Mairie-Retour when a desk or service did not take a transferred
    caller: "poste=220;statut=BUSY;" then the transfer's own Refer-To (with ivr-call=<call id>)."""
    m = re.search(r"^X-Mairie-Retour:\s*(.*)$", invite, re.M | re.I)
    if not m:
        return None
    value = m.group(1).strip()
    get = lambda key: (re.search(rf"(?:^|;){key}=([\w-]+)", value) or [None, ""])[1]  # noqa: E731
    return {"extension": get("poste"), "status": get("statut").upper(), "call": get("ivr-call") or None}


_failed_at: dict[str, float] = {}


def _never_raises(fn):
    """A pjsua2 callback: an exception must not leave it. SWIG would turn it into a C++ exception
    thrown through pjsip's C code (undefined behaviour: a crash later, elsewhere). Logged instead,
    once per 10 s per callback (the media ones run 50 times a second)."""
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except Exception:
            now = time.monotonic()
            if now - _failed_at.get(fn.__name__, -1e9) >= 10.0:
                _failed_at[fn.__name__] = now
                log.exception("SIP callback %s failed", fn.__name__)
    return wrapper


def last_try(invite: str) -> bool:
    """The dialplan rings several workers one after the other (X-Mairie-Essai: 2/3): is this the last?
    Only the last one records a call it declines, so that every call has one record."""
    m = re.search(r"^X-Mairie-Essai:\s*(\d+)/(\d+)", invite, re.M | re.I)
    return not m or int(m.group(1)) >= int(m.group(2))


def dialled_number(invite: str) -> str:
    """The public number the caller dialled, which the dialplan passes in X-Mairie-Numero."""
    m = re.search(r"^X-Mairie-Numero:\s*([+\w.-]*)\s*$", invite, re.M | re.I)
    return m.group(1) if m else ""


class SipServer:
    def __init__(self, cfg, engines):
        self.cfg = cfg
        self.sip = cfg["sip"]
        self.engines = engines
        self.pj = _pj()
        self.commands: queue.Queue = queue.Queue()
        self.calls: dict[int, "object"] = {}
        self.registered = threading.Event()
        self.stopping = threading.Event()
        from ivr.sdnotify import Notifier

        self.notifier = Notifier()
        self.media_tick = time.monotonic()     # last 20 ms frame moved by the conference bridge
        self.fresh_contact: str | None = "register"

    # --- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        pj = self.pj
        self.ep = pj.Endpoint()
        self.ep.libCreate()
        ec = pj.EpConfig()
        ec.uaConfig.threadCnt = 0
        ec.uaConfig.mainThreadOnly = True
        ec.uaConfig.userAgent = "ivr-mairie"
        ec.uaConfig.maxCalls = int(self.sip["max_calls"]) + 2   # pjsua's default is 4; we refuse beyond max_calls
        ec.logConfig.level = 1
        ec.logConfig.consoleLevel = 1
        # built without resampling: the conference bridge runs at the telephone rate
        ec.medConfig.clockRate = int(self.cfg["audio"]["sample_rate"])
        ec.medConfig.sndClockRate = int(self.cfg["audio"]["sample_rate"])
        ec.medConfig.noVad = True
        ec.medConfig.ecTailLen = 0
        self.ep.libInit(ec)
        self.ep.audDevManager().setNullDev()
        tc = pj.TransportConfig()
        tc.port = int(self.sip["port"])
        tc.boundAddress = self.sip["bind"]
        tls = self.sip["transport"] == "tls"
        if tls:
            # SIP over TLS; the PBX's certificate is checked when a CA (or its own certificate) is given
            tc.tlsConfig.method = pj.PJSIP_TLSV1_2_METHOD
            if self.sip["tls_ca_file"]:
                tc.tlsConfig.CaListFile = self.sip["tls_ca_file"]
                tc.tlsConfig.verifyServer = True
        try:
            self.ep.transportCreate(pj.PJSIP_TRANSPORT_TLS if tls else pj.PJSIP_TRANSPORT_UDP, tc)
        except pj.Error as exc:
            self.ep.libDestroy()
            raise RuntimeError(f"port SIP {self.sip['bind']}:{self.sip['port']} indisponible (déjà utilisé ?) : "
                               f"{exc.reason}") from None
        self.ep.libStart()
        ac = pj.AccountConfig()
        host = self.sip["registrar"].split(":", 1)[1].split(":")[0]
        ac.idUri = f"sip:{self.sip['user']}@{host}"
        ac.regConfig.registrarUri = self.sip["registrar"]
        ac.regConfig.timeoutSec = 120
        ac.regConfig.retryIntervalSec = 3
        ac.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", self.sip["user"], 0, sip_password(self.cfg)))
        ac.mediaConfig.transportConfig.boundAddress = self.sip["bind"]
        if tls:
            # the audio too: SRTP or no call (its keys travel in the TLS signalling)
            ac.mediaConfig.srtpUse = pj.PJMEDIA_SRTP_MANDATORY
            ac.mediaConfig.srtpSecureSignaling = 1
        self.account = _make_account(self)
        self.account.create(ac)
        log.info("SIP endpoint on %s:%s, registering %s at %s", self.sip["bind"], self.sip["port"], ac.idUri,
                 self.sip["registrar"])

    def run(self, duration: float | None = None) -> None:
        import faulthandler
        import sys

        from ivr.doctor import write_serve_status

        end = time.monotonic() + duration if duration else None
        armed = written = 0.0
        stalled = False
        # a SIP loop that stops turning is a hang: every thread's stack goes to the log (a C-level
        # timer, which works even if Python itself is stuck), before the watchdog's kill if it has one
        hang_s = 0.8 * 3 * self.notifier.watchdog_s or 30.0
        # pj objects (a call's media port) must be freed on this thread, the one pjsip knows: the
        # garbage collector, run on a call's worker thread, freed one there and crashed the process
        # (a segfault under load). So it runs here only: the young objects every second, all of
        # them every 5 minutes; what the start-up made is set aside (gc.freeze) to keep that short.
        gc.collect()
        gc.freeze()
        gc.disable()
        collected = full = time.monotonic()
        while not self.stopping.is_set() and (end is None or time.monotonic() < end):
            self.ep.libHandleEvents(10)
            self._run_commands()
            if time.monotonic() - collected >= 1.0:
                everything = time.monotonic() - full >= 300.0
                gc.collect(2 if everything else 1)
                collected = time.monotonic()
                full = collected if everything else full
            if time.monotonic() - written > 5.0:
                # `ivr doctor` takes a status older than 30 s for a hung assistant
                write_serve_status(self.cfg, self.registered.is_set(), *getattr(self, "last_registration", (None, "")))
                written = time.monotonic()
            if self.media_alive():
                # systemd restarts an assistant that stops pinging: a dead SIP loop or a stuck media path
                self.notifier.ping()
                stalled = False
            elif not stalled:
                stalled = True
                log.error("media path stalled: no frame for %.1f s (%s); every thread's stack follows",
                          time.monotonic() - self.media_tick, ", ".join(
                              f"call {pid} port={c.port is not None} done={c.done}" for pid, c in self.calls.items()))
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            if time.monotonic() - armed > 1.0:
                faulthandler.dump_traceback_later(hang_s, exit=False, file=sys.stderr)
                armed = time.monotonic()
        faulthandler.cancel_dump_traceback_later()
        gc.unfreeze()                       # the start-up's pj objects are freed before libDestroy too
        self.shutdown()
        gc.enable()

    def media_alive(self) -> bool:
        """No call has audio flowing, or the bridge moved a frame lately."""
        return not any(c.port is not None and not c.done for c in self.calls.values()) or \
            time.monotonic() - self.media_tick < 2.0

    def _run_commands(self) -> None:
        while True:
            try:
                fn = self.commands.get_nowait()
            except queue.Empty:
                return
            try:
                fn()
            except Exception:
                log.exception("SIP command failed")

    def transfer(self, pid: int, summary: str, extension: str | None = None) -> None:
        call = self.calls.get(pid)
        if call is not None:
            call.transfer(summary, extension=extension)

    def hangup(self, pid: int) -> None:
        """A goodbye: transfer to the dialplan's "fin" extension, which hangs up the caller. A plain
        BYE from us means that the assistant failed, and Asterisk then hands the caller to the desk."""
        call = self.calls.get(pid)
        if call is not None:
            call.transfer("", target=self.sip["end_uri"])

    def shutdown(self) -> None:
        from ivr.doctor import mark_serve_stopped

        log.info("stopping: %d call(s) in progress", len(self.calls))
        for call in list(self.calls.values()):
            call.end_now()
        for _ in range(50):
            self.ep.libHandleEvents(10)
            self._run_commands()
        try:
            self.account.setRegistration(False)
        except Exception:
            pass
        for _ in range(30):
            self.ep.libHandleEvents(10)
        self._run_commands()
        self.calls.clear()
        self.account.shutdown()
        del self.account
        mark_serve_stopped(self.cfg)        # after unregistering, whose onRegState rewrites the status
        time.sleep(0.5)         # sessions finish writing their records
        gc.collect()            # pj objects must go before libDestroy, on this thread
        self.ep.libDestroy()


def _make_account(server: SipServer):
    pj = server.pj

    class Account(pj.Account):
        @_never_raises
        def onRegState(self, prm):
            active = self.getInfo().regIsActive
            ok = prm.code // 100 == 2 and active
            # After a restart Asterisk may still hold our contact as unreachable (qualified while we were
            # down) and send callers to the desk until its next check; a refreshed contact is not checked
            # again, a new one is at once: so the first registration is dropped and made anew.
            if server.fresh_contact == "register" and ok:
                server.fresh_contact = "unregister"
                log.info("registration: %s %s (renewed, so that Asterisk checks the contact now)", prm.code, prm.reason)
                server.commands.put(lambda: self.setRegistration(False))
                return
            if server.fresh_contact == "unregister":
                server.fresh_contact = None
                if not active:
                    server.commands.put(lambda: self.setRegistration(True))
                    return
            (server.registered.set if ok else server.registered.clear)()
            log.info("registration: %s %s", prm.code, prm.reason)
            from ivr.doctor import write_serve_status

            server.last_registration = (int(prm.code), str(prm.reason))
            write_serve_status(server.cfg, ok, *server.last_registration)
            # ready for systemd once registered: before that, calls cannot reach us
            if ok:
                server.notifier.ready(f"enregistré auprès de {server.sip['registrar']}")
            else:
                server.notifier.status(f"non enregistré ({prm.code} {prm.reason})")

        @_never_raises
        def onIncomingCall(self, prm):
            call = _make_call(server, self, prm.callId)
            # several communes on one install: the number dialled picks the caller's
            call.commune = commune_for(server.engines.communes, dialled_number(prm.rdata.wholeMsg)).id \
                if len(server.engines.communes) > 1 else ""
            op = pj.CallOpParam()
            overloaded = server.engines.transcriber.backlog_s() > float(server.sip.get("overload_backlog_s", 3.0))
            if len(server.calls) >= int(server.sip["max_calls"]) or server.stopping.is_set() or overloaded:
                op.statusCode = 486            # busy: the dialplan sends the caller to the desk
                call.answer(op)
                why = "overloaded" if overloaded else "busy"
                if not last_try(prm.rdata.wholeMsg):
                    log.info("call declined (%s): another worker is tried", why)
                    return
                log.warning("call declined (%s): the desk takes it", why)
                store = server.engines.store   # every call leaves a record, declined ones too
                try:
                    store.end_call(store.start_call("sip", call.getInfo().remoteUri, commune=call.commune),
                                   "declined", why, 0.0)
                except Exception as exc:       # a full disk: the caller goes to the desk all the same
                    from ivr.store import storage_failed

                    storage_failed("declined call", exc)
                from ivr.monitoring import on_call_declined

                on_call_declined()
                return
            call.returned = returned_call(prm.rdata.wholeMsg)
            server.calls[call.getId()] = call
            op.statusCode = 200
            call.answer(op)

    return Account()


class _Box:
    """What the media thread may touch: the session only (no pj object, so no pj destructor can run
    on a foreign thread when Python frees it)."""

    session = None


def _make_call(server: SipServer, account, call_id: int):
    pj = server.pj
    from ivr.session import CallSession

    class Port(pj.AudioMediaPort):
        """Moves 20 ms frames between the conference bridge and the session (bridge thread)."""

        def __init__(self, box):
            super().__init__()
            self.box = box

        @_never_raises
        def onFrameReceived(self, frame):
            s = self.box.session
            if s is not None and frame.type == pj.PJMEDIA_FRAME_TYPE_AUDIO and frame.size:
                s.push_audio(np.frombuffer(bytes(frame.buf), dtype="<i2"))

        @_never_raises
        def onFrameRequested(self, frame):
            server.media_tick = time.monotonic()
            s = self.box.session
            pcm = np.zeros(160, np.int16)
            try:
                if s is not None:
                    pcm = s.pull_audio()
            finally:                    # a frame always goes out: silence if the session failed
                frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO
                frame.buf = pj.ByteVector(pcm.astype("<i2").tobytes())
                frame.size = len(pcm) * 2

    class Call(pj.Call):
        def __init__(self):
            super().__init__(account, call_id)
            self.box = _Box()
            self.port = None
            self.media = None
            self.transferring = False
            self.done = False
            self.returned = None         # a caller back from a transfer that failed (X-Mairie-Retour)
            self.commune = ""            # the commune called (several on one install)

        @property
        def session(self):
            return self.box.session

        @_never_raises
        def onCallState(self, prm):
            ci = self.getInfo()
            if ci.state == pj.PJSIP_INV_STATE_CONFIRMED and self.session is None:
                # the session's callbacks hold the call's number, never the pj object
                pid = self.getId()
                try:
                    self.box.session = CallSession(
                        server.engines, transport="sip", caller=ci.remoteUri,     # one worker per call: turns in order
                        on_transfer=lambda summary, ext=None: server.commands.put(lambda: server.transfer(pid, summary, ext)),
                        on_hangup=lambda reason: server.commands.put(lambda: server.hangup(pid)), returned=self.returned,
                        commune=self.commune)
                except Exception:
                    # no session, no voice: our BYE makes the dialplan hand the caller to the desk
                    log.exception("call from %s: the session could not start, the desk takes it", ci.remoteUri)
                    server.commands.put(lambda: server.calls[pid].end_now() if pid in server.calls else None)
                    return
                log.info("call %s answered (%s)", self.session.call_id, ci.remoteUri)
            elif ci.state == pj.PJSIP_INV_STATE_DISCONNECTED:
                self._cleanup(ci.lastReason)

        @_never_raises
        def onCallMediaState(self, prm):
            ci = self.getInfo()
            for i, mi in enumerate(ci.media):
                if mi.type == pj.PJMEDIA_TYPE_AUDIO and mi.status == pj.PJSUA_CALL_MEDIA_ACTIVE and self.port is None:
                    self.media = self.getAudioMedia(i)
                    fmt = pj.MediaFormatAudio()
                    fmt.init(pj.PJMEDIA_FORMAT_PCM, int(server.cfg["audio"]["sample_rate"]), 1, 20000, 16)
                    self.port = Port(self.box)
                    self.port.createPort(f"ivr{self.getId()}", fmt)
                    self.media.startTransmit(self.port)
                    self.port.startTransmit(self.media)

        @_never_raises
        def onDtmfDigit(self, prm):
            if self.session is not None:
                self.session.push_dtmf(prm.digit)

        @_never_raises
        def onCallTransferStatus(self, prm):
            log.info("transfer: %s %s%s", prm.statusCode, prm.reason, " (final)" if prm.finalNotify else "")
            if prm.finalNotify:
                # Asterisk never sends BYE to the transferor: end our own leg
                self.end_now()

        def transfer(self, summary: str, target: str | None = None, extension: str | None = None):
            if self.done or self.transferring:
                return
            self.transferring = True
            cid = self.session.call_id if self.session else "-"
            if target is None:
                # The desk learns why the call came: the Refer-To URI carries the call id and the
                # reason; Asterisk keeps it in SIPREFERTOHDR, the dialplan copies it into X-Mairie-Appel.
                desk = server.sip["desk_uri"]
                if extension:            # a service's own extension, on the same PBX as the desk
                    desk = re.sub(r"^(sips?:)[^@]+@", lambda m: f"{m.group(1)}{extension}@", desk)
                target = (f"{desk};ivr-call={cid}"
                          f";ivr-motif={quote(ascii_header(summary, 100), safe='')}")
            log.info("call %s: transfer to %s", cid, target.split(";")[0])
            try:
                self.xfer(target, pj.CallOpParam(True))
            except pj.Error as exc:
                log.error("call %s: REFER failed (%s): hanging up", cid, exc.reason)
                self.end_now()

        def end_now(self):
            if self.done:
                return
            try:
                op = pj.CallOpParam()
                op.statusCode = 200
                self.hangup(op)
            except Exception:
                self._cleanup("local hangup")

        def _cleanup(self, reason: str):
            if self.done:
                return
            self.done = True
            s, self.box.session = self.box.session, None
            if self.port is not None and self.media is not None:
                try:
                    self.media.stopTransmit(self.port)
                    self.port.stopTransmit(self.media)
                except Exception:
                    pass
            if s is not None and not s.ended:
                s.caller_hung_up() if not self.transferring else s.close("transfer")
            log.info("call ended (%s)", reason)
            pid = self.getId()
            server.commands.put(lambda: server.calls.pop(pid, None))   # freed later, on this thread

    return Call()


def sip_password(cfg) -> str:
    """The password Asterisk knows the assistant by: set in the config, or the generated secret."""
    if cfg["sip"].get("password"):
        return str(cfg["sip"]["password"])
    from ivr.pbx import sip_password_file

    path = sip_password_file(cfg)
    try:
        return path.read_text().strip()
    except OSError:
        raise RuntimeError(f"mot de passe SIP introuvable ({path}) : lancez scripts/asterisk.sh configure") from None


def serve(cfg, duration: float | None = None, clock=None) -> None:
    from ivr.app import build_engines, warm_engines

    from ivr.sdnotify import Notifier

    sip_password(cfg)            # a missing secret is said now, not after loading the models
    loading = threading.Event()
    loading.set()
    Notifier().keep_alive_while(loading)
    try:
        engines = build_engines(cfg, clock=clock)
        warm_engines(engines)        # before registering: the first call is as fast as the tenth
    finally:
        loading.clear()
    from ivr.store import start_daily_purge

    from ivr.communes import retention

    start_daily_purge(engines.store, int(cfg["call"]["retention_days"]), communes=retention(engines.communes))
    from ivr.store import storage_failed

    import socket

    # one name per worker, the same after a restart: its interrupted calls are its own to close
    engines.store.worker = cfg["sip"]["worker_name"] or f"{socket.gethostname()}:{cfg['sip']['port']}"
    try:
        stale = engines.store.close_interrupted("sip")
        if stale:
            log.warning("%d call(s) interrupted by the previous stop were closed in the records", stale)
    except Exception as exc:        # a full disk: calls are answered all the same
        storage_failed("interrupted calls' records", exc)
    from ivr.unserved import start_importing

    start_importing(cfg, engines.store)     # the calls Asterisk sent to the desk while we were away
    from ivr.recording import repair_partial

    repair_partial(engines.recordings_dir, engines.store)   # what a killed assistant had recorded (never raises)
    server = SipServer(cfg, engines)

    def stop(*_):
        server.notifier.stopping()
        server.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    import faulthandler

    faulthandler.register(signal.SIGUSR1, all_threads=True)      # kill -USR1: every thread's stack
    faulthandler.enable(all_threads=True)       # a crash, or the watchdog's SIGABRT: every thread's stack too
    from ivr.monitoring import start_monitoring

    start_monitoring(cfg, server)      # /metrics and /health ([monitoring])
    server.start()
    server.run(duration)
