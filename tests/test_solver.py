"""Caffe's SGD update (SGDSolver::Regularize + ComputeUpdateValue), computed by hand, and how it differs
from torch.optim.SGD once the learning rate drops."""
import numpy as np
import pytest
import torch

from repro.solver import SolverError, clip_gradients_, sgd_update_


def t(*xs):
    return torch.tensor(xs, dtype=torch.float32)


def update(params, grads, history, **kw):
    kw = {"lr_mults": [1.0] * len(params), "decay_mults": [1.0] * len(params), "momentum": 0.9,
          "weight_decay": 0.0, **kw}
    sgd_update_(params, grads, history, **kw)


def test_one_step_by_hand():
    # Like Caffe's python test_apply_update: a step whose result we can write down.
    w, g, v = t(1.0, -2.0), t(0.5, 0.25), t(0.1, 0.0)
    update([w], [g], [v], rate=0.1, lr_mults=[2.0], weight_decay=0.01)
    # g' = g + 0.01 w = (0.51, 0.23); v = 0.9 v + 0.1*2 g' = (0.192, 0.046); w -= v
    assert torch.allclose(v, t(0.192, 0.046), rtol=1e-6, atol=0)
    assert torch.allclose(w, t(0.808, -2.046), rtol=1e-6, atol=0)


def test_bias_multipliers_lr2_decay0():
    w, b = t(1.0), t(1.0)
    gw, gb = t(0.0), t(0.0)
    vw, vb = t(0.0), t(0.0)
    update([w, b], [gw, gb], [vw, vb], rate=0.1, lr_mults=[1.0, 2.0], decay_mults=[1.0, 0.0], weight_decay=0.5)
    assert float(w) == pytest.approx(1 - 0.1 * 0.5) and float(b) == 1.0  # decay 0: bias untouched


def test_frozen_blob_is_untouched():
    w, g, v = t(1.0, 2.0), t(3.0, 4.0), t(0.0, 0.0)
    update([w], [g], [v], rate=0.1, lr_mults=[0.0], weight_decay=0.1)
    assert w.tolist() == [1.0, 2.0] and v.tolist() == [0.0, 0.0]


def test_l1_regularisation_adds_sign():
    w, g, v = t(2.0, -3.0, 0.0), t(0.0, 0.0, 0.0), t(0.0, 0.0, 0.0)
    update([w], [g], [v], rate=1.0, momentum=0.0, weight_decay=0.25, regularization_type="L1")
    assert w.tolist() == [1.75, -2.75, 0.0]
    with pytest.raises(SolverError, match="regularization_type"):
        update([w], [g], [v], rate=1.0, regularization_type="L3")


def test_clip_gradients_scales_global_norm():
    a, b = t(3.0), t(4.0)  # global norm 5
    assert clip_gradients_([a, b], 1.0) == pytest.approx(0.2)
    assert float(a) == pytest.approx(0.6) and float(b) == pytest.approx(0.8)
    assert clip_gradients_([a, b], 10.0) is None and clip_gradients_([a, b], -1) is None  # -1: Caffe's off
    # Inside the update: clipped before the rate is applied.
    w, g, v = t(0.0, 0.0), t(30.0, 40.0), t(0.0, 0.0)
    update([w], [g], [v], rate=1.0, momentum=0.0, clip_gradients=5.0)
    assert torch.allclose(w, t(-3.0, -4.0))


def test_iter_size_normalises_the_accumulated_diff():
    w, g, v = t(1.0), t(6.0), t(0.0)  # 6 = sum of the diffs of 3 passes
    update([w], [g], [v], rate=0.5, momentum=0.0, iter_size=3)
    assert float(w) == pytest.approx(1.0 - 0.5 * 2.0)


