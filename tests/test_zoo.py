"""The classic model-zoo classifiers load from their deploy prototxt: AlexNet, VGG-16 and GoogLeNet
(tests/data/zoo/, laid out as the BVLC model zoo defines them; CaffeNet is prototxt/caffenet/).

For each: repro.prototxt.read_net parses it, repro.Net builds it at batch 1, ``prob`` is a (1, 1000)
distribution, and every learnable blob has the shape the architecture's definition gives, so the parameter
count is the published one. The expected shapes are derived here from each paper's layer table, not read from
the net. GoogLeNet's inception outputs have the published channels and spatial sizes, and its random weights
survive a .caffemodel round trip (Net.save -> Net.copy_from) bit for bit.
"""
from pathlib import Path

import pytest
import torch

from repro import Net
from repro.prototxt import read_net

ZOO = Path(__file__).resolve().parent / "data" / "zoo"


# ------------------------------------------------------------------------------- architecture definitions

def conv_blobs(c_in, c_out, k, group=1):
    """Caffe ConvolutionLayer blobs: weight (c_out, c_in / group, k, k), bias (c_out,)."""
    return [(c_out, c_in // group, k, k), (c_out,)]


def fc_blobs(n_in, n_out):
    """Caffe InnerProductLayer blobs: weight (n_out, n_in), bias (n_out,)."""
    return [(n_out, n_in), (n_out,)]


def alexnet_blobs():
    # Krizhevsky et al. 2012, as bvlc_alexnet: conv2/4/5 split in two groups; 227 -> conv1 55 -> pool1 27
    # -> pool2 13 -> pool5 6, so fc6 sees 256 * 6 * 6 inputs.
    return {
        "conv1": conv_blobs(3, 96, 11),
        "conv2": conv_blobs(96, 256, 5, group=2),
        "conv3": conv_blobs(256, 384, 3),
        "conv4": conv_blobs(384, 384, 3, group=2),
        "conv5": conv_blobs(384, 256, 3, group=2),
        "fc6": fc_blobs(256 * 6 * 6, 4096),
        "fc7": fc_blobs(4096, 4096),
        "fc8": fc_blobs(4096, 1000),
    }


def vgg16_blobs():
    # Simonyan & Zisserman 2015, configuration D: five stages of 3x3 convs, each halved by a 2x2 pool, so
    # 224 -> 7 and fc6 sees 512 * 7 * 7 inputs.
    blobs, c_in = {}, 3
    for stage, (reps, width) in enumerate([(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)], start=1):
        for r in range(1, reps + 1):
            blobs[f"conv{stage}_{r}"] = conv_blobs(c_in, width, 3)
            c_in = width
    blobs["fc6"] = fc_blobs(512 * 7 * 7, 4096)
    blobs["fc7"] = fc_blobs(4096, 4096)
    blobs["fc8"] = fc_blobs(4096, 1000)
    return blobs


# Szegedy et al. 2015, Table 1: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj; with the spatial size
# of the module's output at a 224 input.
INCEPTION = {
    "3a": ((64, 96, 128, 16, 32, 32), 28),
    "3b": ((128, 128, 192, 32, 96, 64), 28),
    "4a": ((192, 96, 208, 16, 48, 64), 14),
    "4b": ((160, 112, 224, 24, 64, 64), 14),
    "4c": ((128, 128, 256, 24, 64, 64), 14),
    "4d": ((112, 144, 288, 32, 64, 64), 14),
    "4e": ((256, 160, 320, 32, 128, 128), 14),
    "5a": ((256, 160, 320, 32, 128, 128), 7),
    "5b": ((384, 192, 384, 48, 128, 128), 7),
}
# The published output depths of the nine modules (Table 1, "depth" of the concatenation).
INCEPTION_CHANNELS = [256, 480, 512, 512, 512, 528, 832, 832, 1024]


def googlenet_blobs():
    blobs = {
        "conv1/7x7_s2": conv_blobs(3, 64, 7),
        "conv2/3x3_reduce": conv_blobs(64, 64, 1),
        "conv2/3x3": conv_blobs(64, 192, 3),
    }
    c_in = 192
    for m, ((n1, n3r, n3, n5r, n5, npp), _) in INCEPTION.items():
        p = f"inception_{m}/"
        blobs[p + "1x1"] = conv_blobs(c_in, n1, 1)
        blobs[p + "3x3_reduce"] = conv_blobs(c_in, n3r, 1)
        blobs[p + "3x3"] = conv_blobs(n3r, n3, 3)
        blobs[p + "5x5_reduce"] = conv_blobs(c_in, n5r, 1)
        blobs[p + "5x5"] = conv_blobs(n5r, n5, 5)
        blobs[p + "pool_proj"] = conv_blobs(c_in, npp, 1)
        c_in = n1 + n3 + n5 + npp  # the Concat output feeds the next module
    blobs["loss3/classifier"] = fc_blobs(c_in, 1000)  # after the 7x7 average pool: 1024 x 1 x 1
    return blobs


def count(blobs):
    total = 0
    for shapes in blobs.values():
        for shape in shapes:
            n = 1
            for d in shape:
                n *= d
            total += n
    return total


# name, file, input side, expected blobs, published parameter count (None: only the derived one)
NETS = {
    "alexnet": ("alexnet_deploy.prototxt", 227, alexnet_blobs, 60_965_224),
    "vgg16": ("vgg16_deploy.prototxt", 224, vgg16_blobs, 138_357_544),
    "googlenet": ("googlenet_deploy.prototxt", 224, googlenet_blobs, None),
}


def randomise(net, seed=0):
    """He-scaled random weights (the deploy files have no or constant fillers), so prob is not uniform."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for blobs in net.params.values():
            w, b = blobs
            fan_in = w[0].numel()
            w.copy_(torch.randn(w.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            b.copy_(torch.randn(b.shape, generator=g) * 0.01)


@pytest.fixture(scope="module", params=list(NETS))
def built(request):
    """(key, net at batch 1 with random weights, the image it was run on, prob)."""
    key = request.param
    fname, side, _, _ = NETS[key]
    net = Net(ZOO / fname, phase="TEST", input_shapes={"data": (1, 3, side, side)})
    randomise(net)
    image = torch.randn((1, 3, side, side), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        prob = net(data=image)["prob"]
    yield key, net, image, prob
    del net


# ------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("key", list(NETS))
def test_read_net_parses_the_deploy_file(key):
    fname, side, _, _ = NETS[key]
    param = read_net(ZOO / fname)
    # The first layer is the net input: an Input layer, or the legacy input/input_dim fields upgraded into one
    # (Caffe: UpgradeNetInput) -- VGG-16's deploy file uses the legacy fields.
    first = param.layer[0]
    assert first.type == "Input"
    assert list(first.top) == ["data"]
    assert list(first.input_param.shape[0].dim) == [10, 3, side, side]
    assert param.layer[-1].type == "Softmax" and list(param.layer[-1].top) == ["prob"]
    names = {lp.name for lp in param.layer}
    assert set(NETS[key][2]()) <= names


def test_vgg16_uses_the_legacy_input_fields():
    text = (ZOO / "vgg16_deploy.prototxt").read_text()
    assert 'input: "data"' in text and "input_dim: 224" in text
    assert 'type: "Input"' not in text


@pytest.mark.parametrize("key", list(NETS))
def test_default_batch_is_the_deploy_files(key):
    fname, _, _, _ = NETS[key]
    net = Net(ZOO / fname, phase="TEST")
    assert net.inputs == ["data"]
    assert net.outputs == ["prob"]
    assert net.blob_shapes["prob"] == (10, 1000)


def test_prob_is_a_distribution_over_1000_classes(built):
    key, net, _, prob = built
    assert net.outputs == ["prob"]
    assert tuple(prob.shape) == (1, 1000)
    assert torch.all(prob >= 0)
    assert abs(float(prob.double().sum()) - 1.0) < 1e-5
    assert float(prob.max()) > float(prob.min())  # random weights: not the uniform output of zero weights


def test_param_shapes_and_count_are_the_published_ones(built):
    key, net, _, _ = built
    _, _, blobs_of, published = NETS[key]
    expected = blobs_of()
    got = {name: [tuple(b.shape) for b in blobs] for name, blobs in net.params.items()}
    assert got == expected
    n = sum(b.numel() for blobs in net.params.values() for b in blobs)
    assert n == count(expected)
    if published is not None:
        assert n == published


def test_googlenet_inception_outputs():
    fname = NETS["googlenet"][0]
    net = Net(ZOO / fname, phase="TEST", input_shapes={"data": (1, 3, 224, 224)})
    randomise(net, seed=2)
    with torch.no_grad():
        net(data=torch.randn((1, 3, 224, 224), generator=torch.Generator().manual_seed(3)))
    channels = []
    for m, ((n1, _, n3, _, n5, npp), side) in INCEPTION.items():
        out = net.blobs[f"inception_{m}/output"]
        assert tuple(out.shape) == (1, n1 + n3 + n5 + npp, side, side), m
        assert net.blob_shapes[f"inception_{m}/output"] == tuple(out.shape)
        channels.append(out.shape[1])
    assert channels == INCEPTION_CHANNELS
    assert tuple(net.blobs["pool5/7x7_s1"].shape) == (1, 1024, 1, 1)
    # The stem: 224 -> conv1 112 -> pool1 56 (Caffe's ceil-mode pooling) -> pool2 28.
    assert tuple(net.blobs["conv1/7x7_s2"].shape) == (1, 64, 112, 112)
    assert tuple(net.blobs["pool1/3x3_s2"].shape) == (1, 64, 56, 56)
    assert tuple(net.blobs["pool2/3x3_s2"].shape) == (1, 192, 28, 28)


def test_googlenet_caffemodel_round_trip(tmp_path):
    fname = NETS["googlenet"][0]
    net = Net(ZOO / fname, phase="TEST", input_shapes={"data": (1, 3, 224, 224)})
    randomise(net, seed=4)
    image = torch.randn((1, 3, 224, 224), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        prob = net(data=image)["prob"]
    path = tmp_path / "googlenet.caffemodel"
    net.save(path)

    fresh = Net(ZOO / fname, phase="TEST", input_shapes={"data": (1, 3, 224, 224)})
    copied = fresh.copy_from(path)
    assert copied == list(net.params)  # every layer with weights, in net order
    with torch.no_grad():
        again = fresh(data=image)["prob"]
    assert torch.equal(prob, again)
