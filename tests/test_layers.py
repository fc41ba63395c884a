"""Layer numerics against literal transcriptions of Caffe's CPU loops (small float64 numpy references)."""
import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from repro.layers import LAYER_TYPES, LayerError, build_layer, pooled_size
from repro.proto import caffe_pb2

FLT_MAX = np.finfo(np.float32).max


def layer(text, bottom_shapes, phase="TRAIN", seed=0):
    lp = text_format.Parse(text, caffe_pb2.LayerParameter())
    if not lp.name:
        lp.name = "l"
    if not lp.bottom:
        lp.bottom.extend(f"b{i}" for i in range(len(bottom_shapes)))
    if not lp.top and lp.type != "Silence":
        lp.top.append("t")
    return build_layer(lp, bottom_shapes, phase, torch.Generator().manual_seed(seed))


def run(module, *xs):
    return module(*[torch.as_tensor(x) for x in xs])


# ------------------------------------------------------------------------------------------ references


def caffe_pool_ref(x, k, s, p, method, ceil_mode=True):
    """PoolingLayer::Reshape + Forward_cpu + Backward_cpu (MAX keeps the first maximum, strict >)."""
    n, c, h, w = x.shape
    oh, ow = (pooled_size(h, k[0], s[0], p[0], ceil_mode), pooled_size(w, k[1], s[1], p[1], ceil_mode))
    top = np.zeros((n, c, oh, ow))
    routes = []  # (n, c, ph, pw) -> list of (h, w, weight) for backward
    for a in range(n):
        for b in range(c):
            for ph in range(oh):
                for pw in range(ow):
                    hs, ws = ph * s[0] - p[0], pw * s[1] - p[1]
                    if method == "MAX":
                        he, we = min(hs + k[0], h), min(ws + k[1], w)
                        hs, ws = max(hs, 0), max(ws, 0)
                        best, arg = -FLT_MAX, None
                        for i in range(hs, he):
                            for j in range(ws, we):
                                if x[a, b, i, j] > best:
                                    best, arg = x[a, b, i, j], (i, j)
                        top[a, b, ph, pw] = best
                        routes.append(((a, b, ph, pw), [(arg[0], arg[1], 1.0)] if arg else []))
                    else:
                        he, we = min(hs + k[0], h + p[0]), min(ws + k[1], w + p[1])
                        size = (he - hs) * (we - ws)
                        hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
                        top[a, b, ph, pw] = x[a, b, hs:he, ws:we].sum() / size
                        routes.append(((a, b, ph, pw), [(i, j, 1.0 / size) for i in range(hs, he)
                                                        for j in range(ws, we)]))
    return top, routes


def pool_backward_ref(x_shape, routes, top_diff):
    g = np.zeros(x_shape)
    for (a, b, ph, pw), targets in routes:
        for i, j, wgt in targets:
            g[a, b, i, j] += top_diff[a, b, ph, pw] * wgt
    return g


def lrn_across_ref(x, size, alpha, beta, k):
    n, c, h, w = x.shape
    pre = (size - 1) // 2
    scale = np.full(x.shape, k, dtype=np.float64)
    for ch in range(c):
        for cc in range(max(0, ch - pre), min(c, ch - pre + size)):
            scale[:, ch] += alpha / size * x[:, cc] ** 2
    return x * scale ** -beta


# ------------------------------------------------------------------------------------------ pooling


@pytest.mark.parametrize("size,k,s,p,ceil,expect", [
    (55, 3, 2, 0, True, 27), (56, 3, 2, 0, True, 28), (56, 3, 2, 0, False, 27), (13, 3, 2, 0, True, 6),
    (14, 3, 2, 0, True, 7), (5, 2, 2, 1, True, 3), (4, 3, 2, 1, True, 3), (6, 3, 3, 1, True, 3),
    (5, 1, 3, 0, True, 3)])  # the last window starts past the input (kernel < stride): Caffe keeps it
def test_pooled_size(size, k, s, p, ceil, expect):
    assert pooled_size(size, k, s, p, ceil) == expect


