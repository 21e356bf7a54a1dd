"""Live figures of `ivr serve`: /metrics (Prometheus text format 0.0.4) and /health (JSON) on a small
HTTP listener of its own ([monitoring]), read by Prometheus and by the console's alert watcher.

The figures live in this process only (they start from zero at each start, as Prometheus counters
may). The call session and the SIP endpoint feed them through the hooks below, which never raise:
a figure must not cost a call."""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# seconds a caller waits for the answer once their turn is over; the ASR part alone
LATENCY_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0)
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)     # for a free ASR replica
OUTCOMES = ("answered", "transferred", "message", "abandoned", "error", "declined")
# why a call went to a person: a few fixed labels (the summaries themselves are free text)
TRANSFER_REASONS = ("person", "service", "not_understood", "silence", "out_of_scope", "report", "error",
                    "max_duration", "other")
_REASON_PREFIXES = (("demande à parler", "person"), ("touche 0", "person"), ("incompréhension", "not_understood"),
                    ("appelant silencieux", "silence"), ("hors compétence", "out_of_scope"),
                    ("signalement", "report"), ("erreur technique", "error"), ("durée maximale", "max_duration"),
                    ("demande ", "service"))


class Histogram:
    def __init__(self, buckets=LATENCY_BUCKETS):
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)      # per bucket, not cumulative (rendered cumulative)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                break
        self.sum += value
        self.count += 1


class Metrics:
    """Counters and histograms of one process, thread-safe."""

    def __init__(self, error_window_s: float = 900.0):
        self._lock = threading.Lock()
        self.started = time.time()
        self.calls = dict.fromkeys(OUTCOMES, 0)
        self.transfers = dict.fromkeys(TRANSFER_REASONS, 0)
        self.errors: dict[str, int] = {}
        self.error_times: deque[float] = deque(maxlen=10000)
        self.error_window_s = error_window_s
        self.turn_latency = Histogram()
        self.asr_latency = Histogram()
        self.asr_wait = Histogram(WAIT_BUCKETS)

    def count_call(self, outcome: str) -> None:
        with self._lock:
            self.calls[outcome] = self.calls.get(outcome, 0) + 1

    def count_transfer(self, reason: str) -> None:
        with self._lock:
            self.transfers[reason] = self.transfers.get(reason, 0) + 1

    def count_error(self, component: str) -> None:
        with self._lock:
            self.errors[component] = self.errors.get(component, 0) + 1
            self.error_times.append(time.time())

    def observe_turn(self, total_s: float, asr_s: float | None, wait_s: float | None = None) -> None:
        with self._lock:
            self.turn_latency.observe(total_s)
            if asr_s is not None:
                self.asr_latency.observe(asr_s)
            if wait_s is not None:
                self.asr_wait.observe(wait_s)

    def recent_errors(self) -> int:
        since = time.time() - self.error_window_s
        with self._lock:
            return sum(1 for t in self.error_times if t >= since)

    def render(self, live: dict) -> str:
        """The Prometheus text exposition; `live`: figures read at scrape time (see ServeStatus.live)."""
        out: list[str] = []

        def family(name: str, kind: str, text: str) -> None:
            out.append(f"# HELP {name} {text}")
            out.append(f"# TYPE {name} {kind}")

        def sample(name: str, value, labels: dict | None = None) -> None:
            lab = ",".join(f'{k}="{_escape(v)}"' for k, v in (labels or {}).items())
            out.append(f"{name}{{{lab}}} {_num(value)}" if lab else f"{name} {_num(value)}")

        def histogram(name: str, h: Histogram, text: str) -> None:
            family(name, "histogram", text)
            acc = 0
            for bound, n in zip(h.buckets, h.counts):
                acc += n
                sample(f"{name}_bucket", acc, {"le": _num(bound)})
            sample(f"{name}_bucket", h.count, {"le": "+Inf"})
            sample(f"{name}_sum", round(h.sum, 6))
            sample(f"{name}_count", h.count)

        with self._lock:
            family("ivr_calls_in_progress", "gauge", "Calls being answered by the assistant now.")
            sample("ivr_calls_in_progress", live.get("calls_in_progress", 0))
            family("ivr_calls_total", "counter", "Calls ended since the assistant started, by outcome.")
            for outcome, n in sorted(self.calls.items()):
                sample("ivr_calls_total", n, {"outcome": outcome})
            family("ivr_transfers_total", "counter", "Calls put through to a person (escalations), by reason.")
            for reason, n in sorted(self.transfers.items()):
                sample("ivr_transfers_total", n, {"reason": reason})
            family("ivr_errors_total", "counter", "Errors logged by the assistant, by component.")
            for component, n in sorted(self.errors.items()):
                sample("ivr_errors_total", n, {"component": component})
            histogram("ivr_turn_latency_seconds", self.turn_latency,
                      "From the end of a caller's turn to the first audio of the answer.")
            histogram("ivr_asr_turn_seconds", self.asr_latency,
                      "From the end of a caller's speech to its transcript: the ASR queue wait and the decoding.")
            histogram("ivr_asr_queue_wait_seconds", self.asr_wait,
                      "How long a caller's utterance waited for a free ASR replica.")
        family("ivr_asr_backlog_seconds", "gauge", "Estimated wait for a free ASR replica for a new utterance.")
        sample("ivr_asr_backlog_seconds", round(live.get("asr_backlog_s", 0.0), 3))
        family("ivr_asr_jobs", "gauge", "Transcriptions waiting or running.")
        sample("ivr_asr_jobs", live.get("asr_jobs", 0))
        family("ivr_sip_registered", "gauge", "1 when the assistant is registered with the PBX.")
        sample("ivr_sip_registered", int(bool(live.get("registered"))))
        family("ivr_sip_registration_status_code", "gauge", "SIP status code of the last registration answer (0: none yet).")
        sample("ivr_sip_registration_status_code", live.get("code") or 0)
        family("ivr_disk_free_bytes", "gauge", "Free space where the data folder is.")
        sample("ivr_disk_free_bytes", live.get("disk_free_bytes", 0))
        family("ivr_disk_size_bytes", "gauge", "Size of the disk where the data folder is.")
        sample("ivr_disk_size_bytes", live.get("disk_size_bytes", 0))
        family("ivr_start_time_seconds", "gauge", "When the assistant started (Unix time).")
        sample("ivr_start_time_seconds", round(self.started, 3))
        return "\n".join(out) + "\n"


