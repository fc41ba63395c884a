"""``tools/caffe.py``: Caffe's ``caffe`` command (tools/caffe.cpp) on our Net and Solver.

``caffe.py train -solver S [-weights W[,W2] | -snapshot S.solverstate] [-gpu N|all]
[-sigint_effect stop|snapshot|none] [-sighup_effect snapshot|stop|none]``, ``test -model M -weights W
-iterations N``, ``time -model M -iterations N``, ``device_query -gpu N``; flags as gflags reads them
(repro.caffe_flags). It runs where it is started, as ``caffe.bin`` does: every relative path (the solver's
net, its data sources, its snapshot_prefix) is taken from the working directory, and snapshots are Caffe's
``<snapshot_prefix>_iter_N.caffemodel`` / ``.solverstate`` with our ``.state.pt`` beside them for an exact
resume (``-snapshot X.solverstate`` uses ``X.state.pt`` when it is there, else Caffe's solverstate alone).
Everything is logged in glog's format on stderr, as Caffe logs (repro.glog, repro.caffelog.SolverLog).

Why train does not go through ``repro.train.run``: run() owns a run folder (its own copies of the prototxts,
snapshots under ``<folder>/snapshots/snapshot``, run.json, a lock and an identity) while ``caffe train``
writes into the working directory under the solver's own snapshot_prefix, next to the user's files (G4's
folder holds a ``solver.prototxt`` that run() would overwrite with its resolved copy). So train drives the
Solver itself with run()'s semantics: SIGINT / SIGTERM / SIGHUP act as Caffe's flags say (defaults: stop
after this iteration with a snapshot; snapshot and go on; a second SIGINT interrupts at once), a loss or
weight that is not finite stops the run before anything is snapshotted, and the exit codes are run()'s
(0 finished, 2 bad input, 3 stopped, 4 diverged).
"""
from __future__ import annotations

import signal
import sys
from pathlib import Path

import torch

from .caffe_flags import USAGE, FlagError, parse
from .errors import ReproError
from .glog import Glog, cfloat


class CaffeCliError(ReproError):
    """A caffe.py command that cannot run (Caffe's CHECK failures, as one line)."""


STOPPED, DIVERGED = 3, 4  # repro.train.EXIT_CODES


# ---------------------------------------------------------------------------------------------- devices


def gpu_ids(flag: str) -> list[int]:
    """Caffe's get_gpus: '' -> none, 'all' -> every device, '0,2' -> those."""
    if not flag:
        return []
    if flag == "all":
        n = torch.cuda.device_count()
        if n == 0:
            raise CaffeCliError("-gpu all: no CUDA device on this machine")
        return list(range(n))
    try:
        ids = [int(x) for x in flag.split(",")]
    except ValueError:
        raise CaffeCliError(f"-gpu {flag!r}: expected device ids separated by ',' or 'all'") from None
    n = torch.cuda.device_count()
    for i in ids:
        if i < 0 or i >= n:
            raise CaffeCliError(f"-gpu {flag}: there is no CUDA device {i} on this machine "
                                f"({n} device{'s' if n != 1 else ''}; leave -gpu out to run on the CPU)")
    return ids


def _one_device(gpus: list[int], glog: Glog, source: str) -> torch.device:
    if not gpus:
        glog.info(source, "Use CPU.")
        return torch.device("cpu")
    if len(gpus) > 1:
        raise CaffeCliError(f"-gpu {','.join(map(str, gpus))}: caffe.py trains on one device; for several GPUs "
                            f"run tools/train_ddp.py under torchrun")
    glog.info(source, f"Use GPU with device ID {gpus[0]}")
    glog.info(source, f"GPU device name: {torch.cuda.get_device_name(gpus[0])}")
    return torch.device("cuda", gpus[0])


# ---------------------------------------------------------------------------------------------- signals


def caffe_signals(sigint: str, sighup: str, glog: Glog):
    """Caffe's SignalHandler for ``caffe train``: SIGINT and SIGHUP each request their flag's action
    (SolverAction STOP / SNAPSHOT / NONE); SIGTERM stops as run() does (repro.train.Signals, Caffe's wording)."""
    from .train import Signals

    return Signals(lambda msg: glog.info("caffe.cpp:0", msg), {signal.SIGINT: sigint, signal.SIGHUP: sighup},
                   prefix="", stop_note="")


# ---------------------------------------------------------------------------------------------- train


