"""repro.net.Net: construction, forward/backward semantics, weights I/O (Caffe's Net behaviour)."""
import pytest
import torch

from repro import caffemodel
from repro.net import Net, NetError, module_key
from repro.proto import caffe_pb2
from repro.prototxt_files import prototxt_path

TINY = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } shape { dim: 2 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 }
                            bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc.a" type: "InnerProduct" bottom: "pool1" top: "fc"
        inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "drop" type: "Dropout" bottom: "fc" top: "fc" }
layer { name: "update" type: "InnerProduct" bottom: "fc" top: "score"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "score" top: "prob" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" loss_weight: 2 }
"""


def tiny_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"data": torch.randn(2, 3, 8, 8, generator=g), "label": torch.tensor([0.0, 2.0])}


# ------------------------------------------------------------------------------------------ CaffeNet


@pytest.fixture(scope="module")
def caffenet():
    """The paper's CaffeNet (prototxt/caffenet/train_val.prototxt), TRAIN, batch 4, one forward + backward."""
    net = Net(prototxt_path("caffenet", "train_val"), "TRAIN", seed=1,
              input_shapes={"data": (4, 3, 227, 227), "label": (4,)})
    g = torch.Generator().manual_seed(0)
    out = net(data=torch.randn(4, 3, 227, 227, generator=g) * 50, label=torch.tensor([1.0, 7.0, 999.0, 0.0]))
    net.total_loss.backward()
    return net, out


def test_caffenet_structure(caffenet):
    net, out = caffenet
    assert net.outputs == ["loss"] and net.inputs == ["data", "label"]
    assert net.blob_shapes["pool5"] == (4, 256, 6, 6) and net.blob_shapes["fc8"] == (4, 1000)
    shapes = {n: [tuple(b.shape) for b in blobs] for n, blobs in net.params.items()}
    assert shapes["conv2"] == [(256, 48, 5, 5), (256,)]
    assert shapes["fc6"] == [(4096, 9216), (4096,)]
    assert all(net.layer_params(n) == [(1.0, 1.0), (2.0, 0.0)] for n in net.params)
    # The paper's fillers: gaussian 0.01 / 0.005, biases 0 or 1
    assert net.params["fc6"][0].std().item() == pytest.approx(0.005, rel=0.01)
    assert {n: net.params[n][1][0].item() for n in net.params} == {
        "conv1": 0, "conv2": 1, "conv3": 0, "conv4": 1, "conv5": 1, "fc6": 1, "fc7": 1, "fc8": 0}


def test_caffenet_loss_and_gradients(caffenet):
    net, out = caffenet
    logp = torch.log_softmax(net.blobs["fc8"].detach().double(), 1)
    expect = -logp[torch.arange(4), torch.tensor([1, 7, 999, 0])].mean()
    assert out["loss"].item() == pytest.approx(expect.item(), rel=1e-5)
    assert all(b.grad is not None and torch.isfinite(b.grad).all() for blobs in net.params.values() for b in blobs)


def test_caffenet_test_phase_outputs():
    net = Net(prototxt_path("caffenet", "train_val"), "TEST", input_shapes={"data": (2, 3, 227, 227)})
    assert net.outputs == ["accuracy", "accuracy_top5", "loss"]
    assert not net.training  # TEST phase: dropout is the identity


# ------------------------------------------------------------------------------------------ forward


def test_outputs_blobs_and_in_place():
    net = Net(TINY, "TRAIN", seed=3)
    assert net.outputs == ["loss", "prob"]  # tops nobody consumes, sorted as Caffe's std::set
    out = net(**tiny_inputs())
    assert set(out) == {"loss", "prob"}
    assert torch.all(net.blobs["conv1"] >= 0)  # in-place ReLU: the blob holds the post-ReLU value
    assert net.total_loss.item() == pytest.approx(2 * out["loss"].item())  # loss_weight 2
    assert list(net.blobs) == ["data", "label", "conv1", "pool1", "fc", "score", "prob", "loss"]


def test_layer_names_that_torch_forbids():
    net = Net(TINY, "TEST")
    assert module_key("fc.a") != "fc.a" and module_key("update") != "update"
    assert net.layer("fc.a").type == "InnerProduct" and net.layer("update").num_output == 3
    assert list(net.params) == ["conv1", "fc.a", "update"]


def test_end_stops_early():
    net = Net(TINY, "TEST")
    out = net(end="pool1", **tiny_inputs())
    assert list(out) == ["pool1"] and "score" not in net.blobs


def test_dropout_follows_phase():
    x = tiny_inputs()
    train, test = Net(TINY, "TRAIN", seed=0), Net(TINY, "TEST", seed=0)
    a = train(**x)["prob"]
    b = test(**x)["prob"]
    assert not torch.allclose(a, b)
    train.eval()  # convenience: a TRAIN net in eval mode stops dropping
    torch.testing.assert_close(train(**x)["prob"], b)


def test_seed_reproducible():
    a, b, c = Net(TINY, seed=5), Net(TINY, seed=5), Net(TINY, seed=6)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.params["conv1"][0], c.params["conv1"][0])


