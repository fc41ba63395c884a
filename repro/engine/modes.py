"""The numerics a training run chooses: ``faithful`` (the default), ``fp32``, ``tf32`` or ``fast``.

Every training tool takes ``--numerics`` (and ``--compile``); the choice is applied by
``Solver(numerics=...)`` / :meth:`repro.solver.Solver.set_numerics` and recorded in the run's run.json.

=========== ==============================================================================================
faithful    Caffe's arithmetic, proven against real Caffe (README, "Proof"): IEEE float32 with TF32 off,
            deterministic algorithms, and on CUDA the convolution weight gradient by im2col + SGEMM in
            Caffe's per-image order (``BaseConvolutionLayer::weight_cpu_gemm``), because cuDNN's fp32
            weight gradient of the grouped conv2 lands ~1.4e-3 off Caffe's.
fp32        IEEE float32 with PyTorch's native kernels: cuDNN/oneDNN everywhere (weight gradients
            included), its autotuner on (``cudnn.benchmark``), nondeterministic algorithms allowed. Same
            precision class as Caffe, not Caffe's summation order.
tf32        fp32, with TF32 tensor cores for convolutions and matrix products (10-bit mantissa inputs).
fast        bf16 autocast for convolutions and inner products, channels_last, TF32 for what stays float32.
            Weights, their gradients, Caffe's momentum history and the update stay float32; Caffe's loss
            and accuracy layers run in float32 (``repro.engine.plan.FP32_TYPES``).
=========== ==============================================================================================

``--compile`` adds torch.compile of each run of layers between float32 loss layers (any mode; a first step
takes tens of seconds). On the CPU, fp32/tf32 differ from faithful only in that oneDNN's weight gradient is
used either way (the CPU path has no Caffe-order wgrad; see repro/layers/vision.py) and deterministic mode is
off; ``fast`` uses bf16 where the CPU supports it (benchmarks/RESULTS.md says when it pays).

That fast mode learns the same thing as faithful mode is measured, not assumed: benchmarks/fast_equivalence.py
trains the small net on the built-in data both ways and compares the test accuracy (benchmarks/RESULTS.md).
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import torch

from ..errors import ReproError
from ..numerics import set_faithful


class NumericsError(ReproError):
    """An unknown numerics mode."""


@dataclass(frozen=True)
class Numerics:
    """The switches of one mode (see the module doc)."""

    name: str
    bf16: bool = False
    channels_last: bool = False
    tf32: bool = False
    cudnn_benchmark: bool = False
    # None: the fused LRN on CUDA, unless compiling (the compiler fuses the layer's own ops) or in channels_last
    # (the fused LRN sums over channels in NCHW; the layer's channel slices work on NHWC as they are)
    fused_lrn: bool | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def faithful(self) -> bool:
        return self.name == "faithful"


MODES = {
    "faithful": Numerics("faithful"),
    "fp32": Numerics("fp32", cudnn_benchmark=True),
    "tf32": Numerics("tf32", tf32=True, cudnn_benchmark=True),
    "fast": Numerics("fast", bf16=True, channels_last=True, tf32=True, cudnn_benchmark=True),
}
FAITHFUL, FP32, TF32, FAST = (MODES[k] for k in ("faithful", "fp32", "tf32", "fast"))


def numerics(mode: str | Numerics) -> Numerics:
    """The mode named ``mode`` (or ``mode`` itself)."""
    if isinstance(mode, Numerics):
        return mode
    try:
        return MODES[str(mode)]
    except KeyError:
        raise NumericsError(f"unknown numerics {mode!r}; choose one of {', '.join(MODES)}") from None


def apply_numerics(mode: str | Numerics) -> Numerics:
    """Set the process-wide backend switches of ``mode``; ``faithful`` is ``set_faithful(True)``.

    Building a :class:`repro.net.Net` calls ``set_faithful(True)`` again: a Solver applies its mode after its
    nets are built."""
    mode = numerics(mode)
    if mode.faithful:
        set_faithful(True)
        return mode
    set_faithful(False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # newer torch prefers fp32_precision; the legacy flags still work
        torch.backends.cudnn.allow_tf32 = bool(mode.tf32)
        torch.backends.cuda.matmul.allow_tf32 = bool(mode.tf32)
        torch.set_float32_matmul_precision("high" if mode.tf32 else "highest")
        torch.backends.cudnn.benchmark = bool(mode.cudnn_benchmark)
    return mode


def plan_options(mode: Numerics, device: torch.device, compile: bool = False) -> dict:
    """The :class:`repro.engine.plan.NetPlan` options of ``mode`` on ``device``."""
    fused = mode.fused_lrn
    if fused is None:
        fused = device.type == "cuda" and not (compile or mode.channels_last)
    return {"autocast": torch.bfloat16 if mode.bf16 else None, "channels_last": mode.channels_last,
            "compile": bool(compile), "fused_lrn": fused}


def to_channels_last(params, history) -> None:
    """Store 4-D weights and their momentum history NHWC (same Parameter objects, so the solver, snapshots and
    TEST-net weight sharing keep working). ``params``/``history``: iterables of tensors."""
    for t in list(params) + list(history):
        if t.dim() == 4:
            t.data = t.data.contiguous(memory_format=torch.channels_last)
