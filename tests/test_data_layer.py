"""Data / ImageData layers as repro.Net runs them: the golden TEST batch, every source kind, paths, skip."""
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from repro.data.convert import convert_db_to_store, convert_to_db
from repro.data.layer import DataLayerError, DataLayerFeeder
from repro.proto import caffe_pb2


def _layer(text: str):
    from google.protobuf import text_format

    return text_format.Parse(text, caffe_pb2.LayerParameter())


G3_LAYER = """name: "data" type: "Data" top: "data" top: "label"
  transform_param { crop_size: 227 mirror: false mean_file: "mean.binaryproto" }
  data_param { source: "%s" batch_size: 7 backend: %s }"""


def test_golden_test_batch_from_caffes_lmdb_is_exact(golden):
    g3 = golden / "g3"
    ref = np.load(g3 / "g3_test_batch.npz")
    f = DataLayerFeeder(_layer(G3_LAYER % ("lmdb", "LMDB")), "TEST", g3)
    for _ in range(2):  # the second batch wraps around to the same 7 records
        b = f.next_batch()
        np.testing.assert_array_equal(b["data"].numpy(), ref["data"])
        np.testing.assert_array_equal(b["label"].numpy(), ref["label"])
    assert f.position == 14
    f.close()


def test_golden_batch_from_our_store_and_wrong_backend_field(golden, tmp_path):
    g3 = golden / "g3"
    convert_db_to_store(g3 / "lmdb", tmp_path / "store")
    shutil.copy(g3 / "mean.binaryproto", tmp_path)
    # backend says LEVELDB (Caffe's default): the folder's content decides
    f = DataLayerFeeder(_layer(G3_LAYER % ("store", "LEVELDB")), "TEST", tmp_path)
    np.testing.assert_array_equal(f.next_batch()["data"].numpy(), np.load(g3 / "g3_test_batch.npz")["data"])
    f.close()


def test_net_runs_the_data_layer_with_no_inputs(golden):
    import repro

    g3 = golden / "g3"
    net = repro.Net(str(g3 / "g3_data_net.prototxt"), phase="TEST", data_root=str(g3))
    out = net()
    np.testing.assert_array_equal(out["data"].numpy(), np.load(g3 / "g3_test_batch.npz")["data"])


def test_relative_source_prefers_the_working_directory(golden, tmp_path, monkeypatch):
    g3 = golden / "g3"
    (tmp_path / "cwd").mkdir()
    shutil.copytree(g3 / "lmdb", tmp_path / "cwd" / "lmdb")
    shutil.copy(g3 / "mean.binaryproto", tmp_path / "cwd")
    monkeypatch.chdir(tmp_path / "cwd")
    f = DataLayerFeeder(_layer(G3_LAYER % ("lmdb", "LMDB")), "TEST", g3)
    assert f.source.db.path == tmp_path / "cwd" / "lmdb"
    f.close()
    with pytest.raises(DataLayerError, match="data_param.source 'nowhere' not found"):
        DataLayerFeeder(_layer(G3_LAYER % ("nowhere", "LMDB")), "TEST", g3)


def _images(root, n=9, size=(20, 26)):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(root / f"im{i}.png")
        lines.append(f"im{i}.png {i % 3}")
    return lines


def test_image_data_layer_squashes_shuffles_and_skips(tmp_path):
    from repro.data.image import read_image, to_chw

    lines = _images(tmp_path / "imgs")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    text = """name: "d" type: "ImageData" top: "data" top: "label"
      transform_param { crop_size: 12 mirror: true mean_value: 100 }
      image_data_param { source: "list.txt" root_folder: "imgs/" batch_size: 4 shuffle: %s
                         new_height: 16 new_width: 14 rand_skip: %d }"""
    f = DataLayerFeeder(_layer(text % ("false", 0)), "TEST", tmp_path, seed=1)
    b = f.next_batch()
    assert b["data"].shape == (4, 3, 12, 12)
    mirrored = []
    for i in range(4):
        img = to_chw(read_image(tmp_path / "imgs" / f"im{i}.png", 16, 14)).astype(np.float32) - 100
        crop = img[:, 2:14, 1:13]
        same = np.array_equal(b["data"][i].numpy(), crop)
        mirrored.append(np.array_equal(b["data"][i].numpy(), crop[:, :, ::-1]))
        assert same or mirrored[-1]
    assert b["label"].tolist() == [0.0, 1.0, 2.0, 0.0]
    f.close()
    # shuffle: each epoch (9 images) a permutation; labels follow their images
    g = DataLayerFeeder(_layer(text % ("true", 0)), "TRAIN", tmp_path, seed=2)
    labels = torch.cat([g.next_batch()["label"] for _ in range(9)]).tolist()  # 36 = 4 epochs
    for e in range(4):
        assert sorted(labels[9 * e:9 * e + 9]) == [0.0] * 3 + [1.0] * 3 + [2.0] * 3
    g.close()
    h = DataLayerFeeder(_layer(text % ("false", 5)), "TEST", tmp_path, seed=3)
    assert 0 <= h.skip < 5 and h.position == h.skip
    h.close()


