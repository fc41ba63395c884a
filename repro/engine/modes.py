"""Fast mode: bf16 autocast, channels_last, TF32 and (optionally) torch.compile for a Solver's training step.

Faithful mode stays the default everywhere: a :class:`repro.net.Net` sets IEEE float32 and deterministic
algorithms when it is built (repro.numerics), and nothing here runs unless asked for::

    solver = Solver("prototxt/caffenet/solver.prototxt", device="cuda")
    step = fast_step(solver, FastMode())            # bf16 + channels_last + TF32 + cudnn.benchmark
    for i in range(n):
        loss = step.step(next(feed))                # device tensor; read it when displaying
    solver.test_all()                               # TEST nets: no autocast (TF32 products while it is on)

What each switch changes, and why it stays close to Caffe:

* ``bf16``: convolutions and inner products run under ``torch.autocast(bfloat16)`` (8-bit mantissa, float32
  range, so no loss scaling). Weights, their gradients, Caffe's momentum history and the update stay float32
  (autocast keeps float32 master weights); Caffe's loss and accuracy layers run in float32
  (``repro.engine.plan.FP32_TYPES``).
* ``channels_last``: the 4-D weights, their momentum history and the data are stored NHWC, the layout tensor
  cores read without transposes. Values and shapes do not change.
* ``tf32``: float32 products that remain (everything with ``bf16`` off) may use TF32 tensor cores.
* ``cudnn_benchmark``: cuDNN times its algorithms once per shape and keeps the fastest (nondeterministic).
* ``compile``: each run of layers between loss layers goes through ``torch.compile`` (fuses LRN, ReLU,
  dropout and the casts; a first step takes tens of seconds).

That fast mode learns the same thing as faithful mode is measured, not assumed: benchmarks/fast_equivalence.py
trains the small net on the built-in data both ways and compares the test accuracy (benchmarks/RESULTS.md).
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import torch

from ..numerics import set_faithful
from .plan import TrainStep


@dataclass(frozen=True)
class FastMode:
    """The switches of fast mode (see the module doc). ``FastMode()`` turns on everything but compile."""

    bf16: bool = True
    channels_last: bool = True
    tf32: bool = True
    cudnn_benchmark: bool = True
    compile: bool = False
    # None: the fused LRN on CUDA, unless compiling (the compiler fuses the layer's own ops) or in channels_last
    # (the fused LRN sums over channels in NCHW; the layer's channel slices work on NHWC as they are)
    fused_lrn: bool | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def faithful(self) -> bool:
        return not (self.bf16 or self.channels_last or self.tf32 or self.cudnn_benchmark or self.compile)


FAITHFUL = FastMode(bf16=False, channels_last=False, tf32=False, cudnn_benchmark=False, compile=False)
TF32_ONLY = FastMode(bf16=False, channels_last=False, tf32=True, cudnn_benchmark=True, compile=False)


def apply_numerics(mode: FastMode) -> None:
    """Set the process-wide backend switches of ``mode``; FAITHFUL puts back ``set_faithful(True)``.

    Note that building a :class:`repro.net.Net` calls ``set_faithful(True)`` again: apply this after the
    nets are built (``fast_step`` does)."""
    if mode.faithful:
        set_faithful(True)
        return
    set_faithful(False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # newer torch prefers fp32_precision; the legacy flags still work
        torch.backends.cudnn.allow_tf32 = bool(mode.tf32)
        torch.backends.cuda.matmul.allow_tf32 = bool(mode.tf32)
        torch.set_float32_matmul_precision("high" if mode.tf32 else "highest")
        torch.backends.cudnn.benchmark = bool(mode.cudnn_benchmark)


def to_channels_last(solver) -> None:
    """Store the TRAIN net's 4-D weights and their momentum history NHWC (same Parameter objects, so the
    solver, snapshots and TEST-net weight sharing keep working)."""
    for blobs in solver.net.params.values():
        for w in blobs:
            if w.dim() == 4:
                w.data = w.data.contiguous(memory_format=torch.channels_last)
    for hist in solver.history.values():
        for v in hist:
            if v.dim() == 4:
                v.data = v.data.contiguous(memory_format=torch.channels_last)


def fast_step(solver, mode: FastMode = FastMode(), **plan_options) -> TrainStep:
    """A :class:`repro.engine.plan.TrainStep` for ``solver`` in ``mode`` (numerics set, layouts converted)."""
    apply_numerics(mode)
    if mode.channels_last:
        to_channels_last(solver)
    fused = mode.fused_lrn
    if fused is None:
        fused = torch.device(solver.device).type == "cuda" and not (mode.compile or mode.channels_last)
    options = dict(autocast=torch.bfloat16 if mode.bf16 else None, channels_last=mode.channels_last,
                   compile=mode.compile, fused_lrn=fused)
    options.update(plan_options)
    return TrainStep(solver, **options)
