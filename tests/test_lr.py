"""Caffe's SGDSolver::GetLearningRate, every policy, on both sides of each change."""
import math
from types import SimpleNamespace

import numpy as np
import pytest

from repro.lr import LRPolicyError, learning_rate, multistep_index
from repro.proto import caffe_pb2


def sp(**kw):
    return SimpleNamespace(**{"base_lr": 0.01, "gamma": 0.1, "power": 0.0, "stepsize": 0, "stepvalue": [],
                              "max_iter": 0, **kw})


def f32(x):
    return float(np.float32(x))


def test_step_drops_at_each_multiple_of_stepsize():
    p = sp(lr_policy="step", stepsize=2)
    # iter_ counts updates already applied: updates 1, 2 use it = 0, 1; update 3 uses it = 2 (G2).
    assert [learning_rate(p, it) for it in range(5)] == [f32(0.01), f32(0.01), f32(1e-3), f32(1e-3), f32(1e-4)]


def caffe_step_rate(k):
    # What Caffe's float code computes: float(double(float 0.01) * pow(double(float 0.1), k)).
    return f32(float(np.float32(0.01)) * float(np.float32(0.1)) ** k)


def test_paper_schedule_boundaries():
    # The paper: base_lr 0.01, step, gamma 0.1, stepsize 100000; logs show 1e-3 from 100k ... 1e-6 from 400k.
    p = sp(lr_policy="step", stepsize=100000)
    for k in range(5):
        if k:
            assert learning_rate(p, 100000 * k - 1) == caffe_step_rate(k - 1)
        assert learning_rate(p, 100000 * k) == caffe_step_rate(k)
        assert learning_rate(p, 100000 * k + 1) == pytest.approx(0.01 * 0.1**k, rel=1e-6)
    assert learning_rate(p, 449999) == caffe_step_rate(4)


def test_fixed_ignores_iteration():
    p = sp(lr_policy="fixed", base_lr=0.05)
    assert learning_rate(p, 0) == learning_rate(p, 10**6) == f32(0.05)


def test_exp():
    p = sp(lr_policy="exp", gamma=0.99)
    for it in (0, 1, 7, 100):
        assert learning_rate(p, it) == pytest.approx(0.01 * f32(0.99) ** it, rel=1e-6)
    assert learning_rate(p, 0) == f32(0.01)


def test_inv():
    p = sp(lr_policy="inv", gamma=1e-4, power=0.75)
    for it in (0, 1, 999, 10**5):
        assert learning_rate(p, it) == pytest.approx(0.01 * (1 + 1e-4 * it) ** -0.75, rel=1e-6)


def test_multistep_both_sides_of_each_stepvalue():
    p = sp(lr_policy="multistep", stepvalue=[3, 5])
    got = [learning_rate(p, it) for it in range(8)]
    assert got == [f32(0.01)] * 3 + [f32(1e-3)] * 2 + [f32(1e-4)] * 3


def test_multistep_advances_one_step_per_iteration_like_caffe():
    # Caffe's current_step_ advances at most once per GetLearningRate call: equal stepvalues take two calls.
    assert [multistep_index([3, 3, 4], it) for it in range(7)] == [0, 0, 0, 1, 2, 3, 3]
    p = sp(lr_policy="multistep", stepvalue=[3, 3])
    assert learning_rate(p, 3) == f32(1e-3) and learning_rate(p, 4) == f32(1e-4)


def test_poly():
    p = sp(lr_policy="poly", power=2.0, max_iter=100)
    assert learning_rate(p, 0) == f32(0.01)
    assert learning_rate(p, 50) == pytest.approx(0.01 * 0.25, rel=1e-6)
    assert learning_rate(p, 100) == 0.0


def test_sigmoid_is_half_at_stepsize():
    p = sp(lr_policy="sigmoid", gamma=0.05, stepsize=100)
    assert learning_rate(p, 100) == f32(0.005)
    assert learning_rate(p, 99) < 0.005 < learning_rate(p, 101)
    assert learning_rate(p, 0) == pytest.approx(0.01 / (1 + math.exp(0.05 * 100)), rel=1e-6)


def test_accepts_caffe_solver_parameter():
    m = caffe_pb2.SolverParameter(base_lr=0.01, lr_policy="multistep", gamma=0.5)
    m.stepvalue.extend([2, 4])
    assert [learning_rate(m, it) for it in (1, 2, 4)] == [f32(0.01), f32(0.005), f32(0.0025)]


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(lr_policy="cosine"), "unknown learning rate policy 'cosine'"),
        (dict(lr_policy=""), "lr_policy is not set"),
        (dict(lr_policy="step", stepsize=0), "stepsize > 0"),
        (dict(lr_policy="exp", gamma=-1.0), "gamma >= 0"),
        (dict(lr_policy="poly", power=1.0, max_iter=0), "max_iter > 0"),
        (dict(lr_policy="multistep", stepvalue=[5, 3]), "non-decreasing"),
    ],
)
def test_bad_settings_are_refused(kw, match):
    with pytest.raises(LRPolicyError, match=match):
        learning_rate(sp(**kw), 0)


def test_golden_g2_rates(golden):
    """The five rates real Caffe used in G2 (step policy, stepsize 2): update k uses iter_ = k - 1."""
    from repro.prototxt import read_solver

    g = np.load(golden / "g2_solver_steps.npz")
    param = read_solver(golden / "g2_solver.prototxt")
    assert [learning_rate(param, k - 1) for k in range(1, 6)] == [float(x) for x in g["lr"]]
