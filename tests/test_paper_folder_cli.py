"""The paper's folders run unchanged under tools/caffe.py, as they ran under caffe.bin: a copy of ``half0A``
and ``transfer0A0B_1_3`` (V0 prototxts, relative data sources ``imagenet_train_leveldb`` /
``imagenet_val_leveldb`` / ``imagenet_mean.binaryproto``, ``solver_mode: 1``), each run in its own folder;
the transfer net starts from ``-weights ../half0A/<snapshot>``.

Only sizes shrink for a CPU test: a data set of 6 images of 256x256 made by our converter (an LMDB under the
LevelDB's name: the data layer goes by the folder's content, as Caffe's ``db::GetDB`` does with its backend,
and LevelDB writing needs plyvel), batch sizes 256 / 50 -> 2, test_iter 1000 -> 1, max_iter 1 and 2.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from caffe_tool import caffe

from repro.caffemodel import read_caffemodel

REPO = Path(__file__).resolve().parents[1]
FILES = ("imagenet_solver.prototxt", "imagenet_train.prototxt", "imagenet_val.prototxt")
FROZEN = ("conv1", "conv2", "conv3")  # blobs_lr 0 in transfer0A0B_1_3: copied from half0A, never updated

pytestmark = pytest.mark.slow


def tool(name, *args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, str(REPO / "tools" / name), *map(str, args)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{name} exited {r.returncode}:\n{r.stderr[-2000:]}"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Six 256x256 images in 3 classes, converted as the paper's data was (convert_imageset, then
    compute_image_mean)."""
    from PIL import Image

    d = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(d / f"im{i}.png")
        lines.append(f"im{i}.png {i % 3}")
    (d / "list.txt").write_text("\n".join(lines) + "\n")
    tool("convert_imageset.py", "--backend=lmdb", d, d / "list.txt", d / "db")
    tool("compute_image_mean.py", d / "db", d / "mean.binaryproto")
    return d


def paper_folder(original: Path, name: str, root: Path, data: Path, max_iter: int) -> Path:
    d = root / name
    d.mkdir()
    for f in FILES:
        text = (original / name / f).read_text()
        text = re.sub(r"batchsize: \d+", "batchsize: 2", text)
        text = re.sub(r"test_iter: \d+", "test_iter: 1", text)
        text = re.sub(r"max_iter: \d+", f"max_iter: {max_iter}", text)
        (d / f).write_text(text)
    for link in ("imagenet_train_leveldb", "imagenet_val_leveldb"):
        (d / link).symlink_to(data / "db")
    (d / "imagenet_mean.binaryproto").symlink_to(data / "mean.binaryproto")
    return d


def test_transfer_folder_trains_from_half0A_and_tests(shared, data, tmp_path):
    original = shared / "reference" / "original_prototxt"
    if not (original / "transfer0A0B_1_3").is_dir():
        pytest.skip("the paper's prototxts are absent")
    solver = (original / "transfer0A0B_1_3" / "imagenet_solver.prototxt").read_text()
    assert 'train_net: "imagenet_train.prototxt"' in solver and "solver_mode: 1" in solver  # as the paper had it
    base = paper_folder(original, "half0A", tmp_path, data, max_iter=1)
    log = caffe(base, "train", "-solver", "imagenet_solver.prototxt")
    snap = base / "caffe_imagenet_train_iter_1.caffemodel"  # Caffe's name: snapshot_prefix _iter_ N
    assert snap.is_file(), log[-2000:]

    net = paper_folder(original, "transfer0A0B_1_3", tmp_path, data, max_iter=2)
    log = caffe(net, "train", "-solver", "imagenet_solver.prototxt", "-weights",
                "../half0A/caffe_imagenet_train_iter_1.caffemodel")
    assert "Finetuning from ../half0A/caffe_imagenet_train_iter_1.caffemodel" in log
    assert re.search(r"\] Iteration 0 \(.*\), loss = \S+", log) and "Optimization Done." in log  # display: 20
    out = net / "caffe_imagenet_train_iter_2.caffemodel"
    assert out.is_file() and (net / "caffe_imagenet_train_iter_2.solverstate").is_file()
    ours, half = read_caffemodel(out), read_caffemodel(snap)
    for layer in FROZEN:   # copied by name, then frozen (blobs_lr 0, weight_decay 0)
        assert all(np.array_equal(a, b) for a, b in zip(ours[layer], half[layer])), layer
    assert "conv4-new" in ours and "conv4" not in ours  # re-initialised, as the paper's transfer nets

    log = caffe(net, "test", "-model", "imagenet_val.prototxt", "-weights", out.name, "-iterations", "2")
    assert len(re.findall(r"\] Batch [01], accuracy = \S+", log)) == 2
    acc = float(re.search(r"caffe\.cpp:\d+\] accuracy = (\S+)", log).group(1))
    assert 0.0 <= acc <= 1.0