@pytest.mark.parametrize("inputs,msg", [
    ({"data": torch.zeros(2, 3, 8, 8)}, "net input 'label'.*was not given"),
    ({"data": torch.zeros(2, 3, 9, 8), "label": torch.zeros(2)}, r"shape \(2, 3, 9, 8\).*\(2, 3, 8, 8\)"),
    ({"data": torch.zeros(2, 3, 8, 8), "label": torch.zeros(2), "lable": 0}, "unknown input blob"),
])
def test_bad_inputs(inputs, msg):
    with pytest.raises(NetError, match=msg):
        Net(TINY, "TEST")(**inputs)


def test_batch_size_may_change():
    out = Net(TINY, "TEST")(data=torch.zeros(5, 3, 8, 8), label=torch.zeros(5))
    assert out["prob"].shape == (5, 3)


def test_bad_layer_definition_names_file_and_layer():
    bad = TINY.replace("kernel_size: 3", "kernel_size: 30")
    with pytest.raises(NetError, match="layer 'conv1' .Convolution.: input .* smaller than the kernel"):
        Net(bad)


# ------------------------------------------------------------------------------------------ backward


FROZEN = TINY.replace('param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }',
                      'param { lr_mult: 0 decay_mult: 0 } param { lr_mult: 0 decay_mult: 0 }')


def test_lr_mult_zero_computes_no_diff_and_stops_backward():
    net = Net(FROZEN, "TRAIN", seed=0)
    net.keep_diffs = True
    assert net.layer_params("conv1") == [(0.0, 0.0), (0.0, 0.0)]
    assert not any(b.requires_grad for b in net.params["conv1"])
    net(**tiny_inputs())
    net.total_loss.backward()
    assert all(b.grad is None for b in net.params["conv1"])
    assert net.params["fc.a"][0].grad is not None
    # backward stops at fc.a: nothing below it needs a gradient (Caffe: bottom_need_backward false)
    assert net.diffs["pool1"] is None and net.diffs["conv1"] is None and net.diffs["fc"] is not None


def test_force_backward_computes_input_diff():
    plain = Net(TINY, "TRAIN", seed=0)
    plain(**tiny_inputs())
    plain.total_loss.backward()
    assert not plain.blobs["data"].requires_grad
    forced = Net("force_backward: true\n" + TINY, "TRAIN", seed=0)
    forced.keep_diffs = True
    forced(**tiny_inputs())
    forced.total_loss.backward()
    assert forced.diffs["data"] is not None and forced.diffs["data"].abs().sum() > 0
    assert not forced.blobs["label"].requires_grad  # labels never get a diff (AllowForceBackward)


def test_propagate_down_false_blocks_gradient():
    text = TINY.replace('name: "update" type: "InnerProduct" bottom: "fc"',
                        'name: "update" type: "InnerProduct" propagate_down: false bottom: "fc"')
    net = Net(text, "TRAIN", seed=0)
    net(**tiny_inputs())
    net.total_loss.backward()
    assert net.params["update"][0].grad is not None and net.params["fc.a"][0].grad is None


