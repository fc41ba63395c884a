"""glog's line prefix, as Caffe writes every log line: ``I1206 05:10:11.183481 21712 solver.cpp:239] ``.

Severity letter, MMDD (glog before 0.7; 0.7 prints the year too, ``I20261206``, and Caffe's
tools/extra/parse_log.py reads only the short form, so we write that), local time to the microsecond, the
thread id, the source file:line the message comes from in Caffe (so a line of ours says which Caffe line it
stands for), then the message. :class:`Glog` writes such lines to any number of text streams, flushing each
line (a killed run keeps every line it logged, as glog's INFO file does).
"""
from __future__ import annotations

import threading
import time

SEVERITIES = "IWEF"


def prefix(source: str, severity: str = "I", now: float | None = None, thread_id: int | None = None) -> str:
    """``I1206 05:10:11.183481 21712 solver.cpp:239] `` for a message from Caffe's ``source`` (file:line)."""
    if severity not in SEVERITIES:
        raise ValueError(f"glog severity must be one of {SEVERITIES}, got {severity!r}")
    now = time.time() if now is None else now
    t = time.localtime(now)
    micros = int(round((now - int(now)) * 1e6)) % 1000000
    tid = threading.get_native_id() if thread_id is None else thread_id
    return f"{severity}{t.tm_mon:02d}{t.tm_mday:02d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{micros:06d} " \
           f"{tid:5d} {source}] "


def cfloat(v) -> str:
    """A float as C++'s ``operator<<`` prints it (6 significant digits, %g): what every number in Caffe's log
    looks like."""
    v = float(v)
    if v != v:
        return "nan"
    if v in (float("inf"), float("-inf")):
        return "inf" if v > 0 else "-inf"
    return f"{v:.6g}"


class Glog:
    """Writes glog lines to the given text streams (files are appended to, stderr written as is)."""

    def __init__(self, *streams):
        self.streams = [s for s in streams if s is not None]

    def add(self, stream) -> None:
        self.streams.append(stream)

    def log(self, source: str, message: str, severity: str = "I") -> None:
        head = prefix(source, severity)
        # A message of several lines (a prototxt, say) is one glog record: its later lines carry no prefix,
        # as in Caffe's own log.
        text = head + message.rstrip("\n") + "\n"
        for s in self.streams:
            s.write(text)
            s.flush()

    def info(self, source: str, message: str) -> None:
        self.log(source, message, "I")