POOL_CASES = [  # (H, W, kernel, stride, pad, ceil)
    (7, 7, (3, 3), (2, 2), (0, 0), True),    # CaffeNet pooling, exact fit
    (8, 9, (3, 3), (2, 2), (0, 0), True),    # ceil: last window clipped to the input
    (8, 8, (3, 3), (2, 2), (1, 1), True),    # padding, last window starting in the padding dropped
    (7, 6, (2, 3), (2, 1), (1, 0), True),    # non-square kernel, stride, pad
    (9, 9, (3, 3), (2, 2), (0, 0), False),   # round_mode FLOOR
    (6, 6, (3, 3), (3, 3), (2, 2), True),    # pad > kernel / 2: outside PyTorch's own limits
    (5, 5, (1, 1), (3, 3), (0, 0), True),    # kernel < stride: Caffe keeps a window past the input
]


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("h,w,k,s,p,ceil", POOL_CASES)
def test_pooling_matches_caffe_loops(method, h, w, k, s, p, ceil):
    rng = np.random.RandomState(0)
    x = rng.randn(2, 3, h, w).astype(np.float32)
    text = (f'type: "Pooling" pooling_param {{ pool: {method} kernel_h: {k[0]} kernel_w: {k[1]} stride_h: {s[0]} '
            f'stride_w: {s[1]} pad_h: {p[0]} pad_w: {p[1]} round_mode: {"CEIL" if ceil else "FLOOR"} }}')
    mod = layer(text, [x.shape])
    ref, routes = caffe_pool_ref(x.astype(np.float64), k, s, p, method, ceil)
    xt = torch.from_numpy(x).requires_grad_(True)
    (top,) = mod(xt)
    assert tuple(top.shape) == ref.shape == mod.top_shapes[0]
    np.testing.assert_allclose(top.detach().numpy(), ref, rtol=1e-6, atol=1e-6)
    top_diff = rng.randn(*ref.shape)
    top.backward(torch.from_numpy(top_diff.astype(np.float32)))
    np.testing.assert_allclose(xt.grad.numpy(), pool_backward_ref(x.shape, routes, top_diff), rtol=1e-5, atol=1e-6)


LAYOUTS = ["cpu", "cpu-channels-last", pytest.param("cuda", marks=pytest.mark.gpu)]  # conftest: skip/fail w/o CUDA


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("h,w,k,s,p,ceil", POOL_CASES[:4])
def test_max_pool_ties_go_to_first_maximum(h, w, k, s, p, ceil, layout):
    """Post-ReLU blobs have all-zero windows (G1 has many): Caffe sends the gradient to the window's first
    element in row-major order. Quantised values make ties everywhere. PyTorch has a separate kernel per
    layout and device (the Net runs CPU nets channels-last); each must scan like Caffe."""
    rng = np.random.RandomState(1)
    x = np.maximum(rng.randint(-3, 2, size=(2, 2, h, w)), 0).astype(np.float32)
    mod = layer(f'type: "Pooling" pooling_param {{ pool: MAX kernel_h: {k[0]} kernel_w: {k[1]} stride_h: {s[0]} '
                f'stride_w: {s[1]} pad_h: {p[0]} pad_w: {p[1]} }}', [x.shape])
    _, routes = caffe_pool_ref(x.astype(np.float64), k, s, p, "MAX", ceil)
    assert sum(1 for _, t in routes if t and x[0, 0, t[0][0], t[0][1]] == 0) > 0  # ties do occur
    xt = torch.from_numpy(x).to("cuda" if layout == "cuda" else "cpu")
    if layout == "cpu-channels-last":
        xt = xt.contiguous(memory_format=torch.channels_last)
    xt.requires_grad_(True)
    (top,) = mod(xt)
    top_diff = rng.rand(*top.shape) + 1.0
    top.backward(torch.from_numpy(top_diff.astype(np.float32)).to(xt.device))
    np.testing.assert_allclose(xt.grad.cpu().numpy(), pool_backward_ref(x.shape, routes, top_diff), rtol=1e-6)


