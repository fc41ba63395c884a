"""Training order is never class-sorted by accident: convert_imageset shuffles by default, a Data layer whose
TRAIN source is sorted by label warns, and make_splits refuses/warns about class counts that are not the paper's."""
import json
import warnings

import numpy as np
import pytest
from google.protobuf import text_format
from PIL import Image

from repro.data.cli import convert_imageset_main
from repro.data.layer import DataLayerFeeder, label_runs_sorted
from repro.proto import caffe_pb2
from repro.study.splits import SplitError, make_splits


def _tree(root, classes=4, per=12):
    rng = np.random.default_rng(1)
    for c in range(classes):
        d = root / f"n{c:08d}"
        d.mkdir(parents=True)
        for i in range(per):
            Image.fromarray(rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)).save(d / f"im{i}.png")


def _layer(source):
    return text_format.Parse(f'name: "d" type: "Data" top: "data" top: "label" '
                             f'data_param {{ source: "{source}" batch_size: 4 }}', caffe_pb2.LayerParameter())


def _feed(path, phase):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        DataLayerFeeder(_layer(path), phase, seed=0).close()
    return [str(x.message) for x in w if "sorted by label" in str(x.message)]


def test_folder_conversion_is_shuffled_by_default_and_sorted_train_source_warns(tmp_path):
    _tree(tmp_path / "train")
    args = ["--folder", "--resize_height=8", "--resize_width=8", str(tmp_path / "train")]
    assert convert_imageset_main(args + [str(tmp_path / "shuf")]) == 0
    assert convert_imageset_main(args + ["--shuffle", str(tmp_path / "shuf2")]) == 0  # Caffe's flag still works
    assert convert_imageset_main(args + ["--no-shuffle", str(tmp_path / "sorted")]) == 0
    m = json.loads((tmp_path / "shuf" / "manifest.json").read_text())
    assert m["shuffle"] is True and m["seed"] == 0
    labels = np.load(tmp_path / "shuf" / "labels.npy")
    assert not label_runs_sorted(labels)
    assert list(np.load(tmp_path / "sorted" / "labels.npy")) == sorted(labels)

    msgs = _feed(tmp_path / "sorted", "TRAIN")
    assert len(msgs) == 1 and str(tmp_path / "sorted") in msgs[0] and "rebuild it shuffled" in msgs[0].lower()
    assert _feed(tmp_path / "sorted", "TEST") == []      # a sorted val set is harmless
    assert _feed(tmp_path / "shuf", "TRAIN") == []


def test_label_runs_sorted_only_fires_on_long_runs():
    rng = np.random.default_rng(0)
    assert label_runs_sorted(np.repeat(np.arange(10), 50))
    assert not label_runs_sorted(rng.permutation(np.repeat(np.arange(10), 50)))
    assert not label_runs_sorted(rng.permutation(np.repeat(np.arange(2), 50)))   # 2 classes: runs of ~2
    assert not label_runs_sorted(np.zeros(100))                                    # one class: nothing to sort
    assert not label_runs_sorted(np.repeat(np.arange(2), 5))                       # too few to judge


def test_make_splits_class_counts(tmp_path):
    entries = [(f"im{i}.png", i % 6) for i in range(60)]
    with pytest.raises(SplitError, match="odd"):
        make_splits([(n, lab % 5) for n, lab in entries], tmp_path / "a", num_classes=5, partition=None)
    with pytest.warns(UserWarning, match="not the paper's"):
        out = make_splits(entries, tmp_path / "b", num_classes=6, partition=None, per_class=(1,))
    assert {"whole", "half0A", "half0B", "reduced0001"} <= set(out)
