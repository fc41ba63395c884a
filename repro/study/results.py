"""Test points of our runs and the paper's metric.

Run log format (written by `repro.train`, read by `read_run_log`): `<run dir>/log.jsonl`, UTF-8, one JSON object
per line. A *test record* is an object with
    "iter": int      the iteration after which the net was tested (Caffe: Solver::TestAll at iter % test_interval)
    "top1": float    top-1 accuracy over the whole test pass, in [0, 1]
    "loss": float    optional: mean test loss (Caffe's `Test score #1`)
and any other keys. Records without "top1" (training records, headers) and records whose "phase" is set to
anything but "test" are skipped. A run that resumes appends;
when an iteration is tested twice the later line wins, as the latest timestamp wins in the paper's logs. A last
line without its newline (a run killed mid-write) is ignored with a warning.

The run's name is its folder's name, which is the cell's name (`repro.study.grid.Cell.name`: half0A,
transfer0A0B_1_3, …), as in the paper's results/ folders.

The metric of every figure (FIGURES.md section 1): the mean of a net's 10 highest test top-1 values over all
of its test points (`top_k_mean`), neither the final nor the single best value.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from ..errors import ReproError

RUN_LOG = "log.jsonl"
TOP_K = 10      # the notebook's last_n = 10


class ResultsError(ReproError):
    """A run log that cannot be read: the message names the file and line."""


@dataclass(frozen=True)
class TestPoint:
    """One test of a net: iteration, top-1 accuracy and (when logged) the test loss."""

    __test__ = False  # not a pytest class

    iter: int
    top1: float
    loss: float | None = None


def top_k_mean(values: Iterable[float], k: int = TOP_K) -> float:
    """Mean of the k highest values (all of them when there are fewer): the notebook's mean_highest."""
    vals = sorted(values)
    if not vals:
        raise ValueError("no test points")
    best = vals[-k:]
    return sum(best) / len(best)


def net_score(points: Sequence[TestPoint], k: int = TOP_K) -> float:
    """The paper's number for one net: mean of its k best test top-1 values."""
    return top_k_mean((p.top1 for p in points), k)


def scores(curves: Mapping[str, Sequence[TestPoint]] | Iterable[tuple[str, Sequence[TestPoint]]],
           k: int = TOP_K) -> list[tuple[str, float]]:
    """[(net name, metric)] for every net with at least one test point (nets without are skipped, as in the
    notebook). A list, not a dict: repeated runs of one cell each count as a net."""
    items = curves.items() if isinstance(curves, Mapping) else curves
    return [(name, net_score(pts, k)) for name, pts in items if pts]


def read_run_log(path: str | os.PathLike) -> list[TestPoint]:
    """The test points of one `log.jsonl`, sorted by iteration, later lines winning on repeated iterations."""
    path = Path(path)
    by_iter: dict[int, TestPoint] = {}
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    elif lines:
        warnings.warn(f"{path}:{len(lines)}: last line has no newline (run killed mid-write?); ignoring it",
                      stacklevel=2)
        lines.pop()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ResultsError(f"{path}:{lineno}: not a JSON object ({e.msg})") from None
        if not isinstance(rec, dict):
            raise ResultsError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
        if "top1" not in rec or str(rec.get("phase", "test")).lower() != "test":
            continue
        it, top1, loss = rec.get("iter"), rec["top1"], rec.get("loss")
        if not isinstance(it, int) or isinstance(it, bool) or it < 0:
            raise ResultsError(f"{path}:{lineno}: test record needs an integer 'iter' >= 0, got {it!r}")
        if not _is_number(top1) or not 0.0 <= top1 <= 1.0:
            raise ResultsError(f"{path}:{lineno}: 'top1' must be a number in [0, 1], got {top1!r}")
        if loss is not None and not _is_number(loss):
            raise ResultsError(f"{path}:{lineno}: 'loss' must be a number, got {loss!r}")
        by_iter[it] = TestPoint(it, float(top1), None if loss is None else float(loss))
    return [by_iter[i] for i in sorted(by_iter)]


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def find_runs(dirs: Iterable[str | os.PathLike]) -> list[tuple[str, Path]]:
    """[(run name, log path)] for every `log.jsonl` at or below each folder, in sorted order."""
    out = []
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise ResultsError(f"{d}: not a folder")
        logs = sorted(d.rglob(RUN_LOG))
        if not logs:
            raise ResultsError(f"{d}: no {RUN_LOG} at or below this folder")
        out += [(p.parent.name, p) for p in logs]
    return out


def read_runs(dirs: Iterable[str | os.PathLike]) -> list[tuple[str, list[TestPoint]]]:
    """[(run name, test points)] of every run at or below `dirs`."""
    return [(name, read_run_log(p)) for name, p in find_runs(dirs)]
