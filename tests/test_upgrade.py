"""repro.upgrade: Caffe's upgrade_proto.cpp (V0 -> V1 -> V2, padding layers, data transforms, legacy inputs,
BatchNorm, solver type), checked field by field on small nets."""
import pytest
from google.protobuf import text_format

from repro.proto import caffe_pb2
from repro.upgrade import PrototxtError, PrototxtWarning, upgrade_net, upgrade_net_with_origins, upgrade_solver


def _net(text):
    return text_format.Parse(text, caffe_pb2.NetParameter())


def _layer(net, name):
    return next(l for l in net.layer if l.name == name)


V0 = """
name: "v0"
input: "data"
input_dim: 2 input_dim: 3 input_dim: 9 input_dim: 9
layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
layers { layer { name: "conv1" type: "conv" num_output: 8 kernelsize: 3 stride: 2 group: 1 biasterm: false
                 weight_filler { type: "gaussian" std: 0.01 } blobs_lr: 0 weight_decay: 0 } bottom: "pad1" top: "conv1" }
layers { layer { name: "relu1" type: "relu" } bottom: "conv1" top: "conv1" }
layers { layer { name: "pad2" type: "padding" pad: 1 } bottom: "conv1" top: "pad2" }
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 3 stride: 2 } bottom: "pad2" top: "pool1" }
layers { layer { name: "norm1" type: "lrn" local_size: 3 alpha: 0.5 beta: 0.25 k: 2 } bottom: "pool1" top: "norm1" }
layers { layer { name: "fc" type: "innerproduct" num_output: 5 bias_filler { type: "constant" value: 1 }
                 blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0 } bottom: "norm1" top: "fc" }
layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.25 } bottom: "fc" top: "fc" }
layers { layer { name: "cat" type: "concat" concat_dim: 1 } bottom: "fc" bottom: "fc" top: "cat" }
layers { layer { name: "prob" type: "softmax" } bottom: "cat" top: "prob" }
"""


def test_v0_net_upgrades_field_by_field():
    net, origins = upgrade_net_with_origins(_net(V0))
    assert [l.name for l in net.layer] == ["input", "conv1", "relu1", "pool1", "norm1", "fc", "drop", "cat", "prob"]
    assert [l.type for l in net.layer] == ["Input", "Convolution", "ReLU", "Pooling", "LRN", "InnerProduct",
                                           "Dropout", "Concat", "Softmax"]
    assert origins == [None, 1, 2, 4, 5, 6, 7, 8, 9]  # padding layers 0 and 3 are gone
    assert not net.input and not net.input_dim and not net.layers
    inp = net.layer[0]
    assert list(inp.top) == ["data"] and list(inp.input_param.shape[0].dim) == [2, 3, 9, 9]
    conv = _layer(net, "conv1")
    cp = conv.convolution_param
    # UpgradeV0PaddingLayers: the padding layer's pad moves into the conv, which now reads the padding's input.
    assert list(conv.bottom) == ["data"] and list(cp.pad) == [2]
    assert (cp.num_output, list(cp.kernel_size), list(cp.stride), cp.group, cp.bias_term) == (8, [3], [2], 1, False)
    assert cp.weight_filler.type == "gaussian" and cp.weight_filler.std == pytest.approx(0.01)
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(0.0, 0.0)]
    pool = _layer(net, "pool1")
    pp = pool.pooling_param
    assert list(pool.bottom) == ["conv1"]
    assert (pp.pool, pp.pad, pp.kernel_size, pp.stride) == (caffe_pb2.PoolingParameter.AVE, 1, 3, 2)
    lrn = _layer(net, "norm1").lrn_param
    assert (lrn.local_size, lrn.alpha, lrn.beta, lrn.k) == (3, 0.5, 0.25, 2.0)
    fc = _layer(net, "fc")
    assert fc.inner_product_param.num_output == 5 and fc.inner_product_param.bias_filler.value == 1.0
    assert [(p.lr_mult, p.decay_mult) for p in fc.param] == [(1.0, 1.0), (2.0, 0.0)]
    assert _layer(net, "drop").dropout_param.dropout_ratio == 0.25
    assert _layer(net, "cat").concat_param.concat_dim == 1


