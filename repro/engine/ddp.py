"""One net on several GPUs (or CPU processes): torchrun + DistributedDataParallel, Caffe's update unchanged.

    torchrun --nproc_per_node 4 tools/train_ddp.py --solver prototxt/caffenet/solver.prototxt --out runs/x

The global batch stays the prototxt's (the paper's 256), whatever the process count, so a result does not
depend on how many GPUs trained it:

* data: every rank draws the crops/mirrors of the whole global batch from the same Caffe RNG stream and reads
  only its slice (``repro.data.device_feed.DeviceFeed`` with ``shard=(rank, world)``), so the global batch is
  exactly the one a single process reads from the same Data layer;
* gradients: each rank's loss is normalised by its local batch (Caffe's VALID / BATCH_SIZE normaliser), and
  DDP averages the gradients over the ranks during the backward, which gives the gradient of the global
  batch's loss (equal batches; with an ``ignore_label`` the per-rank valid counts may differ and this is the
  mean of the rank means);
* the update: every rank then applies ``Solver.apply_update`` (Caffe's SGD, weight decay, momentum) to the
  same averaged gradients, so weights and history stay identical without any further exchange;
* rank 0 alone tests, logs and snapshots (weights are the same everywhere). Dropout draws from a per-rank
  stream (the ranks' masks must not repeat each other), so with dropout the run is not bit-identical to a
  single process, only statistically the same; without it the weights agree to float32 summation order
  (~1e-7; tests/test_distributed.py checks 2 gloo processes against a single one).

Snapshots are Caffe's (.caffemodel, .solverstate) plus our .state.pt, which also holds the feed's cursor and
draws; a run killed at any point resumes from its newest snapshot on any process count that divides the batch.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import warnings
from collections import deque
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..errors import ReproError
from .plan import NetPlan, feedable


class DistributedError(ReproError):
    """A distributed run that cannot work as asked (no process group, a batch that does not split)."""


# ---------------------------------------------------------------------------------------------- processes


def init_process_group(device: str | None = None, backend: str | None = None) -> tuple[int, int, torch.device]:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT); returns
    (rank, world, device). Device: cuda:LOCAL_RANK when CUDA is there (backend nccl), else cpu (gloo)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise DistributedError("RANK / WORLD_SIZE are not set: start this under torchrun "
                               "(torchrun --nproc_per_node N tools/train_ddp.py ...)")
    local = int(os.environ.get("LOCAL_RANK", 0))
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if device.type == "cuda" else "gloo"))
    return dist.get_rank(), dist.get_world_size(), device


def broadcast_object(obj, src: int = 0):
    """``obj`` from rank ``src`` on every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def rank_seed(seed: int, rank: int, it: int = 0) -> int:
    """The per-rank seed of dropout's stream (distinct per rank, reproducible, fresh after a resume)."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, rank, it]).generate_state(1)[0])


# ---------------------------------------------------------------------------------------------- the trainer


class _PlanModule(nn.Module):
    """What DDP wraps: the TRAIN net's parameters, a forward that returns the loss (through NetPlan)."""

    def __init__(self, net, plan: NetPlan):
        super().__init__()
        self.net = net
        self.plan = plan

    def forward(self, inputs: dict):
        loss, _ = self.plan(inputs)
        return loss