# ------------------------------------------------------------------------------------------ weights I/O


def test_caffemodel_round_trip(tmp_path):
    a = Net(TINY, "TEST", seed=1)
    path = tmp_path / "w.caffemodel"
    a.save(path)
    b = Net(TINY, "TEST", seed=2)
    assert b.copy_from(path) == ["conv1", "fc.a", "update"]
    x = tiny_inputs()
    assert torch.equal(a(**x)["prob"], b(**x)["prob"])
    saved = caffemodel.read_caffemodel(path)
    assert list(saved) == a.layer_names  # every layer is written, as Net::ToProto does
    assert [w.shape for w in saved["conv1"]] == [(4, 3, 3, 3), (4,)]


def test_copy_from_by_name_keeps_renamed_layers(tmp_path):
    base = Net(TINY, "TEST", seed=1)
    base.save(tmp_path / "base.caffemodel")
    renamed = TINY.replace('name: "update"', 'name: "update-new"')
    fresh = Net(renamed, "TEST", seed=9)
    init = fresh.params["update-new"][0].detach().clone()
    copied = fresh.copy_from(tmp_path / "base.caffemodel")
    assert "update-new" not in copied and "update" not in copied  # in the file only: ignored
    assert torch.equal(fresh.params["update-new"][0], init)  # absent from the file: keeps its fresh init
    assert torch.equal(fresh.params["conv1"][0], base.params["conv1"][0])


def test_shape_mismatch_names_layer_and_shapes(tmp_path):
    Net(TINY, "TEST", seed=1).save(tmp_path / "w.caffemodel")
    wider = TINY.replace("num_output: 4", "num_output: 6")
    with pytest.raises(NetError, match=r"layer 'conv1': .*param 0.*\(4, 3, 3, 3\).*\(6, 3, 3, 3\)"):
        Net(wider, "TEST", weights=tmp_path / "w.caffemodel")


def test_blob_count_mismatch(tmp_path):
    Net(TINY, "TEST", seed=1).save(tmp_path / "w.caffemodel")
    nobias = TINY.replace('inner_product_param { num_output: 3', 'inner_product_param { bias_term: false num_output: 3')
    with pytest.raises(NetError, match="layer 'update': incompatible number of blobs: .* has 2, .* has 1"):
        Net(nobias, "TEST", weights=tmp_path / "w.caffemodel")


def test_legacy_4d_blob_shapes_accepted(tmp_path):
    # Old caffemodels hold (num, channels, height, width); Caffe's ShapeEquals pads our shape with leading 1s.
    src = Net(TINY, "TEST", seed=1)
    msg = caffe_pb2.NetParameter(name="tiny")
    for name in src.layer_names:
        layer = msg.layer.add(name=name, type=src.layer(name).type)
        for b in src.layer(name).caffe_blobs:
            a = b.detach().numpy()
            blob = layer.blobs.add()
            dims = (1,) * (4 - a.ndim) + a.shape
            blob.num, blob.channels, blob.height, blob.width = dims
            blob.data.extend(a.ravel().tolist())
    (tmp_path / "legacy.caffemodel").write_bytes(msg.SerializeToString())
    dst = Net(TINY, "TEST", seed=2, weights=tmp_path / "legacy.caffemodel")
    assert all(torch.equal(x, y) for x, y in zip(src.parameters(), dst.parameters()))


def test_state_dict_caffe_round_trip(tmp_path):
    a, b = Net(TINY, seed=1), Net(TINY, seed=2)
    sd = a.state_dict_caffe()
    assert list(sd) == ["conv1/0", "conv1/1", "fc.a/0", "fc.a/1", "update/0", "update/1"]
    torch.save(sd, tmp_path / "w.pt")
    b.load_state_dict_caffe(torch.load(tmp_path / "w.pt"))
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    with pytest.raises(NetError, match="missing .*'update/1'"):
        b.load_state_dict_caffe({k: v for k, v in sd.items() if k != "update/1"})
    with pytest.raises(NetError, match=r"layer 'conv1': .*shape \(1,\)"):
        b.load_state_dict_caffe({**sd, "conv1/1": torch.zeros(1)})