def test_global_pooling():
    x = torch.randn(2, 4, 5, 3)
    (top,) = layer('type: "Pooling" pooling_param { pool: AVE global_pooling: true }', [tuple(x.shape)])(x)
    torch.testing.assert_close(top, x.mean(dim=(2, 3), keepdim=True))
    (top,) = layer('type: "Pooling" pooling_param { pool: MAX global_pooling: true }', [tuple(x.shape)])(x)
    torch.testing.assert_close(top, x.amax(dim=(2, 3), keepdim=True))


@pytest.mark.parametrize("text,msg", [
    ('pooling_param { pool: MAX kernel_size: 3 pad: 3 }', "smaller than the kernel"),
    ('pooling_param { pool: MAX global_pooling: true kernel_size: 3 }', "global_pooling"),
    ('pooling_param { pool: STOCHASTIC kernel_size: 3 }', "STOCHASTIC"),
    ('pooling_param { pool: MAX }', "kernel_size"),
])
def test_pooling_bad_params(text, msg):
    with pytest.raises(LayerError, match=msg):
        layer('name: "pool1" type: "Pooling" ' + text, [(1, 1, 8, 8)])


# ------------------------------------------------------------------------------------------ LRN


def test_lrn_across_channels_matches_caffe_formula():
    rng = np.random.RandomState(2)
    x = (rng.randn(2, 7, 3, 4) * 30).astype(np.float32)  # large values: the LRN is far from identity
    mod = layer('type: "LRN" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 k: 2 }', [x.shape])
    (y,) = run(mod, x)
    np.testing.assert_allclose(y.numpy(), lrn_across_ref(x.astype(np.float64), 5, 1e-4, 0.75, 2.0), rtol=2e-6)


def test_lrn_backward_matches_caffe_closed_form():
    # LRNLayer::CrossChannelBackward: dx = dy * scale^-beta - 2 alpha beta / n * x * sum_window(dy * y / scale)
    rng = np.random.RandomState(3)
    x = rng.randn(1, 6, 2, 2) * 20
    dy = rng.randn(*x.shape)
    n, alpha, beta, k = 3, 1e-3, 0.75, 1.0
    scale = np.full(x.shape, k)
    for c in range(6):
        for cc in range(max(0, c - 1), min(6, c + 2)):
            scale[:, c] += alpha / n * x[:, cc] ** 2
    y = x * scale ** -beta
    ratio = dy * y / scale
    acc = np.zeros_like(x)
    for c in range(6):
        for cc in range(max(0, c - 1), min(6, c + 2)):
            acc[:, c] += ratio[:, cc]
    ref = dy * scale ** -beta - 2 * alpha * beta / n * x * acc
    mod = layer(f'type: "LRN" lrn_param {{ local_size: {n} alpha: {alpha} beta: {beta} }}', [x.shape])
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    (out,) = mod(xt)
    out.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(xt.grad.numpy(), ref, rtol=1e-6)


def test_lrn_within_channel_is_caffes_composition():
    # Caffe ignores k here: (1 + alpha/size^2 * sum of the size x size squares, zero-padded)^-beta.
    rng = np.random.RandomState(4)
    x = rng.randn(1, 2, 5, 6) * 3
    size, alpha, beta = 3, 0.5, 0.75
    padded = np.pad(x ** 2, ((0, 0), (0, 0), (1, 1), (1, 1)))
    sums = np.zeros_like(x)
    for i in range(3):
        for j in range(3):
            sums += padded[:, :, i:i + 5, j:j + 6]
    ref = x * (1 + alpha * sums / size ** 2) ** -beta
    mod = layer(f'type: "LRN" lrn_param {{ norm_region: WITHIN_CHANNEL local_size: {size} alpha: {alpha} '
                f'beta: {beta} k: 7 }}', [x.shape])
    (y,) = mod(torch.from_numpy(x))
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-12)


def test_lrn_even_size_rejected():
    with pytest.raises(LayerError, match="odd"):
        layer('name: "norm1" type: "LRN" lrn_param { local_size: 4 }', [(1, 8, 3, 3)])


