"""A training run, with its folder as the record (``run(solver, out_dir, ...)``).

The folder holds everything needed to see what ran and to pick it up again:

    solver.prototxt, train.prototxt, val.prototxt   the resolved solver and nets (data paths made absolute)
    run.json            git hash, versions, device, seed, command line, the caller's record (e.g. the cell)
    log.jsonl           one JSON object per line: {"type": "train", "iter", "loss", "lr", "outputs"} every
                        `display` iterations, {"type": "test", "iter", "top1", "top5", "loss", "scores"} every
                        `test_interval`, {"type": "eval", ...} for the final single pass
    snapshots/          Caffe's snapshot_iter_<N>.caffemodel + .solverstate, and our .state.pt (exact resume)
    summary.json        final test, single-pass evaluation, and the paper's metric: the mean of the 10 best
                        test top-1 values (FIGURES.md)
    final.onnx          when repro.onnx.io can export the net (optional)
    final.pt, final.caffemodel   the trained weights by Caffe layer name, written last: their presence marks a
                        finished run

Snapshots are written every `snapshot` iterations and on a stop request (SIGINT / SIGTERM: the current
iteration finishes, a snapshot is written, the run returns). Every file is written atomically, so a run killed
at any moment restarts from its newest snapshot when ``run`` is called again with the same folder.
"""
from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .checkpoint import atomic_torch_save, atomic_write_text, latest_state, tensors_by_layer
from .errors import ReproError

SOLVER_FILE, TRAIN_FILE, LOG_FILE, SUMMARY_FILE, RUN_FILE = (
    "solver.prototxt", "train.prototxt", "log.jsonl", "summary.json", "run.json")
SNAPSHOT_PREFIX = "snapshots/snapshot"
FINAL_PT, FINAL_CAFFEMODEL, FINAL_ONNX = "final.pt", "final.caffemodel", "final.onnx"
TOP_K_TESTS = 10  # the paper's summary: mean of the 10 best test top-1 values


class RunError(ReproError):
    """A run folder that cannot be used for this run (it holds a different one)."""


def val_file(i: int) -> str:
    return "val.prototxt" if i == 0 else f"val{i}.prototxt"


# ---------------------------------------------------------------------------------------------- the record


def git_state() -> dict:
    """The commit of the code that runs (None outside a git checkout) and whether it has local changes."""
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip() or None if head.returncode == 0 else None,
            "dirty": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None}


def versions() -> dict:
    from . import __version__

    return {"repro": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "platform": platform.platform()}


def _absolute_data_paths(net_param, bases: list[Path]) -> None:
    """Make the data sources and mean files of a net absolute (working directory first, then ``bases``), so
    the recorded prototxts work from anywhere. Paths found nowhere are left for the data layer to report."""
    def fix(value: str) -> str:
        if not value or Path(value).is_absolute():
            return value
        for b in [Path.cwd()] + bases:
            if (b / value).exists():
                return str((b / value).resolve())
        return value

    for layer in net_param.layer:
        if layer.type == "Data":
            layer.data_param.source = fix(layer.data_param.source)
        elif layer.type == "ImageData":
            layer.image_data_param.source = fix(layer.image_data_param.source)
            if layer.image_data_param.root_folder:
                layer.image_data_param.root_folder = fix(layer.image_data_param.root_folder)
        if layer.transform_param.mean_file:
            layer.transform_param.mean_file = fix(layer.transform_param.mean_file)


def resolved_files(solver, max_iter: int | None = None, data_root=None) -> dict[str, str]:
    """The texts of solver.prototxt, train.prototxt and val*.prototxt for a run folder: the nets inlined from
    wherever the solver names them (Caffe's rules plus the solver's folder), data paths absolute, the solver
    pointing at the files beside it and snapshotting into snapshots/."""
    from google.protobuf import text_format

    from .prototxt import read_net, read_solver
    from .solver import resolve_path

    if isinstance(solver, (str, os.PathLike)):
        solver_dir = Path(solver).parent
        param = read_solver(solver)
    else:
        solver_dir, param = None, type(solver)()
        param.CopyFrom(solver)
    bases = [Path(data_root)] if data_root is not None else []
    bases += [solver_dir] if solver_dir is not None else []

    def net(field_value, field):
        if isinstance(field_value, str):
            path = resolve_path(field_value, solver_dir, field)
            return read_net(path), [path.parent]
        return field_value, []

    if param.HasField("train_net_param") or param.HasField("net_param"):
        train, extra = net(param.train_net_param if param.HasField("train_net_param") else param.net_param, "net")
    else:
        train, extra = net(param.train_net or param.net, "train_net" if param.HasField("train_net") else "net")
    tests = [(t, []) for t in param.test_net_param] + [net(f, "test_net") for f in param.test_net]
    generic = len(param.test_iter) - len(tests)
    if generic > 0 and (param.HasField("net") or param.HasField("net_param")):
        tests += [(train, extra)] * generic  # the train_val net, filtered to TEST by the Solver
    _absolute_data_paths(train, bases + extra)
    for t, ex in tests:
        _absolute_data_paths(t, bases + ex)
    for f in ("net", "net_param", "train_net", "train_net_param", "test_net", "test_net_param"):
        param.ClearField(f)
    param.train_net = TRAIN_FILE
    param.test_net.extend(val_file(i) for i in range(len(tests)))
    param.snapshot_prefix = SNAPSHOT_PREFIX
    if max_iter is not None:
        param.max_iter = int(max_iter)
    fmt = lambda m: text_format.MessageToString(m)
    files = {SOLVER_FILE: fmt(param), TRAIN_FILE: fmt(train)}
    files.update({val_file(i): fmt(t) for i, (t, _) in enumerate(tests)})
    return files


