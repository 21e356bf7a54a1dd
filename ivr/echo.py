"""How loud the line's echo of our own voice is, measured by cross-correlation.

While the assistant speaks, what comes back from the caller's side is the caller, the line's echo of
our voice, or both. A fixed guard ("quieter than our voice minus 15 dB is echo") mutes a caller who
talks over a prompt at a normal level. The echo is a delayed, attenuated copy of what we played, and
the caller is not correlated with it: the least-squares gain of our output at the best delay measures
the echo alone, even while the caller talks.
"""
from __future__ import annotations

from collections import deque

import numpy as np


class EchoMeter:
    """Feed each 20 ms frame received and the one played at the same tick; `echo_db` is the echo's
    level relative to our voice (dB, e.g. -12), or None until our voice has been heard long enough."""

    def __init__(self, rate: int = 8000, window_s: float = 0.5, max_delay_s: float = 0.4,
                 every_s: float = 0.25, keep: int = 8, first_window_s: float = 0.3, first_delay_s: float = 0.15):
        self.win, self.delay = int(rate * window_s), int(rate * max_delay_s)
        # a first, shorter measurement ~0.45 s into our first prompt: until then only the fixed guard
        # tells the echo from the caller, and a loud echo of "Bonjour" could pass for a barge-in
        self.first_win, self.first_delay = int(rate * first_window_s), int(rate * first_delay_s)
        self.every = int(rate * every_s)
        self._in: deque[np.ndarray] = deque()
        self._out: deque[np.ndarray] = deque()
        self._n_in = self._n_out = self._since = 0
        self._estimates: deque[float] = deque(maxlen=keep)   # the last few seconds' measurements

    @property
    def echo_db(self) -> float | None:
        return max(self._estimates) if self._estimates else None

    def update(self, received: np.ndarray, played: np.ndarray) -> None:
        self._push(self._in, received, "_n_in", self.win)
        self._push(self._out, played, "_n_out", self.win + self.delay)
        self._since += len(received)
        if self._since >= self.every and self._window() >= self.first_win:
            self._since = 0
            db = self._measure()
            if db is not None:
                self._estimates.append(db)

    def _push(self, q: deque, frame: np.ndarray, count: str, limit: int) -> None:
        q.append(frame.astype(np.float64))
        setattr(self, count, getattr(self, count) + len(frame))
        while getattr(self, count) - len(q[0]) >= limit:
            setattr(self, count, getattr(self, count) - len(q.popleft()))

    def _window(self) -> int:
        return min(self.win, self._n_in, self._n_out - self.first_delay)

    def _measure(self) -> float | None:
        win = self._window()
        delay = min(self.delay, self._n_out - win)      # shorter while our voice has not played long
        y = np.concatenate(self._in)[-win:]
        x = np.concatenate(self._out)[-(win + delay):]
        if np.sqrt(np.mean(x ** 2)) < 200:          # we barely spoke: nothing to measure
            return None
        n = 1 << int(np.ceil(np.log2(len(x) + len(y))))
        corr = np.fft.irfft(np.fft.rfft(x, n) * np.conj(np.fft.rfft(y, n)), n)[: delay + 1]
        # corr[k] = sum_t x[k + t] y[t]: our output k samples into the history, i.e. delay - k ago
        c2 = np.concatenate([[0.0], np.cumsum(x ** 2)])
        energy = c2[win: win + delay + 1] - c2[: delay + 1]
        e_in = float(np.sum(y ** 2))
        ok = energy > 1e-3 * energy.max()
        k = np.flatnonzero(ok)[np.argmax(np.abs(corr[ok]) / np.sqrt(energy[ok]))]
        rho = abs(corr[k]) / np.sqrt(energy[k] * e_in + 1e-9)
        if rho >= 0.5:                              # the input is mostly a copy of our voice: echo
            return 20 * np.log10(max(abs(corr[k]) / energy[k], 1e-4))
        # 30 dB below our voice and not a copy of it, once every delay was searched (an echo may come later)
        if e_in < 1e-3 * energy[k] and delay == self.delay:
            return -60.0
        return None                                 # the caller is talking: no verdict
