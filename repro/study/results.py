"""Test points of our runs, of any set of run folders, and the paper's metric per net.

The run log format, the test points and the metric are repro.runlog's (one implementation for the console,
summary.json, the figures and the tables). The run's name is its folder's name, which is the cell's name
(`repro.study.grid.Cell.name`: half0A, transfer0A0B_1_3, …), as in the paper's results/ folders.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from ..runlog import LOG_FILE as RUN_LOG
from ..runlog import TOP_K, TestPoint, paper_metric, read_test_points
from ..runlog import RunLogError as ResultsError

__all__ = ["RUN_LOG", "TOP_K", "TestPoint", "ResultsError", "net_score", "scores", "read_run_log", "find_runs",
           "read_runs"]


def net_score(points: Sequence[TestPoint], k: int = TOP_K) -> float | None:
    """The paper's number for one net: mean of its k best test top-1 values (None without test points)."""
    return paper_metric((p.top1 for p in points), k)


def scores(curves: Mapping[str, Sequence[TestPoint]] | Iterable[tuple[str, Sequence[TestPoint]]],
           k: int = TOP_K) -> list[tuple[str, float]]:
    """[(net name, metric)] for every net with at least one test point (nets without are skipped, as in the
    notebook). A list, not a dict: repeated runs of one cell each count as a net."""
    items = curves.items() if isinstance(curves, Mapping) else curves
    return [(name, net_score(pts, k)) for name, pts in items if pts]


def read_run_log(path: str | os.PathLike) -> list[TestPoint]:
    """The test points of one `log.jsonl`, sorted by iteration, later lines winning on repeated iterations."""
    return read_test_points(path)


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
    """[(run name, test points)] of every run at or below `dirs`; a run whose summary.json says it diverged is
    left out with a warning (its tests before the divergence are not the net's result)."""
    out = []
    for name, p in find_runs(dirs):
        summary = p.parent / "summary.json"
        if summary.is_file() and '"diverged"' in summary.read_text(encoding="utf-8", errors="replace"):
            warnings.warn(f"{p.parent}: the run diverged; left out of the results", stacklevel=2)
            continue
        out.append((name, read_run_log(p)))
    return out
