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
import os
import warnings

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..data.device_feed import DeviceFeed
from ..errors import ReproError


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


# ---------------------------------------------------------------------------------------------- the comm


class _PlanModule(nn.Module):
    """What DDP wraps: the TRAIN net's parameters, a forward that returns the loss through the solver's plan."""

    def __init__(self, solver):
        super().__init__()
        self.net = solver.net
        self._solver = [solver]  # not a submodule: the solver is not an nn.Module

    def forward(self, inputs: dict):
        return self._solver[0]._plan_loss(inputs)


class DataParallel:
    """The comm of a data-parallel :class:`repro.solver.Solver` (``solver.comm``): its forward/backward goes
    through DistributedDataParallel, which averages the gradients over the ranks during the last pass's
    backward (``no_sync`` for the first iter_size - 1 passes); the losses are averaged over the ranks when
    they are read; a stop requested on any rank is agreed every ``check_stop_every`` iterations; only rank 0
    tests, emits and writes snapshots. Everything else is the Solver's own step loop.
    """

    def __init__(self, solver, *, check_stop_every: int = 20):
        if not dist.is_initialized():
            raise DistributedError("no process group: call repro.engine.ddp.init_process_group() first")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.is_writer = self.rank == 0
        self.device = torch.device(solver.device)
        ids = [self.device.index] if self.device.type == "cuda" else None
        # broadcast_buffers off: the Net's buffers are an empty device probe; BatchNorm statistics are blobs.
        # (newer torch deprecates the name in favour of forward_sync_buffers, which 2.4 - 2.11 lack)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.ddp = nn.parallel.DistributedDataParallel(_PlanModule(solver), device_ids=ids,
                                                           broadcast_buffers=False)
        self.check_stop_every = max(1, int(check_stop_every))

    def forward_backward(self, solver, inputs: dict, last: bool) -> torch.Tensor:
        with contextlib.nullcontext() if last else self.ddp.no_sync():
            loss = self.ddp(inputs)
            loss.backward()
        return loss

    def _comm_device(self):
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def agree_stop(self, requested: bool, it: int) -> bool:
        """Every rank stops at the same iteration: one small all-reduce every check_stop_every iterations."""
        if it % self.check_stop_every:
            return False
        flag = torch.tensor([1.0 if requested else 0.0], device=self._comm_device())
        dist.all_reduce(flag)
        return bool(flag.item() > 0)

    def mean_over_ranks(self, values: torch.Tensor) -> torch.Tensor:
        v = values.detach().float().to(self._comm_device())
        dist.all_reduce(v)
        return v / self.world if self.world > 1 else v

    def reseed(self, solver) -> None:
        """Give this rank its own dropout stream (after the Solver's global seeding or a restore)."""
        torch.manual_seed(rank_seed(solver.seed, self.rank, solver.iter))
        if getattr(solver, "caffe_rng", None) is not None:
            # a seeded CPU run's Caffe stream: one per rank too (Caffe seeds each solver with random_seed + rank)
            from ..caffe_rng import CaffeRNG

            solver.caffe_rng = CaffeRNG(rank_seed(solver.seed, self.rank, solver.iter))


# ---------------------------------------------------------------------------------------------- building


def data_parallel(solver, *, rank: int, world: int, data_root=None):
    """Make ``solver`` (built from the prototxt's net, global batch in its Data layer) data-parallel: its
    TRAIN Data layer is fed by this rank's DeviceFeed shard of the global batch, and its comm becomes
    :class:`DataParallel`. Returns the feed (close it at the end)."""
    layers = [n for n in solver.net.layer_names if getattr(solver.net.layer(n), "reads_data", False)]
    if len(layers) != 1:
        raise DistributedError(f"the TRAIN net has {len(layers)} data layers; a distributed run needs exactly one")
    name = layers[0]
    feeder = solver.net.feeder(name)
    if feeder.batch_size % world:
        raise DistributedError(f"the global batch {feeder.batch_size} does not split over {world} processes")
    feed = DeviceFeed.from_feeder(feeder, device=solver.device, shard=(rank, world))
    feeder.close()
    # The feed's cursor and draws go into the snapshots with the Net's own readers (checkpoint.data_state).
    solver.net.feeders[name] = feed
    solver.comm = DataParallel(solver)
    solver.comm.reseed(solver)
    return feed


def shared_seed(param) -> None:
    """One seed for all ranks (random_seed -1 draws one on rank 0): same initial weights, same data stream."""
    seed = int(param.random_seed) if param.random_seed >= 0 else None
    param.random_seed = broadcast_object(seed if seed is not None else int.from_bytes(os.urandom(4), "little")
                                         & 0x7FFFFFFF)
