"""Bad input found before training: one report of every bad file, then fail or skip.

A corrupt or truncated image, an empty class folder, a label out of range, a list line naming a missing file:
Caffe finds these hours into a run (or never: libjpeg only warns on a truncated JPEG). We find them when a
dataset is indexed (`sources.py`) or converted (`convert.py`), collect *all* of them, and then, by policy,
raise one `DataError` listing each (`on_error="fail"`, the default) or drop them and keep the report
(`on_error="skip"`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Iterable

from ..errors import ReproError

POLICIES = ("fail", "skip")
_SHOWN = 50  # an error message lists this many files in full; `DataError.bad` holds all of them


@dataclass(frozen=True)
class BadFile:
    """One bad input: the path (or list file:line) and why it is bad."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class DataError(ReproError):
    """Bad data found while indexing or converting; `.bad` lists every bad file with its reason."""

    def __init__(self, what: str, bad: Iterable[BadFile]):
        self.bad = list(bad)
        lines = [f"{what}: {len(self.bad)} bad file(s)"]
        lines += [f"  {b}" for b in self.bad[:_SHOWN]]
        if len(self.bad) > _SHOWN:
            lines.append(f"  ... and {len(self.bad) - _SHOWN} more (see the exception's .bad)")
        lines.append("  (pass on_error='skip' to leave them out and continue)")
        super().__init__("\n".join(lines))


def check_policy(on_error: str) -> str:
    if on_error not in POLICIES:
        raise ValueError(f"on_error must be one of {POLICIES}, got {on_error!r}")
    return on_error


def apply_policy(what: str, bad: list[BadFile], on_error: str) -> list[BadFile]:
    """Raise DataError under "fail" when anything is bad; under "skip" warn once and return the report."""
    check_policy(on_error)
    if bad and on_error == "fail":
        raise DataError(what, bad)
    if bad:
        warnings.warn(f"{what}: skipped {len(bad)} bad file(s), first: {bad[0]}", stacklevel=3)
    return bad


def format_report(bad: Iterable[BadFile]) -> str:
    """The report as text, one `path<TAB>reason` line per bad file (written beside a store)."""
    return "".join(f"{b.path}\t{b.reason}\n" for b in bad)
