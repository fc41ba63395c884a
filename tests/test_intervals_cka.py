"""Interval arithmetic of the mini study and linear CKA, each checked against an independent computation."""
import math

import numpy as np
import pytest

from repro.study.cka import CKAError, linear_cka
from repro.study.intervals import mean_ci, t_cdf, t_quantile


def _t_pdf(t, df):
    return math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi) \
        * (1 + t * t / df) ** (-(df + 1) / 2)


def _cdf_by_quadrature(t, df, n=200000):
    # Simpson's rule from 0 to t of the density, plus 1/2 (independent of the incomplete-beta path).
    h = t / n
    s = _t_pdf(0, df) + _t_pdf(t, df) + sum((4 if i % 2 else 2) * _t_pdf(i * h, df) for i in range(1, n))
    return 0.5 + s * h / 3


def test_t_quantile_closed_forms():
    # df = 1 (Cauchy): q = tan(pi (p - 1/2)); df = 2: q = (2p - 1) sqrt(2 / (4p(1-p))).
    for p in (0.6, 0.9, 0.975, 0.995):
        assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)
        assert t_quantile(p, 2) == pytest.approx((2 * p - 1) * math.sqrt(2 / (4 * p * (1 - p))), rel=1e-9)


def test_t_cdf_matches_quadrature():
    for df in (3, 7):
        for t in (0.5, 2.0, 3.182):
            assert t_cdf(t, df) == pytest.approx(_cdf_by_quadrature(t, df), abs=1e-9)


def test_mean_ci_known_sample():
    xs = [0.60, 0.62, 0.65, 0.63]
    m, h = mean_ci(xs)
    s = np.std(xs, ddof=1)
    # t_{0.975,3} = 3.182446305284263 (standard table value).
    assert m == pytest.approx(0.625)
    assert h == pytest.approx(3.182446305284263 * s / 2, rel=1e-9)
    assert mean_ci([0.5]) == (0.5, None)
    assert mean_ci([]) == (None, None)


def _cka_hsic(x, y):
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h)  # noqa: E731
    return hsic(k, l_) / math.sqrt(hsic(k, k) * hsic(l_, l_))


def test_cka_properties():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 12))
    y = rng.standard_normal((40, 7)) + x[:, :7]
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    assert linear_cka(x @ q * 3.7, y) == pytest.approx(linear_cka(x, y), abs=1e-12)
    assert linear_cka(x, y) == pytest.approx(_cka_hsic(x, y), abs=1e-12)
    assert linear_cka(x.astype(np.float32), y) == pytest.approx(_cka_hsic(x, y), abs=1e-5)
    assert 0 < linear_cka(x, y) < 1
    with pytest.raises(CKAError, match="same images"):
        linear_cka(x, y[:10])


def test_cka_of_layers_wider_than_the_image_count_uses_the_gram_form():
    # A conv layer has more features than there are images (the miniature's conv1: 21,632 for 800 images): its
    # p x p product would not fit in memory, so linear_cka takes the n x n Gram form, which must agree with the
    # HSIC definition as the feature form does (float64, both sums of the same 30 x 30 products: 1e-12).
    rng = np.random.default_rng(1)
    x = rng.standard_normal((30, 500))
    y = rng.standard_normal((30, 400)) + 0.5 * x[:, :400]
    assert linear_cka(x, y) == pytest.approx(_cka_hsic(x, y), abs=1e-12)
    assert linear_cka(x, x * 2.5) == pytest.approx(1.0, abs=1e-12)
    q, _ = np.linalg.qr(rng.standard_normal((500, 500)))
    assert linear_cka(x @ q, y) == pytest.approx(linear_cka(x, y), abs=1e-12)


def test_cka_by_layer_of_small_nets(tmp_path):
    # Same weights -> CKA 1 at every layer; a net with other random weights -> below 1 at the top layers.
    from conftest import REPO

    from repro.net import Net
    from repro.study.analysis import cka_by_layer, plot_cka, representations
    deploy = REPO / "prototxt" / "small" / "deploy.prototxt"
    for seed in (1, 2):
        Net(deploy, phase="TEST", seed=seed).save(tmp_path / f"w{seed}.caffemodel")
    images = np.random.default_rng(0).standard_normal((40, 3, 56, 56)).astype(np.float32) * 30
    a = representations(deploy, tmp_path / "w1.caffemodel", images, batch=20)
    assert list(a) == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    same = cka_by_layer(a, representations(deploy, tmp_path / "w1.caffemodel", images, batch=20))
    assert all(v == pytest.approx(1.0, abs=1e-9) for v in same.values())
    other = cka_by_layer(a, representations(deploy, tmp_path / "w2.caffemodel", images, batch=20))
    assert other["conv1"] < 0.999
    # a transfer net's re-initialised "-new" layers load under their plain names
    from repro.caffemodel import read_caffemodel, write_caffemodel
    w = read_caffemodel(tmp_path / "w2.caffemodel")
    write_caffemodel(tmp_path / "t.caffemodel", "t",
                     [("fc8-new" if n == "fc8" else n, "InnerProduct" if n.startswith("fc") else "Convolution",
                       [], [], a) for n, a in w.items() if len(a)])
    renamed = cka_by_layer(representations(deploy, tmp_path / "w2.caffemodel", images, batch=20),
                           representations(deploy, tmp_path / "t.caffemodel", images, batch=20))
    assert renamed["fc8"] == pytest.approx(1.0, abs=1e-9)
    assert plot_cka({"same": same, "other": other}, tmp_path / "cka")[0].stat().st_size > 0