class DistributedTrainer:
    """Caffe's ``Solver::Step`` with a data-parallel ForwardBackward, on ``solver`` (whose TRAIN net takes its
    data as inputs: built from :func:`repro.engine.plan.feedable`) and ``feed`` (this rank's shard).

    ``step(iters)`` / ``solve()`` as the Solver's; ``callbacks`` of the solver receive the train, test and
    snapshot events on rank 0 only. ``plan_options`` go to NetPlan (fused_lrn, autocast, ...).
    """

    def __init__(self, solver, feed, *, check_stop_every: int = 20, **plan_options):
        if not dist.is_initialized():
            raise DistributedError("no process group: call repro.engine.ddp.init_process_group() first")
        self.solver, self.feed = solver, feed
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.device = torch.device(solver.device)
        self.plan = NetPlan(solver.net, **plan_options)
        module = _PlanModule(solver.net, self.plan)
        ids = [self.device.index] if self.device.type == "cuda" else None
        # broadcast_buffers off: the Net's buffers are an empty device probe; BatchNorm statistics are blobs.
        # (newer torch deprecates the name in favour of forward_sync_buffers, which 2.4 - 2.11 lack)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.ddp = nn.parallel.DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)
        self.check_stop_every = max(1, int(check_stop_every))
        self._losses: deque = deque(maxlen=max(1, int(solver.param.average_loss)))
        self.reseed()

    def reseed(self) -> None:
        """Give this rank its own dropout stream (after the Solver's global seeding or a restore)."""
        s = rank_seed(self.solver.seed, self.rank, self.solver.iter)
        torch.manual_seed(s)

    def _emit(self, event: dict) -> None:
        if self.rank == 0:
            for fn in self.solver.callbacks:
                fn(event)

    def _forward_backward(self) -> torch.Tensor:
        """iter_size passes; DDP all-reduces (averages) the gradients during the last pass's backward."""
        for blobs in self.solver.net.params.values():
            for w in blobs:
                w.grad = None
        n = int(self.solver.param.iter_size)
        total = None
        for j in range(n):
            batch = self.feed.next_batch()
            sync = self.ddp.no_sync() if j < n - 1 else contextlib.nullcontext()
            with sync:
                loss = self.ddp(batch)
                loss.backward()
            total = loss.detach() if total is None else total + loss.detach()
        return total / n

    def _stop_agreed(self) -> bool:
        """Every rank stops at the same iteration: one small all-reduce every check_stop_every iterations."""
        if self.solver.iter % self.check_stop_every:
            return False
        flag = torch.tensor([1.0 if self.solver.stop_requested else 0.0], device=self._comm_device())
        dist.all_reduce(flag)
        return bool(flag.item() > 0)

    def _comm_device(self):
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def _mean_over_ranks(self, value: torch.Tensor) -> float:
        v = value.detach().float().reshape(1).to(self._comm_device())
        dist.all_reduce(v)
        return float(v.item()) / self.world

    def test_all(self) -> list[dict]:
        """Rank 0 tests (the TEST nets share the TRAIN weights, identical on every rank)."""
        return self.solver.test_all() if self.rank == 0 else []

    def step(self, iters: int) -> None:
        s, p = self.solver, self.solver.param
        stop_iter = s.iter + int(iters)
        self._losses.clear()  # Caffe restarts the smoothing window in every Step call
        while s.iter < stop_iter:
            if p.test_interval and s.iter % p.test_interval == 0 and (s.iter > 0 or p.test_initialization):
                self.test_all()
            display = bool(p.display) and s.iter % p.display == 0
            self._losses.append(self._forward_backward())
            rate = s.apply_update()  # Caffe: SGDSolver::ApplyUpdate on the averaged diffs, on every rank
            if display:
                # Caffe: Solver::UpdateSmoothedLoss (the mean of the last average_loss losses), over all ranks
                s.smoothed_loss = self._mean_over_ranks(torch.stack(list(self._losses)).mean())
                self._emit({"type": "train", "iter": s.iter, "loss": s.smoothed_loss, "lr": rate,
                            "outputs": {"loss": s.smoothed_loss}})
            s.iter += 1
            stop = self._stop_agreed()
            if (p.snapshot and s.iter % p.snapshot == 0) or stop:
                self.snapshot()
            if stop:
                s.request_stop()
                break

    def solve(self) -> None:
        """Caffe: Solver::Solve: step to max_iter, a last snapshot (snapshot_after_train), a last test."""
        s, p = self.solver, self.solver.param
        self.step(p.max_iter - s.iter)
        if s.stop_requested:
            return
        if p.snapshot_after_train and (not p.snapshot or s.iter % p.snapshot):
            self.snapshot()
        if p.display and s.iter % p.display == 0:
            # Caffe: Solver::Solve's last display: a forward-only pass on the next batch
            with torch.no_grad():
                loss = self.ddp.module(self.feed.next_batch())
            self._losses.append(loss.detach())
            s.smoothed_loss = self._mean_over_ranks(torch.stack(list(self._losses)).mean())
            self._emit({"type": "train", "iter": s.iter, "loss": s.smoothed_loss, "lr": s.lr,
                        "outputs": {"loss": s.smoothed_loss}})
        if p.test_interval and s.iter % p.test_interval == 0:
            self.test_all()

    def snapshot(self):
        if self.rank == 0:
            return self.solver.snapshot()
        return None

    def restore(self, path) -> None:
        self.solver.restore(path)
        self.reseed()


