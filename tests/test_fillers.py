"""Caffe's fillers (filler.hpp): distributions checked statistically against Caffe's formulas."""
import math

import pytest
import torch
from google.protobuf import text_format

from repro.fillers import FillerError, fans, fill_
from repro.proto import caffe_pb2


def filler(text):
    return text_format.Parse(text, caffe_pb2.FillerParameter())


def filled(shape, text, seed=0):
    return fill_(torch.empty(shape), filler(text), torch.Generator().manual_seed(seed))


def test_constant_and_default():
    assert torch.all(filled((3, 4), 'type: "constant" value: 1.5') == 1.5)
    assert torch.all(fill_(torch.ones(5), None) == 0)  # no filler given: Caffe's default, constant 0
    assert torch.all(fill_(torch.ones(5), caffe_pb2.FillerParameter()) == 0)


def test_gaussian_mean_std():
    # CaffeNet's conv1 filler: N(0, 0.01^2)
    w = filled((96, 3, 11, 11), 'type: "gaussian" std: 0.01')
    n = w.numel()
    assert abs(w.mean().item()) < 4 * 0.01 / math.sqrt(n)
    assert w.std().item() == pytest.approx(0.01, rel=4 / math.sqrt(2 * n))
    w = filled((1000, 100), 'type: "gaussian" mean: 2 std: 0.5')
    assert w.mean().item() == pytest.approx(2.0, abs=4 * 0.5 / math.sqrt(w.numel()))


def test_gaussian_sparse_keeps_sparse_over_num_outputs():
    # Caffe: each weight kept with probability sparse / shape(0)
    w = filled((50, 2000), 'type: "gaussian" std: 1 sparse: 10')
    frac = (w != 0).float().mean().item()
    p = 10 / 50
    assert frac == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / w.numel()))
    kept = w[w != 0]
    assert kept.std().item() == pytest.approx(1.0, rel=0.03)


def test_uniform_bounds_and_moments():
    w = filled((200, 300), 'type: "uniform" min: -2 max: 3')
    assert w.min().item() >= -2 and w.max().item() <= 3
    assert w.mean().item() == pytest.approx(0.5, abs=4 * 5 / math.sqrt(12 * w.numel()))
    assert w.std().item() == pytest.approx(5 / math.sqrt(12), rel=0.01)


def test_fans_follow_caffe():
    assert fans((96, 3, 11, 11)) == (3 * 121, 96 * 121)  # conv: in/group*kh*kw, out*kh*kw
    assert fans((4096, 9216)) == (9216, 4096)  # InnerProduct (out, in)
    assert fans((10,)) == (1, 10)  # 1-D: fan_out = count


@pytest.mark.parametrize("norm,n", [("FAN_IN", 64 * 9), ("FAN_OUT", 128 * 9), ("AVERAGE", (64 * 9 + 128 * 9) / 2)])
def test_xavier_uniform_scale(norm, n):
    w = filled((128, 64, 3, 3), f'type: "xavier" variance_norm: {norm}')
    a = math.sqrt(3 / n)
    assert w.abs().max().item() <= a
    assert w.abs().max().item() > 0.99 * a
    assert w.std().item() == pytest.approx(a / math.sqrt(3), rel=0.02)


@pytest.mark.parametrize("norm,n", [("FAN_IN", 300), ("FAN_OUT", 200), ("AVERAGE", 250)])
def test_msra_std(norm, n):
    w = filled((200, 300), f'type: "msra" variance_norm: {norm}')
    assert abs(w.mean().item()) < 4 * math.sqrt(2 / n) / math.sqrt(w.numel())
    assert w.std().item() == pytest.approx(math.sqrt(2 / n), rel=0.01)


def test_positive_unitball_rows_sum_to_one():
    w = filled((7, 3, 2, 2), 'type: "positive_unitball"')
    assert torch.all(w >= 0)
    torch.testing.assert_close(w.reshape(7, -1).sum(1), torch.ones(7))


def test_bilinear_kernel():
    w = filled((2, 1, 4, 4), 'type: "bilinear"')
    # Caffe: f = ceil(k/2) = 2, c = (k-1)/(2f) = 0.75, w[y,x] = (1-|x/f-c|)(1-|y/f-c|)
    ref = torch.tensor([0.25, 0.75, 0.75, 0.25])
    torch.testing.assert_close(w[1, 0], ref[:, None] * ref[None, :])


def test_generator_makes_it_reproducible():
    a = filled((10, 10), 'type: "gaussian"', seed=3)
    b = filled((10, 10), 'type: "gaussian"', seed=3)
    c = filled((10, 10), 'type: "gaussian"', seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("text,msg", [
    ('type: "glorot"', "unknown filler type 'glorot'"),
    ('type: "uniform" sparse: 3', "sparsity not supported"),
    ('type: "uniform" min: 2 max: 1', "min <= max"),
])
def test_bad_fillers(text, msg):
    with pytest.raises(FillerError, match=msg):
        filled((3, 3), text)
