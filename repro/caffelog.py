"""The paper's Caffe training logs → test points per net (every `Test net output` group of a log is one point).

A net's folder holds several log pieces (cluster job outputs `*.o<jobid>.gz`, plain or gzipped): a resumed run
starts a new piece at its snapshot + 20, repeating the iterations after the snapshot; some pieces are empty, one
(netbase's catlog.oMANUAL.gz) is a manual concatenation with the later run first. The rules that reproduce the
paper's notebook (`read_info` in plots/transfer_plots.ipynb) exactly:
  * every glog line carries `MMDD hh:mm:ss.micro` (no year): for an iteration seen more than once, the value
    with the latest timestamp wins, whatever the file order (ties: the first seen);
  * a `Testing net` line is followed by its `Test score #0` (top-1) and `#1` (loss) lines; a killed job can
    leave a `Testing net` line without scores, and such a test is dropped;
  * a net whose folder has no test points is skipped.
Newer Caffe's `Test net output #k: accuracy = …` / `loss = …` lines are read too (accuracy → top-1), as are
glog 0.7's dated prefixes (`I20261206 …`), and lines of other source files than the solver's (a prefetch thread's
`data_layer.cpp` line inside a test's block) are passed over.

:class:`SolverLog` writes our runs' caffe.log in Caffe's own lines (see repro.glog).

Timestamps have no year, so a log that spans New Year would be misordered, as in the notebook.
"""
from __future__ import annotations

import fnmatch
import gzip
import os
import re
import time
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from .glog import cfloat
from .study.results import TestPoint

# Files read in a net's folder (the notebook globs `*.[eo]*.gz`); names are matched after removing `.gz`.
LOG_GLOBS = ("*.[eo]*", "*.log", "*.log.*", "*.INFO", "*.INFO.*")

# glog prefix: severity, MMDD, hh:mm:ss.micro, thread id, file:line]  (Caffe logs through glog)
# glog 0.7 writes the year too (I20261206): the MMDD is its last four digits.
_GLOG = re.compile(r"^[IWEF](?:\d{4})?(\d{4}) (\d\d:\d\d:\d\d\.\d+)\s+\d+\s+([^\]\s]+)\]\s*(.*)$")
_ITER_LR = re.compile(r"^Iteration (\d+)(?: \([^)]*\))?, lr = (\S+)")
_ITER_LOSS = re.compile(r"^Iteration (\d+)(?: \([^)]*\))?, loss = (\S+)")
_TESTING = re.compile(r"^Iteration (\d+), Testing net")
_SCORE_OLD = re.compile(r"^Test score #(\d+): (\S+)")                   # Caffe of 2014 (Solver::Test)
_SCORE_NEW = re.compile(r"^Test net output #\d+: (\S+) = (\S+)")         # later Caffe


@dataclass
class NetLog:
    """Everything read from one net's log pieces, merged by the latest-timestamp rule."""

    name: str
    files: list[Path] = field(default_factory=list)
    tests: list[TestPoint] = field(default_factory=list)        # sorted by iteration
    train_loss: dict[int, float] = field(default_factory=dict)  # mini-batch loss at display iterations
    lr: dict[int, float] = field(default_factory=dict)


class _Latest:
    """Caffe log values keyed by iteration; the notebook's insert_most_recent."""

    def __init__(self):
        self.d: dict[int, tuple[float, tuple]] = {}

    def put(self, it: int, value: float, stamp: tuple):
        old = self.d.get(it)
        if old is None or stamp > old[1]:
            self.d[it] = (value, stamp)

    def values(self) -> dict[int, float]:
        return {it: v for it, (v, _) in sorted(self.d.items())}


def is_log_file(path: Path) -> bool:
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    return path.is_file() and any(fnmatch.fnmatchcase(name, g) for g in LOG_GLOBS)


def _lines(path: Path):
    opener = gzip.open if path.name.endswith(".gz") else open
    n = 0
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            for line in f:
                n += 1
                yield line
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        # A killed job can leave a truncated .gz: keep what was written before the damage.
        warnings.warn(f"{path}: unreadable after line {n} ({e}); using the lines before it", stacklevel=2)