def _state_for(snapshot: Path) -> Path:
    """Our exact-resume state beside a Caffe .solverstate, else the .solverstate itself."""
    name = snapshot.name
    if name.endswith(".solverstate"):
        pt = snapshot.with_name(name[:-len(".solverstate")] + ".state.pt")
        if pt.is_file():
            return pt
    return snapshot


def train(flags, glog: Glog) -> int:
    from .caffelog import SolverLog
    from .prototxt import read_solver
    from .solver import DivergedError, Solver
    from .train import device_feeds

    if not flags.solver:
        raise CaffeCliError("Need a solver definition to train (-solver FILE).")
    if flags.snapshot and flags.weights:
        raise CaffeCliError("Give a snapshot to resume training or weights to finetune but not both.")
    snapshot = Path(flags.snapshot) if flags.snapshot else None
    if snapshot is not None and not snapshot.is_file():
        raise CaffeCliError(f"-snapshot {flags.snapshot}: no such file")
    for w in filter(None, flags.weights.split(",")):
        if not Path(w).is_file():
            raise CaffeCliError(f"-weights {w}: no such file")
    param = read_solver(flags.solver)
    gpu = flags.gpu
    if not gpu and param.HasField("solver_mode") and param.solver_mode == param.GPU:
        # Caffe: the solver's solver_mode GPU / device_id pick the device when -gpu is not given; on a machine
        # without CUDA we run on the CPU instead of refusing the paper's folder.
        if torch.cuda.is_available():
            gpu = str(param.device_id)
        else:
            glog.log("caffe.cpp:180", "solver_mode is GPU but CUDA is not available here; running on the CPU",
                     "W")
    gpus = gpu_ids(gpu)
    if gpus:
        if len(gpus) > 1:
            raise CaffeCliError(f"-gpu {gpu}: caffe.py trains on one device; for several GPUs run "
                                f"tools/train_ddp.py under torchrun")
        glog.info("caffe.cpp:204", f"Using GPUs {gpus[0]}")
        glog.info("caffe.cpp:209", f"GPU {gpus[0]}: {torch.cuda.get_device_name(gpus[0])}")
        device = torch.device("cuda", gpus[0])
    else:
        glog.info("caffe.cpp:197", "Use CPU.")
        device = torch.device("cpu")
    with caffe_signals(flags.sigint_effect, flags.sighup_effect, glog) as signals:
        for w in filter(None, flags.weights.split(",")):
            glog.info("solver.cpp:72", f"Finetuning from {w}")
        if flags.level or flags.stage:
            # Caffe: train_state from -level / -stage selects the TRAIN net's layers
            param.train_state.level = flags.level
            param.train_state.stage[:] = [x for x in flags.stage.split(",")]
            s = Solver(param, weights=flags.weights or None, device=device, data_root=Path.cwd())
            s.solver_path = Path(flags.solver)
            s.snapshot_prefix = s._snapshot_prefix()  # Caffe's default prefix comes from the solver's path
        else:
            s = Solver(flags.solver, weights=flags.weights or None, device=device, data_root=Path.cwd())
        signals.attach(s)
        feeds = device_feeds(s, None, Path.cwd())
        log = SolverLog(glog, s)
        s.add_callback(log)
        try:
            if snapshot is not None:
                glog.info("caffe.cpp:235", f"Resuming from {snapshot}")
                s.restore(_state_for(snapshot))
            glog.info("caffe.cpp:239", "Starting Optimization")
            log.start()
            if snapshot is not None:
                glog.info("solver.cpp:296", f"Restoring previous solver status from {snapshot}")
            if not s.stop_requested:
                s.solve()
        except DivergedError as e:
            glog.log("solver.cpp:0", f"{e}; nothing was snapshotted after it. Lower base_lr (or check the "
                                     f"data) and train again", "E")
            return DIVERGED
        finally:
            for f in feeds:
                f.close()
        log.done(stopped=s.stop_requested)
        if s.stop_requested:
            return STOPPED
        glog.info("caffe.cpp:250", "Optimization Done.")
    return 0


# ---------------------------------------------------------------------------------------------- test


def _net(flags, phase: str, glog: Glog, source: str):
    from .net import Net

    if not flags.model:
        raise CaffeCliError(f"Need a model definition to {'score' if phase == 'TEST' else 'time'} (-model FILE).")
    device = _one_device(gpu_ids(flags.gpu), glog, source)
    stages = tuple(s for s in flags.stage.split(",") if s)
    return Net(flags.model, phase=phase, level=flags.level, stages=stages).to(device)


