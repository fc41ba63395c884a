"""Caffe's learning-rate schedule (``SGDSolver::GetLearningRate``) as a pure function of the iteration.

``it`` is Caffe's ``iter_``: the number of updates already applied. Caffe increments ``iter_`` *after*
``ApplyUpdate``, so the k-th update (1-based) uses ``learning_rate(sp, k - 1)``; with ``stepsize: 2`` the rate
drops before the third update (see the golden README, G2).

Arithmetic follows Caffe's ``Dtype = float``: the proto fields are float32 (``base_lr``, ``gamma``,
``power``), ``pow(float, int)`` promotes to double (``step``, ``exp``, ``multistep``), ``pow(float, float)``
and ``exp(float)`` stay in float (``inv``, ``poly``, ``sigmoid``); the result is stored in a float. The value
returned here is that float32 rate, as a Python float.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import ReproError

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")

_f32 = np.float32


class LRPolicyError(ReproError):
    """A solver's learning-rate settings that Caffe would reject (its CHECKs / LOG(FATAL))."""


def _field(sp, name, default=None):
    """Read ``name`` from a SolverParameter message or any object with attributes (a dataclass, a namespace)."""
    value = getattr(sp, name, default)
    if name == "stepvalue":  # a repeated field: protobuf container, list or tuple
        return [int(v) for v in (value or [])]
    return value


def multistep_index(stepvalues, it: int) -> int:
    """Caffe's ``current_step_`` for ``lr_policy: "multistep"`` after the call at iteration ``it``.

    Caffe keeps ``current_step_`` as state and advances it by at most one per ``GetLearningRate`` call
    (one call per iteration): ``if (current_step_ < n && iter_ >= stepvalue(current_step_)) current_step_++``.
    As a pure function: step j is taken at t_j = max(stepvalue[j], t_{j-1} + 1) (t_{-1} = -1), so the
    result is the number of t_j <= it. For increasing stepvalues this is simply #{stepvalue <= it}.
    """
    t = -1
    n = 0
    for sv in stepvalues:
        t = max(int(sv), t + 1)
        if t > it:
            break
        n += 1
    return n


def validate(sp) -> None:
    """Raise :class:`LRPolicyError` for settings Caffe's GetLearningRate would refuse at the first call."""
    policy = _field(sp, "lr_policy", "") or ""
    if not policy:
        raise LRPolicyError(f"lr_policy is not set (Caffe has no default); expected one of {', '.join(POLICIES)}")
    if policy not in POLICIES:
        raise LRPolicyError(
            f"lr_policy: unknown learning rate policy {policy!r}; expected one of {', '.join(POLICIES)}"
        )
    gamma = float(_field(sp, "gamma", 0.0) or 0.0)
    if policy == "step" and int(_field(sp, "stepsize", 0) or 0) <= 0:
        raise LRPolicyError('lr_policy "step" needs stepsize > 0 (Caffe: CHECK_GT(stepsize, 0))')
    if policy in ("step", "exp", "inv") and gamma < 0:
        raise LRPolicyError(f'lr_policy "{policy}" needs gamma >= 0 (Caffe: CHECK_GE(gamma, 0)); got {gamma}')
    if policy == "poly" and int(_field(sp, "max_iter", 0) or 0) <= 0:
        raise LRPolicyError('lr_policy "poly" needs max_iter > 0')
    if policy == "multistep":
        sv = list(_field(sp, "stepvalue", []) or [])
        if any(b < a for a, b in zip(sv, sv[1:])):
            raise LRPolicyError(f"stepvalue must be non-decreasing for lr_policy multistep; got {sv}")


def learning_rate(sp, it: int) -> float:
    """The rate Caffe's ``SGDSolver::GetLearningRate`` returns when ``iter_ == it``.

    ``sp``: a ``caffe_pb2.SolverParameter`` or any object with the solver.prototxt field names
    (``base_lr, lr_policy, gamma, power, stepsize, stepvalue, max_iter``).
    """
    it = int(it)
    if it < 0:
        raise ValueError(f"iteration must be >= 0, got {it}")
    validate(sp)
    policy = _field(sp, "lr_policy")
    base_lr = _f32(_field(sp, "base_lr", 0.0) or 0.0)
    gamma = _f32(_field(sp, "gamma", 0.0) or 0.0)
    power = _f32(_field(sp, "power", 0.0) or 0.0)
    if policy == "fixed":
        rate = base_lr
    elif policy == "step":
        # Caffe: current_step_ = iter_ / stepsize; rate = base_lr * pow(gamma, current_step_) (double pow)
        step = it // int(_field(sp, "stepsize"))
        rate = float(base_lr) * math.pow(float(gamma), step)
    elif policy == "exp":
        rate = float(base_lr) * math.pow(float(gamma), it)
    elif policy == "inv":
        # Caffe: base_lr * pow(Dtype(1) + gamma * iter_, -power), all in float
        with np.errstate(over="ignore", divide="ignore"):
            rate = base_lr * np.power(_f32(1) + gamma * _f32(it), -power, dtype=np.float32)
    elif policy == "multistep":
        step = multistep_index(_field(sp, "stepvalue", []) or [], it)
        rate = float(base_lr) * math.pow(float(gamma), step)
    elif policy == "poly":
        # Caffe: base_lr * pow(Dtype(1) - Dtype(iter_) / Dtype(max_iter), power), in float
        frac = _f32(1) - _f32(it) / _f32(int(_field(sp, "max_iter")))
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = base_lr * np.power(frac, power, dtype=np.float32)
    else:  # sigmoid
        # Caffe: base_lr * (1 / (1 + exp(-gamma * (Dtype(iter_) - Dtype(stepsize))))), in float
        stepsize = _f32(int(_field(sp, "stepsize", 0) or 0))
        with np.errstate(over="ignore"):
            e = np.exp(-gamma * (_f32(it) - stepsize), dtype=np.float32)
        rate = base_lr * (_f32(1) / (_f32(1) + e))
    # The rate lives in a `Dtype rate` (float) in Caffe.
    return float(_f32(rate))
