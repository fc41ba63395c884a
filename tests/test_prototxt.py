"""repro.prototxt: text -> upgraded V2 nets and solvers, phase filtering, and the errors a user sees."""
import warnings
from pathlib import Path

import pytest
from google.protobuf import text_format

from repro.proto import caffe_pb2
from repro.prototxt import (
    SUPPORTED_LAYER_TYPES,
    PrototxtError,
    PrototxtWarning,
    filter_net,
    read_net,
    read_solver,
    write_text,
)

BAD = Path(__file__).parent / "data" / "bad_prototxt"
NETS = ["half0A", "halfnatmanA", "netbase", "nolearn_1_3", "reduced-0010", "transfer-ft0A0B_1_3",
        "transfer0A0B_1_3"]
CAFFENET = ["data", "conv1", "relu1", "pool1", "norm1", "conv2", "relu2", "pool2", "norm2", "conv3", "relu3",
            "conv4", "relu4", "conv5", "relu5", "pool5", "fc6", "relu6", "drop6", "fc7", "relu7", "drop7", "fc8"]

V2_NET = """
name: "Tiny"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        transform_param { crop_size: 6 mirror: true } data_param { source: "train_lmdb" batch_size: 4 } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
        transform_param { crop_size: 6 } data_param { source: "val_lmdb" batch_size: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 3 } }
layer { name: "relu" type: "ReLU" bottom: "ip" top: "ip" }
layer { name: "drop" type: "Dropout" bottom: "ip" top: "ip" exclude { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" include { phase: TEST } }
layer { name: "deep" type: "Silence" bottom: "ip" include { phase: TEST min_level: 2 stage: "deep" } }
"""


def _original(shared, net, which):
    return shared / "reference" / "original_prototxt" / net / f"imagenet_{which}.prototxt"


# ---------------------------------------------------------------- the paper's files

@pytest.mark.parametrize("net", NETS)
def test_paper_nets_parse_and_upgrade(shared, net):
    train = read_net(_original(shared, net, "train"))
    val = read_net(_original(shared, net, "val"))
    suffix = lambda names: [n.replace("-new", "") for n in names]  # noqa: E731
    assert suffix([l.name for l in train.layer]) == CAFFENET + ["loss"]
    assert suffix([l.name for l in val.layer]) == CAFFENET + ["prob", "accuracy"]
    assert all(l.type in SUPPORTED_LAYER_TYPES for l in train.layer)
    assert [l.type for l in train.layer[:6]] == ["Data", "Convolution", "ReLU", "Pooling", "LRN", "Convolution"]
    assert train.layer[-1].type == "SoftmaxWithLoss" and val.layer[-1].type == "Accuracy"
    data = train.layer[0]
    # Caffe: V0 cropsize / mirror / meanfile go to transform_param, batchsize / source to data_param.
    assert data.transform_param.crop_size == 227 and data.transform_param.mirror
    assert data.transform_param.mean_file.endswith(".binaryproto")
    assert data.data_param.batch_size == 256 and val.layer[0].data_param.batch_size == 50
    assert not val.layer[0].transform_param.mirror
    conv = {l.name.replace("-new", ""): l.convolution_param for l in train.layer if l.type == "Convolution"}
    assert [(c.num_output, list(c.kernel_size), list(c.pad), c.group) for c in conv.values()] == [
        (96, [11], [], 1), (256, [5], [2], 2), (384, [3], [1], 1), (384, [3], [1], 2), (256, [3], [1], 2)]
    assert list(conv["conv1"].stride) == [4]
    pool1 = train.layer[3].pooling_param
    assert (pool1.pool, pool1.kernel_size, pool1.stride) == (caffe_pb2.PoolingParameter.MAX, 3, 2)
    norm1 = train.layer[4].lrn_param
    assert (norm1.local_size, norm1.alpha, norm1.beta) == (5, pytest.approx(1e-4), pytest.approx(0.75))
    assert train.layer[CAFFENET.index("drop6")].dropout_param.dropout_ratio == pytest.approx(0.5)


def test_freezing_and_renaming_in_transfer_nets(shared):
    params = lambda net: {l.name: [(p.lr_mult, p.decay_mult) for p in l.param]  # noqa: E731
                          for l in net.layer if l.param}
    frozen = params(read_net(_original(shared, "transfer0A0B_1_3", "train")))
    tuned = params(read_net(_original(shared, "transfer-ft0A0B_1_3", "train")))
    base = params(read_net(_original(shared, "half0A", "train")))
    for name in ("conv1", "conv2", "conv3"):
        assert frozen[name] == [(0.0, 0.0), (0.0, 0.0)]  # blobs_lr: 0 -> lr_mult 0 (AnB)
        assert tuned[name] == base[name] == [(1.0, 1.0), (2.0, 0.0)]  # AnB+ fine-tunes them
    for name in ("conv4", "conv5", "fc6", "fc7", "fc8"):
        assert name not in frozen and frozen[name + "-new"] == [(1.0, 1.0), (2.0, 0.0)]
    assert len(frozen) == len(base) == 8


