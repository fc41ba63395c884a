"""convert_imageset into our store: content, shuffle, resume, every kind of bad input, views, the CLI."""
import json

import numpy as np
import pytest
from PIL import Image

from repro.data import convert
from repro.data.checks import DataError
from repro.data.cli import compute_image_mean_main, convert_imageset_main
from repro.data.image import read_image, to_chw
from repro.data.sources import index_folder, read_list
from repro.data.store import Store, StoreError, compute_mean


def _make_images(root, n_classes=3, per_class=4, seed=0):
    """Tiny JPEGs/PNGs of varied sizes in root/<class>/, and a list file of them."""
    rng = np.random.default_rng(seed)
    entries = []
    for c in range(n_classes):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = (int(v) for v in rng.integers(20, 48, 2))
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            name = f"c{c}/img{i}.{'png' if i == 0 else 'jpg'}"
            Image.fromarray(arr).save(root / name)
            entries.append((name, c))
    (root / "list.txt").write_text("".join(f"{n} {l}\n" for n, l in entries))
    return entries


def test_store_holds_caffe_datum_bytes(tmp_path):
    entries = _make_images(tmp_path / "img")
    out = convert.convert_to_store(entries, tmp_path / "img", tmp_path / "store", height=16, width=20)
    s = Store(out)
    assert len(s) == len(entries) and s.shape == (3, 16, 20)
    for i, (name, label) in enumerate(entries):
        np.testing.assert_array_equal(s.images[i], to_chw(read_image(tmp_path / "img" / name, 16, 20)))
        assert s.labels[i] == label and s.names[i] == name
    m = json.loads((out / "manifest.json").read_text())
    assert m["count"] == len(entries) and m["resize"] == [16, 20]
    assert not (tmp_path / "store.partial").exists()
    with pytest.raises(FileExistsError):
        convert.convert_to_store(entries, tmp_path / "img", out, height=16, width=20)


def test_shuffle_is_reproducible_and_a_permutation(tmp_path):
    entries = _make_images(tmp_path / "img")
    a = Store(convert.convert_to_store(entries, tmp_path / "img", tmp_path / "a", height=8, width=8, shuffle=True, seed=3))
    b = Store(convert.convert_to_store(entries, tmp_path / "img", tmp_path / "b", height=8, width=8, shuffle=True, seed=3))
    assert a.names == b.names and a.names != [n for n, _ in entries]
    assert sorted(a.names) == sorted(n for n, _ in entries)
    np.testing.assert_array_equal(np.asarray(a.images), np.asarray(b.images))


def test_conversion_resumes_after_a_crash(tmp_path, monkeypatch):
    entries = _make_images(tmp_path / "img", per_class=6)
    ref = Store(convert.convert_to_store(entries, tmp_path / "img", tmp_path / "ref", height=12, width=12))
    monkeypatch.setattr(convert, "CHUNK", 4)
    real = convert._loader
    calls = {"n": 0}

    def crashing(*a, **k):
        load = real(*a, **k)

        def f(e):
            calls["n"] += 1
            if calls["n"] == 11:
                raise KeyboardInterrupt  # killed mid-run
            return load(e)
        return f

    monkeypatch.setattr(convert, "_loader", crashing)
    with pytest.raises(KeyboardInterrupt):
        convert.convert_to_store(entries, tmp_path / "img", tmp_path / "s", height=12, width=12, num_workers=1)
    progress = json.loads((tmp_path / "s.partial" / "progress.json").read_text())
    assert progress["next"] == 8  # two chunks of 4 were checkpointed
    monkeypatch.setattr(convert, "_loader", real)
    done = []
    convert.convert_to_store(entries, tmp_path / "img", tmp_path / "s", height=12, width=12, log=done.append)
    assert any("resuming at image 8" in m for m in done)
    s = Store(tmp_path / "s")
    np.testing.assert_array_equal(np.asarray(s.images), np.asarray(ref.images))
    assert s.names == ref.names


