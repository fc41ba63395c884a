"""The training engine: fused LRN, NetPlan (frozen prefix under no_grad) behind Solver.step, DeviceFeed, numerics modes.

The faithful pieces must compute what the reference path computes (Solver.step on the Net, the LRN layer,
Caffe's golden G1 numbers); fast mode must leave faithful defaults alone and keep float32 master weights.
CUDA variants are marked ``gpu`` (run with ``pytest -m gpu`` on a GPU machine).
"""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from repro import caffe_rng
from repro.data.device_feed import DeviceFeed, write_store
from repro.engine.modes import FAITHFUL, apply_numerics
from repro.engine.plan import NetPlan, feedable
from repro.layers.lrn_fused import lrn_across_channels_fused
from repro.layers.vision import lrn_across_channels
from repro.net import NetError
from repro.numerics import is_faithful, set_faithful
from repro.proto import caffe_pb2
from repro.prototxt import read_net
from repro.solver import Solver

SMALL = "prototxt/small/train_val.prototxt"
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]  # tests/conftest.py: skip or fail without CUDA


@pytest.fixture(autouse=True)
def faithful_after():
    """Fast mode switches process-wide settings; every test leaves faithful numerics behind, even on failure."""
    yield
    set_faithful(True)


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max())


def solver_param(net_param, seed=3, lr=0.01):
    sp = caffe_pb2.SolverParameter()
    sp.net_param.CopyFrom(net_param)
    sp.base_lr, sp.lr_policy, sp.gamma, sp.stepsize = lr, "step", 0.1, 2
    sp.momentum, sp.weight_decay, sp.max_iter, sp.random_seed, sp.display = 0.9, 5e-4, 10, seed, 0
    return sp


def batches(n, batch=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"data": torch.randn(batch, 3, 56, 56, generator=g) * 40,
             "label": torch.randint(0, 20, (batch,), generator=g).float()} for _ in range(n)]


def assert_same_params(a, b, tol=0.0):
    for layer, blobs in a.net.params.items():
        for x, y in zip(blobs, b.net.params[layer]):
            err = rel(y.detach().cpu(), x.detach().cpu()) if tol else None
            assert (err <= tol) if tol else torch.equal(x.detach().cpu(), y.detach().cpu()), (layer, err)


# ------------------------------------------------------------------------------------------ fused LRN


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size,k", [(5, 1.0), (3, 2.0)])
def test_fused_lrn_matches_the_layer(device, size, k):
    torch.manual_seed(0)
    x = (torch.randn(4, 16, 9, 9, dtype=torch.float32) * 60).to(device).requires_grad_()
    g = torch.randn(4, 16, 9, 9).to(device)
    y_ref = lrn_across_channels(x, size, 1e-4, 0.75, k)
    (gx_ref,) = torch.autograd.grad((y_ref * g).sum(), x)
    y = lrn_across_channels_fused(x, size, 1e-4, 0.75, k)
    (gx,) = torch.autograd.grad((y * g).sum(), x)
    assert rel(y, y_ref) < 1e-6 and rel(gx, gx_ref) < 1e-6
    # Both float32 paths against float64: the window sum, pow and product round a few times, so a few float32
    # ulps (eps 1.2e-7); bit-equality between the two paths is not promised (vectorised pow differs by CPU).
    y64 = lrn_across_channels(x.detach().double(), size, 1e-4, 0.75, k)
    assert rel(y.double(), y64) < 1e-6 and rel(y_ref.double(), y64) < 1e-6
    with pytest.raises(ValueError, match="odd"):
        lrn_across_channels_fused(x, 4, 1e-4, 0.75)