def test_netbase_padding_layers_fold_into_conv(shared):
    raw = text_format.Parse(_original(shared, "netbase", "train").read_text(), caffe_pb2.NetParameter())
    assert sum(l.layer.type == "padding" for l in raw.layers) == 4
    net = read_net(_original(shared, "netbase", "train"))
    assert not any("pad" in l.name for l in net.layer)
    conv2 = next(l for l in net.layer if l.name == "conv2")
    assert list(conv2.bottom) == ["norm1"] and list(conv2.convolution_param.pad) == [2]
    # The padding-layer net (Caffe's oldest syntax) and half0A's inline `pad` upgrade to the same net.
    assert net == read_net(_original(shared, "half0A", "train"))
    assert read_net(_original(shared, "netbase", "val")) == read_net(_original(shared, "half0A", "val"))


@pytest.mark.parametrize("net", NETS)
def test_paper_solvers(shared, net):
    s = read_solver(_original(shared, net, "solver"))
    assert (s.train_net, list(s.test_net)) == ("imagenet_train.prototxt", ["imagenet_val.prototxt"])
    assert s.solver_mode == caffe_pb2.SolverParameter.GPU and s.type == "SGD"
    # The reduced-data runs used a shorter schedule (reduced-0010: base_lr 0.0125, step 64000, 200000 iters).
    expected = (0.0125, 64000, 200000) if net.startswith("reduced") else (0.01, 100000, 450000)
    assert (s.base_lr, s.stepsize, s.max_iter) == (pytest.approx(expected[0]), *expected[1:])
    assert s.lr_policy == "step" and s.gamma == pytest.approx(0.1)
    assert list(s.test_iter) == [1000] and s.test_interval == 1000
    assert (s.momentum, s.weight_decay) == (pytest.approx(0.9), pytest.approx(5e-4))


def test_golden_nets(golden):
    g1 = read_net(golden / "g1_net.prototxt")
    assert [l.type for l in g1.layer].count("Convolution") == 5 and g1.force_backward
    assert g1.layer[0].type == "Input" and [list(s.dim) for s in g1.layer[0].input_param.shape] == [
        [4, 3, 227, 227], [4]]
    g1b = read_net(golden / "g1b_net.prototxt")
    assert g1b.layer[-1].name == "pool5"
    g2 = read_net(golden / "g2_net.prototxt")
    assert not g2.force_backward
    s = read_solver(golden / "g2_solver.prototxt")
    assert (s.net, s.stepsize, s.solver_mode, s.max_iter) == ("g2_net.prototxt", 2, caffe_pb2.SolverParameter.CPU, 5)
    g3 = filter_net(read_net(golden / "g3" / "g3_data_net.prototxt"), "TEST")
    assert g3.layer[0].data_param.backend == caffe_pb2.DataParameter.LMDB


# ---------------------------------------------------------------- phases, in-place layers, text sources

def test_filter_net_phase_level_stage():
    net = read_net(V2_NET)
    train, test = filter_net(net, "TRAIN"), filter_net(net, caffe_pb2.TEST)
    assert [l.name for l in train.layer] == ["data", "ip", "relu", "drop", "loss"]
    assert [l.name for l in test.layer] == ["data", "ip", "relu", "loss", "acc"]
    assert train.layer[0].data_param.source == "train_lmdb" and test.layer[0].data_param.source == "val_lmdb"
    assert {l.phase for l in train.layer} == {caffe_pb2.TRAIN} and train.state.phase == caffe_pb2.TRAIN
    assert [l.name for l in filter_net(net, "TEST", level=2, stages=["deep"]).layer][-1] == "deep"
    assert "deep" not in [l.name for l in filter_net(net, "TEST", level=1, stages=["deep"]).layer]
    assert "deep" not in [l.name for l in filter_net(net, "TEST", level=2).layer]
    assert len(net.layer) == 8  # the input is not modified
    with pytest.raises(ValueError, match="TRAIN"):
        filter_net(net, "VAL")


def test_in_place_layers_are_valid_and_keep_their_blob():
    net = read_net(V2_NET)
    relu = next(l for l in net.layer if l.name == "relu")
    assert list(relu.bottom) == list(relu.top) == ["ip"]


def test_read_net_accepts_path_text_and_message(tmp_path):
    p = tmp_path / "tiny.prototxt"
    p.write_text(V2_NET)
    from_text, from_path, from_str_path = read_net(V2_NET), read_net(p), read_net(str(p))
    assert from_text == from_path == from_str_path
    assert read_net(from_text) == from_text


def test_write_text_round_trip(tmp_path, shared):
    net = read_net(_original(shared, "netbase", "train"))
    out = tmp_path / "upgraded.prototxt"
    write_text(net, out)
    assert read_net(out) == net
    assert [p.name for p in tmp_path.iterdir()] == ["upgraded.prototxt"]  # no temp file left behind