def test_nesterov_by_hand():
    # Caffe: NesterovSolver: v' = m v + lr g; w -= (1 + m) v' - m v
    w, g, v = t(1.0), t(2.0), t(0.5)
    update([w], [g], [v], rate=0.1, momentum=0.9, nesterov=True)
    v_new = 0.9 * 0.5 + 0.1 * 2.0
    assert float(v) == pytest.approx(v_new)
    assert float(w) == pytest.approx(1.0 - (1.9 * v_new - 0.9 * 0.5))


def test_rate_drop_differs_from_torch_optim_sgd():
    """Caffe folds the rate into the history; torch.optim.SGD multiplies the history by the rate. Equal while
    the rate is constant, different after a drop (as in G2 from update 3 on)."""
    rng = np.random.RandomState(0)
    w0 = rng.randn(50).astype(np.float32)
    grads = [rng.randn(50).astype(np.float32) for _ in range(3)]
    rates = [0.1, 0.1, 0.01]  # step policy: the rate drops before the third update
    m, wd = 0.9, 5e-4

    w, v = torch.tensor(w0), torch.zeros(50)
    p = torch.nn.Parameter(torch.tensor(w0))
    opt = torch.optim.SGD([p], lr=rates[0], momentum=m, weight_decay=wd)
    # float64 reference of Caffe's rule
    w64, v64 = w0.astype(np.float64), np.zeros(50)
    diffs = []
    for r, gk in zip(rates, grads):
        sgd_update_([w], [torch.tensor(gk)], [v], rate=r, lr_mults=[1.0], decay_mults=[1.0], momentum=m,
                    weight_decay=wd)
        v64 = m * v64 + r * (gk + wd * w64)
        w64 = w64 - v64
        for group in opt.param_groups:
            group["lr"] = r
        p.grad = torch.tensor(gk)
        opt.step()
        assert np.abs(w.numpy() - w64).max() <= 1e-6 * np.abs(w64).max()
        diffs.append(float((w - p.detach()).abs().max()))
    assert diffs[0] < 1e-6 and diffs[1] < 1e-6
    assert diffs[2] > 1e-2  # torch rescales the accumulated momentum by the new rate; Caffe does not


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same length"):
        sgd_update_([t(1.0)], [], [t(0.0)], rate=0.1, lr_mults=[1.0], decay_mults=[1.0], momentum=0.9,
                    weight_decay=0.0)


# ---------------------------------------------------------------------------------------- repro.Solver

