"""Caffe's SGD update on PyTorch tensors: ``SGDSolver::ApplyUpdate`` (ClipGradients, Normalize,
Regularize, ComputeUpdateValue) and ``Net::Update``, with torch._foreach ops (one kernel per step for all
blobs of a group). See repro/solver.py for the formula and why torch.optim.SGD differs."""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

import numpy as np
import torch

from .errors import ReproError

_f32 = np.float32


class SolverError(ReproError):
    """A solver.prototxt that Caffe would refuse, or a solver used in a way it cannot be."""



def clip_gradients_(grads: Sequence[torch.Tensor], clip_gradients: float) -> float | None:
    """Caffe: ``SGDSolver::ClipGradients``. When the global L2 norm of all diffs exceeds ``clip_gradients``
    (> 0; Caffe's default -1 disables it), scale every diff by ``clip_gradients / norm``.

    Runs before Normalize, so with iter_size > 1 it sees the *summed* diffs, as Caffe does.
    Returns the scale factor applied, or None.
    """
    if clip_gradients < 0 or not grads:
        return None
    sumsq = sum(float(torch.sum(g.double() * g.double())) for g in grads)
    norm = float(_f32(math.sqrt(sumsq)))
    if norm <= float(_f32(clip_gradients)):
        return None
    scale = float(_f32(_f32(clip_gradients) / _f32(norm)))
    torch._foreach_mul_(list(grads), scale)
    return scale


@torch.no_grad()
def sgd_update_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    history: Sequence[torch.Tensor],
    *,
    rate: float,
    lr_mults: Sequence[float],
    decay_mults: Sequence[float],
    momentum: float,
    weight_decay: float,
    regularization_type: str = "L2",
    iter_size: int = 1,
    clip_gradients: float = -1.0,
    nesterov: bool = False,
) -> None:
    """One Caffe update, in place on ``params`` and ``history`` (``grads`` are overwritten, as Caffe
    overwrites the diffs). All tensors float32; lists aligned with Caffe's learnable-param order.

    Blobs with ``lr_mult == 0`` are left alone: their history stays zero and Caffe's update for them is
    ``w - (m * 0 + 0 * g) = w``.
    """
    n = len(params)
    if not (len(grads) == len(history) == len(lr_mults) == len(decay_mults) == n):
        raise ValueError("params, grads, history, lr_mults and decay_mults must have the same length")
    if regularization_type not in ("L2", "L1"):
        raise SolverError(f'regularization_type: unknown {regularization_type!r}; Caffe knows "L2" and "L1"')
    clip_gradients_(grads, clip_gradients)
    # Group blobs by their float32 local rate and decay so each group is a handful of _foreach calls.
    groups: dict[tuple[float, float], list[int]] = defaultdict(list)
    for i in range(n):
        if lr_mults[i] == 0:
            continue
        # Caffe: Dtype local_rate = rate * params_lr[i]; Dtype local_decay = weight_decay * params_weight_decay[i]
        local_rate = float(_f32(_f32(rate) * _f32(lr_mults[i])))
        local_decay = float(_f32(_f32(weight_decay) * _f32(decay_mults[i])))
        groups[(local_rate, local_decay)].append(i)
    m = float(_f32(momentum))
    for (local_rate, local_decay), idx in groups.items():
        w = [params[i] for i in idx]
        g = [grads[i] for i in idx]
        v = [history[i] for i in idx]
        if iter_size != 1:  # Caffe: SGDSolver::Normalize scales the accumulated diff by 1/iter_size
            torch._foreach_mul_(g, float(_f32(1.0) / _f32(iter_size)))
        if local_decay:  # Caffe: SGDSolver::Regularize
            if regularization_type == "L2":
                torch._foreach_add_(g, w, alpha=local_decay)
            else:
                torch._foreach_add_(g, [torch.sign(t) for t in w], alpha=local_decay)
        if nesterov:  # Caffe: NesterovSolver::ComputeUpdateValue
            v_prev = [t.clone() for t in v]
            torch._foreach_mul_(v, m)
            torch._foreach_add_(v, g, alpha=local_rate)
            # update = (1 + m) * v - m * v_prev  (caffe_cpu_axpby(1 + m, v, -m, v_prev))
            torch._foreach_mul_(v_prev, -m)
            torch._foreach_add_(v_prev, v, alpha=float(_f32(1.0) + _f32(m)))
            torch._foreach_sub_(w, v_prev)
        else:  # Caffe: SGDSolver::ComputeUpdateValue, caffe_cpu_axpby(local_rate, diff, momentum, history)
            torch._foreach_mul_(v, m)
            torch._foreach_add_(v, g, alpha=local_rate)
            torch._foreach_sub_(w, v)  # Caffe: Net::Update, data -= diff (diff = history)
