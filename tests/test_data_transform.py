"""DataTransformer::Transform on whole batches: crop, mirror, mean (image or values), scale; Caffe's Rand."""
import numpy as np
import pytest
import torch

from repro.data.transform import CaffeRand, Transformer, TransformError, TransformSpec


def test_caffe_rand_is_mt19937():
    # C++ [rand.predef]: the 10000th output of a default-constructed std::mt19937 (seed 5489) is 4123659995;
    # boost::mt19937, which Caffe uses, is the same generator.
    r = CaffeRand(5489)
    assert int(r.raw(10000)[-1]) == 4123659995
    r2 = CaffeRand(5489)
    assert r2.raw(1)[0] == 3499211612


def test_caffe_rand_state_round_trip():
    r = CaffeRand(7)
    r.raw(5)
    st = r.state_dict()
    a = r.raw(10)
    r.load_state_dict(st)
    np.testing.assert_array_equal(r.raw(10), a)


def _batch(n=5, c=3, h=12, w=10, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, c, h, w), dtype=np.uint8)


def _reference(x, mean, crop, h_off, w_off, mirror, scale=1.0):
    """DataTransformer::Transform written as its loops: top[c][h][w'] = (x[h_off+h][w_off+w] - mean[same]) * scale."""
    n, C = x.shape[:2]
    out = np.zeros((n, C, crop, crop), np.float32)
    for i in range(n):
        for c in range(C):
            for h in range(crop):
                for w in range(crop):
                    v = np.float32(x[i, c, h_off[i] + h, w_off[i] + w])
                    m = mean[c, h_off[i] + h, w_off[i] + w] if mean.ndim == 3 else mean[c]
                    ww = crop - 1 - w if mirror[i] else w
                    out[i, c, h, ww] = (v - np.float32(m)) * np.float32(scale)
    return out


def test_train_crop_mirror_mean_follow_caffe_draw_order():
    x = _batch()
    mean = np.random.default_rng(1).uniform(0, 255, (3, 12, 10)).astype(np.float32)
    t = Transformer(TransformSpec(crop_size=7, mirror=True, mean=mean), "TRAIN", seed=42)
    got = t(torch.from_numpy(x)).numpy()
    raw = CaffeRand(42).raw(3 * 5).reshape(5, 3)  # per image: Rand(2) for mirror, then h_off, w_off
    mirror = (raw[:, 0] % 2).astype(bool)
    h_off = (raw[:, 1] % (12 - 7 + 1)).astype(int)
    w_off = (raw[:, 2] % (10 - 7 + 1)).astype(int)
    np.testing.assert_array_equal(got, _reference(x, mean, 7, h_off, w_off, mirror))
    assert mirror.any() and not mirror.all()
    # the CUDA code path (one torch.gather) gives the same bits
    g = Transformer(TransformSpec(crop_size=7, mirror=True, mean=mean), "TRAIN", seed=42)
    g.force_gather = True
    np.testing.assert_array_equal(g(torch.from_numpy(x)).numpy(), got)


def test_test_phase_centre_crop_and_mean_values_and_scale():
    x = _batch(h=11, w=11)
    t = Transformer(TransformSpec(crop_size=6, mean_value=(10.0, 20.0, 30.0), scale=0.5), "TEST")
    got = t(torch.from_numpy(x)).numpy()
    off = np.full(5, (11 - 6) // 2)
    ref = _reference(x, np.array([10.0, 20.0, 30.0], np.float32), 6, off, off, np.zeros(5, bool), 0.5)
    np.testing.assert_array_equal(got, ref)
    # one mean_value serves every channel (Caffe replicates it)
    one = Transformer(TransformSpec(crop_size=6, mean_value=(10.0,)), "TEST")(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(one, x[:, :, 2:8, 2:8].astype(np.float32) - 10)


def test_no_crop_passes_whole_image_and_test_mirror_still_random():
    x = _batch(n=64, h=4, w=4)
    out = Transformer(TransformSpec(), "TEST")(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(out, x.astype(np.float32))
    # Caffe mirrors in TEST too when mirror is set (DataTransformer draws Rand(2) in any phase)
    t = Transformer(TransformSpec(mirror=True), "TEST", seed=3)
    out = t(torch.from_numpy(x)).numpy()
    flipped = np.array([np.array_equal(o, xi[:, :, ::-1]) and not np.array_equal(o, xi) for o, xi in zip(out, x)])
    assert 10 < flipped.sum() < 54


@pytest.mark.gpu
def test_cuda_transform_equals_cpu_bitwise():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, (32, 3, 64, 64), dtype=np.uint8))
    mean = rng.uniform(0, 255, (3, 64, 64)).astype(np.float32)
    for spec in (TransformSpec(crop_size=56, mirror=True, mean=mean),
                 TransformSpec(crop_size=56, mirror=True, mean_value=(104.0, 117.0, 123.0), scale=0.5)):
        for phase in ("TRAIN", "TEST"):
            cpu = Transformer(spec, phase, seed=3)(x)
            gpu = Transformer(spec, phase, seed=3, device="cuda")(x.pin_memory())
            assert gpu.is_cuda and torch.equal(gpu.cpu(), cpu), (spec, phase)


def test_transformer_state_restores_crops():
    x = torch.from_numpy(_batch(n=8, h=16, w=16))
    t = Transformer(TransformSpec(crop_size=9, mirror=True), "TRAIN", seed=5)
    t(x)
    st = t.state_dict()
    a = t(x)
    t2 = Transformer(TransformSpec(crop_size=9, mirror=True), "TRAIN", seed=999)
    t2.load_state_dict(st)
    assert torch.equal(t2(x), a)


def test_bad_settings_are_clear_errors():
    with pytest.raises(TransformError, match="mean_file and mean_value"):
        TransformSpec(mean=np.zeros((3, 4, 4), np.float32), mean_value=(1.0,))
    x = torch.from_numpy(_batch(h=8, w=8))
    with pytest.raises(TransformError, match="crop_size 9 is larger"):
        Transformer(TransformSpec(crop_size=9), "TEST")(x)
    with pytest.raises(TransformError, match="images are 3×8×8"):
        Transformer(TransformSpec(mean=np.zeros((3, 10, 10), np.float32), mean_file="m.binaryproto"), "TEST")(x)
    with pytest.raises(TransformError, match="2 values but the data has 3 channels"):
        Transformer(TransformSpec(mean_value=(1.0, 2.0)), "TEST")(x)