# ------------------------------------------------------------------------------------------ conv / fc


def test_convolution_geometry_and_groups():
    conv = layer('type: "Convolution" convolution_param { num_output: 6 kernel_h: 3 kernel_w: 2 stride: 2 pad: 1 '
                 'group: 2 dilation: 2 weight_filler { type: "gaussian" std: 0.1 } '
                 'bias_filler { type: "constant" value: 0.5 } }', [(2, 4, 9, 8)])
    w, b = conv.caffe_blobs
    assert tuple(w.shape) == (6, 2, 3, 2) and tuple(b.shape) == (6,)
    assert torch.all(b == 0.5)
    x = torch.randn(2, 4, 9, 8, dtype=torch.float64)
    (y,) = conv.double()(x)
    # Caffe: (H + 2p - (d(k-1)+1)) / s + 1 -> (9 + 2 - 5) // 2 + 1 = 4, (8 + 2 - 3) // 2 + 1 = 4
    assert tuple(y.shape) == conv.top_shapes[0] == (2, 6, 4, 4)
    # group 2: output channels 0..2 see input channels 0..1 only
    xp = np.pad(x.numpy(), ((0, 0), (0, 0), (1, 1), (1, 1)))
    o, i0, oy, ox = 4, 2, 1, 2
    patch = xp[0, i0:i0 + 2, oy * 2: oy * 2 + 5: 2, ox * 2: ox * 2 + 3: 2]
    np.testing.assert_allclose(y[0, o, oy, ox].item(), (patch * w[o].detach().double().numpy()).sum() + 0.5)


def test_inner_product_axis_and_transpose():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    ip = layer('type: "InnerProduct" inner_product_param { num_output: 7 axis: 2 '
               'weight_filler { type: "xavier" } }', [tuple(x.shape)]).double()
    (y,) = ip(x)
    assert tuple(y.shape) == (2, 3, 7) and tuple(ip.caffe_blobs[0].shape) == (7, 20)
    torch.testing.assert_close(y, x.reshape(2, 3, 20) @ ip.caffe_blobs[0].t() + ip.caffe_blobs[1])
    ipt = layer('type: "InnerProduct" inner_product_param { num_output: 7 transpose: true '
                'weight_filler { type: "gaussian" } }', [tuple(x.shape)]).double()
    assert tuple(ipt.caffe_blobs[0].shape) == (60, 7)
    (y,) = ipt(x)
    torch.testing.assert_close(y, x.reshape(2, 60) @ ipt.caffe_blobs[0])
    with pytest.raises(LayerError, match="flatten"):
        ipt(torch.randn(2, 3, 4, 6, dtype=torch.float64))


# ------------------------------------------------------------------------------------------ loss, accuracy