def _num(value) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return repr(value) if value != int(value) or abs(value) >= 1e15 else f"{value:.1f}"
    return str(value)


def _escape(value) -> str:
    return str(value).replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


METRICS = Metrics()


# --- hooks (ivr/session.py, ivr/sip.py) ----------------------------------------------------------
def transfer_reason(summary: str, extension: str | None = None) -> str:
    if extension:
        return "service"
    s = (summary or "").strip().lower()
    return next((label for prefix, label in _REASON_PREFIXES if s.startswith(prefix)), "other")


def on_session_event(session, type_: str, data: dict) -> None:
    """Every CallSession event passes here; only a transfer and the end of a call count."""
    if type_ not in ("transfer", "hangup"):
        return
    try:
        if type_ == "transfer":
            METRICS.count_transfer(transfer_reason(data.get("summary", ""), getattr(session, "_transfer_to", None)))
        else:
            METRICS.count_call(getattr(session, "outcome", "") or "abandoned")
    except Exception:               # a figure must never cost a call
        log.debug("metrics hook failed", exc_info=True)


def on_turn(latency: dict) -> None:
    """A caller's turn answered: latency (ms) as CallSession keeps it (asr, dialogue, tts_first)."""
    if "dialogue" not in latency:   # the greeting, a reprompt: no caller waited
        return
    try:
        asr = latency.get("asr")
        total = (float(asr or 0) + float(latency["dialogue"]) + float(latency.get("tts_first") or 0)) / 1000
        wait = latency.get("asr_wait")
        METRICS.observe_turn(total, float(asr) / 1000 if asr is not None else None,
                             float(wait) / 1000 if wait is not None else None)
    except Exception:
        log.debug("metrics hook failed", exc_info=True)


def on_call_declined() -> None:
    METRICS.count_call("declined")


class ErrorCounter(logging.Handler):
    """Counts what the process logs at ERROR and above, by component (ivr.session -> session)."""

    def __init__(self, metrics: Metrics):
        super().__init__(logging.ERROR)
        self.metrics = metrics

    def emit(self, record: logging.LogRecord) -> None:
        parts = record.name.split(".")
        self.metrics.count_error(parts[1] if parts[0] == "ivr" and len(parts) > 1 else parts[0])


