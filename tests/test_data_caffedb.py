"""Caffe LMDB / LevelDB databases of Datum records: read the golden one, write byte-identical ones."""
import numpy as np
import pytest
from PIL import Image

from repro.data.caffedb import DatumDB, DBError, datum_bytes, db_kind, parse_datum
from repro.data.convert import compute_image_mean, convert_db_to_store, convert_to_db
from repro.data.sources import read_list
from repro.data.store import Store
from repro.proto import caffe_pb2


def test_golden_lmdb_reads_exactly(golden):
    g3 = golden / "g3"
    ref = np.load(g3 / "g3_lmdb_images.npz")
    assert db_kind(g3 / "lmdb") == "lmdb"
    with DatumDB(g3 / "lmdb") as db:  # read-only, no lock.mdb needed
        assert len(db) == 7
        items = list(db.items())
    assert [k.decode() for k, _ in items] == list(ref["keys"])
    for i, (_, v) in enumerate(items):
        arr, label = parse_datum(v)
        assert arr.dtype == np.uint8
        np.testing.assert_array_equal(arr, ref["images"][i])
        assert label == ref["label"][i]


def test_convert_imageset_lmdb_is_byte_identical_to_caffes(golden, tmp_path):
    """Same command as the golden tools_log.txt: keys and Datum bytes equal Caffe's."""
    g3 = golden / "g3"
    entries = read_list(g3 / "files.txt", root=g3 / "images")
    convert_to_db(entries, g3 / "images", tmp_path / "lmdb", backend="lmdb", height=256, width=256)
    with DatumDB(g3 / "lmdb") as a, DatumDB(tmp_path / "lmdb") as b:
        assert list(a.items()) == list(b.items())


def test_compute_image_mean_is_byte_identical(golden, tmp_path):
    g3 = golden / "g3"
    mean = compute_image_mean(g3 / "lmdb", tmp_path / "mean.binaryproto")
    np.testing.assert_array_equal(mean, np.load(g3 / "mean.npz")["mean"])
    assert (tmp_path / "mean.binaryproto").read_bytes() == (g3 / "mean.binaryproto").read_bytes()


def test_lmdb_to_store_keeps_bytes_and_names(golden, tmp_path):
    g3 = golden / "g3"
    s = Store(convert_db_to_store(g3 / "lmdb", tmp_path / "store"))
    ref = np.load(g3 / "g3_lmdb_images.npz")
    np.testing.assert_array_equal(np.asarray(s.images), ref["images"])
    assert s.names[0] == "land_500x375.jpg" and s.labels.tolist() == ref["label"].tolist()
    assert compute_image_mean(tmp_path / "store").tobytes() == np.load(g3 / "mean.npz")["mean"].tobytes()


def test_leveldb_round_trip(tmp_path):
    pytest.importorskip("plyvel")
    rng = np.random.default_rng(0)
    entries = []
    (tmp_path / "img").mkdir()
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)).save(tmp_path / "img" / f"{i}.png")
        entries.append((f"{i}.png", i * 10))
    convert_to_db(entries, tmp_path / "img", tmp_path / "ldb", backend="leveldb", height=16, width=16)
    assert db_kind(tmp_path / "ldb") == "leveldb"
    with DatumDB(tmp_path / "ldb") as db:
        items = list(db.items())
    assert [k for k, _ in items] == [f"{i:08d}_{i}.png".encode() for i in range(5)]
    assert [parse_datum(v)[1] for _, v in items] == [0, 10, 20, 30, 40]


def test_encoded_and_float_datums(tmp_path):
    import io

    arr = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    enc = caffe_pb2.Datum(data=buf.getvalue(), encoded=True, label=4).SerializeToString()
    img, label = parse_datum(enc)
    np.testing.assert_array_equal(img, arr[:, :, ::-1].transpose(2, 0, 1))  # BGR C×H×W
    assert label == 4
    gray, _ = parse_datum(enc, force_gray=True)
    assert gray.shape == (1, 9, 7)
    f = caffe_pb2.Datum(channels=1, height=2, width=2, label=1)
    f.float_data.extend([0.5, 1.5, 2.5, 3.5])
    farr, _ = parse_datum(f.SerializeToString())
    assert farr.dtype == np.float32 and farr.tolist() == [[[0.5, 1.5], [2.5, 3.5]]]


def test_bad_databases_are_clear_errors(tmp_path):
    with pytest.raises(DBError, match="not a Caffe database"):
        DatumDB(tmp_path)
    with pytest.raises(DBError, match="says 3×2×2 but holds 5"):
        parse_datum(caffe_pb2.Datum(channels=3, height=2, width=2, data=b"12345").SerializeToString())
    assert datum_bytes(np.zeros((1, 1, 1), np.uint8), 3) == caffe_pb2.Datum(
        channels=1, height=1, width=1, data=b"\0", label=3, encoded=False).SerializeToString()