def test_softmax_with_loss_forward_backward():
    rng = np.random.RandomState(5)
    scores = rng.randn(5, 4).astype(np.float32) * 3
    label = np.array([0, 3, 1, 3, 2], dtype=np.float32)
    mod = layer('type: "SoftmaxWithLoss" bottom: "s" bottom: "l" top: "loss"', [(5, 4), (5,)])
    st = torch.from_numpy(scores).requires_grad_(True)
    (loss,) = mod(st, torch.from_numpy(label))
    p = np.exp(scores - scores.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    idx = label.astype(int)
    assert loss.item() == pytest.approx(-np.log(p[np.arange(5), idx]).mean(), rel=1e-6)
    loss.backward()
    onehot = np.eye(4)[idx]
    np.testing.assert_allclose(st.grad.numpy(), (p - onehot) / 5, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mode,norm", [("VALID", 3), ("FULL", 5), ("BATCH_SIZE", 5), ("NONE", 1)])
def test_softmax_loss_ignore_label_and_normalization(mode, norm):
    scores = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    label = torch.tensor([0., -1., 2., -1., 3.])
    mod = layer(f'type: "SoftmaxWithLoss" bottom: "s" bottom: "l" top: "loss" '
                f'loss_param {{ ignore_label: -1 normalization: {mode} }}', [(5, 4), (5,)])
    (loss,) = mod(scores, label)
    logp = torch.log_softmax(scores.detach(), 1)
    expect = -(logp[0, 0] + logp[2, 2] + logp[4, 3]) / norm
    assert loss.item() == pytest.approx(expect.item(), rel=1e-12)
    loss.backward()
    assert torch.all(scores.grad[[1, 3]] == 0)


def test_softmax_loss_caps_at_flt_min_but_keeps_gradient():
    # A hopeless prediction: prob underflows to 0, Caffe's loss is -log(FLT_MIN) = 87.3365 and the gradient is
    # still prob - onehot (the cap does not cut it).
    scores = torch.tensor([[0.0, 200.0]], requires_grad=True)
    mod = layer('type: "SoftmaxWithLoss" bottom: "s" bottom: "l" top: "loss"', [(1, 2), (1,)])
    (loss,) = mod(scores, torch.tensor([0.0]))
    assert loss.item() == pytest.approx(87.3365, abs=1e-4)
    loss.backward()
    torch.testing.assert_close(scores.grad, torch.tensor([[-1.0, 1.0]]))


def test_softmax_loss_bad_label():
    mod = layer('name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "l" top: "loss"', [(2, 3), (2,)])
    with pytest.raises(LayerError, match="label 3 out of range"):
        mod(torch.randn(2, 3), torch.tensor([0.0, 3.0]))


def test_accuracy_ties_count_against_and_top_k():
    scores = torch.tensor([[1.0, 2.0, 2.0, 0.0],    # label 1 ties with class 2: two classes >= -> top-1 wrong
                           [3.0, 1.0, 2.0, 0.0],    # label 2 is second best: top-1 wrong, top-2 right
                           [0.0, 0.0, 0.0, 5.0],    # label 3 best
                           [1.0, 1.0, 1.0, 1.0]])   # all tie: label counts only for top_k >= 4
    label = torch.tensor([1.0, 2.0, 3.0, 0.0])
    top1 = layer('type: "Accuracy" bottom: "s" bottom: "l" top: "a"', [(4, 4), (4,)])
    top2 = layer('type: "Accuracy" bottom: "s" bottom: "l" top: "a" accuracy_param { top_k: 2 }', [(4, 4), (4,)])
    top4 = layer('type: "Accuracy" bottom: "s" bottom: "l" top: "a" accuracy_param { top_k: 4 }', [(4, 4), (4,)])
    assert top1(scores, label)[0].item() == pytest.approx(1 / 4)
    assert top2(scores, label)[0].item() == pytest.approx(3 / 4)
    assert top4(scores, label)[0].item() == pytest.approx(1.0)


def test_accuracy_ignore_label_and_per_class():
    scores = torch.tensor([[2.0, 1.0], [2.0, 1.0], [0.0, 1.0]])
    label = torch.tensor([0.0, 1.0, -1.0])
    acc = layer('type: "Accuracy" bottom: "s" bottom: "l" top: "a" top: "pc" accuracy_param { ignore_label: -1 }',
                [(3, 2), (3,)])
    a, per_class = acc(scores, label)
    assert a.item() == pytest.approx(0.5)
    torch.testing.assert_close(per_class, torch.tensor([1.0, 0.0]))


# ------------------------------------------------------------------------------------------ the rest


def test_dropout_train_scales_and_test_is_identity():
    x = torch.ones(20000)
    train = layer('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', [(20000,)], "TRAIN")
    (y,) = train(x)
    kept = y != 0
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.7))
    assert abs(kept.float().mean().item() - 0.7) < 0.02
    test = layer('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', [(20000,)], "TEST")
    assert torch.equal(test(x)[0], x)


def test_relu_leaky_and_gradient_at_zero():
    x = torch.tensor([-2.0, 0.0, 3.0], requires_grad=True)
    (y,) = layer('type: "ReLU" relu_param { negative_slope: 0.1 }', [(3,)])(x)
    y.sum().backward()
    torch.testing.assert_close(y, torch.tensor([-0.2, 0.0, 3.0]))
    torch.testing.assert_close(x.grad, torch.tensor([0.1, 0.1, 1.0]))  # Caffe: slope where x <= 0


