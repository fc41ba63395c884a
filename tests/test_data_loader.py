"""The Loader: Caffe's sequential wrap-around cursor, seeded crops, per-epoch shuffle, resumable state."""
import numpy as np
import pytest
import torch

from repro.data import builtin
from repro.data.loader import Loader, Order
from repro.data.store import Store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = builtin.ensure_builtin(tmp_path_factory.mktemp("b") / "builtin", train_per_class=6, val_per_class=2)
    return Store(root / "train")


def test_test_phase_reads_sequentially_and_wraps(store):
    mean = np.random.default_rng(0).uniform(0, 255, store.shape).astype(np.float32)
    n = len(store)  # 120
    L = Loader(store, 50, phase="TEST", crop_size=56, mean=mean)
    seen = []
    for _ in range(3):  # 150 records: wraps once, like Caffe's cursor
        b = L.next_batch()
        assert b["data"].dtype == torch.float32 and b["data"].shape == (50, 3, 56, 56)
        assert b["label"].dtype == torch.float32
        seen.append(b)
    idx = np.arange(150) % n
    ref = (np.asarray(store.images)[idx].astype(np.float32) - mean)[:, :, 4:60, 4:60]
    np.testing.assert_array_equal(torch.cat([b["data"] for b in seen]).numpy(), ref)
    np.testing.assert_array_equal(torch.cat([b["label"] for b in seen]).numpy(), store.labels[idx])
    assert L.epoch == 150 / n
    L.close()


def _run(loader, k):
    return [loader.next_batch() for _ in range(k)]


def test_train_is_reproducible_with_a_seed_and_resumes_exactly(store):
    kw = dict(phase="TRAIN", crop_size=56, mirror=True, mean_value=(100, 110, 120), shuffle=True, num_workers=2)
    a = _run(Loader(store, 32, seed=7, **kw), 9)
    b = _run(Loader(store, 32, seed=7, **kw), 9)
    c = _run(Loader(store, 32, seed=8, **kw), 1)
    assert all(torch.equal(x["data"], y["data"]) for x, y in zip(a, b))
    assert not torch.equal(a[0]["data"], c[0]["data"])
    # kill after 4 batches, restore into a fresh loader: the rest is identical
    L = Loader(store, 32, seed=7, **kw)
    _run(L, 4)
    state = L.state_dict()
    L.close()
    R = Loader(store, 32, seed=7, **kw)
    R.load_state_dict(state)
    rest = _run(R, 5)
    assert all(torch.equal(x["data"], y["data"]) and torch.equal(x["label"], y["label"])
               for x, y in zip(a[4:], rest))
    with pytest.raises(ValueError, match="loader state is for"):
        Loader(store, 32, seed=9, **kw).load_state_dict(state)


def test_shuffle_visits_every_image_once_per_epoch():
    o = Order(10, shuffle=True, seed=1)
    first, second = o.indices(0, 10), o.indices(10, 10)
    assert sorted(first) == list(range(10)) and sorted(second) == list(range(10))
    assert list(first) != list(second)
    np.testing.assert_array_equal(o.indices(7, 6), np.concatenate([first[7:], second[:3]]))
    np.testing.assert_array_equal(Order(10).indices(8, 4), [8, 9, 0, 1])


def test_train_crops_cover_offsets_and_mirror(store):
    L = Loader(store, 120, phase="TRAIN", crop_size=56, mirror=True, seed=0)
    b = L.next_batch()["data"].numpy()
    src = np.asarray(store.images).astype(np.float32)
    offs = set()
    for i in range(120):
        for h in range(9):
            for w in range(9):
                crop = src[i, :, h:h + 56, w:w + 56]
                if np.array_equal(crop, b[i]):
                    offs.add((h, w, False))
                elif np.array_equal(crop[:, :, ::-1], b[i]):
                    offs.add((h, w, True))
    assert len(offs) > 60 and {m for *_, m in offs} == {True, False}
    L.close()


def test_subset_store_feeds_remapped_labels(store):
    sub = store.subset([4, 17])
    L = Loader(sub, len(sub), phase="TEST")
    b = L.next_batch()
    assert set(b["label"].tolist()) == {0.0, 1.0}
    L.close()