# --- the listener --------------------------------------------------------------------------------
def disk_usage(folder) -> tuple[int, int]:
    """(free, size) bytes of the disk holding `folder` (or its nearest existing parent)."""
    from pathlib import Path

    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


class ServeStatus:
    """What the listener reports of a running SipServer (read from its thread: plain attribute reads)."""

    def __init__(self, cfg, server, metrics: Metrics = METRICS):
        self.cfg, self.server, self.metrics = cfg, server, metrics

    def live(self) -> dict:
        s = self.server
        code, reason = getattr(s, "last_registration", (None, ""))
        transcriber = getattr(getattr(s, "engines", None), "transcriber", None)
        free, size = disk_usage(self.cfg.data_dir)
        return {"registered": s.registered.is_set(), "code": code, "reason": reason,
                "stopping": s.stopping.is_set(), "calls_in_progress": len(s.calls),
                "asr_backlog_s": float(transcriber.backlog_s()) if transcriber else 0.0,
                "asr_jobs": int(getattr(transcriber, "_queued", 0)), "disk_free_bytes": free, "disk_size_bytes": size}

    def health(self) -> dict:
        live = self.live()
        m = self.metrics
        ok = live["registered"] and not live["stopping"]
        return {"ok": ok, "pid": os.getpid(), "registered": live["registered"],
                "registration": {"code": live["code"], "reason": live["reason"]},
                "calls_in_progress": live["calls_in_progress"], "uptime_s": round(time.time() - m.started, 1),
                "asr_backlog_s": round(live["asr_backlog_s"], 3),
                "disk": {"free_bytes": live["disk_free_bytes"], "size_bytes": live["disk_size_bytes"],
                         "free_pct": round(100 * live["disk_free_bytes"] / live["disk_size_bytes"], 1)
                         if live["disk_size_bytes"] else 0.0},
                "errors": {"total": sum(m.errors.values()), "recent": m.recent_errors(),
                           "window_s": int(m.error_window_s)}}


def make_listener(bind: str, port: int, status) -> ThreadingHTTPServer:
    """GET /metrics and /health; `status` has live() and health() (ServeStatus)."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "ivr-serve"

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            try:
                if path == "/metrics":
                    body, ctype, code = METRICS.render(status.live()).encode(), CONTENT_TYPE, 200
                elif path == "/health":
                    h = status.health()
                    body, ctype = json.dumps(h, ensure_ascii=False).encode(), "application/json"
                    code = 200 if h["ok"] else 503     # a plain HTTP checker sees the state too
                else:
                    body, ctype, code = b"not found\n", "text/plain", 404
            except Exception:
                log.exception("monitoring: %s failed", path)
                body, ctype, code = b"error\n", "text/plain", 500
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):      # a scrape every 15 s would fill the log
            pass

    httpd = ThreadingHTTPServer((bind, port), Handler)
    httpd.daemon_threads = True
    return httpd


def start_monitoring(cfg, server) -> ThreadingHTTPServer | None:
    """In `ivr serve`: count logged errors, and serve /metrics and /health ([monitoring]). A port
    already taken is logged and the assistant goes on answering calls without it."""
    mcfg = cfg.get("monitoring", {})
    METRICS.error_window_s = float(cfg.get("alerts", {}).get("errors_window_min", 15)) * 60
    if not any(isinstance(h, ErrorCounter) for h in logging.getLogger().handlers):
        logging.getLogger().addHandler(ErrorCounter(METRICS))
    if not mcfg.get("enabled", True):
        return None
    bind, port = str(mcfg.get("bind", "127.0.0.1")), int(mcfg.get("port", 9108))
    try:
        httpd = make_listener(bind, port, ServeStatus(cfg, server))
    except OSError as exc:
        log.warning("monitoring: cannot listen on %s:%s (%s): no /metrics nor /health", bind, port, exc)
        return None
    threading.Thread(target=httpd.serve_forever, name="monitoring", daemon=True).start()
    log.info("monitoring on http://%s:%s/metrics and /health", bind, port)
    return httpd