@pytest.mark.parametrize("channels_last", [False, True])
def test_lrn_layer_trains_through_the_fused_node_on_cpu(channels_last):
    """The LRN layer on the CPU, when a gradient is wanted, is one autograd node (x and scale saved) whose
    forward and input gradient are the reference's to float32 rounding; without
    a gradient it runs the reference ops."""
    from repro.net import Net

    net = Net('input: "x" input_shape { dim: 2 dim: 12 dim: 7 dim: 7 } layer { name: "n" type: "LRN" bottom: "x" '
              'top: "y" lrn_param { local_size: 5 alpha: 0.001 beta: 0.75 k: 2 } }')
    torch.manual_seed(1)
    x = torch.randn(2, 12, 7, 7) * 30
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn(2, 12, 7, 7)
    ref_x = x.clone().requires_grad_()
    layer = net.layer("n")  # alpha as the prototxt's float32 holds it
    y_ref = lrn_across_channels(ref_x, layer.size, layer.alpha, layer.beta, layer.k)
    (gx_ref,) = torch.autograd.grad((y_ref * g).sum(), ref_x)
    x.requires_grad_()
    y = net(x=x)["y"]
    assert type(y.grad_fn).__name__ == "CrossChannelLRNBackward"
    (gx,) = torch.autograd.grad((y * g).sum(), x)
    # the fused node and the reference ops round differently on some CPUs (vectorised pow): both are held to
    # float64 within a few float32 ulps, not to each other's bits
    y64 = lrn_across_channels(x.detach().double(), layer.size, layer.alpha, layer.beta, layer.k)
    assert rel(y.detach().double(), y64) < 1e-6 and rel(y_ref.detach().double(), y64) < 1e-6
    assert rel(gx, gx_ref) < 1e-6
    with torch.no_grad():
        y0 = net(x=x)["y"]
    assert y0.grad_fn is None and rel(y0.double(), y64) < 1e-6


# ------------------------------------------------------------------------------------------ the plan


def test_train_iteration_is_bitwise_solver_step():
    """Solver.train_iteration (the engine's bare iteration, what benchmarks time) is Solver.step's arithmetic."""
    net, _ = feedable(SMALL, "TRAIN", batch_size=8)
    data = batches(4)
    a = Solver(solver_param(net))
    for b in data:
        a.step(1, feed=b)
    b = Solver(solver_param(net))  # same seed: same weights, same dropout stream
    losses = [b.train_iteration(x) for x in data]
    assert b.iter == 4 and all(torch.isfinite(l) for l in losses)
    assert_same_params(a, b)
    assert b.plan.frozen_layers == []  # the base net learns every layer


def test_frozen_prefix_runs_without_graph_and_matches_solver():
    """The paper's AnB with n=3: conv1..conv3 at lr_mult 0 get no backward (Caffe's layer_need_backward_),
    keep no activations for one, and the step is still exactly Solver.step's."""
    net, _ = feedable(SMALL, "TRAIN", batch_size=8)
    frozen = {"conv1", "conv2", "conv3"}
    for layer in net.layer:
        if layer.name in frozen:
            for p in layer.param:
                p.lr_mult = 0
    data = batches(3)
    a = Solver(solver_param(net))
    w0 = a.net.params["conv2"][0].detach().clone()
    for x in data:
        a.step(1, feed=x)
    b = Solver(solver_param(net))
    assert b.plan.frozen_layers[:8] == ["conv1", "relu1", "pool1", "norm1", "conv2", "relu2", "pool2", "norm2"]
    assert "conv4" not in b.plan.frozen_layers
    for x in data:
        b.train_iteration(x)
    assert_same_params(a, b)
    assert torch.equal(b.net.params["conv2"][0], w0)

    def saved_bytes(plan):
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            plan(data[0])
        return total[0]

    full_net, _ = feedable(SMALL, "TRAIN", batch_size=8)
    full = NetPlan(Solver(solver_param(full_net)).net, fused_lrn=False)
    assert saved_bytes(b.plan) < 0.5 * saved_bytes(full)


