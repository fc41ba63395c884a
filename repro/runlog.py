"""A run's log.jsonl (written by repro.train, read by everything else) and the paper's metric: one
implementation of each.

Format: UTF-8, one JSON object per line, strict JSON (a value that is not finite is written as null). Records
written by a run:

    {"type": "train", "iter", "loss", "lr", "outputs", "time"}      every `display` iterations
    {"type": "test", "iter", "top1", "top5", "loss", "scores", "time"[, "net": i]}   every `test_interval`
    {"type": "eval", "iter", "top1", ..., "images"}                 the final single pass over the test data

A *test point* is a record of TEST net 0 with "type": "test" — or, for logs written by other tools, a record
without "type" that holds "top1" (and no "phase" other than "test"). The final single-pass "eval" record is
not a test point: it is a different measurement (every image once, not Caffe's test_iter batches). When an
iteration is tested twice (a resumed run), the later line wins, as the latest timestamp wins in the paper's
logs. A last line without its newline (a run killed mid-write) is ignored with a warning; any other line that
is not a JSON object is an error naming the file and line.

The paper's metric (the paper's notebook's ``mean_highest(last_n=10)``): the mean of a net's
10 highest test top-1 values over all its test points — neither the final nor the single best value. The
console, summary.json, the figures and the tables all use :func:`paper_metric` on :func:`test_points`.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .atomic import atomic_write_text
from .errors import ReproError

LOG_FILE = "log.jsonl"
TOP_K = 10  # the notebook's last_n = 10


class RunLogError(ReproError):
    """A run log that cannot be read: the message names the file and line."""


@dataclass(frozen=True)
class TestPoint:
    """One test of a net: iteration, top-1 accuracy and (when logged) the test loss."""

    __test__ = False  # not a pytest class

    iter: int
    top1: float
    loss: float | None = None


def finite_or_none(value):
    """``value`` with every float that is not finite replaced by None (recursively), for strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def dumps(obj, **kw) -> str:
    """Strict JSON (``allow_nan=False``; NaN and infinities become null): every JSON file a run writes."""
    return json.dumps(finite_or_none(obj), allow_nan=False, **kw)


# ---------------------------------------------------------------------------------------------- reading


def _numbered(path: Path) -> list[tuple[int, dict]]:
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    elif lines:
        warnings.warn(f"{path}:{len(lines)}: last line has no newline (run killed mid-write?); ignoring it",
                      stacklevel=3)
        lines.pop()
    out = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise RunLogError(f"{path}:{lineno}: not a JSON object ({e.msg})") from None
        if not isinstance(rec, dict):
            raise RunLogError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
        out.append((lineno, rec))
    return out


def read_records(path: str | os.PathLike) -> list[dict]:
    """Every record of a log.jsonl, in file order (see the module doc for what is tolerated)."""
    return [rec for _, rec in _numbered(Path(path))]


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def is_test_point(rec: dict) -> bool:
    if rec.get("net"):
        return False
    kind = rec.get("type")
    if kind is not None:
        return kind == "test"
    return "top1" in rec and str(rec.get("phase", "test")).lower() == "test"


def test_points(records: Iterable[dict], where: str = "record") -> list[TestPoint]:
    """The test points of a run (TEST net 0), sorted by iteration, later records winning on repeated
    iterations. A test record without an integer iteration or whose top-1 is not a number in [0, 1] is an
    error naming ``where`` and the record."""
    return _points((f"{where} {i}", rec) for i, rec in enumerate(records, 1))


def _points(numbered) -> list[TestPoint]:
    by_iter: dict[int, TestPoint] = {}
    for where, rec in numbered:
        if not is_test_point(rec):
            continue
        it, top1, loss = rec.get("iter"), rec.get("top1"), rec.get("loss")
        if not isinstance(it, int) or isinstance(it, bool) or it < 0:
            raise RunLogError(f"{where}: test record needs an integer 'iter' >= 0, got {it!r}")
        if not _is_number(top1) or not 0.0 <= top1 <= 1.0:
            raise RunLogError(f"{where}: 'top1' must be a number in [0, 1], got {top1!r}")
        if loss is not None and not _is_number(loss):
            loss = None  # a test loss that overflowed is not a reason to drop the accuracy
        by_iter[it] = TestPoint(it, float(top1), None if loss is None else float(loss))
    return [by_iter[i] for i in sorted(by_iter)]


def read_test_points(path: str | os.PathLike) -> list[TestPoint]:
    """The test points of one log.jsonl (errors name its file and line)."""
    path = Path(path)
    return _points((f"{path}:{n}", rec) for n, rec in _numbered(path))


# ---------------------------------------------------------------------------------------------- the metric


def paper_metric(values: Iterable[float], k: int = TOP_K) -> float | None:
    """Mean of the k highest values (of all of them when there are fewer); None when there are none."""
    vals = sorted(float(v) for v in values)
    if not vals:
        return None
    best = vals[-k:]
    return sum(best) / len(best)


def headline(records: Iterable[dict], k: int = TOP_K) -> dict:
    """What a run reports (console line, summary.json): the paper's metric over its test points, how many
    tests it counted of how many there were, the best and the final test."""
    points = test_points(records)
    top1 = [p.top1 for p in points]
    return {f"top1_best{k}_mean": paper_metric(top1, k), "tests_counted": min(len(top1), k),
            "tests": len(points), "top1_max": max(top1, default=None),
            "final_test": None if not points else {"iter": points[-1].iter, "top1": points[-1].top1,
                                                    "loss": points[-1].loss}}


def headline_line(summary: dict, k: int = TOP_K) -> str:
    """The console's one line for a run's number (the same value summary.json and the figures hold)."""
    metric = summary.get(f"top1_best{k}_mean")
    if metric is None:
        return "no test points"
    n, counted = summary.get("tests", 0), summary.get("tests_counted", 0)
    line = f"paper's metric (mean of the {counted} best of {n} test top-1): {metric:.4f}"
    final = summary.get("final_test") or {}
    if final.get("top1") is not None:
        line += f"; final test top-1 {final['top1']:.4f}"
    if n < k:
        line += f" (only {n} tests: the paper averages {k}; test more often with --test-interval)"
    return line


# ---------------------------------------------------------------------------------------------- writing


class RunLog:
    """log.jsonl of a run: records appended as written (flushed and fsynced); on resume, the records from the
    snapshot's iteration on are dropped (they are computed again)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a cut last line is dropped by truncate_to anyway
            return read_records(self.path)

    def truncate_to(self, it: int) -> None:
        keep = [r for r in self.records() if int(r.get("iter", 0)) < it and r.get("type") in ("train", "test")]
        atomic_write_text(self.path, "".join(dumps(r) + "\n" for r in keep))

    def write(self, rec: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
