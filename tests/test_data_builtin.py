"""The built-in dataset: generated once, atomically, deterministically; usable by the splits and the tools."""
import json

import numpy as np
import pytest

from repro.data import builtin
from repro.data.store import Store, compute_mean


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return builtin.ensure_builtin(tmp_path_factory.mktemp("b") / "builtin", train_per_class=12, val_per_class=4)


def test_layout_and_contents(small):
    m = json.loads((small / "manifest.json").read_text())
    assert m["builtin_version"] == builtin.VERSION and (m["train"], m["val"]) == (240, 80)
    assert (small / "classes.txt").read_text().split() == list(builtin.CLASSES)
    nat = [int(v) for v in (small / "half_nat_idx.txt").read_text().split()]
    man = [int(v) for v in (small / "half_man_idx.txt").read_text().split()]
    assert sorted(nat + man) == list(range(20)) and len(nat) == 10
    tr, va = Store(small / "train"), Store(small / "val")
    assert tr.shape == va.shape == (3, builtin.SIZE, builtin.SIZE)
    assert np.bincount(tr.labels).tolist() == [12] * 20 and np.bincount(va.labels).tolist() == [4] * 20
    assert tr.classes == list(builtin.CLASSES)
    # the train store is shuffled once (Caffe's cursor then mixes classes); the list is its order
    assert len(set(tr.labels[:20].tolist())) > 8
    listed = [line.rsplit(" ", 1) for line in (small / "train_files.txt").read_text().splitlines()]
    assert [n for n, _ in listed] == tr.names and [int(l) for _, l in listed] == tr.labels.tolist()
    from repro.caffemodel import read_mean

    np.testing.assert_array_equal(read_mean(small / "mean.binaryproto"), compute_mean(tr))


def test_deterministic_and_cached(small, tmp_path):
    again = builtin.ensure_builtin(tmp_path / "again", train_per_class=12, val_per_class=4)
    for part in ("train", "val"):
        assert (small / part / "images.u8").read_bytes() == (again / part / "images.u8").read_bytes()
    stamp = (again / "train" / "images.u8").stat().st_mtime_ns
    assert builtin.ensure_builtin(again, train_per_class=12, val_per_class=4) == again
    assert (again / "train" / "images.u8").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="train_per_class=12"):
        builtin.ensure_builtin(again, train_per_class=13, val_per_class=4)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="not the built-in dataset"):
        builtin.ensure_builtin(tmp_path / "junk")
    assert not list(tmp_path.glob(".*partial*"))


def test_paper_splits_apply_to_it(small, tmp_path):
    from repro.study.splits import make_splits

    nat = [int(v) for v in (small / "half_nat_idx.txt").read_text().split()]
    man = [int(v) for v in (small / "half_man_idx.txt").read_text().split()]
    out = make_splits(small / "train_files.txt", tmp_path / "splits", num_classes=20, seeds=(0,),
                      partition=(nat, man), per_class=(5,))
    store = Store(small / "train")
    half = store.select(out["half0A"] / "files.txt")
    assert len(half) == 120 and sorted(set(half.labels.tolist())) == list(range(10))
    natural = store.select(out["halfnatmanA"] / "files.txt")
    assert set(natural.labels.tolist()) == set(range(10))
    np.testing.assert_array_equal(natural.read(np.arange(len(natural)))[0],
                                  store.subset(nat).read(np.arange(len(natural)))[0])
    reduced = store.select(out["reduced0005"] / "files.txt")
    assert np.bincount(reduced.labels).tolist() == [5] * 20


def test_exported_pngs_convert_back_to_the_same_store(small, tmp_path):
    from repro.data.convert import convert_to_store
    from repro.data.sources import read_list

    builtin.export_images(small, tmp_path / "png")
    entries = read_list(small / "val_files.txt", root=tmp_path / "png")
    s = Store(convert_to_store(entries, tmp_path / "png", tmp_path / "val"))
    np.testing.assert_array_equal(np.asarray(s.images), np.asarray(Store(small / "val").images))


def test_classes_are_not_separable_by_colour_alone():
    """Hues are shared across classes: the mean colour of an image says little about its class."""
    x, y, xv, yv = builtin.generate(train_per_class=40, val_per_class=20)
    feats = lambda a: a.reshape(len(a), 3, -1).mean(axis=2)
    cent = np.stack([feats(x[y == c]).mean(axis=0) for c in range(20)])
    pred = np.argmin(((feats(xv)[:, None] - cent[None]) ** 2).sum(-1), axis=1)
    assert (pred == yv).mean() < 0.25  # chance is 0.05; a CNN must use shape and texture