# ------------------------------------------------------------------------------------------ data layers


DATA = """
name: "withdata"
layer { name: "data" type: "Data" top: "data" top: "label"
        transform_param { crop_size: 8 } data_param { source: "somewhere" batch_size: 2 } }
""" + TINY[TINY.index('layer { name: "conv1"'):]


class _Feeder:
    """Stands in for repro.data.layer.DataLayerFeeder: records how the Net drives it."""

    made = []

    def __init__(self, layer_param, phase, base_dir, device=None):
        self.args = (layer_param.name, phase, base_dir)
        self.device = device
        self.calls = 0
        _Feeder.made.append(self)

    def next_batch(self):
        self.calls += 1
        return {"data": torch.full((2, 3, 8, 8), float(self.calls)), "label": torch.tensor([1.0, 0.0])}


def test_data_layer_asks_the_feeder(monkeypatch, tmp_path):
    import repro.data.layer
    monkeypatch.setattr(repro.data.layer, "DataLayerFeeder", _Feeder)
    _Feeder.made.clear()
    net = Net(DATA, "TRAIN", data_root=tmp_path)
    assert net.blob_shapes["data"] == (2, 3, 8, 8) and net.blob_shapes["label"] == (2,)
    net()
    net()
    assert len(_Feeder.made) == 1 and _Feeder.made[0].args == ("data", "TRAIN", tmp_path)
    assert _Feeder.made[0].device == torch.device("cpu")  # crop/mirror/mean run where the net runs
    assert torch.all(net.blobs["data"] == 2.0)  # the second batch
    net(data=torch.zeros(2, 3, 8, 8), label=torch.zeros(2))  # explicit inputs: the feeder is not asked
    assert _Feeder.made[0].calls == 2


def test_data_layer_without_crop_needs_shapes():
    nocrop = DATA.replace("transform_param { crop_size: 8 } ", "")
    with pytest.raises(NetError, match="input_shapes"):
        Net(nocrop)
    net = Net(nocrop, input_shapes={"data": (2, 3, 8, 8)})
    assert net.blob_shapes["label"] == (2,)


def test_net_makes_numerics_faithful():
    from repro.numerics import numerics_state, precise_cuda_wgrad, set_faithful

    set_faithful(False)
    try:
        assert numerics_state()["tf32"]  # PyTorch's default: TF32 for cuDNN convolutions
        assert numerics_state()["fill_uninitialized_memory"]  # PyTorch's default (acts only when deterministic)
        Net(TINY, "TEST")
        state = numerics_state()
        assert state["faithful"] and not state["tf32"] and state["deterministic"] and precise_cuda_wgrad()
        # Deterministic without the NaN fill of every new tensor (a pure cost: our ops write all they allocate).
        assert not state["fill_uninitialized_memory"] and not torch.utils.deterministic.fill_uninitialized_memory
    finally:
        set_faithful(True)


def test_a_loss_layer_without_a_top_gets_caffes_anonymous_top():
    # The paper's V0 nets end in a softmax_loss layer naming no top: Caffe's Net::Init adds an anonymous one
    # (AutoTopBlobs) that carries the loss but is not a net output.
    from repro.net import Net

    text = """name: "t"
layer { name: "x" type: "Input" top: "x" top: "y" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "y" }
"""
    net = Net(text, phase="TRAIN", seed=1)
    x = torch.randn(2, 3)
    y = torch.tensor([1.0, 3.0])
    out = net(x=x, y=y)
    assert out == {} and net.outputs == []  # "ip" feeds the loss, the loss's top is anonymous
    expect = torch.nn.functional.cross_entropy(net.blobs["ip"].detach().double(), y.long())
    assert float(net.total_loss.detach()) == pytest.approx(float(expect), rel=1e-6)
    assert len(net.net_param.layer[-1].top) == 0  # the net's own definition is left as written