def test_eltwise_max_tie_rule_and_sum_coeff():
    a = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    b = torch.tensor([1.0, 1.0, 3.0], requires_grad=True)
    c = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    (y,) = layer('type: "Eltwise" eltwise_param { operation: MAX }', [(3,)] * 3)(a, b, c)
    y.sum().backward()
    # bottoms 0/1 tie -> bottom 1 (Caffe's `a > b ? a : b`); later bottoms must be strictly greater
    torch.testing.assert_close(a.grad, torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(b.grad, torch.tensor([1.0, 0.0, 1.0]))
    torch.testing.assert_close(c.grad, torch.tensor([0.0, 0.0, 0.0]))
    (s,) = layer('type: "Eltwise" eltwise_param { operation: SUM coeff: 1 coeff: -1 }', [(3,)] * 2)(a, b)
    torch.testing.assert_close(s, a - b)
    with pytest.raises(LayerError, match="summation"):
        layer('type: "Eltwise" eltwise_param { operation: PROD coeff: 1 coeff: 2 }', [(3,)] * 2)


@pytest.mark.parametrize("dims,axis,num_axes,shape_in,expect", [
    ([0, -1], 0, -1, (2, 3, 4), (2, 12)),
    ([2, 2], 1, 1, (3, 4, 5), (3, 2, 2, 5)),
    ([-1], -1, 0, (3, 4), (3, 4, 1)),
    ([0, 0, 2, -1], 0, -1, (2, 3, 4, 5), (2, 3, 2, 10)),
])
def test_reshape(dims, axis, num_axes, shape_in, expect):
    text = 'type: "Reshape" reshape_param { shape { ' + " ".join(f"dim: {d}" for d in dims) + \
        f' }} axis: {axis} num_axes: {num_axes} }}'
    mod = layer(text, [shape_in])
    assert mod.top_shapes[0] == expect
    assert tuple(mod(torch.zeros(shape_in))[0].shape) == expect


def test_flatten_concat_slice_split_silence():
    x = torch.randn(2, 3, 4, 5)
    assert layer('type: "Flatten"', [(2, 3, 4, 5)])(x)[0].shape == (2, 60)
    assert layer('type: "Flatten" flatten_param { axis: 1 end_axis: 2 }', [(2, 3, 4, 5)])(x)[0].shape == (2, 12, 5)
    cat = layer('type: "Concat" bottom: "a" bottom: "b" top: "c"', [(2, 3, 4, 5), (2, 2, 4, 5)])
    assert cat.top_shapes == [(2, 5, 4, 5)]
    parts = layer('type: "Slice" top: "a" top: "b" top: "c" slice_param { slice_point: 1 slice_point: 4 axis: 3 }',
                  [(2, 3, 4, 5)])(x)
    assert [p.shape[3] for p in parts] == [1, 3, 1]
    assert len(layer('type: "Split" top: "a" top: "b"', [(2,)])(torch.zeros(2))) == 2
    assert layer('type: "Silence" bottom: "a"', [(2,)]).top_shapes == []


def test_batchnorm_train_updates_running_stats_and_test_uses_them():
    x = torch.randn(8, 3, 2, 2, dtype=torch.float64) * 2 + 1
    bn = layer('type: "BatchNorm"', [tuple(x.shape)], "TRAIN").double()
    (y,) = bn(x)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)
    mean_sum, var_sum, factor = bn.caffe_blobs
    assert factor.item() == 1.0 and not mean_sum.requires_grad
    m = 32
    torch.testing.assert_close(var_sum, x.var(dim=(0, 2, 3), unbiased=False) * m / (m - 1))
    test = layer('type: "BatchNorm"', [tuple(x.shape)], "TEST").double()
    with torch.no_grad():
        for a, b in zip(test.caffe_blobs, bn.caffe_blobs):
            a.copy_(b * 4)  # the stored sums are divided by the factor
    (yt,) = test(x)
    ref = (x - mean_sum.reshape(1, 3, 1, 1)) / torch.sqrt(var_sum.reshape(1, 3, 1, 1) + 1e-5)
    torch.testing.assert_close(yt, ref)


