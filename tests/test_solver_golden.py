"""G2: five SGD steps of real Caffe (step policy, frozen conv1..3) — ../shared/golden/g2_*.

Two checks, as the golden README prescribes:
* the update rule replayed one step at a time from Caffe's stored state (rows of step{K-1}/param and
  step{K-1}/history, and stepK/grad; for K = 1 the caffemodel and a zero history) lands within ~1e-6;
* the whole 5-step trajectory of repro.Solver (its own forward/backward) tracks Caffe: fc6..fc8 params and the
  loss within 1e-5 at every step; conv4/conv5 within 1e-5 at step 1 and within the README's near-tie bounds
  from step 2 on (one pool5 window is a float32 near-tie).
"""
import numpy as np
import pytest
import torch

from repro.solver import sgd_update_

TRAINED = ["conv4", "conv5", "fc6", "fc7", "fc8"]
FROZEN = ["conv1", "conv2", "conv3"]
# G2's multipliers: weights lr 1 decay 1, biases lr 2 decay 0.
MULTS = {0: (1.0, 1.0), 1: (2.0, 0.0)}


def rel_err(got, ref):
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.abs(np.asarray(got, dtype=np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


def stored(g, layer, j, arr):
    """The part of a full tensor that the npz stores: weight rows in rowidx, biases in full."""
    return arr[g[f"rowidx/{layer}"]] if j == 0 else arr


@pytest.fixture(scope="module")
def g2(golden):
    return np.load(golden / "g2_solver_steps.npz")


@pytest.fixture(scope="module")
def g2_weights(golden):
    from repro.caffemodel import read_caffemodel

    return read_caffemodel(golden / "g1_weights.caffemodel")


def test_update_rule_replays_each_caffe_step(g2, g2_weights):
    worst = 0.0
    for k in range(1, 6):
        keys, params, grads, history = [], [], [], []
        for layer in TRAINED:
            for j in (0, 1):
                if k == 1:
                    w_prev = stored(g2, layer, j, g2_weights[layer][j])
                    v_prev = np.zeros_like(w_prev)
                else:
                    w_prev = g2[f"step{k - 1}/param/{layer}/{j}"]
                    v_prev = g2[f"step{k - 1}/history/{layer}/{j}"]
                keys.append((layer, j))
                params.append(torch.tensor(np.array(w_prev, dtype=np.float32)))
                history.append(torch.tensor(np.array(v_prev, dtype=np.float32)))
                grads.append(torch.tensor(g2[f"step{k}/grad/{layer}/{j}"]))
        sgd_update_(params, grads, history, rate=float(g2["lr"][k - 1]),
                    lr_mults=[MULTS[j][0] for _, j in keys], decay_mults=[MULTS[j][1] for _, j in keys],
                    momentum=0.9, weight_decay=5e-4)
        for (layer, j), w, v in zip(keys, params, history):
            e_w = rel_err(w, g2[f"step{k}/param/{layer}/{j}"])
            e_v = rel_err(v, g2[f"step{k}/history/{layer}/{j}"])
            assert e_w <= 1e-6 and e_v <= 1e-6, (k, layer, j, e_w, e_v)
            worst = max(worst, e_w, e_v)
    print(f"G2 one-step replay: worst max-normalised error {worst:.2e}")


def stats_err(t, ref_stats):
    """Relative error of the full tensor's sum of squares and sum |x| (the README's '#stats' comparison)."""
    x = t.detach().double()
    got = np.array([float((x * x).sum()), float(x.abs().sum())])
    ref = np.asarray(ref_stats, dtype=np.float64)[[1, 2]]
    return float(np.max(np.abs(got - ref) / np.maximum(np.abs(ref), 1e-300)))


@pytest.fixture(scope="module")
def g2_run(golden):
    """repro.Solver on g2_solver.prototxt, stepped once at a time as the golden procedure did."""
    import repro

    g1 = np.load(golden / "g1_caffenet_fwd_bwd.npz")
    solver = repro.Solver(golden / "g2_solver.prototxt", weights=golden / "g1_weights.caffemodel")
    events = []
    solver.add_callback(events.append)
    feed = {"data": torch.tensor(g1["data"]), "label": torch.tensor(g1["label"])}
    states = []
    for _ in range(5):
        solver.step(1, feed)
        states.append({
            "lr": solver.lr,
            "loss": [e for e in events if e["type"] == "train"][-1]["loss"],
            "param": {L: [w.detach().clone() for w in ws] for L, ws in solver.net.params.items()},
            "history": {L: [v.clone() for v in vs] for L, vs in solver.history.items()},
        })
    return solver, states


def test_g2_trajectory(g2, g2_run, golden):
    import json

    tol = json.loads((golden / "tolerances.json").read_text())["G2"]
    solver, states = g2_run
    assert solver.iter == 5
    report = {}
    for k, st in enumerate(states, start=1):
        assert st["lr"] == float(g2["lr"][k - 1])  # Caffe's float32 rate, exactly
        assert abs(st["loss"] - float(g2["loss"][k - 1])) <= 1e-5 * abs(float(g2["loss"][k - 1]))
        for layer in TRAINED:
            for j in (0, 1):
                for kind in ("param", "history"):
                    key = f"step{k}/{kind}/{layer}/{j}"
                    full = st[kind][layer][j]
                    err = rel_err(stored(g2, layer, j, full.numpy()), g2[key])
                    s_err = stats_err(full, g2[f"step{k}/{kind}_stats/{layer}/{j}"])
                    if k == 1 or (kind == "param" and layer.startswith("fc")):
                        bound, s_bound = 1e-5, 1e-5  # the README's tight bound
                    else:
                        # From step 2 the max-pool near-tie (README) moves conv4/conv5 and the fc histories
                        # as far as an exact float64 replay lands: allow 1.5x that, never under 1e-5.
                        bound = max(1e-5, 1.5 * tol[key])
                        s_bound = max(1e-5, 1.5 * tol[key + "#stats"])
                    assert err <= bound and s_err <= s_bound, (key, err, bound, s_err, s_bound)
                    report[key] = err
    for layer in FROZEN:  # lr_mult 0: bit-identical to the caffemodel, zero history, at every step
        for j in (0, 1):
            assert torch.equal(states[-1]["param"][layer][j],
                               torch.tensor(np.asarray(stored_full(golden, layer, j))))
            assert not states[-1]["history"][layer][j].any()
    worst_fc = max(v for key, v in report.items() if "/param/fc" in key)
    worst_conv = max(v for key, v in report.items() if "/param/conv" in key)
    print(f"G2 trajectory: fc6..fc8 params worst {worst_fc:.2e}; conv4/conv5 params worst {worst_conv:.2e}")


_CAFFEMODEL = {}


def stored_full(golden, layer, j):
    from repro.caffemodel import read_caffemodel

    if not _CAFFEMODEL:
        _CAFFEMODEL.update(read_caffemodel(golden / "g1_weights.caffemodel"))
    return _CAFFEMODEL[layer][j]


def test_g2_frozen_layers_have_no_gradient(g2_run):
    solver, _ = g2_run
    for layer in FROZEN:
        for w in solver.net.params[layer]:
            assert not w.requires_grad and w.grad is None