def test_v2_data_param_transform_fields_warn():
    text = V2_NET.replace("data_param { source: \"val_lmdb\"", "data_param { crop_size: 5 source: \"val_lmdb\"")
    with pytest.warns(PrototxtWarning, match=r"<text>:6: .*data_param.crop_size is ignored"):
        read_net(text)


# ---------------------------------------------------------------- errors

def _error(source):
    with pytest.raises(PrototxtError) as info:
        read_net(source)
    return info.value


def test_error_unknown_v0_layer_type_names_its_line():
    e = _error(BAD / "unknown_type_v0.prototxt")
    assert (e.line, e.field, e.layer) == (20, "type", "conv2")
    assert str(e).startswith(f'{BAD / "unknown_type_v0.prototxt"}:20: unknown layer type "convolution3d"')


def test_error_unknown_v2_layer_type():
    e = _error(BAD / "unknown_type_v2.prototxt")
    assert (e.line, e.field, e.layer) == (11, "type", "norm1")
    assert 'unknown layer type "LocalResponseNorm"' in e.message and "supported: AbsVal, Accuracy," in e.message
    assert "did you mean ReLU?" in _error(V2_NET.replace('type: "ReLU"', 'type: "Relu"')).message


def test_error_bottom_never_produced():
    e = _error(BAD / "bottom_never_produced.prototxt")
    assert (e.line, e.field, e.layer) == (18, "bottom", "pool1")
    assert 'bottom "conv1" is not produced by any earlier layer' in str(e)


def test_error_malformed_text_has_line_and_column():
    e = _error(BAD / "malformed.prototxt")
    assert e.line == 7 and e.column == 1 and 'Expected "}"' in e.message  # the brace opened on line 6
    assert str(e).startswith(f"{BAD / 'malformed.prototxt'}:7:1: ")


def test_error_unknown_field_suggests_the_v0_spelling():
    e = _error(BAD / "unknown_field.prototxt")
    assert (e.line, e.column, e.field) == (7, 5, "kernel_size")
    assert 'unknown field "kernel_size" in caffe.V0LayerParameter (did you mean kernelsize?)' in str(e)


def test_error_duplicate_layer_name():
    e = _error(BAD / "duplicate_name.prototxt")
    assert (e.line, e.field, e.layer) == (15, "name", "relu")


def test_error_top_produced_twice_and_bad_values():
    e = _error(V2_NET.replace('top: "acc"', 'top: "loss"'))
    assert e.field == "top" and e.layer == "acc" and e.line == 11 and str(e).startswith("<text>:11:")
    e = _error(V2_NET.replace("num_output: 3", "num_output: three"))
    assert (e.line, e.field) == (7, "num_output") and "three" in e.message
    e = _error(V2_NET.replace("phase: TRAIN", "phase: TRIAN"))
    assert (e.line, e.field) == (3, "phase") and "TRIAN" in e.message


def test_error_net_input_without_dims_and_missing_file(tmp_path):
    e = _error('input: "data"\nlayer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n')
    assert e.field == "bottom" and "needs input_shape or input_dim" in e.message
    e = _error(tmp_path / "absent.prototxt")
    assert e.path == str(tmp_path / "absent.prototxt") and "cannot read" in e.message
    e = _error('name: "empty"\n')
    assert "no layers" in e.message


def test_solver_errors():
    with pytest.raises(PrototxtError, match=r"solver_two_nets.prototxt:2: .*more than one train net"):
        read_solver(BAD / "solver_two_nets.prototxt")
    with pytest.raises(PrototxtError, match=r"solver_both_types.prototxt:3: both `solver_type`"):
        read_solver(BAD / "solver_both_types.prototxt")
    with pytest.raises(PrototxtError, match="test_iter"):
        read_solver('train_net: "a"\ntest_net: "b"\ntest_net: "c"\ntest_iter: 5\n')
    with pytest.raises(PrototxtError, match="names no net"):
        read_solver("base_lr: 0.1\n")


def test_no_warnings_for_clean_files(shared):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_net(_original(shared, "netbase", "train"))
        read_net(V2_NET)


def test_v0_deploy_net_with_legacy_inputs(tmp_path):
    p = tmp_path / "deploy.prototxt"
    p.write_text((BAD / "unknown_type_v0.prototxt").read_text().replace('"convolution3d"', '"conv"'))
    net = read_net(p)
    assert [(l.name, l.type) for l in net.layer] == [("input", "Input"), ("conv1", "Convolution"),
                                                     ("conv2", "Convolution")]
    assert list(net.layer[0].input_param.shape[0].dim) == [1, 3, 8, 8] and not net.input_dim
    p.write_text(p.read_text().replace("input_dim: 8\ninput_dim: 8\n", "input_dim: 8\n"))
    e = _error(p)
    assert (e.line, e.field) == (3, "input_dim") and "4 (num, channels, height, width) per input" in e.message