def _bad_dataset(root):
    entries = _make_images(root, n_classes=3, per_class=3)
    good = (root / entries[1][0]).read_bytes()
    (root / "c0/corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" + bytes(200))
    (root / "c1/truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "empty_class").mkdir()
    lines = [f"{n} {l}" for n, l in entries] + ["c0/corrupt.jpg 0", "c1/truncated.jpg 1", "c2/missing.jpg 2",
                                                "c2/img1.jpg 7", "c2/img2.jpg x"]
    (root / "bad_list.txt").write_text("\n".join(lines) + "\n")
    return entries


def test_every_bad_file_is_reported_at_once(tmp_path):
    root = tmp_path / "img"
    entries = _bad_dataset(root)
    # indexing the list: missing file, label out of range, malformed label, all in one error
    with pytest.raises(DataError) as e:
        read_list(root / "bad_list.txt", root=root, num_classes=3)
    reasons = "\n".join(str(b) for b in e.value.bad)
    assert len(e.value.bad) == 3
    assert "missing.jpg: file not found" in reasons
    assert "label 7 of 'c2/img1.jpg' is out of range (expected 0..2)" in reasons
    assert "label 'x'" in reasons and "bad_list.txt:" in str(e.value)
    # indexing the folder: the empty class folder
    with pytest.raises(DataError, match="empty_class: empty class folder"):
        index_folder(root)
    # converting: corrupt and truncated JPEGs, both listed
    with pytest.warns(UserWarning, match="skipped 3 bad file"):
        listed = read_list(root / "bad_list.txt", root=root, num_classes=3, on_error="skip")
    assert len(listed) == len(entries) + 2
    with pytest.raises(DataError) as e:
        convert.convert_to_store(listed, root, tmp_path / "s", height=8, width=8)
    msg = str(e.value)
    assert "2 bad file(s)" in msg and "corrupt.jpg: corrupt or truncated JPEG" in msg
    assert "truncated.jpg: truncated JPEG" in msg
    assert not (tmp_path / "s").exists()


def test_skip_policy_leaves_bad_files_out_and_reports_them(tmp_path):
    root = tmp_path / "img"
    entries = _bad_dataset(root)
    with pytest.warns(UserWarning, match="skipped 3 bad file"):
        listed = read_list(root / "bad_list.txt", root=root, num_classes=3, on_error="skip")
    with pytest.warns(UserWarning, match="skipped 2 bad file"):
        s = Store(convert.convert_to_store(listed, root, tmp_path / "s", height=8, width=8, on_error="skip"))
    assert s.names == [n for n, _ in entries]
    for i, (name, _) in enumerate(entries):
        np.testing.assert_array_equal(s.images[i], to_chw(read_image(root / name, 8, 8)))
    report = (tmp_path / "s" / "bad_files.txt").read_text()
    assert "corrupt.jpg\tcorrupt or truncated JPEG" in report and "truncated.jpg\ttruncated JPEG" in report
    with pytest.warns(UserWarning, match="empty class folder"):
        found, classes = index_folder(root, on_error="skip")
    assert classes == ["c0", "c1", "c2", "empty_class"] and len(found) == len(entries) + 2


def test_fixing_a_bad_file_and_rerunning_completes(tmp_path):
    root = tmp_path / "img"
    entries = _make_images(root)
    good = (root / entries[2][0]).read_bytes()
    (root / entries[2][0]).write_bytes(good[:40])
    with pytest.raises(DataError, match="truncated"):
        convert.convert_to_store(entries, root, tmp_path / "s", height=8, width=8)
    (root / entries[2][0]).write_bytes(good)
    s = Store(convert.convert_to_store(entries, root, tmp_path / "s", height=8, width=8))
    assert len(s) == len(entries)


def test_unresized_store_needs_one_size(tmp_path):
    entries = _make_images(tmp_path / "img")
    with pytest.raises(DataError, match="differs from the store's"):
        convert.convert_to_store(entries, tmp_path / "img", tmp_path / "s")


def test_subset_and_select_views(tmp_path):
    entries = _make_images(tmp_path / "img", n_classes=4, per_class=3)
    s = Store(convert.convert_to_store(entries, tmp_path / "img", tmp_path / "s", height=8, width=8,
                                       shuffle=True, seed=1, classes=["a", "b", "c", "d"]))
    sub = s.subset([1, 3])
    assert len(sub) == 6 and set(sub.labels.tolist()) == {0, 1} and sub.classes == ["b", "d"]
    for i in range(len(sub)):
        j = s.names.index(sub.names[i])
        assert [1, 3][sub.labels[i]] == s.labels[j]
        np.testing.assert_array_equal(sub.read([i])[0][0], s.images[j])
    lst = tmp_path / "split.txt"
    lst.write_text("c2/img1.jpg 0\nc0/img2.jpg 5\n")
    sel = s.select(lst)
    assert sel.names == ["c2/img1.jpg", "c0/img2.jpg"] and sel.labels.tolist() == [0, 5]
    np.testing.assert_array_equal(sel.read([0, 1])[0][1], s.images[s.names.index("c0/img2.jpg")])
    with pytest.raises(StoreError, match="not in the store"):
        s.select([("nope.jpg", 0)])


def test_compute_mean_sums_in_float32_like_caffe():
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (3, 4, 5), dtype=np.uint8) for _ in range(9)]
    acc = np.zeros((3, 4, 5), np.float32)
    for im in imgs:
        acc = acc + im.astype(np.float32)
    np.testing.assert_array_equal(compute_mean(iter(imgs)), acc / np.float32(9))


def test_cli_convert_and_mean(tmp_path, capsys):
    entries = _make_images(tmp_path / "img")
    rc = convert_imageset_main(["--resize_height=10", "--resize_width=12", "--shuffle",
                                f"{tmp_path / 'img'}/", str(tmp_path / "img" / "list.txt"), str(tmp_path / "s")])
    assert rc == 0 and len(Store(tmp_path / "s")) == len(entries)
    rc = convert_imageset_main(["--folder", "--resize_height=10", "--resize_width=12", str(tmp_path / "img"),
                                str(tmp_path / "f")])
    assert rc == 0 and Store(tmp_path / "f").classes == ["c0", "c1", "c2"]
    assert compute_image_mean_main([str(tmp_path / "s"), str(tmp_path / "mean.binaryproto")]) == 0
    from repro.caffemodel import read_mean

    np.testing.assert_array_equal(read_mean(tmp_path / "mean.binaryproto"), compute_mean(Store(tmp_path / "s")))
    (tmp_path / "img" / "bad.txt").write_text("c0/img1.jpg 0\nc9/gone.jpg 1\n")
    rc = convert_imageset_main([str(tmp_path / "img"), str(tmp_path / "img" / "bad.txt"), str(tmp_path / "x")])
    assert rc == 1 and "gone.jpg: file not found" in capsys.readouterr().err