# ---------------------------------------------------------------------------------------------- the log


class JsonLog:
    """log.jsonl: one JSON object per line, flushed as written. On resume, records from the snapshot's
    iteration on are dropped (they are computed again), and so is a last line cut short by a kill."""

    def __init__(self, path: Path):
        self.path = path

    def records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out

    def truncate_to(self, it: int) -> None:
        keep = [r for r in self.records() if int(r.get("iter", 0)) < it and r.get("type") in ("train", "test")]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))

    def write(self, rec: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())


def best_k_mean(values, k: int = TOP_K_TESTS) -> float | None:
    """The paper's summary metric: the mean of the k best values (of all there are, when fewer)."""
    vals = sorted((float(v) for v in values if v is not None), reverse=True)[:k]
    return float(np.mean(vals)) if vals else None


def summarise(records: list[dict]) -> dict:
    tests = [r for r in records if r.get("type") == "test" and not r.get("net")]
    top1 = [r.get("top1") for r in tests]
    return {
        f"top1_best{TOP_K_TESTS}_mean": best_k_mean(top1),
        "tests_counted": min(len([t for t in top1 if t is not None]), TOP_K_TESTS),
        "top1_max": max((t for t in top1 if t is not None), default=None),
        "final_test": tests[-1] if tests else None,
        "tests": len(tests),
    }


# ---------------------------------------------------------------------------------------------- the run


class StopOnSignal:
    """SIGINT / SIGTERM ask the solver to stop after the current iteration (it then snapshots, as Caffe's
    `caffe train` does on SIGINT); a second SIGINT interrupts at once (the last snapshot is still intact)."""

    def __init__(self, solver, log):
        self.solver, self.log, self.old = solver, log, {}

    def __enter__(self):
        if threading_main():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.solver.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.log(f"signal {signal.Signals(signum).name}: stopping after this iteration (snapshot, then exit)")
        self.solver.request_stop()

    def __exit__(self, *exc):
        for sig, h in self.old.items():
            signal.signal(sig, h)


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def prune_states(snapdir: Path, keep: int | None) -> None:
    """Keep the newest ``keep`` resume states (.state.pt + .solverstate); every .caffemodel stays."""
    if keep is None:
        return
    states = sorted(snapdir.glob("*.state.pt"), key=lambda p: int(p.name.split("_iter_")[-1].split(".")[0]))
    for old in states[:-keep] if keep > 0 else states:
        base = str(old)[: -len(".state.pt")]
        for p in (old, Path(base + ".solverstate")):
            p.unlink(missing_ok=True)


def console_line(rec: dict) -> str:
    if rec["type"] == "train":
        return f"Iteration {rec['iter']}, loss = {rec['loss']:.6g}, lr = {rec['lr']:.6g}"
    if rec["type"] in ("test", "eval"):
        parts = [f"{k} = {rec[k]:.6g}" for k in ("top1", "top5", "loss") if rec.get(k) is not None]
        what = "Test" if rec["type"] == "test" else f"Single-pass evaluation ({rec.get('images')} images)"
        return f"Iteration {rec['iter']}, {what}: " + ", ".join(parts)
    return f"Iteration {rec['iter']}, snapshot {rec.get('state', '')}"


