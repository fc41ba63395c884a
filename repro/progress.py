"""One progress line for long steps (converting, computing means, preparing ImageNet): count, rate and ETA.

Printed at most every `every` seconds (and at the end), so a million-image job logs a few hundred lines, not a
million. The rate is the mean since the start of this process's work (a resumed job does not count the images
a previous process did, so its ETA is honest).
"""
from __future__ import annotations

import time


def _hms(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    def __init__(self, what: str, total: int, log, *, done: int = 0, unit: str = "images", every: float = 10.0):
        self.what, self.total, self.log, self.unit, self.every = what, int(total), log, unit, every
        self.start_done, self.done = int(done), int(done)
        self.t0 = self.last = time.monotonic()

    def rate(self) -> float:
        dt = time.monotonic() - self.t0
        return (self.done - self.start_done) / dt if dt > 0 else 0.0

    def line(self) -> str:
        r = self.rate()
        eta = _hms((self.total - self.done) / r) if r > 0 else "?"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (f"{self.what}: {self.done}/{self.total} {self.unit} ({pct:.1f}%), {r:.1f} {self.unit}/s, "
                f"elapsed {_hms(time.monotonic() - self.t0)}, ETA {eta}")

    def update(self, done: int, force: bool = False):
        self.done = int(done)
        now = time.monotonic()
        if self.log is not None and (force or now - self.last >= self.every or self.done >= self.total):
            self.last = now
            self.log(self.line())
