"""repro.caffemodel: Caffe's binary weights, means and solver states, against files real Caffe wrote."""
import numpy as np
import pytest

from repro.caffemodel import (
    SolverState,
    WeightsError,
    read_caffemodel,
    read_mean,
    read_solverstate,
    write_caffemodel,
    write_mean,
    write_solverstate,
)
from repro.proto import caffe_pb2

G1_SHAPES = {  # golden README: CaffeNet with fc6/fc7 of 256 outputs
    "conv1": [(96, 3, 11, 11), (96,)], "conv2": [(256, 48, 5, 5), (256,)], "conv3": [(384, 256, 3, 3), (384,)],
    "conv4": [(384, 192, 3, 3), (384,)], "conv5": [(256, 192, 3, 3), (256,)], "fc6": [(256, 9216), (256,)],
    "fc7": [(256, 256), (256,)], "fc8": [(1000, 256), (1000,)],
}


@pytest.fixture(scope="module")
def g1(golden):
    return read_caffemodel(golden / "g1_weights.caffemodel")


def test_g1_weights_shapes_and_stats(g1, golden):
    assert len(g1) == 22  # every layer record is listed; only conv/fc ones carry blobs
    assert {k: [a.shape for a in v] for k, v in g1.items() if v} == G1_SHAPES
    assert list(g1)[:3] == ["data", "conv1", "relu1"] and g1["relu1"] == []
    with np.load(golden / "g1_caffenet_fwd_bwd.npz") as z:
        for name, blobs in g1.items():
            for j, arr in enumerate(blobs):
                assert arr.dtype == np.float32
                x = arr.astype(np.float64)
                stats = z[f"paramstats/{name}/{j}"]  # [sum, sum sq, sum |x|, min, max]
                np.testing.assert_allclose((x * x).sum(), stats[1], rtol=1e-12)
                np.testing.assert_allclose(np.abs(x).sum(), stats[2], rtol=1e-12)
                assert (x.min(), x.max()) == (stats[3], stats[4])


def test_g1_weights_bitwise_against_their_recipe(g1, golden):
    """The README's numpy recipe rebuilds the caffemodel exactly; so must our reader."""
    rng = np.random.RandomState(1234)
    rng.uniform(-100, 100, size=(4, 3, 227, 227)).astype(np.float32)
    rng.randint(0, 1000, size=4)
    with np.load(golden / "g1_caffenet_fwd_bwd.npz") as z:
        for name, (w_shape, b_shape) in G1_SHAPES.items():
            w = (rng.standard_normal(w_shape) * np.sqrt(2.0 / np.prod(w_shape[1:]))).astype(np.float32)
            factor = z[f"init_factor/{name}"]
            if factor != 1:
                w = w * np.float32(factor)
            b = (rng.standard_normal(b_shape) * z[f"init_std/{name}"][1]).astype(np.float32)
            assert np.array_equal(g1[name][0], w) and np.array_equal(g1[name][1], b), name


def test_means_load_and_write_as_caffe_does(shared, golden, tmp_path):
    caffe_mean = golden / "g3" / "mean.binaryproto"
    mean = read_mean(caffe_mean)
    assert mean.shape == (3, 256, 256) and mean.dtype == np.float32
    with np.load(golden / "g3" / "mean.npz") as z:
        assert np.array_equal(mean, z["mean"])
    np.testing.assert_allclose(mean.mean(axis=(1, 2)), [122.93, 126.82, 128.42], atol=0.01)
    paper = read_mean(shared / "reference" / "original_prototxt" / "half0B_imagenet_mean.binaryproto")
    assert paper.shape == (3, 256, 256) and 0 < paper.mean() < 255
    out = tmp_path / "mean.binaryproto"
    write_mean(out, mean)
    assert out.read_bytes() == caffe_mean.read_bytes()  # compute_image_mean's exact bytes


def test_caffemodel_round_trip(g1, tmp_path):
    layers = [(name, "Convolution" if name.startswith("conv") else "InnerProduct", [f"b_{name}"], [name], blobs)
              for name, blobs in g1.items() if blobs]
    path = tmp_path / "copy.caffemodel"
    write_caffemodel(path, "G1", layers)
    back = read_caffemodel(path)
    assert list(back) == [layer[0] for layer in layers]
    for name, blobs in back.items():
        assert all(np.array_equal(a, b) and a.shape == b.shape for a, b in zip(blobs, g1[name]))
    net = caffe_pb2.NetParameter.FromString(path.read_bytes())
    assert net.name == "G1" and net.layer[0].type == "Convolution" and list(net.layer[0].bottom) == ["b_conv1"]
    assert [p.name for p in tmp_path.iterdir()] == ["copy.caffemodel"]  # atomic: no temp file left