def _eager_reference(sp, data, weights=None):
    """The pre-engine reference path, spelled out: the eager Net.forward, backward of Net.total_loss, then
    Solver.apply_update (Caffe's ForwardBackward + ApplyUpdate) -- no run plan, no frozen-prefix shortcut."""
    ref = Solver(sp)
    if weights is not None:
        ref.net.copy_from(weights)
    losses = []
    for x in data:
        for w in ref.net.parameters():
            w.grad = None
        with caffe_rng.active(ref.caffe_rng):  # Caffe: Dropout's masks come from the run's caffe_rng()
            ref.net(**x)
        ref.net.total_loss.backward()
        losses.append(ref.net.total_loss.detach().clone())
        ref.apply_update()
        ref.iter += 1
    return ref, losses


@pytest.mark.parametrize("kind", ["base", "frozen", "finetuned"])
def test_engine_equals_the_eager_reference_path(kind, tmp_path):
    """Issue 14's proof: Solver.step through the engine (NetPlan: frozen prefix under no_grad, losses read back
    once per display) is the eager reference path bit for bit on the CPU -- same kernels, same order -- for a
    base net, an AnB-style frozen n=3 net, and a fine-tuned net started from a base's weights."""
    net, _ = feedable(SMALL, "TRAIN", batch_size=8)
    if kind == "frozen":
        for layer in net.layer:
            if layer.name in {"conv1", "conv2", "conv3"}:
                for p in layer.param:
                    p.lr_mult = 0
    weights = None
    if kind != "base":  # the transfer nets start from a trained base's weights
        base = Solver(solver_param(net, seed=7))
        for x in batches(2, seed=5):
            base.step(1, feed=x)
        weights = tmp_path / "base.caffemodel"
        base.net.save(weights)
    sp = solver_param(net)
    sp.display = 1
    data = batches(4)
    ref, ref_losses = _eager_reference(sp, data, weights)
    eng = Solver(sp)
    if weights is not None:
        eng.net.copy_from(weights)
    losses = []
    eng.add_callback(lambda e: losses.append(e["outputs"]["loss"]) if e.get("type") == "train" else None)
    for x in data:
        eng.step(1, feed=x)
    assert_same_params(ref, eng)
    assert len(losses) == len(data) and losses == [float(l) for l in ref_losses]


def test_plan_names_a_missing_input():
    net, _ = feedable(SMALL, "TRAIN", batch_size=8)
    with pytest.raises(NetError, match="label"):
        Solver(solver_param(net)).train_iteration({"data": torch.zeros(8, 3, 56, 56)})


def test_device_feed_from_the_data_layer_reproduces_solver_step(tmp_path, monkeypatch):
    """The net's own Data layer (Solver.step) and a DeviceFeed of the same layer fed from outside: same
    images, crops, mirrors, hence the same weights, across a feed restore. DeviceFeed is the CUDA feed, where
    Caffe (cuRAND) and we (torch's streams) do not use Caffe's CPU generator: the test runs on torch's streams."""
    import repro.solver

    monkeypatch.setattr(repro.solver, "caffe_rng", SimpleNamespace(CaffeRNG=lambda seed: None,
                                                                   active=caffe_rng.active))
    rng = np.random.RandomState(0)
    write_store(tmp_path / "train", rng.randint(0, 256, (40, 3, 64, 64)).astype(np.uint8), rng.randint(0, 20, 40))
    net = read_net(SMALL)
    for layer in net.layer:
        if layer.type == "Data":
            layer.data_param.source = str(tmp_path / "train")
            layer.transform_param.ClearField("mean_file")
            layer.transform_param.mean_value.extend([104, 117, 123])
            layer.data_param.batch_size = 8
    a = Solver(solver_param(net, lr=0.001))
    a.step(7)
    fnet, replaced = feedable(net, "TRAIN")
    b = Solver(solver_param(fnet, lr=0.001))
    feed = DeviceFeed.from_layer(replaced["data"], "TRAIN", workers=1)
    for _ in range(3):
        b.train_iteration(next(feed))
    state = feed.state_dict()
    feed.close()
    feed = DeviceFeed.from_layer(replaced["data"], "TRAIN", workers=1)
    feed.load_state_dict(state)
    for _ in range(4):
        b.train_iteration(next(feed))
    feed.close()
    assert_same_params(a, b)