# ---------------------------------------------------------------------------------------------- building


def distributed_solver(solver_param, *, device, rank: int, world: int, data_root=None, weights=None):
    """Build the Solver of one rank and its feed: the TRAIN net's Data layer becomes an Input of the local
    batch, fed by a DeviceFeed shard of the global batch. Returns (solver, feed)."""
    from ..data.device_feed import DeviceFeed
    from ..prototxt import filter_net, read_net
    from ..solver import Solver, resolve_path

    param = type(solver_param)()
    param.CopyFrom(solver_param)
    # One seed for all ranks (random_seed -1 draws one on rank 0): same initial weights, same data stream.
    seed = int(param.random_seed) if param.random_seed >= 0 else None
    param.random_seed = broadcast_object(seed if seed is not None else int.from_bytes(os.urandom(4), "little")
                                         & 0x7FFFFFFF)
    train = _train_net_param(param, read_net, resolve_path)
    layers = [lp for lp in filter_net(train, "TRAIN").layer if lp.type in ("Data", "ImageData")]
    if len(layers) != 1:
        raise DistributedError(f"the TRAIN net has {len(layers)} data layers; a distributed run needs exactly one")
    global_batch = int(layers[0].data_param.batch_size or layers[0].image_data_param.batch_size)
    if global_batch % world:
        raise DistributedError(f"the global batch {global_batch} does not split over {world} processes")
    net, replaced = feedable(train, "TRAIN", batch_size=global_batch // world)
    generic = len(param.test_iter) - len(param.test_net) - len(param.test_net_param)
    uses_generic = param.HasField("net") or param.HasField("net_param")
    for f in ("net", "net_param", "train_net", "train_net_param"):
        param.ClearField(f)
    param.train_net_param.CopyFrom(net)
    if uses_generic:
        for _ in range(max(0, generic)):  # the generic net's TEST phase, as Solver::InitTestNets takes it
            param.test_net_param.add().CopyFrom(train)
    solver = Solver(param, weights, device=device, data_root=data_root)
    (name, lp), = replaced.items()
    feed = DeviceFeed.from_layer(lp, "TRAIN", data_root, seed=solver.seed, device=device, shard=(rank, world))
    # The feed's cursor and draws go into the snapshots with the Net's own readers (checkpoint.data_state).
    solver.net.feeders[name] = feed
    return solver, feed


def _train_net_param(param, read_net, resolve_path):
    for field in ("train_net_param", "net_param"):
        if param.HasField(field):
            return read_net(getattr(param, field))
    field = "train_net" if param.HasField("train_net") else "net"
    return read_net(str(resolve_path(getattr(param, field), None, field)))


# ---------------------------------------------------------------------------------------------- the run


def run_ddp(solver, out_dir, *, weights=None, device=None, backend=None, data_root=None,
            max_iter: int | None = None, record: dict | None = None, keep_states: int | None = 2,
            onnx: bool = True, log=print, **plan_options) -> dict | None:
    """``repro.train.run`` on every process of a torchrun job: the same run folder (resolved prototxts,
    run.json, log.jsonl, snapshots/, summary.json, final.*), written by rank 0; resumes from the newest
    snapshot. Returns the summary on rank 0, None elsewhere."""
    from .. import train as T
    from ..checkpoint import atomic_write_text, latest_state
    from ..prototxt import read_solver

    rank, world, device = init_process_group(device, backend)
    out = Path(out_dir).absolute()
    say = log if rank == 0 else (lambda *a, **k: None)
    status = None
    if rank == 0:
        try:
            status = _prepare_folder(T, solver, out, max_iter, data_root, latest_state, atomic_write_text)
        except (ValueError, OSError) as e:
            status = {"error": f"{type(e).__name__}: {e}"}
    status = broadcast_object(status)
    if status and "error" in status:
        raise DistributedError(status["error"])
    if status and status.get("finished"):
        say(f"{out}: already finished (final.caffemodel present); not training again")
        return status["summary"] if rank == 0 else None

    param = read_solver(out / T.SOLVER_FILE)
    param.train_net = str(out / T.TRAIN_FILE)
    param.test_net[:] = [str(out / n) for n in param.test_net]
    s, feed = distributed_solver(param, device=device, rank=rank, world=world, data_root=out)
    s.snapshot_prefix = str(out / T.SNAPSHOT_PREFIX)
    trainer = DistributedTrainer(s, feed, **plan_options)
    state = latest_state(out / T.SNAPSHOT_PREFIX)
    jlog = T.JsonLog(out / T.LOG_FILE)
    if state is not None:
        trainer.restore(state)
        say(f"{out}: resuming from {state.name} (iteration {s.iter}) on {world} processes")
    elif weights is not None:
        s.net.copy_from(weights)
    if rank == 0:
        jlog.truncate_to(s.iter)
        info = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv, "cwd": os.getcwd(),
                "git": T.git_state(), "versions": T.versions(), "device": str(device), "seed": s.seed,
                "record": record or {}, "weights": None if weights is None else str(weights),
                "distributed": {"world_size": world, "backend": dist.get_backend(),
                                "global_batch": feed.batch_size, "per_rank_batch": feed.local}}
        if state is not None:
            prev = json.loads((out / T.RUN_FILE).read_text()) if (out / T.RUN_FILE).is_file() else {}
            info = {**prev, "resumes": prev.get("resumes", []) + [
                {"iter": s.iter, "at": info["started"], "git": info["git"], "world_size": world}]}
        atomic_write_text(out / T.RUN_FILE, json.dumps(info, indent=1) + "\n")

    def on_event(rec: dict) -> None:
        if rec["type"] in ("train", "test"):
            jlog.write({**rec, "time": round(time.time(), 3)})
        elif rec["type"] == "snapshot":
            T.prune_states(out / Path(T.SNAPSHOT_PREFIX).parent, keep_states)
        say(T.console_line(rec))

    s.add_callback(on_event)
    with T.StopOnSignal(s, say):
        trainer.solve()
    feed.close()
    if s.stop_requested:
        say(f"{out}: stopped at iteration {s.iter}; run again to resume")
        return {"status": "stopped", "iter": s.iter} if rank == 0 else None
    result = T.finish_run(s, out, jlog, onnx, say) if rank == 0 else None
    dist.barrier()
    return result


def _prepare_folder(T, solver, out: Path, max_iter, data_root, latest_state, atomic_write_text):
    """Rank 0: the run folder's prototxts (as repro.train.run writes them), or the finished run's summary."""
    out.mkdir(parents=True, exist_ok=True)
    if (out / T.FINAL_CAFFEMODEL).is_file() and (out / T.SUMMARY_FILE).is_file():
        return {"finished": True, "summary": json.loads((out / T.SUMMARY_FILE).read_text())}
    files = T.resolved_files(solver, max_iter, data_root)
    if (out / T.SOLVER_FILE).is_file() and latest_state(out / T.SNAPSHOT_PREFIX) is not None:
        changed = [n for n in files if not (out / n).is_file() or (out / n).read_text() != files[n]]
        if changed:
            raise T.RunError(f"{out} holds snapshots of a different run ({', '.join(changed)} differ); use another "
                             f"output folder or remove this one")
    for name, text in files.items():
        if not (out / name).is_file() or (out / name).read_text() != text:
            atomic_write_text(out / name, text)
    return {}
