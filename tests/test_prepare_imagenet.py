"""prepare_imagenet on a small generated ILSVRC-shaped tree: every study dataset as (store, index list), read by
the Data layer; resumable after a kill; disk need computed from the image count."""
import hashlib
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from PIL import Image

from repro.data import prepare as prep
from repro.data.layer import DataLayerFeeder
from repro.data.store import Store, is_index, open_index
from repro.proto import caffe_pb2
from repro.study.splits import select, study_datasets

pytestmark = pytest.mark.filterwarnings("ignore:.*classes, not ILSVRC:UserWarning",
                                        "ignore:num_classes=6:UserWarning")


def make_tree(root: Path, classes=6, per=8, n_val=12, seed=0):
    """ILSVRC-shaped: train/<synset>/*.JPEG of varied sizes (one greyscale, one CMYK, one PNG named .JPEG),
    val/*.JPEG and Caffe's `name label` val list."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / "train" / f"n{1440764 + c:08d}"
        d.mkdir(parents=True)
        for i in range(per):
            h, w = (int(x) for x in rng.integers(40, 120, 2))
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            arr[..., c % 3] //= 4  # classes differ in colour, so a net can learn them
            im = Image.fromarray(arr)
            if (c, i) == (0, 0):
                im = im.convert("L")
            if (c, i) == (1, 1):
                im = im.convert("CMYK")
            im.save(d / f"n{1440764 + c:08d}_{i}.JPEG", format="PNG" if (c, i) == (2, 2) else "JPEG")
    (root / "val").mkdir()
    lines = []
    for j in range(n_val):
        arr = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
        arr[..., (j % classes) % 3] //= 4
        Image.fromarray(arr).save(root / "val" / f"ILSVRC2012_val_{j:08d}.JPEG")
        lines.append(f"ILSVRC2012_val_{j:08d}.JPEG {j % classes}\n")
    (root / "val.txt").write_text("".join(lines))
    return root


def _run(tree, out, **kw):
    return prep.prepare(tree / "train", tree / "val", tree / "val.txt", out, log=lambda m: None, **kw)


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_prepare_writes_every_dataset_as_an_index_into_one_store(tmp_path):
    tree = make_tree(tmp_path / "ilsvrc")
    out = tmp_path / "data"
    summary = _run(tree, out)
    train, val = Store(out / "train"), Store(out / "val")
    assert (len(train), len(val)) == (48, 12) and train.shape == (3, 256, 256)  # every image decoded once
    names = list(zip(train.names, (int(x) for x in train.labels)))
    for ds in study_datasets(6, partition=None):
        v = open_index(out / f"{ds.name}_train_lmdb")
        want = sorted(select(names, ds))
        assert sorted(zip(v.names, (int(x) for x in v.labels))) == want, ds.name
        assert (out / f"{ds.name}_mean.binaryproto").is_file() and is_index(out / f"{ds.name}_val_lmdb")
    assert summary["datasets"] == [ds.name for ds in study_datasets(6, partition=None)]
    whole = open_index(out / "whole_train_lmdb")
    assert list(whole.labels) != sorted(whole.labels)       # shuffled, not class-sorted

    # the Data layer reads an index list exactly as the rows of its store
    lp = text_format.Parse(f'name: "d" type: "Data" top: "data" top: "label" data_param {{ source: '
                           f'"{out}/half0A_train_lmdb" batch_size: 5 }}', caffe_pb2.LayerParameter())
    feed = DataLayerFeeder(lp, "TRAIN", seed=0)
    batch = feed.next_batch()
    h0 = open_index(out / "half0A_train_lmdb")
    u8, lab = h0.read(np.arange(5))
    assert np.array_equal(batch["data"].numpy(), u8.astype(np.float32))
    assert np.array_equal(batch["label"].numpy(), lab.astype(np.float32))
    feed.close()


def test_prepare_resumes_after_a_kill_with_the_same_output(tmp_path, monkeypatch):
    tree = make_tree(tmp_path / "ilsvrc")
    _run(tree, tmp_path / "clean")
    real, calls = prep.compute_mean, []

    def dies(view, log=None):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed while writing the means
        return real(view, log=log)

    monkeypatch.setattr(prep, "compute_mean", dies)
    with pytest.raises(KeyboardInterrupt):
        _run(tree, tmp_path / "killed")
    monkeypatch.setattr(prep, "compute_mean", real)
    stamp = (tmp_path / "killed" / "train" / "images.u8").stat().st_mtime_ns
    done_before = {p.name for p in (tmp_path / "killed").iterdir()}
    converted = []
    monkeypatch.setattr(prep, "convert_to_store", lambda *a, **k: converted.append(a))
    log = []
    prep.prepare(tree / "train", tree / "val", tree / "val.txt", tmp_path / "killed", log=log.append)
    assert converted == [] and any("done, skipped" in m for m in log)   # stores not decoded again
    assert (tmp_path / "killed" / "train" / "images.u8").stat().st_mtime_ns == stamp
    assert not any(f"wrote {tmp_path / 'killed' / n}" in log for n in done_before)
    assert _digest(tmp_path / "killed") == _digest(tmp_path / "clean")
    assert _digest(tmp_path / "killed" / "train") == _digest(tmp_path / "clean" / "train")


def test_disk_need_of_ilsvrc_2012():
    need = prep.disk_need(1_281_167, 50_000, 21)
    images = (1_281_167 + 50_000) * 3 * 256 * 256
    assert images < need < images * 1.01     # the decoded pixels dominate; lists and means are overhead
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"{need / 1e9:.1f} GB" in readme and "1,331,167" in readme   # the README states the computed need