# ------------------------------------------------------------------------------------------ fast mode


def test_fast_mode_keeps_faithful_defaults_and_float32_masters():
    net, _ = feedable(SMALL, "TRAIN", batch_size=8)
    s = Solver(solver_param(net, lr=0.001))
    assert is_faithful()
    assert s.plan.frozen_layers == []  # building the plan changes no global setting
    assert is_faithful()
    s.set_numerics("fast")
    assert not is_faithful()
    losses = [float(s.train_iteration(x)) for x in batches(3)]
    assert all(np.isfinite(losses))
    conv = s.net.params["conv2"][0]
    assert conv.dtype == torch.float32 and conv.is_contiguous(memory_format=torch.channels_last)
    assert s.history["conv2"][0].is_contiguous(memory_format=torch.channels_last)
    # bf16 forward, float32 loss: the first loss is the faithful one to bf16 precision
    ref = Solver(solver_param(net, lr=0.001))
    ref_loss = float(ref.forward_backward(batches(1)[0]))
    assert losses[0] == pytest.approx(ref_loss, rel=3e-2)
    apply_numerics(FAITHFUL)
    assert is_faithful()


# ------------------------------------------------------------------------------------------ golden + GPU


@pytest.mark.parametrize("device", DEVICES)
def test_golden_g1_through_the_plan_with_fused_lrn(golden, device):
    """Caffe's own G1 forward/backward (CaffeNet, two LRNs) through NetPlan with the fused LRN: loss and every
    parameter gradient within the 1e-5 parity of tests/test_golden_g1.py."""
    from repro.net import Net

    g1 = np.load(golden / "g1_caffenet_fwd_bwd.npz")
    net = Net(golden / "g1_net.prototxt", "TRAIN", weights=golden / "g1_weights.caffemodel").to(device)
    plan = NetPlan(net, fused_lrn=True)
    loss, out = plan({"data": torch.from_numpy(g1["data"]), "label": torch.from_numpy(g1["label"])})
    loss.backward()
    assert rel(loss.detach().cpu()[None], torch.from_numpy(g1["loss"][None])) <= 1e-5
    for layer in ("conv1", "conv2", "conv5", "fc6", "fc8"):
        for j in (0, 1):
            assert rel(net.params[layer][j].grad.cpu(), torch.from_numpy(g1[f"grad/{layer}/{j}"])) <= 1e-5, layer


@pytest.mark.gpu
def test_cuda_feed_and_step_match_the_cpu(tmp_path):
    """The side-stream copy/transform gives the CPU's batches; faithful training on CUDA tracks the CPU."""
    rng = np.random.RandomState(1)
    store = write_store(tmp_path / "s", rng.randint(0, 256, (64, 3, 64, 64)).astype(np.uint8), rng.randint(0, 20, 64))
    from repro.data.transform import TransformSpec

    spec = TransformSpec(crop_size=56, mirror=True, mean_value=(104.0, 117.0, 123.0))
    cpu = DeviceFeed(store, 16, spec, seed=4, device="cpu")
    gpu = DeviceFeed(store, 16, spec, seed=4, device="cuda")
    got = []
    for _ in range(6):
        a, b = next(cpu), next(gpu)
        assert torch.equal(a["data"], b["data"].cpu()) and torch.equal(a["label"], b["label"].cpu())
        got.append(a)
    cpu.close()
    gpu.close()
    net, _ = feedable(SMALL, "TRAIN", batch_size=16)
    for layer in net.layer:
        if layer.type == "Dropout":
            layer.dropout_param.dropout_ratio = 0.0  # CPU and CUDA dropout streams differ
    a = Solver(solver_param(net, lr=0.001))
    b = Solver(solver_param(net, lr=0.001), device="cuda")  # CUDA: fused LRN by default
    for x in got:
        a.train_iteration(x)
        b.train_iteration(x)
    assert_same_params(a, b, tol=1e-4)
    assert is_faithful()
