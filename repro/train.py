"""The run driver: one training run into its run folder (``run(solver, out_dir, ...)``), the one driver behind
every training tool (train_base, transfer, run_grid, caffe.py, train_ddp).

What it adds around the engine (``repro.Solver``, whose step runs every iteration through
``repro.engine.plan.NetPlan``):

* the folder (repro.runfolder): one owner at a time (an OS lock), one identity per folder, the resolved
  prototxts and run.json, automatic resume from the newest complete snapshot (a damaged one is named and
  skipped; all damaged is an error), stale temp files of a killed writer removed;
* logs: log.jsonl (repro.runlog) and the console, each display line with images/s and an ETA;
* snapshots every ``snapshot`` iterations, pruned by a :class:`Retention` policy;
* signals as Caffe's ``caffe train`` treats them (``-sigint_effect stop``, ``-sighup_effect snapshot``):
  SIGINT / SIGTERM finish the iteration, snapshot and stop (status "stopped"); SIGHUP snapshots and goes on;
  a second SIGINT interrupts at once (the last snapshot is intact);
* divergence: a loss or weight that is not finite stops the run before anything is snapshotted (status
  "diverged"; the message names the iteration and the last good snapshot); nothing downstream treats it as
  finished;
* on CUDA, the TRAIN Data layer's store is read by a DeviceFeed (pinned memory, side stream, crop/mirror on
  the GPU) — the same records, crops and mirrors as the Net's own reader;
* data parallel (``distributed=True``, under torchrun): every rank trains, rank 0 alone writes the folder.

Statuses and the tools' exit codes: finished 0, bad input 2, stopped 3, diverged 4 (:data:`EXIT_CODES`).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import atomic_torch_save, find_resume_state, tensors_by_layer
from .numerics import resolve_device
from .runfolder import (
    CAFFE_LOG,
    FINAL_CAFFEMODEL,
    FINAL_ONNX,
    FINAL_PT,
    RUN_FILE,
    SNAPSHOT_DIR,
    SNAPSHOT_PREFIX,
    SOLVER_FILE,
    TRAIN_FILE,
    RunError,
    RunFolder,
    file_id,
    git_state,
    identity,
    resolved_files,
    val_file,
    versions,
)
from .runlog import LOG_FILE, TOP_K, RunLog, headline, headline_line

__all__ = ["run", "Retention", "RunError", "EXIT_CODES", "resolved_files", "val_file", "SOLVER_FILE",
           "TRAIN_FILE", "RUN_FILE", "LOG_FILE", "CAFFE_LOG", "SNAPSHOT_PREFIX", "FINAL_PT", "FINAL_CAFFEMODEL",
           "FINAL_ONNX", "TOP_K"]

EXIT_CODES = {"finished": 0, "stopped": 3, "diverged": 4}


# ---------------------------------------------------------------------------------------------- snapshots


@dataclass(frozen=True)
class Retention:
    """Which snapshot files a run keeps (Caffe keeps every one; a full CaffeNet snapshot is ~1 GB: the
    weights (.caffemodel, 244 MB), Caffe's .solverstate (the history, 244 MB) and our .state.pt (both, for an
    exact resume)).

    keep_states: the newest resume states kept (.state.pt + .solverstate + their .caffemodel);
    weights_every: also keep the .caffemodel of every iteration divisible by this (None: the solver's
        ``stepsize`` for a "step" schedule, i.e. the weights just before each rate drop; 0: none);
    keep_all: keep everything, as Caffe does (``--keep``).
    """

    keep_states: int = 2
    weights_every: int | None = None
    keep_all: bool = False

    def weights_interval(self, param) -> int:
        if self.weights_every is not None:
            return int(self.weights_every)
        return int(param.stepsize) if param.lr_policy == "step" and param.stepsize > 0 else 0

    def prune(self, snapdir: Path, param) -> None:
        if self.keep_all or not snapdir.is_dir():
            return
        iters = sorted({_snap_iter(p) for p in snapdir.iterdir() if _snap_iter(p) is not None})
        states = [i for i in iters if (snapdir / f"snapshot_iter_{i}.state.pt").is_file()]
        keep_states = set(states[-self.keep_states:]) if self.keep_states > 0 else set()
        every = self.weights_interval(param)
        for i in iters:
            keep_weights = i in keep_states or (every and i % every == 0) or i == iters[-1]
            for suffix, keep in ((".state.pt", i in keep_states), (".solverstate", i in keep_states),
                                 (".caffemodel", keep_weights)):
                if not keep:
                    (snapdir / f"snapshot_iter_{i}{suffix}").unlink(missing_ok=True)


def _snap_iter(p: Path) -> int | None:
    name = p.name
    if not name.startswith("snapshot_iter_"):
        return None
    num = name[len("snapshot_iter_"):].split(".", 1)[0]
    return int(num) if num.isdigit() else None


# ---------------------------------------------------------------------------------------------- signals


class Signals:
    """Caffe's ``caffe train`` signal effects (``-sigint_effect``, ``-sighup_effect``; Caffe's SignalHandler):
    by default SIGINT / SIGTERM stop after this iteration with a snapshot and SIGHUP snapshots and continues;
    ``effects`` maps a signal to "stop", "snapshot" or "none" instead (tools/caffe.py passes its flags).
    Installed before the solver exists (a Ctrl-C while the nets are built stops the run cleanly);
    ``attach(solver)`` hands the requests on. A second SIGINT while a stop is pending interrupts at once.
    ``prefix`` starts every console line ("signal " for our runs; Caffe's log names the signal alone)."""

    DEFAULT = {signal.SIGINT: "stop", signal.SIGTERM: "stop", signal.SIGHUP: "snapshot"}

    def __init__(self, log, effects: dict | None = None, prefix: str = "signal ", stop_note: str = "; rerun to resume"):
        self.log, self.old, self.solver = log, {}, None
        self.effects = {**self.DEFAULT, **(effects or {})}
        self.prefix, self.stop_note = prefix, stop_note
        self.stop = False

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.effects:
                self.old[sig] = signal.signal(sig, self._handle)
        return self

    def attach(self, solver) -> None:
        self.solver = solver
        if self.stop:
            solver.request_stop()

    def _handle(self, signum, frame):
        name = f"{self.prefix}{signal.Signals(signum).name}"
        effect = self.effects[signum]
        if effect == "none":
            return
        if effect == "snapshot":
            self.log(f"{name}: snapshot after this iteration, then go on")
            if self.solver is not None:
                self.solver.request_snapshot()
            return
        if self.stop and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.stop = True
        self.log(f"{name}: stopping after this iteration (snapshot, then exit{self.stop_note})")
        if self.solver is not None:
            self.solver.request_stop()

    def __exit__(self, *exc):
        for sig, h in self.old.items():
            signal.signal(sig, h)


# ---------------------------------------------------------------------------------------------- console


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Console:
    """The console's lines for a run's events, each display line with images/s and the time left."""

    def __init__(self, log, images_per_iter: int, max_iter: int):
        self.log, self.images, self.max_iter = log, images_per_iter, max_iter
        self.mark: tuple[int, float] | None = None

    def __call__(self, rec: dict) -> None:
        kind = rec["type"]
        if kind == "train":
            line = f"Iteration {rec['iter']}, loss = {_g(rec['loss'])}, lr = {_g(rec['lr'])}"
            now = time.perf_counter()
            if self.mark is not None and rec["iter"] > self.mark[0]:
                per_iter = (now - self.mark[1]) / (rec["iter"] - self.mark[0])
                left = max(0, self.max_iter - rec["iter"]) * per_iter
                line += f" ({self.images / per_iter:.0f} img/s, {_duration(left)} left)"
            self.mark = (rec["iter"], now)
        elif kind in ("test", "eval"):
            parts = [f"{k} = {_g(rec[k])}" for k in ("top1", "top5", "loss") if rec.get(k) is not None]
            what = "Test" if kind == "test" else f"Single-pass evaluation ({rec.get('images')} images)"
            line = f"Iteration {rec['iter']}, {what}: " + ", ".join(parts)
            self.mark = None  # testing time is not training time
        else:
            return
        self.log(line)


def _g(v) -> str:
    return "nan" if v is None else f"{v:.6g}"


# ---------------------------------------------------------------------------------------------- the run


def run(solver, out_dir, *, weights=None, init=None, init_id: dict | None = None, device=None, data_root=None,
        max_iter: int | None = None, record: dict | None = None, numerics="faithful", compile: bool = False,
        retention: Retention = Retention(), force: bool = False, onnx: bool = True, log=print,
        distributed: bool = False, backend: str | None = None) -> dict:
    """Train as Caffe's ``caffe train --solver ... [--weights ...]`` would, into the run folder ``out_dir``.

    solver: a solver.prototxt path or SolverParameter (e.g. from repro.study). weights: .caffemodel / .pt /
    .onnx files copied into the TRAIN net by layer name before training (a fresh run only); init: or a
    callable ``init(net)`` doing that, with ``init_id`` describing it for the run's identity (e.g. the base
    weights' file_id). max_iter: override the solver's. record: extra facts for run.json (the cell, the
    command). numerics / compile: repro.engine.modes. retention: which snapshots stay. force: a folder holding
    a different run is moved aside instead of refused. distributed: one rank of a torchrun job.

    Returns the summary (also summary.json) with "status": "finished" | "stopped" | "diverged". A finished
    folder is not trained again; an unfinished one resumes from its newest snapshot.
    """
    from .engine.modes import numerics as numerics_mode

    mode = numerics_mode(numerics)
    folder = RunFolder(out_dir)
    comm = _Distributed(device, backend) if distributed else None
    device = comm.device if comm else resolve_device(device)
    weight_files = _weight_list(weights)
    with Signals(log if comm is None or comm.rank == 0 else _quiet) as signals:
        if comm is None or comm.rank == 0:
            with folder.owned():
                return _run_owned(folder, solver, signals, comm, weight_files=weight_files, init=init,
                                  init_id=init_id, device=device, data_root=data_root, max_iter=max_iter,
                                  record=record, mode=mode, compile=compile, retention=retention, force=force,
                                  onnx=onnx, log=log)
        return _run_owned(folder, solver, signals, comm, weight_files=weight_files, init=init, init_id=init_id,
                          device=device, data_root=data_root, max_iter=max_iter, record=record, mode=mode,
                          compile=compile, retention=retention, force=force, onnx=onnx, log=_quiet)


def _quiet(*a, **k):
    pass


def _run_owned(folder: RunFolder, solver, signals: Signals, comm, *, weight_files, init, init_id, device,
               data_root, max_iter, record, mode, compile, retention, force, onnx, log) -> dict:
    from .solver import DivergedError, Solver

    out = folder.path
    writer = comm is None or comm.rank == 0
    prepared = None
    if writer:
        try:
            prepared = _prepare(folder, solver, weight_files, init_id, mode, compile, data_root, max_iter, force,
                                log)
        except Exception as e:
            if comm is not None:
                comm.share({"error": f"{type(e).__name__}: {e}"})
            raise
    if comm is not None:
        prepared = comm.share(prepared)
        if "error" in prepared:
            raise RunError(prepared["error"])
    if "done" in prepared:
        return prepared["done"]

    param = _folder_solver(out)
    if comm is not None:
        from .engine.ddp import shared_seed

        shared_seed(param)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    s = Solver(param, device=device, data_root=out, numerics=mode, compile=compile)
    s.snapshot_prefix = str(out / SNAPSHOT_PREFIX)
    signals.attach(s)
    feeds = device_feeds(s, comm, out)
    state = find_resume_state(out / SNAPSHOT_PREFIX, log) if prepared["resumable"] else None
    jlog = RunLog(out / LOG_FILE)
    if state is not None:
        s.restore(state)
        if hasattr(s.comm, "reseed"):
            s.comm.reseed(s)  # each rank's own dropout stream, fresh after the resume
        log(f"{out}: resuming from {state.name} (iteration {s.iter})")
    else:
        for w in weight_files:
            report = s.net.copy_from(w)
            log(f"weights: {report}" if isinstance(report, str) else f"weights: copied {len(report)} layers "
                f"from {w}")
        if init is not None:
            init(s.net)
    if writer:
        jlog.truncate_to(s.iter)
        _write_record(folder, s, prepared, state, started, record, weight_files, mode, compile, comm)

    images = _images_per_iter(s)
    console = Console(log, images, s.param.max_iter)

    def on_event(rec: dict) -> None:
        if rec["type"] in ("train", "test"):
            jlog.write({**rec, "time": round(time.time(), 3)})
        elif rec["type"] == "snapshot":
            retention.prune(out / SNAPSHOT_DIR, s.param)
        console(rec)

    caffe_log = None
    if writer:
        s.add_callback(on_event)
        # Caffe's own log lines beside log.jsonl (appended on resume), for Caffe's parse_log.py and ours
        from .caffelog import SolverLog
        from .glog import Glog

        caffe_log = open(out / CAFFE_LOG, "a", encoding="utf-8")
        clog = SolverLog(Glog(caffe_log), s)
        s.add_callback(clog)
        clog.start()
    status = "finished"
    try:
        if not s.stop_requested:
            s.solve()
        if caffe_log is not None:
            clog.done(stopped=s.stop_requested)
    except DivergedError as e:
        status = "diverged"
        last = find_resume_state(out / SNAPSHOT_PREFIX, _quiet)
        where = f"the last good snapshot is {last}" if last else "no snapshot was written before it"
        log(f"{out}: {e}; {where}. Lower base_lr (or check the data), then rerun with --force to start "
            f"again from scratch")
        if not writer:
            return {"status": status, "iter": e.iter}
        summary = {"status": "diverged", "iter": e.iter, "diverged": str(e),
                   "last_good_snapshot": None if last is None else str(last), **headline(jlog.records())}
        folder.write_summary(summary)
        return summary
    finally:
        for f in feeds:
            f.close()
        if caffe_log is not None:
            caffe_log.close()
    if s.stop_requested:
        log(f"{out}: stopped at iteration {s.iter}; run again to resume")
        return {"status": "stopped", "iter": s.iter}
    if not writer:
        comm.barrier()
        return {"status": status, "iter": s.iter}
    summary = finish_run(s, folder, jlog, onnx, log, retention)
    if comm is not None:
        comm.barrier()
    return summary


def _prepare(folder, solver, weight_files, init_id, mode, compile, data_root, max_iter, force, log) -> dict:
    """The writer's checks before training: identity, the finished case, the files. Returns what every rank
    needs: {"done": summary} for a run with nothing to do, else {"resumable", "identity", "previous"}."""
    files = resolved_files(solver, max_iter, data_root)
    ident = identity(files, weight_files, mode.name, compile, init_id)
    state = folder.check_identity(files, ident, force)
    if state == "replaced":
        log(f"{folder.path}: the run it held was moved aside (--force)")
    if state == "same":
        summary = folder.summary()
        if folder.finished:
            log(f"{folder.path}: already finished; not training again ({headline_line(summary)})")
            return {"done": summary}
        if folder.diverged:
            log(f"{folder.path}: this run diverged at iteration {summary.get('iter')}; rerun with --force to "
                f"start it again from scratch")
            return {"done": summary}
    previous = folder.record() if state == "same" else {}
    folder.write_files(files)
    return {"resumable": state == "same", "identity": ident, "previous": previous}


def _write_record(folder, s, prepared, state, started, record, weight_files, mode, compile, comm) -> None:
    from .numerics import numerics_state

    info = {"started": started, "argv": sys.argv, "cwd": os.getcwd(), "git": git_state(),
            "versions": versions(), "device": str(s.device), "seed": s.seed, "record": record or {},
            "weights": [str(w) for w in weight_files] or None, "identity": prepared["identity"],
            "numerics": {"mode": mode.name, "compile": bool(compile), **numerics_state()}}
    if comm is not None:
        info["distributed"] = comm.describe(s)
    if state is not None:
        prev = prepared["previous"]
        info = {**prev, "resumes": prev.get("resumes", []) + [
            {"iter": s.iter, "at": started, "git": info["git"], "device": info["device"],
             **({"world_size": comm.world} if comm is not None else {})}]}
    folder.write_record(info)


def _folder_solver(out: Path):
    """The folder's solver.prototxt with its nets by absolute path (the run works from any directory)."""
    from .prototxt import read_solver

    param = read_solver(out / SOLVER_FILE)
    param.train_net = str(out / TRAIN_FILE)
    param.test_net[:] = [str(out / n) for n in param.test_net]
    return param


def _images_per_iter(s) -> int:
    data = s.net.inputs[0] if s.net.inputs else None
    batch = s.net.blob_shapes[data][0] if data is not None else 1
    return int(batch) * int(s.param.iter_size) * (s.comm.world if hasattr(s.comm, "world") else 1)


def device_feeds(s, comm, out: Path) -> list:
    """On CUDA (or data parallel), the TRAIN Data layer's store read by a DeviceFeed: same stream, on the
    device. Returns the feeds to close."""
    if comm is not None:
        from .engine.ddp import data_parallel

        return [data_parallel(s, rank=comm.rank, world=comm.world, data_root=out)]
    if s.device.type != "cuda":
        return []
    from .data.device_feed import DeviceFeed, FeedError

    feeds = []
    for name in s.net.layer_names:
        if getattr(s.net.layer(name), "reads_data", False):
            feeder = s.net.feeder(name)
            try:
                feed = DeviceFeed.from_feeder(feeder, device=s.device)
            except FeedError:
                continue  # an LMDB / LevelDB / image list: the Net's own reader feeds it
            feeder.close()
            s.net.feeders[name] = feed
            feeds.append(feed)
    return feeds


def _weight_list(weights) -> list[Path]:
    if weights is None:
        return []
    items = weights if isinstance(weights, (list, tuple)) else [w for w in os.fspath(weights).split(",") if w]
    out = [Path(w) for w in items]
    for w in out:
        if not w.is_file():
            raise RunError(f"weights file {w} does not exist")
    return out


# ---------------------------------------------------------------------------------------------- the end


def finish_run(s, folder: RunFolder, jlog: RunLog, onnx: bool, log, retention: Retention = Retention()) -> dict:
    """summary.json, the single-pass evaluation, final.onnx, then final.pt and final.caffemodel (last)."""
    out = folder.path
    evaluation = None
    if s.test_nets:
        try:
            evaluation = s.evaluate(0)
        except Exception as e:  # a TEST net fed from outside (no Data layer) has no single pass of its own
            log(f"single-pass evaluation skipped: {e}")
        if evaluation is not None:
            jlog.write({**evaluation, "time": round(time.time(), 3)})
            Console(log, 0, 0)(evaluation)
    summary = {"status": "finished", "iter": s.iter, **headline(jlog.records()), "eval": evaluation,
               "train_loss": s.smoothed_loss}
    if onnx:
        final_test = summary["final_test"] or {}
        summary["onnx"] = _export_onnx(s, out, log, {"iteration": s.iter, "test_accuracy": final_test.get("top1")})
    folder.write_summary(summary)
    atomic_torch_save({"format": "repro-weights", "iter": s.iter, "net": s.net.name,
                       "weights": tensors_by_layer(s.net.params)}, out / FINAL_PT)
    s.net.save(out / FINAL_CAFFEMODEL)
    retention.prune(out / SNAPSHOT_DIR, s.param)
    # The headline number is the tool's last line (repro.study.flags.result_line); this one says what was written.
    written = [FINAL_CAFFEMODEL, FINAL_PT] + ([FINAL_ONNX] if (out / FINAL_ONNX).is_file() else [])
    log(f"{out}: done; wrote {', '.join(written)}")
    return summary


def _export_onnx(s, out: Path, log, metadata: dict):
    """Write final.onnx from the TEST net (train weights shared in). Optional: a run that trained well is not
    failed by an export problem; the reason goes into summary.json."""
    try:
        from .onnx.io import export_onnx
    except ImportError as e:
        return {"written": False, "reason": f"repro.onnx unavailable ({e})"}
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


# ---------------------------------------------------------------------------------------------- torchrun


class _Distributed:
    """This process's place in a torchrun job (repro.engine.ddp), as the driver needs it."""

    def __init__(self, device, backend):
        from .engine.ddp import init_process_group

        self.rank, self.world, self.device = init_process_group(device, backend)
        self.dp = None

    def share(self, obj):
        from .engine.ddp import broadcast_object

        return broadcast_object(obj)

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def describe(self, s) -> dict:
        import torch.distributed as dist

        feed = next(iter(s.net.feeders.values()))
        self.dp = s.comm
        return {"world_size": self.world, "backend": dist.get_backend(), "global_batch": feed.batch_size,
                "per_rank_batch": feed.local}


__all__ += ["file_id", "finish_run", "Signals", "Console", "device_feeds"]