@torch.no_grad()
def test(flags, glog: Glog) -> int:
    """Caffe's ``caffe test``: ``iterations`` forward passes; each output value per batch, then the means."""
    if not flags.weights:
        raise CaffeCliError("Need model weights to score (-weights FILE).")
    if not Path(flags.weights).is_file():
        raise CaffeCliError(f"-weights {flags.weights}: no such file")
    if flags.iterations < 1:
        raise CaffeCliError(f"-iterations must be >= 1, got {flags.iterations}")
    net = _net(flags, "TEST", glog, "caffe.cpp:275")
    net.copy_from(flags.weights)
    glog.info("caffe.cpp:281", f"Running for {flags.iterations} iterations.")
    sums: list[list] = []   # [name, float32 running sum] per output value, in Caffe's order
    loss = 0.0
    for i in range(flags.iterations):
        out = net()
        loss += float(net.total_loss) if net.total_loss is not None else 0.0
        idx = 0
        for name, v in out.items():
            for x in v.detach().float().cpu().reshape(-1).numpy():
                if i == 0:
                    sums.append([name, x])
                else:
                    sums[idx][1] = sums[idx][1] + x  # float32, as Caffe's vector<float>
                idx += 1
                glog.info("caffe.cpp:304", f"Batch {i}, {name} = {cfloat(x)}")
    glog.info("caffe.cpp:309", f"Loss: {cfloat(loss / flags.iterations)}")
    for name, total in sums:
        mean = float(total) / flags.iterations
        w = net.loss_weights.get(name) or 0.0
        tail = f" (* {cfloat(w)} = {cfloat(w * mean)} loss)" if w else ""
        glog.info("caffe.cpp:321", f"{name} = {cfloat(mean)}{tail}")
    return 0


# ---------------------------------------------------------------------------------------------- time


def time_cmd(flags, glog: Glog) -> int:
    """Caffe's ``caffe time``: the per-layer forward/backward table and the averages."""
    from .caffe_time import time_net

    phase = flags.phase or "TRAIN"
    net = _net(flags, phase, glog, "caffe.cpp:343")
    t = time_net(net, flags.iterations, log=lambda m: glog.info("caffe.cpp:394", m))
    glog.info("caffe.cpp:397", "Average time per layer: ")
    for name, f, b in zip(t.layers, t.forward_ms, t.backward_ms):
        glog.info("caffe.cpp:400", f"{name:>10}\tforward: {cfloat(f)} ms.")
        glog.info("caffe.cpp:403", f"{name:>10}\tbackward: {cfloat(b)} ms.")
    glog.info("caffe.cpp:408", f"Average Forward pass: {cfloat(t.forward_total_ms)} ms.")
    glog.info("caffe.cpp:410", f"Average Backward pass: {cfloat(t.backward_total_ms)} ms.")
    glog.info("caffe.cpp:412", f"Average Forward-Backward: {cfloat(t.total_ms / flags.iterations)} ms.")
    glog.info("caffe.cpp:414", f"Total Time: {cfloat(t.total_ms)} ms.")
    glog.info("caffe.cpp:415", "*** Benchmark ends ***")
    return 0


# ---------------------------------------------------------------------------------------------- device_query


def device_query(flags, glog: Glog) -> int:
    """Caffe's ``caffe device_query -gpu N``: Caffe::DeviceQuery's lines for each device."""
    if not flags.gpu:
        raise CaffeCliError("Need a device ID to query (-gpu N, or -gpu all).")
    glog.info("caffe.cpp:138", f"Querying GPUs {flags.gpu}")
    for i in gpu_ids(flags.gpu):
        p = torch.cuda.get_device_properties(i)
        rows = [("Device id", i), ("Major revision number", p.major), ("Minor revision number", p.minor),
                ("Name", p.name), ("Total global memory", p.total_memory),
                ("Number of multiprocessors", p.multi_processor_count)]
        for label, value in rows:
            glog.info("common.cpp:178", f"{label + ':':<31}{value}")
    return 0


COMMANDS = {"train": train, "test": test, "time": time_cmd, "device_query": device_query}


def main(argv=None, stderr=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "-help", "--help") for a in argv) or not argv:
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    flags = parse(argv)
    glog = Glog(stderr if stderr is not None else sys.stderr)
    return COMMANDS[flags.command](flags, glog)


__all__ = ["main", "train", "test", "time_cmd", "device_query", "CaffeCliError", "FlagError", "gpu_ids"]
