"""Call recordings written while the call goes on, so that a killed assistant loses at most a second.

A call's recording is a stereo 16-bit WAV (left the caller, right the assistant) written to
`recordings/<call id>.wav.part` about once a second: straight to the operating system, which keeps
it when the process is killed (`kill -9`, a crash). At the end of the call its header gets the
sizes and the file becomes `<call id>.wav`. A `.part` file that no process holds (an flock while it
is written) was left by a process that died: `repair_partial` gives it its sizes and its name at
the next `ivr serve` start, and the call record points to it.

A write that fails (a full disk) is logged and retried at the next flush, from the audio the call
keeps in memory: if space comes back before the call ends, nothing is lost.
"""
from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

HEADER = 44
CHANNELS, WIDTH = 2, 2
FRAME_BYTES = CHANNELS * WIDTH          # one stereo sample


def wav_header(rate: int, data_bytes: int) -> bytes:
    """The canonical 44-byte PCM WAV header (sizes capped at what the format can say)."""
    data_bytes = min(data_bytes, 0xFFFFFFFF - 36)
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVEfmt " +
            struct.pack("<IHHIIHH", 16, 1, CHANNELS, rate, rate * FRAME_BYTES, FRAME_BYTES, 8 * WIDTH) +
            b"data" + struct.pack("<I", data_bytes))


def _interleave(left: np.ndarray, right: np.ndarray) -> bytes:
    n = max(len(left), len(right))
    stereo = np.zeros((n, 2), dtype="<i2")
    stereo[: len(left), 0] = left
    stereo[: len(right), 1] = right
    return stereo.tobytes()


class RecordingWriter:
    """Appends aligned frames of both directions to `<path>.part`; `finish` makes it `<path>`.

    The session keeps every frame in memory (it needs them anyway); the writer only remembers how
    many samples are safely in the file, so a failed write is simply tried again later."""

    def __init__(self, path: Path, rate: int, on_error=None):
        self.path = Path(path)
        self.part = self.path.with_name(self.path.name + ".part")
        self.rate = rate
        self.on_error = on_error            # (what, exception): the session logs and counts it
        self.frames = 0                     # 20 ms frames (of both directions) in the file
        self.samples = 0                    # stereo samples in the file
        self.failures = 0                   # writes that failed (each retried later)
        self.failing = False
        self.closed = False                 # finished: a late frame must not make a new .part
        self._size = 0                      # bytes of the file known good (header + whole samples)
        self._fh = None
        self._lock = threading.Lock()       # the media thread flushes, the call's worker finishes

    def write(self, left: list, right: list, upto: int | None = None) -> bool:
        """Writes frames [written .. upto) of both directions (lists of 20 ms int16 frames of equal
        size; upto=None: all of them, the shorter side padded with silence). False if it failed."""
        with self._lock:
            return False if self.closed else self._write(left, right, upto)

    def _write(self, left: list, right: list, upto: int | None) -> bool:
        end = max(len(left), len(right)) if upto is None else upto
        if end <= self.frames and self._size >= HEADER:
            return True
        cat = lambda frames: np.concatenate(frames) if frames else np.zeros(0, np.int16)  # noqa: E731
        if self._append(_interleave(cat(left[self.frames:end]), cat(right[self.frames:end]))):
            self.frames = max(self.frames, end)
            return True
        return False

    def _append(self, data: bytes) -> bool:
        try:
            if self._fh is None:
                self.part.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(self.part, "wb", buffering=0)
                fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)    # "in use": not to be repaired
                self._size = 0
            if self._size < HEADER:
                self._fh.seek(0)
                self._write_all(wav_header(self.rate, 0))
                self._size = HEADER
            self._fh.seek(self._size)
            self._write_all(data)
            self._size += len(data)
            self.samples += len(data) // FRAME_BYTES
        except OSError as exc:
            self.failures += 1
            if self._fh is not None:
                try:
                    self._fh.truncate(self._size)       # no half sample: a retry appends at a sample
                except OSError:
                    pass
            if not self.failing and self.on_error:
                self.on_error(f"recording {self.part.name} (tried again every second)", exc)
            self.failing = True
            return False
        if self.failing:
            log.info("recording %s: written again (%d failed write(s) made up)", self.part.name, self.failures)
            self.failing = False
        return True

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = self._fh.write(view)
            if not n:
                raise OSError("short write")
            view = view[n:]

    def finish(self, left: list, right: list) -> Path | None:
        """Writes what is left, gives the header its sizes and the file its name. Returns the
        recording (whole or, after writes that kept failing, as far as it got), or None."""
        with self._lock:
            if self.closed:
                return None
            self.closed = True
            complete = self._write(left, right, None)
            if self._fh is None:
                return None
            try:
                self._fh.seek(0)
                self._write_all(wav_header(self.rate, self._size - HEADER))
                os.replace(self.part, self.path)
            except OSError as exc:
                if self.on_error:
                    self.on_error(f"recording {self.path.name}", exc)
                return None
            finally:
                self._fh.close()            # releases the flock
                self._fh = None
            if not complete:
                log.error("disk: recording %s kept %.1f s of the call only", self.path.name,
                          self.samples / self.rate)
            return self.path

    def abandon(self) -> None:
        with self._lock:
            self.closed = True
            if self._fh is not None:
                self._fh.close()
                self._fh = None
            self.part.unlink(missing_ok=True)


def repair_partial(recordings_dir: Path, store=None) -> list[Path]:
    """Recordings left as `.part` by a process that died (none holds their lock): sizes written
    into the header (the data cut to whole samples), renamed `<call id>.wav`, and linked from their
    call record. Returns the repaired files."""
    done = []
    recordings_dir = Path(recordings_dir)
    if not recordings_dir.is_dir():
        return done
    for part in sorted(recordings_dir.glob("*.wav.part")):
        final = part.with_name(part.name[: -len(".part")])
        try:
            with open(part, "r+b") as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue                        # a live call is writing it
                head = fh.read(HEADER)
                size = os.fstat(fh.fileno()).st_size
                rate = struct.unpack("<I", head[24:28])[0] if len(head) == HEADER else 0
                if head[:4] != b"RIFF" or head[8:12] != b"WAVE" or not rate:
                    log.warning("recording %s: no WAV header, removed", part.name)
                    part.unlink(missing_ok=True)
                    continue
                data = (size - HEADER) // FRAME_BYTES * FRAME_BYTES
                fh.truncate(HEADER + data)
                fh.seek(0)
                fh.write(wav_header(rate, data))
                os.replace(part, final)
        except OSError as exc:
            log.error("disk: recording %s could not be repaired (%s)", part.name, exc)
            continue
        call_id = final.name[: -len(".wav")]
        log.warning("recording of interrupted call %s repaired: %.1f s kept", call_id, data / FRAME_BYTES / rate)
        if store is not None:
            try:
                if not store.set_recording(call_id, str(final)):
                    # its record was never written (a full disk): one now, so the console lists it and
                    # the retention period applies to it
                    store.end_call(store.start_call("sip", call_id=call_id), "error", "assistant_restart",
                                   data / FRAME_BYTES / rate, recording=str(final))
            except Exception as exc:            # the file is kept; only its link in the record is missing
                log.error("disk: call %s: recording link not saved (%s)", call_id, exc)
        done.append(final)
    return done
