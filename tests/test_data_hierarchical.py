"""The hierarchical built-in generator: deterministic, and its family structure visible in image statistics."""
import numpy as np

from repro.data import hierarchical as h


def test_same_seed_same_bytes_other_seed_differs():
    a = h.render_class(7, 4, seed=3)
    assert a.tobytes() == h.render_class(7, 4, seed=3).tobytes()
    assert a.tobytes() != h.render_class(7, 4, seed=4).tobytes()
    assert a.tobytes() != h.render_class(7, 4, seed=3, part=1).tobytes()   # val never repeats train
    x, y, xv, yv = h.generate(2, 1, seed=5)
    x2, *_ = h.generate(2, 1, seed=5)
    assert x.dtype == np.uint8 and x.shape == (2 * h.N_CLASSES, 3, h.SIZE, h.SIZE) and x.tobytes() == x2.tobytes()
    assert list(np.bincount(y)) == [2] * h.N_CLASSES and list(np.bincount(yv)) == [1] * h.N_CLASSES


def _features(imgs):
    """Per-image oriented-gradient energy in 8 bins and mean colour: a descriptor independent of the generator."""
    g = imgs.astype(np.float64).mean(axis=1)
    gy, gx = np.gradient(g, axis=(1, 2))
    mag, ang = np.hypot(gx, gy), np.mod(np.arctan2(gy, gx), np.pi)
    bins = np.minimum((ang / np.pi * 8).astype(int), 7)
    hist = np.stack([(mag * (bins == b)).sum(axis=(1, 2)) for b in range(8)], 1)
    hist /= hist.sum(axis=1, keepdims=True)
    col = imgs.astype(np.float64).mean(axis=(2, 3)) / 255.0
    return np.concatenate([hist, col], 1)


def test_family_structure_in_image_statistics():
    x, y, _, _ = h.generate(40, 0, seed=1)
    f = _features(x)
    cls = np.stack([f[y == c].mean(0) for c in range(h.N_CLASSES)])
    z = (cls - cls.mean(0)) / cls.std(0)
    corr = np.corrcoef(z)
    fam = np.array([h.family_of(c) for c in range(h.N_CLASSES)])
    same = fam[:, None] == fam[None, :]
    off = ~np.eye(h.N_CLASSES, dtype=bool)
    within, between = corr[same & off].mean(), corr[~same].mean()
    assert within > between + 0.3, (within, between)
    # natural vs man-made: classes of the same kind are more alike than across kinds
    nat = np.isin(np.arange(h.N_CLASSES), h.NATURAL_IDS)
    kind_same = (nat[:, None] == nat[None, :]) & ~same
    assert corr[kind_same].mean() > corr[nat[:, None] != nat[None, :]].mean()


def test_ensure_builtin_hierarchical_kind(tmp_path):
    import pytest

    from repro.data.builtin import ensure_builtin
    from repro.data.store import Store
    root = ensure_builtin(tmp_path / "mini", train_per_class=2, val_per_class=1, kind="hierarchical")
    assert (root / "classes.txt").read_text().split() == list(h.CLASSES)
    assert [int(v) for v in (root / "half_nat_idx.txt").read_text().split()] == list(h.NATURAL_IDS)
    s = Store(root / "train")
    assert len(s) == 2 * h.N_CLASSES and sorted(set(s.labels.tolist())) == list(range(h.N_CLASSES))
    with pytest.raises(FileExistsError, match="kind=hierarchical"):
        ensure_builtin(root, train_per_class=2, val_per_class=1)          # the 20-class kind is not this
    with pytest.raises(ValueError, match="unknown built-in kind"):
        ensure_builtin(tmp_path / "x", kind="imagenet")