def run(solver, out_dir, *, weights=None, init=None, device=None, data_root=None, max_iter: int | None = None,
        record: dict | None = None, keep_states: int | None = 2, onnx: bool = True, log=print) -> dict:
    """Train as Caffe's ``caffe train --solver ... [--weights ...]`` would, into the run folder ``out_dir``.

    solver: a solver.prototxt path or SolverParameter (e.g. from repro.study.grid.realise / repro.study.cells).
    weights: a .caffemodel copied into the TRAIN net by layer name before training (a fresh run only);
    init: or a callable ``init(net)`` doing that (e.g. for .pt / .onnx weights).
    max_iter: override the solver's max_iter. record: extra facts for run.json (the cell, the command).
    keep_states: how many resume states to keep (None: all); every snapshot .caffemodel is kept.
    Returns the summary (also in summary.json); a run that was stopped returns {"status": "stopped", ...}.
    A finished folder is not trained again; an unfinished one resumes from its newest snapshot.
    """
    from .solver import Solver

    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    if (out / FINAL_CAFFEMODEL).is_file() and (out / SUMMARY_FILE).is_file():
        log(f"{out}: already finished (final.caffemodel present); not training again")
        return json.loads((out / SUMMARY_FILE).read_text())
    files = resolved_files(solver, max_iter, data_root)
    state = latest_state(out / SNAPSHOT_PREFIX)
    if (out / SOLVER_FILE).is_file() and state is not None:
        old = {n: (out / n).read_text() for n in files if (out / n).is_file()}
        changed = [n for n in files if old.get(n) != files[n]]
        if changed:
            raise RunError(f"{out} holds snapshots of a different run ({', '.join(changed)} differ); use another "
                           f"output folder or remove this one")
    for name, text in files.items():
        if not (out / name).is_file() or (out / name).read_text() != text:
            atomic_write_text(out / name, text)

    cwd = os.getcwd()
    os.chdir(out)  # the solver's files and its snapshot prefix are relative to the run folder
    try:
        s = Solver(SOLVER_FILE, device=device, data_root=out)
    finally:
        os.chdir(cwd)
    s.snapshot_prefix = str(out / SNAPSHOT_PREFIX)
    jlog = JsonLog(out / LOG_FILE)
    info = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv, "cwd": cwd, "git": git_state(),
            "versions": versions(), "device": str(s.device), "seed": s.seed, "record": record or {},
            "weights": None if weights is None else str(weights)}
    if state is not None:
        s.restore(state)
        jlog.truncate_to(s.iter)
        prev = json.loads((out / RUN_FILE).read_text()) if (out / RUN_FILE).is_file() else {}
        info = {**prev, "resumes": prev.get("resumes", []) + [{"iter": s.iter, "at": info["started"],
                                                               "git": info["git"], "device": info["device"]}]}
        log(f"{out}: resuming from {state.name} (iteration {s.iter})")
    else:
        jlog.truncate_to(0)
        if weights is not None:
            s.net.copy_from(weights)
        if init is not None:
            init(s.net)
    atomic_write_text(out / RUN_FILE, json.dumps(info, indent=1) + "\n")

    def on_event(rec: dict) -> None:
        if rec["type"] in ("train", "test"):
            jlog.write({**rec, "time": round(time.time(), 3)})
        elif rec["type"] == "snapshot":
            prune_states(out / Path(SNAPSHOT_PREFIX).parent, keep_states)
        log(console_line(rec))

    s.add_callback(on_event)
    with StopOnSignal(s, log):
        s.solve()
    if s.stop_requested:
        log(f"{out}: stopped at iteration {s.iter}; run again to resume")
        return {"status": "stopped", "iter": s.iter}
    return finish_run(s, out, jlog, onnx, log)


def finish_run(s, out: Path, jlog: JsonLog, onnx: bool, log) -> dict:
    """summary.json, the single-pass evaluation, final.onnx, then final.pt and final.caffemodel (last)."""
    evaluation = None
    if s.test_nets:
        try:
            evaluation = s.evaluate(0)
        except Exception as e:  # a TEST net fed from outside (no Data layer) has no single pass of its own
            log(f"single-pass evaluation skipped: {e}")
        if evaluation is not None:
            jlog.write({**evaluation, "time": round(time.time(), 3)})
            log(console_line(evaluation))
    summary = {"status": "finished", "iter": s.iter, **summarise(jlog.records()), "eval": evaluation,
               "train_loss": s.smoothed_loss}
    if onnx:
        final_test = summary["final_test"] or {}
        summary["onnx"] = _export_onnx(s, out, log, {"iteration": s.iter, "test_accuracy": final_test.get("top1")})
    atomic_write_text(out / SUMMARY_FILE, json.dumps(summary, indent=1) + "\n")
    atomic_torch_save({"format": "repro-weights", "iter": s.iter, "net": s.net.name,
                       "weights": tensors_by_layer(s.net.params)}, out / FINAL_PT)
    s.net.save(out / FINAL_CAFFEMODEL)
    key = f"top1_best{TOP_K_TESTS}_mean"
    if summary[key] is not None:
        log(f"{out}: done; mean of the {summary['tests_counted']} best test top-1: {summary[key]:.4f}")
    return summary


def _export_onnx(s, out: Path, log, metadata: dict):
    """Hook for repro.onnx.io: write final.onnx from the TEST net (train weights shared in). Optional: a run
    that trained well is not failed by an export problem; the reason goes into summary.json."""
    try:
        from .onnx.io import export_onnx
    except ImportError as e:
        return {"written": False, "reason": f"repro.onnx.io unavailable ({e})"}
    if not s.test_nets:
        return {"written": False, "reason": "no TEST net"}
    net = s.test_nets[0]
    s.share_weights(net)
    try:
        export_onnx(net, out / FINAL_ONNX, metadata={k: v for k, v in metadata.items() if v is not None})
    except Exception as e:  # noqa: BLE001 - reported, not raised
        log(f"final.onnx not written: {type(e).__name__}: {e}")
        return {"written": False, "reason": f"{type(e).__name__}: {e}"}
    return {"written": True, "path": FINAL_ONNX}
