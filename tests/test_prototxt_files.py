"""Every file in prototxt/ parses and builds; param_shapes.json matches the nets; our CaffeNet is the paper's."""
import functools
import json
from dataclasses import dataclass

import pytest

from repro.net import Net
from repro.prototxt import read_net, read_solver
from repro.prototxt_files import NETS, PARAM_SHAPES_FILE, all_prototxt_files, param_shapes, prototxt_dir, prototxt_path

FILES = all_prototxt_files()
NET_FILES = [p for p in FILES if p.name != "solver.prototxt"]
SOLVER_FILES = [p for p in FILES if p.name == "solver.prototxt"]
LEARNED = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]


def _id(p):
    return f"{p.parent.name}/{p.name}"


@dataclass
class Built:
    """What the tests need of a built net (a CaffeNet holds 244 MB of weights: not kept around)."""
    layer_names: list
    types: list
    param_specs: dict
    outputs: list
    inputs: list
    blob_shapes: dict
    shapes: dict


@functools.lru_cache(maxsize=None)
def built(path, phase):
    net = Net(path, phase)
    return Built(net.layer_names, [net.layer(n).type for n in net.layer_names], dict(net.param_specs),
                 net.outputs, net.inputs, dict(net.blob_shapes), param_shapes(net))


def test_every_net_has_its_three_files():
    assert set(NETS) <= {p.parent.name for p in FILES}
    for net in NETS:
        for kind in ("train_val", "deploy", "solver"):
            assert prototxt_path(net, kind).is_file()


@pytest.mark.parametrize("path", NET_FILES, ids=_id)
@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
def test_net_file_parses_and_builds(path, phase):
    read_net(path)
    net = built(path, phase)
    assert net.shapes["total"] > 0
    if path.name == "deploy.prototxt":
        assert net.outputs == ["prob"] and net.inputs == ["data"]
    elif phase == "TRAIN":
        assert net.outputs == ["loss"]
    else:
        assert net.outputs == ["accuracy", "accuracy_top5", "loss"]


@pytest.mark.parametrize("path", SOLVER_FILES, ids=_id)
def test_solver_file_parses_and_names_its_net(path):
    solver = read_solver(path)
    # Caffe resolves `net` against the working directory: ours are relative to the repository root.
    assert (prototxt_dir().parent / solver.net).resolve() == (path.parent / "train_val.prototxt").resolve()
    assert solver.lr_policy == "step" and solver.momentum == pytest.approx(0.9)


@pytest.mark.parametrize("net", NETS)
def test_param_shapes_json_matches_nets(net):
    table = json.loads((prototxt_dir() / PARAM_SHAPES_FILE).read_text())
    assert set(table) == set(NETS)
    expect = table[net]
    for kind, phase in (("train_val", "TRAIN"), ("train_val", "TEST"), ("deploy", "TEST")):
        assert built(prototxt_path(net, kind), phase).shapes == expect, \
            f"{net}/{kind} {phase} differs from {PARAM_SHAPES_FILE}: run python tools/param_shapes.py"
    assert list(expect["layers"]) == LEARNED


def test_caffenet_param_count():
    # CaffeNet's well-known size: 60,965,224 parameters
    table = json.loads((prototxt_dir() / PARAM_SHAPES_FILE).read_text())
    assert table["caffenet"]["total"] == 60_965_224


def test_small_net_mirrors_caffenet():
    """Same layer names, types and order (so grid/transfer code treats both alike), same multipliers."""
    for kind in ("train_val", "deploy"):
        for phase in ("TRAIN", "TEST"):
            big, small = built(prototxt_path("caffenet", kind), phase), built(prototxt_path("small", kind), phase)
            assert small.layer_names == big.layer_names
            assert small.types == big.types
            assert small.param_specs == big.param_specs
    small = built(prototxt_path("small", "train_val"), "TRAIN")
    assert small.blob_shapes["data"] == (64, 3, 56, 56) and small.blob_shapes["fc8"] == (64, 20)
    assert built(prototxt_path("small", "train_val"), "TEST").blob_shapes["data"][0] == 50


def _layer_settings(net_param):
    """Per layer name: the settings that define the computation (not data plumbing)."""
    out = {}
    for lp in net_param.layer:
        if lp.type in ("Convolution", "InnerProduct", "Pooling", "LRN", "Dropout", "ReLU"):
            fields = ("convolution_param", "inner_product_param", "pooling_param", "lrn_param", "dropout_param",
                      "relu_param")
            params = {f: str(getattr(lp, f)) for f in fields if lp.HasField(f)}
            specs = [(p.lr_mult, p.decay_mult) for p in lp.param]
            out[lp.name] = (lp.type, tuple(lp.bottom), tuple(lp.top), params, specs)
    return out


@pytest.mark.parametrize("ours,theirs,phase", [("train_val", "imagenet_train", "TRAIN"),
                                               ("train_val", "imagenet_val", "TEST")])
def test_caffenet_is_the_papers_net(shared, ours, theirs, phase):
    """Upgraded to V2, the paper's own V0 half0A prototxt has exactly our layers' settings (geometry, fillers,
    lr/decay multipliers, dropout), and the same data geometry."""
    from repro.prototxt import filter_net

    paper = filter_net(read_net(shared / "reference/original_prototxt/half0A" / f"{theirs}.prototxt"), phase)
    mine = filter_net(read_net(prototxt_path("caffenet", ours)), phase)
    a, b = _layer_settings(paper), _layer_settings(mine)
    assert list(a) == list(b)
    for name in a:
        if theirs == "imagenet_val" and a[name][0] in ("Convolution", "InnerProduct"):
            # the paper's val prototxt omits fillers and multipliers (its weights come from the train net)
            assert a[name][:3] == b[name][:3]
        else:
            assert a[name] == b[name], name
    (pd,), (md,) = [[lp for lp in n.layer if lp.type == "Data"] for n in (paper, mine)]
    assert pd.data_param.batch_size == md.data_param.batch_size
    assert pd.transform_param.crop_size == md.transform_param.crop_size == 227
    assert pd.transform_param.mirror == md.transform_param.mirror


def test_caffenet_solver_is_the_papers(shared):
    paper = read_solver(shared / "reference/original_prototxt/half0A/imagenet_solver.prototxt")
    mine = read_solver(prototxt_path("caffenet", "solver"))
    for field in ("base_lr", "lr_policy", "gamma", "stepsize", "max_iter", "momentum", "weight_decay", "test_iter",
                  "test_interval", "display", "snapshot"):
        assert getattr(mine, field) == getattr(paper, field), field


@pytest.mark.parametrize("kind", ["train_val", "deploy"])
def test_the_miniature_net_is_the_small_net_with_its_own_data_and_classes(kind):
    # Caffe's prototxt has no include, so prototxt/mini repeats prototxt/small: this keeps the copy from drifting.
    # The only differences allowed: the net's name, the datasets it reads and fc8's outputs (32 classes).
    small, mini = read_net(prototxt_path("small", kind)), read_net(prototxt_path("mini", kind))
    small.name = "MiniCaffeNet"
    for layer in small.layer:
        if layer.type == "Data":
            layer.data_param.source = layer.data_param.source.replace("data/builtin/", "data/mini/")
            layer.transform_param.mean_file = layer.transform_param.mean_file.replace("data/builtin/", "data/mini/")
        if layer.name == "fc8":
            layer.inner_product_param.num_output = 32
    assert mini == small
