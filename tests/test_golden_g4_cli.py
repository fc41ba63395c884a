"""G4 (golden/README.md): Caffe's own 30-iteration run from random_seed 1701, replayed with tools/caffe.py in a
copy of its folder, as ``caffe train`` was run there.

What holds: the commands run in the folder, name their snapshots as Caffe did (snap_iter_0 from
solver_init.prototxt, snap_iter_10/20/30), resume from Caffe's own snap_iter_10.solverstate, and log in lines
that Caffe's parse_log.py rules read into the same tables (rows and columns) as Caffe's train.log. With Caffe's
random streams (repro.caffe_rng) the numbers match too: bit-exact initial weights, Caffe's first test accuracy
exactly, the losses of iterations 0-9 within 1e-3 (measured: 1.6e-6) and the weights at iteration 10 within 1e-3
of each blob's largest value (measured: 5.6e-5, conv1).

What does not hold: the weights at 30. Float32 training of this net is chaotic: a 1-ulp change of one weight at
iteration 10 moves iteration 30's weights by ~0.3 of their scale in our own runs, as much as we differ from
Caffe (summation order differs between Caffe's BLAS and ours), so that assertion stays a strict xfail with a bound
that would only pass if the trajectories agreed bit for bit.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from caffe_tool import caffe
from parse_log_rules import parse_log

from repro.caffelog import parse_log_files
from repro.caffemodel import read_caffemodel

REPO = Path(__file__).resolve().parents[1]
INPUTS = ("train_val.prototxt", "solver.prototxt", "solver_init.prototxt", "mean.binaryproto", "train_lmdb",
          "val_lmdb")
CHAOTIC = ("float32 training diverges from Caffe's by iteration 30 as fast as from a 1-ulp perturbation of our own "
           "run: only a bit-identical trajectory (same BLAS summation order) would pass")

pytestmark = pytest.mark.slow


def copy_inputs(g4: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in INPUTS:
        src = g4 / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst / name)
    return dst


def short_prefix(src: Path, dst: Path) -> Path:
    """Caffe's train.log with glog's classic prefix (this build's glog printed the year, which parse_log.py
    cannot read: golden/README.md)."""
    dst.write_text(re.sub(r"^([IWEF])\d{4}(\d{4} )", r"\1\2", src.read_text(), flags=re.M))
    return dst


@pytest.fixture(scope="module")
def g4(golden):
    p = golden / "g4"
    if not (p / "train.log").is_file():
        pytest.skip("golden G4 data is absent")
    return p


@pytest.fixture(scope="module")
def replay(g4, tmp_path_factory):
    """caffe.py train -solver solver_init.prototxt, then -solver solver.prototxt, in a copy of the folder."""
    d = copy_inputs(g4, tmp_path_factory.mktemp("g4") / "g4")
    caffe(d, "train", "-solver", "solver_init.prototxt")
    log = caffe(d, "train", "-solver", "solver.prototxt")
    (d / "ours.log").write_text(log)
    return d


@pytest.fixture(scope="module")
def resumed(g4, tmp_path_factory):
    """caffe.py train -solver solver.prototxt -snapshot snap_iter_10.solverstate from Caffe's own snapshot."""
    d = copy_inputs(g4, tmp_path_factory.mktemp("g4r") / "g4")
    for ext in (".caffemodel", ".solverstate"):
        shutil.copy(g4 / f"snap_iter_10{ext}", d / f"snap_iter_10{ext}")
    log = caffe(d, "train", "-solver", "solver.prototxt", "-snapshot", "snap_iter_10.solverstate")
    (d / "ours.log").write_text(log)
    return d


def test_snapshots_are_named_as_caffe_names_them(replay, g4):
    init = read_caffemodel(replay / "snap_iter_0.caffemodel")
    ref = read_caffemodel(g4 / "init_iter_0.caffemodel")
    assert list(init) == list(ref)
    assert all([a.shape for a in init[k]] == [b.shape for b in ref[k]] for k in ref)
    for i in (10, 20, 30):
        assert (replay / f"snap_iter_{i}.caffemodel").is_file() and (replay / f"snap_iter_{i}.solverstate").is_file()
    assert (replay / "snap_iter_0.solverstate").is_file()  # Solver::Snapshot writes both, at iteration 0 too


def test_our_log_parses_into_the_tables_caffes_log_does(replay, g4, tmp_path):
    ours_train, ours_test = parse_log(replay / "ours.log")
    caffe_train, caffe_test = parse_log(short_prefix(g4 / "train.log", tmp_path / "caffe.log"))
    assert [r["NumIters"] for r in ours_train] == [r["NumIters"] for r in caffe_train] == list(range(30))
    assert [r["NumIters"] for r in ours_test] == [r["NumIters"] for r in caffe_test] == [0, 10, 20, 30]
    assert [list(r) for r in ours_train] == [list(r) for r in caffe_train]
    assert [list(r) for r in ours_test] == [list(r) for r in caffe_test]
    assert [r["LearningRate"] for r in ours_train] == [r["LearningRate"] for r in caffe_train]
    # and repro.caffelog reads both (Caffe's with glog 0.7's dated prefix as it is)
    assert [p.iter for p in parse_log_files([replay / "ours.log"]).tests] == \
           [p.iter for p in parse_log_files([g4 / "train.log"]).tests] == [0, 10, 20, 30]


def test_resume_from_caffes_solverstate_runs_to_30(resumed):
    train, test = parse_log(resumed / "ours.log")
    assert [r["NumIters"] for r in train] == list(range(10, 30))
    assert [r["NumIters"] for r in test] == [10, 20, 30]
    assert (resumed / "snap_iter_30.caffemodel").is_file()


def test_init_weights_equal_caffes_bit_for_bit(replay, g4):
    init = read_caffemodel(replay / "snap_iter_0.caffemodel")
    ref = read_caffemodel(g4 / "init_iter_0.caffemodel")
    assert all(np.array_equal(a, b) for k in ref for a, b in zip(init[k], ref[k]))


def test_first_losses_and_test_accuracy_match_caffes(replay, g4):
    traj = json.loads((g4 / "trajectory.json").read_text())
    ours = parse_log_files([replay / "ours.log"])
    assert ours.tests[0].top1 == traj["tests"][0]["accuracy"]
    # 1e-3 relative: ten float32 iterations with another BLAS's summation order (measured 1.6e-6)
    for it in range(10):
        assert ours.train_loss[it] == pytest.approx(traj["losses"][str(it)], rel=1e-3), f"iteration {it}"


def _assert_weights_close(folder, i, g4):
    ours = read_caffemodel(folder / f"snap_iter_{i}.caffemodel")
    ref = read_caffemodel(g4 / f"snap_iter_{i}.caffemodel")
    for k in ref:
        for a, b in zip(ours[k], ref[k]):
            assert np.abs(a - b).max() <= 1e-3 * max(np.abs(b).max(), 1e-12), (i, k)


def test_weights_at_10_match_caffes(replay, g4):
    _assert_weights_close(replay, 10, g4)  # 1e-3 of each blob's scale; measured 5.6e-5 (conv1)


@pytest.mark.xfail(strict=True, reason=CHAOTIC)
def test_weights_resumed_to_30_match_caffes(resumed, g4):
    _assert_weights_close(resumed, 30, g4)