def test_scale_and_bias():
    x = torch.randn(2, 3, 4)
    sc = layer('type: "Scale" scale_param { bias_term: true bias_filler { type: "constant" value: 2 } }',
               [(2, 3, 4)])
    s, b = sc.caffe_blobs
    assert tuple(s.shape) == (3,) and torch.all(s == 1) and torch.all(b == 2)  # Caffe's default scale filler: 1
    torch.testing.assert_close(sc(x)[0], x + 2)
    bias = layer('type: "Bias" bias_param { axis: 1 num_axes: 2 filler { type: "constant" value: 3 } }',
                 [(2, 3, 4)])
    assert tuple(bias.caffe_blobs[0].shape) == (3, 4)
    torch.testing.assert_close(bias(x)[0], x + 3)


def test_every_supported_prototxt_type_is_built():
    from repro.prototxt import SUPPORTED_LAYER_TYPES
    assert set(SUPPORTED_LAYER_TYPES) <= set(LAYER_TYPES)


def test_unknown_type_and_blob_counts():
    with pytest.raises(LayerError, match="unknown layer type 'Foo'"):
        layer('name: "x" type: "Foo"', [(1,)])
    with pytest.raises(LayerError, match=r"layer 'loss' \(SoftmaxWithLoss\): takes exactly 2 bottom"):
        layer('name: "loss" type: "SoftmaxWithLoss" bottom: "a" top: "loss"', [(2, 3)])


def test_power_sigmoid_tanh():
    x = torch.linspace(-2, 2, 9)
    torch.testing.assert_close(layer('type: "Power" power_param { power: 2 scale: 3 shift: 1 }', [(9,)])(x)[0],
                               (1 + 3 * x) ** 2)
    torch.testing.assert_close(layer('type: "Sigmoid"', [(9,)])(x)[0], 1 / (1 + torch.exp(-x)))
    torch.testing.assert_close(layer('type: "TanH"', [(9,)])(x)[0], torch.tanh(x))
    assert math.isclose(layer('type: "AbsVal"', [(9,)])(x)[0].sum().item(), x.abs().sum().item())


def test_conv_with_caffe_weight_gradient_is_exact_conv():
    # The CUDA path of faithful Convolution (weight gradient without cuDNN); its arithmetic is checked here
    # on the CPU in float64 against finite differences.
    from repro.layers.vision import _ConvCaffeWgrad

    x = torch.randn(2, 4, 9, 9, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    conf = ((2, 1), (1, 0), (1, 2), 2)
    assert torch.autograd.gradcheck(lambda x, w, b: _ConvCaffeWgrad.apply(x, w, b, *conf), (x, w, b))
    assert torch.equal(_ConvCaffeWgrad.apply(x, w, b, *conf), torch.nn.functional.conv2d(x, w, b, *conf))


@pytest.mark.parametrize("per_chunk", [3, 1, 2])  # one chunk; one sample per chunk; chunks of 2 and 1
def test_im2col_weight_gradient(per_chunk):
    from repro.layers.vision import conv_weight_grad_im2col

    x = torch.randn(3, 4, 10, 9, dtype=torch.float64)
    w = torch.randn(6, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    conf = ((2, 1), (1, 2), (2, 1), 2)
    y = torch.nn.functional.conv2d(x, w, None, *conf)
    gy = torch.randn_like(y)
    y.backward(gy)
    # A sample's working set: its column buffer (groups * ckk * L) or its partial product (C_out * ckk).
    ckk, length = 2 * 3 * 2, y.shape[2] * y.shape[3]
    max_elems = per_chunk * max(2 * ckk * length, 6 * ckk)
    torch.testing.assert_close(conv_weight_grad_im2col(x, gy, tuple(w.shape), *conf, max_elems=max_elems), w.grad)
