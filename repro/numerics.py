"""Faithful float32 numerics: what Caffe computes, not what is fastest.

Caffe does every convolution and matrix product in IEEE float32 (cuBLAS SGEMM / cuDNN without tensor-core
TF32, or OpenBLAS on the CPU). PyTorch on Ampere and later GPUs allows TF32 for cuDNN convolutions by
default, which rounds the inputs of every product to a 10-bit mantissa: relative errors of ~1e-3 instead of
~1e-7, far outside the 1e-5 parity we check against Caffe's own numbers (tests/test_golden_g1.py).
``set_faithful(True)`` (the default a :class:`repro.net.Net` applies) turns TF32 off and asks for
deterministic algorithms, so that two runs of the same net on the same device give the same numbers, and
makes CUDA convolutions compute their weight gradients with im2col + SGEMM (Caffe's algorithm) instead of
cuDNN, whose weight gradient for CaffeNet's grouped 5x5 conv2 is ~1.4e-3 off Caffe's even with TF32 off.

These are process-wide PyTorch settings; ``set_faithful(False)`` puts back PyTorch's defaults (TF32 for
cuDNN convolutions, none for matmul, nondeterministic algorithms allowed).
"""
from __future__ import annotations

import os
import sys
import warnings

import torch
import torch.utils.deterministic  # noqa: F401  (torch >= 2.1: the NaN-fill flag)

from .errors import ReproError

# cuBLAS only gives reproducible results with a fixed workspace; it reads this when CUDA starts, so it must
# be set before the first CUDA call (setdefault: a user's own choice wins).
_CUBLAS_WORKSPACE = ":4096:8"

_state = {"faithful": None}


def set_faithful(enabled: bool = True) -> None:
    """Switch IEEE float32 products and deterministic algorithms on (True) or back to PyTorch's defaults."""
    enabled = bool(enabled)
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", _CUBLAS_WORKSPACE)
    with warnings.catch_warnings():
        # The legacy allow_tf32 flags are the ones every torch >= 1.7 knows; newer releases may warn that
        # they are superseded by fp32_precision, which they set consistently for us.
        warnings.simplefilter("ignore")
        torch.backends.cuda.matmul.allow_tf32 = False  # PyTorch's default as well: never TF32 for matmul
        torch.backends.cudnn.allow_tf32 = not enabled
        torch.set_float32_matmul_precision("highest")
        # cuDNN's autotuner may pick a different (non-deterministic) algorithm run to run.
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = enabled
        # warn_only: an operation without a deterministic implementation warns instead of failing a run.
        _set_deterministic(enabled)
        _set_fill_uninitialized(not enabled)
    _state["faithful"] = enabled


def _set_fill_uninitialized(fill: bool) -> None:
    """Deterministic mode also makes PyTorch fill every new tensor with NaN before the op writes it, a guard
    against kernels that read memory they never wrote. Our layers write every element of what they allocate
    (as Caffe's, which has no such guard), so faithful mode turns the fill off: it was 4-5% of a CPU training
    step of the small net (benchmarks/profile_step.py) and costs a full extra write of every new blob on a
    GPU. ``set_faithful(False)`` puts back PyTorch's default (on; it only acts under deterministic mode)."""
    torch.utils.deterministic.fill_uninitialized_memory = fill


def _set_deterministic(enabled: bool) -> None:
    if (torch.are_deterministic_algorithms_enabled() == enabled
            and torch.is_deterministic_algorithms_warn_only_enabled() == enabled):
        return
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if "torch._inductor" in sys.modules or setter is None:
        torch.use_deterministic_algorithms(enabled, warn_only=True)
    else:
        # The public function first imports torch._inductor (~2 s) only to set the compiler's own flag; set
        # the eager flag directly until something imports the compiler (then the public call is cheap).
        setter(enabled, warn_only=enabled)


def precise_cuda_wgrad() -> bool:
    """Whether Convolution layers on CUDA compute their weight gradient without cuDNN (see
    repro.layers.vision._ConvCaffeWgrad: cuDNN's is ~1e-3 off Caffe's for a grouped 5x5 conv). On with
    ``set_faithful(True)``; costs some speed."""
    return _state["faithful"] is True


def is_faithful() -> bool:
    """True when the settings ``set_faithful(True)`` makes are in force (checked live, not remembered)."""
    return _state["faithful"] is True and not tf32_enabled() and torch.are_deterministic_algorithms_enabled()


def tf32_enabled() -> bool:
    """Whether cuDNN convolutions or CUDA matmuls may use TF32 now."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return bool(torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32)
        except RuntimeError:
            # Somebody set the new fp32_precision API per operator; read that instead.
            conv = torch.backends.cudnn.conv.fp32_precision
            mm = torch.backends.cuda.matmul.fp32_precision
            return "tf32" in (conv, mm)


def numerics_state() -> dict:
    """The settings that decide float32 results, for a run's record (what `set_faithful` controls)."""
    return {
        "faithful": is_faithful(),
        "tf32": tf32_enabled(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "fill_uninitialized_memory": bool(torch.utils.deterministic.fill_uninitialized_memory),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }


class DeviceError(ReproError):
    """A device a user named that this machine does not have (or a string that names no device)."""


def resolve_device(device=None) -> torch.device:
    """The ``torch.device`` for a ``--device`` value (None: the CPU), checked against this machine, so that
    ``--device cuda`` without CUDA is one clear line instead of a traceback from the first CUDA call."""
    if device is None:
        return torch.device("cpu")
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise DeviceError(f"device {device!r}: not a device name ({e}); use cpu, cuda or cuda:N") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r}: CUDA is not available on this machine (torch "
                              f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); use --device cpu")
        n = torch.cuda.device_count()
        if d.index is not None and d.index >= n:
            raise DeviceError(f"device {device!r}: this machine has {n} CUDA device(s) (cuda:0 .. cuda:{n - 1})")
    elif d.type not in ("cpu", "meta"):
        raise DeviceError(f"device {device!r}: only cpu and cuda devices are supported")
    return d