def test_v0_data_layers_move_transform_fields():
    net = upgrade_net(_net("""
        layers { layer { name: "d" type: "data" source: "db" meanfile: "m.binaryproto" batchsize: 7 cropsize: 5
                         mirror: true scale: 0.5 rand_skip: 3 } top: "data" top: "label" }
        layers { layer { name: "i" type: "images" source: "list.txt" batchsize: 2 new_height: 8 new_width: 9
                         shuffle_images: true } top: "img" top: "l2" }
        layers { layer { name: "w" type: "window_data" source: "win.txt" det_fg_threshold: 0.7 det_context_pad: 4
                         det_crop_mode: "square" } top: "win" top: "l3" }
        layers { layer { name: "h" type: "hdf5_output" hdf5_output_param { file_name: "out.h5" } }
                 bottom: "data" bottom: "label" }
        """))
    d, i, w, h = net.layer
    assert (d.type, d.data_param.source, d.data_param.batch_size, d.data_param.rand_skip) == ("Data", "db", 7, 3)
    tp = d.transform_param
    assert (tp.mean_file, tp.crop_size, tp.mirror, tp.scale) == ("m.binaryproto", 5, True, 0.5)
    assert not d.data_param.HasField("crop_size") and not d.data_param.HasField("mean_file")
    ip = i.image_data_param
    assert (i.type, ip.source, ip.batch_size, ip.new_height, ip.new_width, ip.shuffle) == (
        "ImageData", "list.txt", 2, 8, 9, True)
    wp = w.window_data_param
    assert (w.type, wp.source, wp.context_pad, wp.crop_mode) == ("WindowData", "win.txt", 4, "square")
    assert wp.fg_threshold == pytest.approx(0.7)
    assert (h.type, h.hdf5_output_param.file_name) == ("HDF5Output", "out.h5")


def test_v0_setting_meaningless_for_type_warns_and_is_dropped():
    with pytest.warns(PrototxtWarning, match='"num_output" means nothing for layer type "relu"'):
        net = upgrade_net(_net('input: "x" layers { layer { name: "r" type: "relu" num_output: 3 } '
                               'bottom: "x" top: "x" }'))
    assert net.layer[0].type == "ReLU" and not net.layer[0].HasField("inner_product_param")


def test_v0_upgrade_errors_carry_the_input_layer_index():
    with pytest.raises(PrototxtError, match='unknown layer type "conv3d"') as info:
        upgrade_net(_net(V0.replace('type: "lrn"', 'type: "conv3d"')))
    assert (info.value.layer_index, info.value.field, info.value.layer) == (5, "type", "norm1")
    with pytest.raises(PrototxtError, match='padding layer "pad2" feeds layer "norm1"'):
        upgrade_net(_net(V0.replace('bottom: "pool1" top: "norm1"', 'bottom: "pad2" top: "norm1"')))
    with pytest.raises(PrototxtError, match='bottom "nothing" is not produced'):
        upgrade_net(_net(V0.replace('bottom: "conv1" top: "pad2"', 'bottom: "nothing" top: "pad2"')))


V1 = """
name: "v1"
layers { name: "data" type: DATA top: "data" top: "label"
         data_param { source: "train_db" batch_size: 4 crop_size: 3 mean_file: "mean.binaryproto" mirror: true }
         include { phase: TRAIN } }
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv" blobs_lr: 1 blobs_lr: 2
         weight_decay: 1 weight_decay: 0 param: "shared_w" convolution_param { num_output: 2 kernel_size: 3 } }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "conv" bottom: "label" top: "loss" loss_weight: 2 }
"""


def test_v1_net_upgrades_types_params_and_data_transform():
    source = _net(V1)
    net = upgrade_net(source)
    assert len(source.layers) == 3 and not source.layer  # the argument is left alone
    assert [l.type for l in net.layer] == ["Data", "Convolution", "SoftmaxWithLoss"]
    data, conv, loss = net.layer
    assert data.include[0].phase == caffe_pb2.TRAIN
    # UpgradeNetDataTransformation: V1 data_param's transform fields move to transform_param.
    assert (data.transform_param.crop_size, data.transform_param.mean_file, data.transform_param.mirror) == (
        3, "mean.binaryproto", True)
    assert data.data_param.source == "train_db" and not data.data_param.HasField("crop_size")
    assert [(p.name, p.lr_mult, p.decay_mult) for p in conv.param] == [("shared_w", 1.0, 1.0), ("", 2.0, 0.0)]
    assert conv.convolution_param.num_output == 2 and list(loss.loss_weight) == [2.0]


