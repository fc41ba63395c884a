"""The public preprocessing (pycaffe's caffe.io.Transformer) gives what the Data layer's TEST transform gives."""
import numpy as np
import pytest
import torch

from repro.data.transform import Transformer as DataTransform
from repro.data.transform import TransformSpec
from repro.data.transformer import Transformer, TransformerError


def _image_and_mean(seed=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)        # H×W×C, BGR, as read_image gives
    mean = rng.uniform(0, 255, (3, 256, 256)).astype(np.float32)
    return img, mean


def test_matches_the_data_layers_test_transform_mean_image_and_values():
    img, mean = _image_and_mean()
    for spec, set_mean in ((TransformSpec(crop_size=227, mean=mean), mean),
                           (TransformSpec(crop_size=227, mean_value=(104.0, 117.0, 123.0)), [104.0, 117.0, 123.0])):
        ref = DataTransform(spec, "TEST")(torch.from_numpy(img.transpose(2, 0, 1)[None].copy()))[0].numpy()
        t = Transformer({"data": (1, 3, 227, 227)})
        t.set_transpose("data", (2, 0, 1))
        t.set_crop("data", 227)
        t.set_mean("data", set_mean)
        got = t.preprocess("data", img)
        # the same float32 ops (integer pixel minus float32 mean) on both paths: exact; and anchored to float64
        m64 = np.asarray(set_mean, np.float64)
        m64 = m64[:, 14:241, 14:241] if m64.ndim == 3 else m64.reshape(3, 1, 1)
        f64 = img.transpose(2, 0, 1)[:, 14:241, 14:241].astype(np.float64) - m64
        assert got.shape == (3, 227, 227) and np.array_equal(got, ref)
        assert np.abs(got - f64).max() <= 1.6e-5   # |x| < 256 in float32: half an ulp is at most 2^-17 = 7.6e-6


def test_pycaffe_style_rgb_unit_image_and_deprocess():
    img, mean = _image_and_mean(1)
    rgb01 = img[:, :, ::-1].astype(np.float32) / 255      # caffe.io.load_image: RGB in [0, 1]
    t = Transformer({"data": (1, 3, 227, 227)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    t.set_crop("data", 227)
    t.set_mean("data", mean)
    got = t.preprocess("data", rgb01)
    want = img.transpose(2, 0, 1)[:, 14:241, 14:241].astype(np.float64) - mean[:, 14:241, 14:241]
    assert np.abs(got - want).max() <= 1e-3        # x/255*255 in float32: a few ulps of 255
    back = t.deprocess("data", got)
    assert np.abs(back - rgb01[14:241, 14:241]).max() <= 1e-5
    with pytest.raises(TransformerError, match="squash"):
        Transformer({"data": (1, 3, 227, 227)}).preprocess("data", img)
