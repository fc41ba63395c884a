"""repro.train.run: the run folder as the record, testing like Caffe, atomic snapshots and exact resume."""
import json
import os
import signal

import numpy as np
import pytest
import torch

from repro.caffemodel import read_caffemodel
from repro.runlog import paper_metric
from repro.train import RunError, run

# A tiny CaffeNet-like net on the built-in data (Data layers, crop + mirror, dropout: every random stream).
NET = """
name: "TinyNet"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { mirror: true crop_size: 56 mean_file: "{root}/mean.binaryproto" }
  data_param { source: "{root}/train" batch_size: 16 } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { mirror: false crop_size: 56 mean_file: "{root}/mean.binaryproto" }
  data_param { source: "{root}/val" batch_size: 30 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 8 kernel_size: 5 stride: 4
    weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 0 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc6" type: "InnerProduct" bottom: "pool1" top: "fc6"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 16 weight_filler { type: "gaussian" std: 0.01 }
    bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc8" type: "InnerProduct" bottom: "fc6" top: "fc8"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 20 weight_filler { type: "gaussian" std: 0.01 }
    bias_filler { type: "constant" value: 0 } } }
layer { name: "accuracy" type: "Accuracy" bottom: "fc8" bottom: "label" top: "accuracy" include { phase: TEST } }
layer { name: "accuracy_top5" type: "Accuracy" bottom: "fc8" bottom: "label" top: "accuracy_top5"
  include { phase: TEST } accuracy_param { top_k: 5 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc8" bottom: "label" top: "loss" }
"""

SOLVER = """
net: "net.prototxt"
test_iter: 4
test_interval: 4
base_lr: 0.01
lr_policy: "step"
gamma: 0.1
stepsize: 6
display: 2
max_iter: 12
momentum: 0.9
weight_decay: 0.0005
snapshot: 4
random_seed: 3
"""


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from repro.data.builtin import ensure_builtin

    # 20 classes x (10 train, 5 val): 200 training images, 100 validation images.
    return ensure_builtin(tmp_path_factory.mktemp("builtin") / "b", train_per_class=10, val_per_class=5)


@pytest.fixture
def solver_file(tmp_path, data_root):
    (tmp_path / "net.prototxt").write_text(NET.replace("{root}", str(data_root)))
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    return tmp_path / "solver.prototxt"


def quiet(_):
    pass


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def weights(path):
    return read_caffemodel(path)


def same_weights(a, b):
    return a.keys() == b.keys() and all(np.array_equal(x, y) for k in a for x, y in zip(a[k], b[k]))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_root):
    """One uninterrupted run, for the tests that compare against it."""
    d = tmp_path_factory.mktemp("ref")
    (d / "net.prototxt").write_text(NET.replace("{root}", str(data_root)))
    (d / "solver.prototxt").write_text(SOLVER)
    summary = run(d / "solver.prototxt", d / "run", onnx=False, log=quiet)
    return d / "run", summary


def test_run_folder_is_the_record(reference):
    out, summary = reference
    for name in ("solver.prototxt", "train.prototxt", "val.prototxt", "run.json", "log.jsonl", "summary.json",
                 "final.pt", "final.caffemodel"):
        assert (out / name).is_file(), name
    info = json.loads((out / "run.json").read_text())
    assert {"git", "versions", "seed", "device", "argv"} <= set(info) and info["seed"] == 3
    recs = records(out)
    train = [r for r in recs if r["type"] == "train"]
    tests = [r for r in recs if r["type"] == "test"]
    assert [r["iter"] for r in train] == [0, 2, 4, 6, 8, 10, 12]  # the last: Solve's display-only pass
    assert all({"loss", "lr"} <= set(r) for r in train)
    assert [r["lr"] for r in train[:-1]] == pytest.approx([0.01] * 3 + [0.001] * 3, rel=1e-6)
    assert [r["iter"] for r in tests] == [0, 4, 8, 12]
    assert all(set(r) >= {"top1", "top5", "loss"} and 0 <= r["top1"] <= r["top5"] <= 1 for r in tests)
    # the paper's metric: mean of the 10 best test top-1 values (here all 4 there are)
    assert summary["top1_best10_mean"] == pytest.approx(np.mean([r["top1"] for r in tests]))
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["eval"]["images"] == 100  # the single pass counts each validation image once
    snaps = sorted(p.name for p in (out / "snapshots").iterdir())
    # Retention(): the newest two resume states (8, 12) with their weights; snapshot 4 is gone (stepsize 6:
    # no snapshot fell just before a rate drop)
    assert [s for s in snaps if s.endswith(".caffemodel")] == [f"snapshot_iter_{i}.caffemodel" for i in (12, 8)]
    assert [s for s in snaps if s.endswith(".state.pt")] == [f"snapshot_iter_{i}.state.pt" for i in (12, 8)]
    final = weights(out / "final.caffemodel")
    assert same_weights(final, weights(out / "snapshots" / "snapshot_iter_12.caffemodel"))
    pt = torch.load(out / "final.pt", weights_only=True)
    assert all(np.array_equal(pt["weights"][k][j].numpy(), final[k][j]) for k in pt["weights"]
               for j in range(len(final[k])))
    # a finished folder is not trained again
    assert run(out / "solver.prototxt", out, onnx=False, log=quiet) == summary


