"""Absurd sizes and impossible input shapes are refused when the net is built, naming the layer."""
import pytest

from repro.net import Net, NetError

from .helpers import TINY


def test_absurd_num_output_names_layer_and_bytes():
    huge = TINY.replace("num_output: 3", "num_output: 2000000000")
    with pytest.raises(NetError, match=r"layer 'fc' \(InnerProduct\): param 0 of shape \(2000000000, 144\) has "
                                       r"288,000,000,000 elements \(1,152,000,000,000 bytes as float32\), more "
                                       r"than Caffe's blob limit of INT_MAX"):
        Net(huge, "TEST")


def test_absurd_top_blob_is_refused_too():
    # 4 x 3 x 40000 x 40000 = 19.2e9 elements: refused on the Input's top, before any layer allocates
    big = TINY.replace("dim: 2 dim: 3 dim: 8 dim: 8", "dim: 4 dim: 3 dim: 40000 dim: 40000")
    with pytest.raises(NetError, match=r"layer 'data' \(Input\): top 'data' of shape \(4, 3, 40000, 40000\).*bytes"):
        Net(big, "TEST")


@pytest.mark.parametrize("dims", ["dim: 2 dim: 3 dim: -1 dim: 8", "dim: 0 dim: 3 dim: 8 dim: 8"])
def test_input_dims_below_one_are_refused(dims):
    bad = TINY.replace("dim: 2 dim: 3 dim: 8 dim: 8", dims)
    with pytest.raises(NetError, match=r"layer 'data' \(Input\): net input 'data' has shape .* at least 1"):
        Net(bad, "TEST")


def test_input_shapes_argument_is_checked_the_same_way():
    with pytest.raises(NetError, match="net input 'data' has shape \\(2, 3, 0, 8\\)"):
        Net(TINY, "TEST", input_shapes={"data": (2, 3, 0, 8)})