def _parse_into(path: Path, top1: _Latest, loss: _Latest, train_loss: _Latest, lr: _Latest):
    testing = None   # iteration of the last `Testing net` line still waiting for its scores
    for line in _lines(path):
        m = _GLOG.match(line)
        if not m:
            continue   # nvidia-smi output, job headers, directory listings: not glog lines
        mmdd, clock, source, msg = m.groups()
        if "solver" not in source:
            # Another thread's line inside a test's block (Caffe 1.0's prefetch thread: data_layer.cpp
            # "Restarting data prefetching from start.") neither holds scores nor ends the block.
            continue
        stamp = (mmdd, clock)
        s = _SCORE_OLD.match(msg)
        if s and testing is not None:
            value = float(s.group(2))
            if s.group(1) == "0":
                top1.put(testing, value, stamp)
            elif s.group(1) == "1":
                loss.put(testing, value, stamp)
            continue
        s = _SCORE_NEW.match(msg)
        if s and testing is not None:
            name, value = s.group(1), float(s.group(2))
            if "acc" in name and "top5" not in name and "top-5" not in name:
                top1.put(testing, value, stamp)
            elif "loss" in name:
                loss.put(testing, value, stamp)
            continue
        testing = None   # any other line ends a test's score block (a test without scores is dropped)
        t = _TESTING.match(msg)
        if t:
            testing = int(t.group(1))
            continue
        t = _ITER_LOSS.match(msg)
        if t:
            train_loss.put(int(t.group(1)), float(t.group(2)), stamp)
            continue
        t = _ITER_LR.match(msg)
        if t:
            lr.put(int(t.group(1)), float(t.group(2)), stamp)


def parse_log_files(paths, name: str = "") -> NetLog:
    """Merge the given log pieces of one net."""
    top1, loss, train_loss, lr = _Latest(), _Latest(), _Latest(), _Latest()
    paths = [Path(p) for p in paths]
    for p in paths:
        _parse_into(p, top1, loss, train_loss, lr)
    losses = loss.values()
    tests = [TestPoint(it, v, losses.get(it)) for it, v in top1.values().items()]
    return NetLog(name, paths, tests, train_loss.values(), lr.values())


def read_net_logs(net_dir: str | os.PathLike) -> NetLog:
    """All log pieces in one net's folder (files matching LOG_GLOBS, plain or .gz, in name order)."""
    net_dir = Path(net_dir)
    if not net_dir.is_dir():
        raise FileNotFoundError(f"{net_dir}: not a folder")
    return parse_log_files(sorted(p for p in net_dir.iterdir() if is_log_file(p)), net_dir.name)