def test_every_v1_type_has_a_v2_name():
    from repro.upgrade import V1_TO_V2_TYPE
    assert set(V1_TO_V2_TYPE) == set(caffe_pb2.V1LayerParameter.LayerType.values())


def test_mixed_syntax_is_rejected():
    mixed = _net(V1 + 'layer { name: "x" type: "ReLU" bottom: "conv" top: "conv" }')
    with pytest.raises(PrototxtError, match="mixes `layer` \\(V2\\) and `layers`"):
        upgrade_net(mixed)
    with pytest.raises(PrototxtError, match="mixes V0"):
        upgrade_net(_net(V0 + 'layers { name: "v1" type: RELU bottom: "prob" top: "prob" }'))


def test_legacy_net_inputs_become_an_input_layer():
    v2 = 'layer { name: "r" type: "ReLU" bottom: "a" top: "r" }'
    net = upgrade_net(_net('input: "a" input: "b" input_shape { dim: 1 dim: 2 } input_shape { dim: 3 } ' + v2))
    assert (net.layer[0].name, net.layer[0].type, list(net.layer[0].top)) == ("input", "Input", ["a", "b"])
    assert [list(s.dim) for s in net.layer[0].input_param.shape] == [[1, 2], [3]]
    # An input with no shape (an old .caffemodel) is just dropped, as in Caffe.
    net = upgrade_net(_net('input: "a" ' + v2))
    assert [l.name for l in net.layer] == ["r"] and not net.input
    with pytest.raises(PrototxtError, match="4 \\(num, channels, height, width\\) per input"):
        upgrade_net(_net('input: "a" input_dim: 1 input_dim: 2 ' + v2))


def test_old_batch_norm_params_are_frozen():
    net = upgrade_net(_net('layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x" param { lr_mult: 1 } '
                           'param { lr_mult: 1 } param { lr_mult: 1 decay_mult: 1 } }'))
    assert [(p.lr_mult, p.decay_mult) for p in net.layer[0].param] == [(0.0, 0.0)] * 3


def test_v2_net_passes_through_unchanged():
    text = 'name: "n" layer { name: "r" type: "ReLU" bottom: "x" top: "x" param { lr_mult: 3 } }'
    assert upgrade_net(_net(text)) == _net(text)


def test_binary_v0_blobs_survive_the_upgrade():
    # Caffe's V0 upgrade insists every bottom is known, so the net declares its input.
    net = _net('input: "x" layers { layer { name: "fc" type: "innerproduct" num_output: 2 '
               'blobs { num: 1 channels: 1 height: 2 width: 3 data: [1, 2, 3, 4, 5, 6] } } bottom: "x" top: "y" }')
    blob = upgrade_net(net).layer[0].blobs[0]
    assert (blob.height, blob.width, list(blob.data)) == (2, 3, [1, 2, 3, 4, 5, 6])


@pytest.mark.parametrize("enum, name", [("SGD", "SGD"), ("NESTEROV", "Nesterov"), ("ADAGRAD", "AdaGrad"),
                                        ("RMSPROP", "RMSProp"), ("ADADELTA", "AdaDelta"), ("ADAM", "Adam")])
def test_solver_type_enum_becomes_type_string(enum, name):
    old = text_format.Parse(f'train_net: "t.prototxt" test_net: "v.prototxt" solver_type: {enum}',
                            caffe_pb2.SolverParameter())
    new = upgrade_solver(old)
    assert new.type == name and not new.HasField("solver_type") and old.HasField("solver_type")
    assert (new.train_net, list(new.test_net)) == ("t.prototxt", ["v.prototxt"])


def test_solver_with_both_types_is_rejected():
    with pytest.raises(PrototxtError, match="both `solver_type`"):
        upgrade_solver(caffe_pb2.SolverParameter(solver_type=1, type="SGD"))