def test_image_data_missing_file_found_at_setup(tmp_path):
    lines = _images(tmp_path / "imgs", n=3)
    (tmp_path / "list.txt").write_text("\n".join(lines + ["gone.png 1"]) + "\n")
    text = """name: "d" type: "ImageData" top: "data" top: "label"
      image_data_param { source: "list.txt" root_folder: "imgs" batch_size: 2 }"""
    with pytest.raises(ValueError, match="gone.png: file not found"):
        DataLayerFeeder(_layer(text), "TRAIN", tmp_path)


def test_data_layer_state_resumes_the_cursor(tmp_path):
    lines = _images(tmp_path / "imgs", n=7, size=(10, 10))
    entries = [(l.split()[0], int(l.split()[1])) for l in lines]
    convert_to_db(entries, tmp_path / "imgs", tmp_path / "lmdb", backend="lmdb")
    text = """name: "d" type: "Data" top: "data" top: "label"
      transform_param { crop_size: 8 mirror: true }
      data_param { source: "lmdb" batch_size: 3 backend: LMDB }"""
    a = DataLayerFeeder(_layer(text), "TRAIN", tmp_path, seed=4)
    ref = [a.next_batch() for _ in range(5)]
    b = DataLayerFeeder(_layer(text), "TRAIN", tmp_path, seed=4)
    b.next_batch(), b.next_batch()
    st = b.state_dict()
    c = DataLayerFeeder(_layer(text), "TRAIN", tmp_path, seed=4)
    c.load_state_dict(st)
    for r in ref[2:]:
        got = c.next_batch()
        assert torch.equal(got["data"], r["data"]) and torch.equal(got["label"], r["label"])
    for f in (a, b, c):
        f.close()


def test_single_top_and_bad_layers(golden, tmp_path):
    g3 = golden / "g3"
    one = _layer("""name: "data" type: "Data" top: "data"
      data_param { source: "lmdb" batch_size: 2 backend: LMDB }""")
    f = DataLayerFeeder(one, "TEST", g3)
    b = f.next_batch()
    assert list(b) == ["data"] and b["data"].shape == (2, 3, 256, 256)
    f.close()
    with pytest.raises(DataLayerError, match="neither an LMDB"):
        DataLayerFeeder(_layer('name: "x" type: "Data" top: "d" data_param { source: "." batch_size: 1 }'),
                        "TEST", tmp_path)
    with pytest.raises(DataLayerError, match="mean_file 'nope.binaryproto' not found"):
        DataLayerFeeder(_layer('name: "x" type: "Data" top: "d" transform_param { mean_file: "nope.binaryproto" }'
                               ' data_param { source: "lmdb" batch_size: 1 }'), "TEST", g3)
    with pytest.raises(DataLayerError, match="crop_size 300 is larger"):
        DataLayerFeeder(_layer('name: "x" type: "Data" top: "d" transform_param { crop_size: 300 }'
                               ' data_param { source: "lmdb" batch_size: 1 }'), "TEST", g3)


def test_leveldb_data_layer_reads_without_counting(tmp_path):
    pytest.importorskip("plyvel")
    lines = _images(tmp_path / "imgs", n=5, size=(10, 10))
    entries = [(l.split()[0], int(l.split()[1])) for l in lines]
    convert_to_db(entries, tmp_path / "imgs", tmp_path / "ldb", backend="leveldb")
    text = """name: "d" type: "Data" top: "data" top: "label"
      data_param { source: "ldb" batch_size: 3 }"""  # backend: LEVELDB is Caffe's default
    f = DataLayerFeeder(_layer(text), "TEST", tmp_path)
    labels = [f.next_batch()["label"].tolist() for _ in range(3)]  # 9 records: wraps after 5
    assert labels == [[0.0, 1.0, 2.0], [0.0, 1.0, 0.0], [1.0, 2.0, 0.0]]
    assert f.source.known_len is None  # never counted: sequential reading does not need the size
    st = f.state_dict()
    g = DataLayerFeeder(_layer(text), "TEST", tmp_path)
    g.load_state_dict(st)
    assert g.next_batch()["label"].tolist() == [1.0, 0.0, 1.0]
    f.close(), g.close()