def test_killed_run_resumes_exactly(tmp_path, solver_file, reference):
    """A run killed at any point (here: an exception at iteration 7, after the snapshot at 4) restarts from
    its newest snapshot and ends bit-identical to the uninterrupted run: weights, RNG, data cursors, log."""
    import repro.solver

    out = tmp_path / "run"
    original = repro.solver.Solver.apply_update

    def crash(self):
        if self.iter == 7:
            raise RuntimeError("killed")
        return original(self)

    repro.solver.Solver.apply_update = crash
    try:
        with pytest.raises(RuntimeError, match="killed"):
            run(solver_file, out, onnx=False, log=quiet)
    finally:
        repro.solver.Solver.apply_update = original
    assert not (out / "final.caffemodel").exists()
    assert max(r["iter"] for r in records(out)) == 6  # logged up to the kill
    run(solver_file, out, onnx=False, log=quiet)
    ref_out, _ = reference
    assert same_weights(weights(out / "final.caffemodel"), weights(ref_out / "final.caffemodel"))
    strip = lambda rs: [{k: v for k, v in r.items() if k != "time"} for r in rs]
    assert strip(records(out)) == strip(records(ref_out))
    assert len(json.loads((out / "run.json").read_text())["resumes"]) == 1


def test_sigint_stops_with_a_snapshot_and_resumes(tmp_path, solver_file, reference):
    import repro.solver

    out = tmp_path / "run"
    original = repro.solver.Solver.apply_update
    before = signal.getsignal(signal.SIGINT)  # Python's default_int_handler; SIG_IGN under `nohup ... &`

    def interrupt(self):
        if self.iter == 5:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: finish this iteration, snapshot, stop
        return original(self)

    repro.solver.Solver.apply_update = interrupt
    try:
        result = run(solver_file, out, onnx=False, log=quiet)
    finally:
        repro.solver.Solver.apply_update = original
    assert result == {"status": "stopped", "iter": 6}
    assert (out / "snapshots" / "snapshot_iter_6.state.pt").is_file()
    assert signal.getsignal(signal.SIGINT) is before  # handlers put back
    run(solver_file, out, onnx=False, log=quiet)
    assert same_weights(weights(out / "final.caffemodel"), weights(reference[0] / "final.caffemodel"))


def test_folder_of_another_run_is_refused(tmp_path, solver_file):
    out = tmp_path / "run"
    run(solver_file, out, max_iter=4, onnx=False, log=quiet)  # leaves a snapshot at 4 ... and finishes
    (out / "final.caffemodel").unlink()
    with pytest.raises(RunError, match="different run"):
        run(solver_file, out, max_iter=8, onnx=False, log=quiet)


def test_testing_wraps_around_like_caffe(tmp_path, solver_file, data_root):
    """100 validation images, batch 30, test_iter 4: each test reads 120 records, wrapping like Caffe's
    DataLayer cursor, and the next test continues where the last one stopped."""
    import repro
    from repro.data.layer import DataLayerFeeder

    s = repro.Solver(solver_file)
    first, second = s.test(), s.test()
    net = s.test_nets[0]
    feeder = DataLayerFeeder(net.layer("data").param, "TEST", None, seed=0)
    batches = [feeder.next_batch() for _ in range(8)]  # the records of both tests, in reading order
    feeder.close()
    labels = torch.cat([b["label"] for b in batches[:4]])
    assert torch.equal(labels[100:], labels[:20])  # the wrap itself
    with torch.no_grad():
        acc = [float(net(**b)["accuracy"]) for b in batches]
    assert first["top1"] == pytest.approx(np.mean(acc[:4]), abs=1e-6)
    assert second["top1"] == pytest.approx(np.mean(acc[4:]), abs=1e-6)
    single = s.evaluate()
    assert single["images"] == 100


def test_paper_metric():
    assert paper_metric([0.1, 0.5, 0.3], k=2) == pytest.approx(0.4)
    assert paper_metric(list(range(20))) == pytest.approx(np.mean(range(10, 20)))
    assert paper_metric([]) is None


def test_final_onnx_hook(tmp_path, solver_file):
    """repro.onnx.io.export_onnx is called at the end of a run: final.onnx beside the weights."""
    pytest.importorskip("onnxruntime")
    out = tmp_path / "run"
    summary = run(solver_file, out, max_iter=2, onnx=True, log=quiet)
    assert summary["onnx"]["written"], summary["onnx"]
    assert (out / "final.onnx").is_file()