def read_caffe_logs(root: str | os.PathLike) -> list[tuple[str, list[TestPoint]]]:
    """[(net name, test points)] for every net folder under `root` that has test points, in name order.

    `root` holds one folder per net named as in the paper (half0A, transfer0A0B_1_3, …); a folder that itself
    holds log files is read as one net.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    if any(is_log_file(p) for p in root.iterdir()):
        dirs = [root]
    else:
        dirs = sorted(p for p in root.iterdir() if p.is_dir())
    out = []
    for d in dirs:
        log = read_net_logs(d)
        if log.tests:
            out.append((log.name, log.tests))
    if not out:
        raise FileNotFoundError(f"{root}: no Caffe log with test scores (looked for {', '.join(LOG_GLOBS)})")
    return out


# ---------------------------------------------------------------------------------------------- writing


class SolverLog:
    """A solver callback that logs a run as Caffe's ``caffe train`` does (glog lines, Caffe's wording), so
    Caffe's tools/extra/parse_log.py and :func:`parse_log_files` read our runs as they read Caffe's.

    ``SolverLog(glog, solver)`` then ``solver.add_callback(log)``; ``log.start()`` writes Caffe's
    ``Solving <net>`` / ``Learning Rate Policy`` lines (parse_log.py takes its start time from the first), and
    ``log.done()`` its ``Optimization Done.``. Events (repro.solver's callbacks) become:

    * train display -> ``Iteration N (x iter/s, ys/d iters), loss = L`` (Solver::Step), one
      ``    Train net output #k: name = v [(* w = w*v loss)]`` per output value, ``Iteration N, lr = r``
      (SGDSolver::ApplyUpdate); the forward-only display after the last iteration (Solver::Solve) is the
      single ``Iteration N, loss = L`` line Caffe writes there;
    * test -> ``Iteration N, Testing net (#i)`` (Solver::Test) and one ``    Test net output #k`` per value;
    * snapshot -> Caffe's two ``Snapshotting ...`` lines (Solver::SnapshotToBinaryProto,
      SGDSolver::SnapshotSolverStateToBinaryProto).
    """

    def __init__(self, glog, solver):
        self.glog, self.solver = glog, solver
        self._mark: tuple[int, float] | None = None

    def start(self) -> None:
        s = self.solver
        self.glog.info("solver.cpp:289", f"Solving {s.net.name}")
        self.glog.info("solver.cpp:290", f"Learning Rate Policy: {s.param.lr_policy}")
        self._mark = (s.iter, time.perf_counter())

    def done(self, stopped: bool = False) -> None:
        if stopped:
            self.glog.info("solver.cpp:311", "Optimization stopped early.")
        self.glog.info("solver.cpp:332", "Optimization Done.")

    def __call__(self, rec: dict) -> None:
        kind = rec.get("type")
        if kind == "train":
            self._train(rec)
        elif kind == "test":
            self._test(rec)
        elif kind == "snapshot":
            if rec.get("caffemodel"):
                self.glog.info("solver.cpp:464", f"Snapshotting to binary proto file {rec['caffemodel']}")
            if rec.get("solverstate"):
                self.glog.info("sgd_solver.cpp:284",
                               f"Snapshotting solver state to binary proto file {rec['solverstate']}")

    def _train(self, rec: dict) -> None:
        s, it = self.solver, int(rec["iter"])
        loss = cfloat(rec["loss"])
        if it >= s.param.max_iter:  # Step's displays are of iterations below max_iter
            # Solver::Solve's forward-only pass after the last update: no outputs, no rate
            self.glog.info("solver.cpp:327", f"Iteration {it}, loss = {loss}")
            return
        now = time.perf_counter()
        last_it, last_t = self._mark if self._mark is not None else (it, now)
        lapse = now - last_t
        per_s = (it - last_it) / (lapse if lapse else 1)
        display = s.param.display or 1
        self.glog.info("solver.cpp:239",
                       f"Iteration {it} ({cfloat(per_s)} iter/s, {lapse:.3g}s/{display} iters), loss = {loss}")
        self._mark = (it, now)
        for k, (name, v, w) in enumerate(_output_values(rec.get("outputs", {}), s.net.loss_weights)):
            self.glog.info("solver.cpp:258", f"    Train net output #{k}: {name} = {cfloat(v)}{_weighted(v, w)}")
        if rec.get("lr") is not None:
            self.glog.info("sgd_solver.cpp:112", f"Iteration {it}, lr = {cfloat(rec['lr'])}")

    def _test(self, rec: dict) -> None:
        s, i = self.solver, int(rec.get("net", 0))
        self.glog.info("solver.cpp:347", f"Iteration {int(rec['iter'])}, Testing net (#{i})")
        weights = s.test_nets[i].loss_weights if i < len(s.test_nets) else {}
        for k, (name, v, w) in enumerate(_output_values(rec.get("scores", {}), weights)):
            self.glog.info("solver.cpp:414", f"    Test net output #{k}: {name} = {cfloat(v)}{_weighted(v, w)}")
        self._mark = (s.iter, time.perf_counter())  # testing time is not training time


def _output_values(outputs: dict, loss_weights: dict):
    """(name, value, loss weight) per element of each output blob, in the net's output order."""
    for name, v in outputs.items():
        for x in (v if isinstance(v, (list, tuple)) else [v]):
            yield name, float(x), float(loss_weights.get(name, 0.0) or 0.0)


def _weighted(v: float, w: float) -> str:
    return f" (* {cfloat(w)} = {cfloat(w * v)} loss)" if w else ""