def _legacy_blob(blob, dims, values, double=False):
    blob.num, blob.channels, blob.height, blob.width = dims
    (blob.double_data if double else blob.data).extend(values)


def test_legacy_v1_and_v0_records_and_shapes(tmp_path):
    w = np.arange(6, dtype=np.float32)
    net = caffe_pb2.NetParameter()
    ip = net.layers.add(name="fc", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT)
    _legacy_blob(ip.blobs.add(), (1, 1, 2, 3), w)
    _legacy_blob(ip.blobs.add(), (1, 1, 1, 2), [0.5, -0.5], double=True)
    conv = net.layers.add(name="conv", type=caffe_pb2.V1LayerParameter.CONVOLUTION)
    _legacy_blob(conv.blobs.add(), (1, 3, 1, 2), w)
    _legacy_blob(conv.blobs.add(), (1, 1, 1, 1), [7.0])
    path = tmp_path / "v1.caffemodel"
    path.write_bytes(net.SerializeToString())
    got = read_caffemodel(path)
    assert np.array_equal(got["fc"][0], w.reshape(2, 3)) and got["fc"][1].tolist() == [0.5, -0.5]
    # A conv weight keeps its 4-D shape even when num is 1; its bias becomes 1-D.
    assert got["conv"][0].shape == (1, 3, 1, 2) and got["conv"][1].shape == (1,)

    v0 = caffe_pb2.NetParameter()
    rec = v0.layers.add()
    rec.layer.name, rec.layer.type = "fc_old", "innerproduct"
    _legacy_blob(rec.layer.blobs.add(), (1, 1, 3, 2), w)
    rec.bottom.append("x")
    path.write_bytes(v0.SerializeToString())
    assert read_caffemodel(path)["fc_old"][0].shape == (3, 2)


def test_bad_weight_files_say_what_failed(golden, tmp_path):
    data = (golden / "g1_weights.caffemodel").read_bytes()
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(WeightsError, match=r"cut.caffemodel: not a valid NetParameter \(truncated or corrupt"):
        read_caffemodel(cut)
    text = tmp_path / "net.caffemodel"
    text.write_bytes((golden / "g1_net.prototxt").read_bytes())
    with pytest.raises(WeightsError, match="looks like a text prototxt"):
        read_caffemodel(text)
    with pytest.raises(WeightsError, match="not a Caffe NetParameter .* looks like a BlobProto"):
        read_caffemodel(golden / "g3" / "mean.binaryproto")
    with pytest.raises(WeightsError, match="cannot read"):
        read_caffemodel(tmp_path / "absent.caffemodel")
    (tmp_path / "empty.caffemodel").write_bytes(b"")
    with pytest.raises(WeightsError, match="empty"):
        read_caffemodel(tmp_path / "empty.caffemodel")
    bad = caffe_pb2.NetParameter()
    blob = bad.layer.add(name="fc").blobs.add()
    blob.shape.dim.extend([2, 3])
    blob.data.extend([1.0] * 5)
    (tmp_path / "count.caffemodel").write_bytes(bad.SerializeToString())
    with pytest.raises(WeightsError, match=r"layer 'fc' blob 0: shape \(2, 3\) holds 6 values but the file has 5"):
        read_caffemodel(tmp_path / "count.caffemodel")
    with pytest.raises(WeightsError, match="g1_weights.caffemodel: no values: not a mean BlobProto"):
        read_mean(golden / "g1_weights.caffemodel")
    odd = caffe_pb2.BlobProto()
    odd.shape.dim.extend([2, 2])
    odd.data.extend([0.0] * 4)
    (tmp_path / "odd.binaryproto").write_bytes(odd.SerializeToString())
    with pytest.raises(WeightsError, match=r"shape \(2, 2\); expected 1 x C x H x W"):
        read_mean(tmp_path / "odd.binaryproto")


def test_solverstate_round_trip(tmp_path):
    history = [np.full((2, 3), 0.25, np.float32), np.arange(4, dtype=np.float32)]
    path = tmp_path / "iter_5.solverstate"
    write_solverstate(path, SolverState(iter=5, learned_net="iter_5.caffemodel", history=history, current_step=1))
    back = read_solverstate(path)
    assert (back.iter, back.learned_net, back.current_step) == (5, "iter_5.caffemodel", 1)
    assert all(np.array_equal(a, b) and a.shape == b.shape for a, b in zip(back.history, history))
    msg = caffe_pb2.SolverState.FromString(path.read_bytes())
    assert list(msg.history[0].shape.dim) == [2, 3]  # Blob::ToProto writes `shape`
    not_state = tmp_path / "x.solverstate"
    not_state.write_bytes(caffe_pb2.SolverState(learned_net="a").SerializeToString())  # no iter
    with pytest.raises(WeightsError, match="not a Caffe SolverState"):
        read_solverstate(not_state)