TINY_NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 5 } shape { dim: 4 } } }
layer { name: "ip0" type: "InnerProduct" bottom: "data" top: "ip0"
        param { lr_mult: 0 decay_mult: 0 } param { lr_mult: 0 decay_mult: 0 }
        inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.5 }
                              bias_filler { type: "constant" value: 0.1 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "ip0" top: "ip1"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 }
                              bias_filler { type: "constant" value: 0.2 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip1" bottom: "label" top: "accuracy" include { phase: TEST } }
"""

SOLVER = """
net: "tiny.prototxt"
base_lr: 0.1
lr_policy: "step"
gamma: 0.1
stepsize: 2
momentum: 0.9
weight_decay: 0.01
max_iter: 5
random_seed: 7
{extra}
"""


def write_solver(tmp_path, extra="", net=TINY_NET, name="solver.prototxt"):
    (tmp_path / "tiny.prototxt").write_text(net)
    path = tmp_path / name
    path.write_text(SOLVER.format(extra=extra))
    return path


def batches(n, seed=0):
    rng = np.random.RandomState(seed)
    return [{"data": torch.tensor(rng.randn(4, 5).astype(np.float32)),
             "label": torch.tensor(rng.randint(0, 3, 4).astype(np.float32))} for _ in range(n)]


def reference_run(w0, b0, frozen, feeds, iters, iter_size, lr_at, m=0.9, wd=0.01):
    """float64 numpy: softmax loss on ip1 over the frozen ip0, Caffe's update (bias lr x2, decay x0)."""
    W, b = w0.astype(np.float64), b0.astype(np.float64)
    vW, vb = np.zeros_like(W), np.zeros_like(b)
    fw, fb = (x.astype(np.float64) for x in frozen)
    for it in range(iters):
        gW, gb = np.zeros_like(W), np.zeros_like(b)
        for j in range(iter_size):
            f = feeds[it * iter_size + j]
            h = f["data"].numpy().astype(np.float64) @ fw.T + fb
            z = h @ W.T + b
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            y = f["label"].numpy().astype(int)
            p[np.arange(len(y)), y] -= 1
            gW += p.T @ h / len(y)
            gb += p.sum(0) / len(y)
        gW, gb = gW / iter_size, gb / iter_size
        rate = lr_at(it)
        vW = m * vW + rate * (gW + wd * W)
        vb = m * vb + rate * 2 * gb
        W, b = W - vW, b - vb
    return W, b, vW, vb


@pytest.mark.parametrize("iter_size", [1, 2])
def test_solver_trajectory_matches_float64_reference(tmp_path, iter_size):
    import repro

    solver = repro.Solver(write_solver(tmp_path, f"iter_size: {iter_size}"))
    w0, b0 = (p.detach().numpy().copy() for p in solver.net.params["ip1"])
    frozen = [p.detach().numpy().copy() for p in solver.net.params["ip0"]]
    feeds = batches(5 * iter_size)
    seen = []
    solver.step(5, feed=lambda i: seen.append(i) or feeds[i])
    assert seen == list(range(5 * iter_size))  # feed(i): the i-th forward pass of the solver
    W, b, vW, vb = reference_run(w0, b0, frozen, feeds, 5, iter_size, lambda it: 0.1 * 0.1 ** (it // 2))
    got = solver.net.params["ip1"]
    assert np.abs(got[0].detach().numpy() - W).max() <= 1e-5 * np.abs(W).max()
    assert np.abs(got[1].detach().numpy() - b).max() <= 1e-5 * np.abs(b).max()
    assert np.abs(solver.history["ip1"][0].numpy() - vW).max() <= 1e-5 * np.abs(vW).max()
    assert solver.iter == 5 and solver.lr == pytest.approx(0.001, rel=1e-6)
    # lr_mult 0: no gradient computed, weights and history untouched
    assert all(not p.requires_grad and p.grad is None for p in solver.net.params["ip0"])
    assert np.array_equal(solver.net.params["ip0"][0].detach().numpy(), frozen[0])
    assert not solver.history["ip0"][0].any()
    assert [tuple(v.shape) for v in solver.history["ip1"]] == [(3, 6), (3,)]  # Caffe's shapes


def test_display_events_and_smoothed_loss(tmp_path):
    import repro

    solver = repro.Solver(write_solver(tmp_path, "average_loss: 2\ndisplay: 1"))
    events = []
    solver.add_callback(events.append)
    feeds = batches(4)
    solver.step(4, feed=lambda i: feeds[i])
    # Caffe displays when iter_ % display == 0, before iter_ is incremented, with the rate of that update
    assert [e["iter"] for e in events] == [0, 1, 2, 3]
    assert [e["lr"] for e in events] == pytest.approx([0.1, 0.1, 0.01, 0.01], rel=1e-6)
    raw = [e["outputs"]["loss"] for e in events]
    smoothed = [e["loss"] for e in events]  # Caffe: UpdateSmoothedLoss, the mean of the last 2
    assert smoothed == pytest.approx([raw[0], (raw[0] + raw[1]) / 2, (raw[1] + raw[2]) / 2,
                                      (raw[2] + raw[3]) / 2], rel=1e-6)
    solver2 = repro.Solver(write_solver(tmp_path, "display: 2"))
    ev2 = []
    solver2.add_callback(ev2.append)
    solver2.step(5, feed=lambda i: feeds[i % 4])
    assert [e["iter"] for e in ev2] == [0, 2, 4]


def test_losses_read_back_once_per_display_keep_caffes_smoothing(tmp_path):
    """Each iteration's loss stays on the device until a display (a read-back per iteration would stall a GPU);
    the smoothed loss then reported is exactly the one of reading every iteration."""
    import repro

    feeds = batches(4)
    every = repro.Solver(write_solver(tmp_path, "average_loss: 2\ndisplay: 1", name="every.prototxt"))
    ev1 = []
    every.add_callback(ev1.append)
    every.step(5, feed=lambda i: feeds[i % 4])
    sparse = repro.Solver(write_solver(tmp_path, "average_loss: 2\ndisplay: 3", name="sparse.prototxt"))
    ev3 = []
    sparse.add_callback(ev3.append)
    sparse.step(5, feed=lambda i: feeds[i % 4])
    assert [e["iter"] for e in ev3] == [0, 3]
    assert [e["loss"] for e in ev3] == [ev1[0]["loss"], ev1[3]["loss"]]  # bitwise, not approx
    assert len(sparse._pending) == 1  # iteration 4's loss is still on the device
    assert sparse.smoothed_loss == every.smoothed_loss and not sparse._pending


def test_old_field_names_and_testing_schedule(tmp_path):
    import repro

    (tmp_path / "tiny.prototxt").write_text(TINY_NET)
    path = tmp_path / "old_solver.prototxt"
    path.write_text(SOLVER.format(extra="").replace('net: "tiny.prototxt"', 'train_net: "tiny.prototxt"\n'
                    'test_net: "tiny.prototxt"\ntest_iter: 3\ntest_interval: 2\nsolver_mode: 1'))
    feed = batches(1)[0]
    solver = repro.Solver(path, test_feed=feed)
    assert len(solver.test_nets) == 1 and solver.test_nets[0].phase == "TEST"
    tests = []
    solver.add_callback(lambda e: tests.append(e) if e["type"] == "test" else None)
    solver.step(5, feed=feed)
    assert [t["iter"] for t in tests] == [0, 2, 4]  # test_initialization (default true), then every 2
    # the TEST net sees the TRAIN net's current weights (Caffe: ShareTrainedLayersWith)
    with torch.no_grad():
        before = float(solver.test_nets[0](**feed)["loss"])  # still the weights of the test at iteration 4
        result = solver.test()
        out = solver.test_nets[0](**feed)
    assert result["top1"] == pytest.approx(float(out["accuracy"])) and result["iter"] == 5
    assert result["loss"] == pytest.approx(float(out["loss"])) and result["loss"] != pytest.approx(before)
    two = batches(2, seed=1)  # a single pass over given batches: batch-size weighted, like one big batch
    single = solver.evaluate(batches=[two[0], {k: v[:2] for k, v in two[1].items()}])
    with torch.no_grad():
        a0, a1 = (float(solver.test_nets[0](**b)["accuracy"]) for b in (two[0], {k: v[:2] for k, v in two[1].items()}))
    assert single["images"] == 6 and single["top1"] == pytest.approx((4 * a0 + 2 * a1) / 6)
    generic = repro.Solver(write_solver(tmp_path, "test_iter: 2\ntest_interval: 2\ntest_initialization: false",
                                        name="s2.prototxt"), test_feed=feed)
    assert len(generic.test_nets) == 1  # `net:` + test_iter: the same net in TEST phase (Caffe: InitTestNets)
    assert "acc" in generic.test_nets[0].layer_names and "acc" not in generic.net.layer_names
    tests.clear()
    generic.add_callback(lambda e: tests.append(e) if e["type"] == "test" else None)
    generic.step(3, feed=feed)
    assert [t["iter"] for t in tests] == [2]  # no test at iteration 0
    assert repro.Solver(write_solver(tmp_path, name="s3.prototxt")).test_nets == []  # no test_iter: none


def test_relative_paths_cwd_first_then_solver_folder(tmp_path, monkeypatch):
    import repro
    from repro.solver import SolverError

    solver_file = write_solver(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    s = repro.Solver(solver_file)  # tiny.prototxt is not in the working directory: found beside the solver
    assert s.net.source == str(tmp_path / "tiny.prototxt")
    (elsewhere / "tiny.prototxt").write_text(TINY_NET.replace("num_output: 3", "num_output: 4"))
    s = repro.Solver(solver_file)  # Caffe's rule first: the working directory
    assert tuple(s.net.params["ip1"][0].shape) == (4, 6)
    (tmp_path / "bad.prototxt").write_text(SOLVER.format(extra="").replace("tiny.prototxt", "missing.prototxt"))
    with pytest.raises(SolverError, match="missing.prototxt.*not found"):
        repro.Solver(tmp_path / "bad.prototxt")


@pytest.mark.parametrize("extra, match", [
    ('type: "Adam"', "type: 'Adam' is not implemented"),
    ('regularization_type: "L3"', "regularization_type"),
    ("iter_size: 0", "iter_size must be >= 1"),
])
def test_bad_solver_settings(tmp_path, extra, match):
    import repro

    with pytest.raises(SolverError, match=match):
        repro.Solver(write_solver(tmp_path, extra))


def test_missing_lr_policy(tmp_path):
    import repro

    (tmp_path / "tiny.prototxt").write_text(TINY_NET)
    (tmp_path / "s.prototxt").write_text('net: "tiny.prototxt"\nbase_lr: 0.1\n')
    with pytest.raises(SolverError, match="lr_policy is not set"):
        repro.Solver(tmp_path / "s.prototxt")


def test_nesterov_solver(tmp_path):
    import repro

    solver = repro.Solver(write_solver(tmp_path, 'type: "Nesterov"'))
    w0 = solver.net.params["ip1"][1].detach().clone()
    feed = batches(1)[0]
    solver.net(**feed)
    solver.net.total_loss.backward()
    g = solver.net.params["ip1"][1].grad.clone()
    solver.net.params["ip1"][1].grad = None
    solver.step(1, feed=feed)
    v = 0.1 * 2 * g  # first step from zero history: v = lr * lr_mult * g (bias: no decay)
    assert torch.allclose(solver.net.params["ip1"][1].detach(), w0 - 1.9 * v, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["state", "solverstate"])
def test_snapshot_restore_continues_exactly(tmp_path, kind):
    import repro

    feeds = batches(6)
    path = write_solver(tmp_path, f'snapshot_prefix: "{tmp_path}/snap"')
    a = repro.Solver(path)
    a.step(6, feed=lambda i: feeds[i])
    b = repro.Solver(path)
    b.step(3, feed=lambda i: feeds[i])
    paths = b.snapshot()
    assert paths[kind].is_file() and paths["caffemodel"].name == "snap_iter_3.caffemodel"
    c = repro.Solver(path)
    c.restore(paths[kind])
    assert c.iter == 3
    c.step(3, feed=lambda i: feeds[i])
    for x, y in zip(a.net.params["ip1"] + a.history["ip1"], c.net.params["ip1"] + c.history["ip1"]):
        assert torch.equal(x.detach(), y.detach())


def test_restore_refuses_another_net(tmp_path):
    import repro
    from repro.checkpoint import CheckpointError

    s = repro.Solver(write_solver(tmp_path, f'snapshot_prefix: "{tmp_path}/snap"'))
    state = s.snapshot()["state"]
    (tmp_path / "other").mkdir()
    other = repro.Solver(write_solver(tmp_path / "other", net=TINY_NET.replace("num_output: 3", "num_output: 4")))
    with pytest.raises(CheckpointError, match="layer 'ip1'.*shapes"):
        other.restore(state)
    (tmp_path / "junk.state.pt").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a readable snapshot state"):
        s.restore(tmp_path / "junk.state.pt")
