"""The README's ImageNet commands, read from the README and run as a new user would, on a generated
ILSVRC-shaped tree: prepare_imagenet -> train_base (CaffeNet, one iteration on CPU) -> run_grid's plan."""
import csv
import json
import os
import re
import shlex
import subprocess
import sys

import pytest
from conftest import REPO
from test_prepare_imagenet import make_tree

from repro.data.store import open_index


def _imagenet_commands():
    text = (REPO / "README.md").read_text()
    section = text[text.index("### ImageNet"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README's ImageNet section must hold a bash block of its commands"
    return [shlex.split(line) for line in block.group(1).splitlines() if line.strip()]


def _run(argv, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{shlex.join(argv)} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


def _on_cpu(argv):
    """The README's command with its --device cuda dropped (this test runs without a GPU)."""
    return [a for a in argv if a not in ("--device", "cuda")]


@pytest.mark.slow
def test_readme_imagenet_commands_prepare_train_and_plan(tmp_path):
    prepare, train, transfer, grid, plot = _imagenet_commands()[:5]
    assert prepare[:2] == ["python", "tools/prepare_imagenet.py"] and train[:2] == ["python", "tools/train_base.py"]
    assert transfer[:2] == ["python", "tools/transfer.py"] and plot[:2] == ["python", "tools/plot_results.py"]
    assert grid[:2] == ["python", "tools/run_grid.py"] and "--dry-run" in grid
    tree = make_tree(tmp_path / "ILSVRC2012")
    (tmp_path / "val.txt").write_text((tree / "val.txt").read_text())
    for name in ("tools", "prototxt"):
        (tmp_path / name).symlink_to(REPO / name)

    out = _run(prepare, tmp_path)           # exactly the README's command, in a folder laid out as it says
    assert "needs about" in out and "6 classes, not ILSVRC" in out
    assert (tmp_path / "DIR" / "data" / "half0A_train_lmdb").is_file()

    # CPU, a one-iteration schedule and one test batch (the README's --device cuda is for a real GPU)
    quick = ["--device", "cpu", "--max-iter", "1", "--test-iter", "1"]
    out = _run(_on_cpu(train) + quick, tmp_path)
    assert "half0A: finished in runs/imagenet/half0A" in out
    out = _run(_on_cpu(transfer) + quick, tmp_path)                   # AnB, n = 5, from half0A's final weights
    assert "transfer0A0B_1_5: finished" in out
    plan = _run(_on_cpu(grid), tmp_path)
    assert re.search(r"done\s+half0A\s+base", plan) and re.search(r"new\s+half0B\s+base", plan)
    assert re.search(r"done\s+transfer0A0B_1_5", plan)
    _run(plot, tmp_path)                                                # figures and tables of the finished runs
    report = tmp_path / "report"
    assert (report / "results.md").read_text().count("2 nets")          # half0A and transfer0A0B_1_5
    rows = list(csv.DictReader((report / "figure2.csv").open()))
    assert [(r["condition"], r["n"], r["k"]) for r in rows] == [("base", "0", "1"), ("AnB", "5", "1")]

    # classify a validation image with the trained base net: Caffe's TEST preprocessing, the half's global classes
    img = str(tree / "val" / "ILSVRC2012_val_00000000.JPEG")
    classes = json.loads((tmp_path / "DIR" / "data" / "prepare.json").read_text())["classes"]
    half = open_index(tmp_path / "DIR" / "data" / "half0A_train_lmdb").classes
    for weights, model in (("runs/imagenet/half0A/final.caffemodel", ["--model", "prototxt/caffenet/deploy.prototxt"]),
                           ("runs/imagenet/half0A/final.onnx", [])):
        out = _run(["python", "tools/classify.py", *model, "--weights", weights, "--mean",
                    "DIR/data/half0A_mean.binaryproto", "--dataset", "DIR/data/half0A_train_lmdb", img], tmp_path)
        lines = out.strip().splitlines()
        assert lines[0] == img and len(lines) == 1 + len(half)          # a half of 6 classes: its 3 classes
        named = [ln.split()[1] for ln in lines[1:]]
        assert sorted(named) == sorted(half) and set(half) < set(classes)
    # the ONNX file carries mean, crop, channel order and labels: classify needs nothing else
    alone = _run(["python", "tools/classify.py", "--weights", "runs/imagenet/half0A/final.onnx", img], tmp_path)
    assert alone == out
