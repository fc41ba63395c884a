"""tools/caffe.py: Caffe's command line (train / test / time / device_query, gflags-style flags) and the
Caffe-format log (caffe.log) our runs write, read with the rules of Caffe's tools/extra/parse_log.py."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from parse_log_rules import parse_log

from repro.caffe_flags import FlagError, parse
from repro.caffelog import parse_log_files
from repro.caffemodel import read_caffemodel

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "caffe.py"

SOLVER = """net: "prototxt/small/train_val.prototxt"
test_iter: 1
test_interval: 2
base_lr: 0.01
lr_policy: "step"
gamma: 0.1
stepsize: 3
display: 1
max_iter: {max_iter}
momentum: 0.9
weight_decay: 0.0005
snapshot: {snapshot}
snapshot_prefix: "small"
random_seed: 7
solver_mode: CPU
"""


def caffe(cwd, *args, check=True):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, str(TOOL), *map(str, args)], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"caffe.py {' '.join(map(str, args))} exited {r.returncode}:\n{r.stderr[-3000:]}")
    return r


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    """A folder laid out as caffe.bin expects prototxt/small to run: its data under data/builtin, the net
    at prototxt/small/train_val.prototxt, batches cut to 8 for speed."""
    from repro.data.builtin import ensure_builtin
    from repro.study.data import ensure_builtin_path

    d = tmp_path_factory.mktemp("small")
    root = ensure_builtin(d / "data" / "builtin", train_per_class=2, val_per_class=1)
    for name in ("half0A_train", "half0A_val", "half0A_mean.binaryproto"):
        ensure_builtin_path(root / name)
    (d / "prototxt" / "small").mkdir(parents=True)
    net = (REPO / "prototxt" / "small" / "train_val.prototxt").read_text()
    net = re.sub(r"batch_size: \d+", "batch_size: 8", net)
    (d / "prototxt" / "small" / "train_val.prototxt").write_text(net)
    return d


def fresh(small_dir, tmp_path, max_iter, snapshot):
    for p in small_dir.iterdir():
        (tmp_path / p.name).symlink_to(p)
    (tmp_path / "solver.prototxt").write_text(SOLVER.format(max_iter=max_iter, snapshot=snapshot))
    return tmp_path


def same_weights(a, b):
    return a.keys() == b.keys() and all(np.array_equal(x, y) for k in a for x, y in zip(a[k], b[k]))


# ---------------------------------------------------------------------------------------------- flags


def test_flags_parse_in_both_gflags_styles():
    a = parse(["train", "-solver", "s.prototxt", "-weights", "a.caffemodel,b.caffemodel", "-gpu", "0"])
    b = parse(["--solver=s.prototxt", "train", "--weights", "a.caffemodel,b.caffemodel", "-gpu=0"])
    assert a == b
    assert (a.command, a.solver, a.weights, a.gpu) == ("train", "s.prototxt", "a.caffemodel,b.caffemodel", "0")
    t = parse(["time", "-model=m", "--iterations", "7", "-phase", "TEST"])
    assert (t.model, t.iterations, t.phase, t.sigint_effect, t.sighup_effect) == ("m", 7, "TEST", "stop",
                                                                                  "snapshot")


@pytest.mark.parametrize("argv, words", [
    (["trian", "-solver", "s"], "Unknown action: trian"),
    (["train", "-solverr", "s"], "unknown command line flag 'solverr'"),
    (["train", "-solver"], "missing its argument"),
    (["test", "-iterations", "many"], "not an integer"),
    (["train", "-sigint_effect", "explode"], 'Invalid signal effect "explode"'),
])
def test_bad_command_line_is_one_clear_line(argv, words):
    with pytest.raises(FlagError, match=re.escape(words)):
        parse(argv)


def test_tool_reports_a_bad_verb_in_one_line_with_exit_2(tmp_path):
    r = caffe(tmp_path, "trian", "-solver", "x", check=False)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Unknown action: trian" in r.stderr
    r = caffe(tmp_path, "train", "-solver", "missing.prototxt", check=False)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "missing.prototxt" in r.stderr


# ---------------------------------------------------------------------------------------------- train


def test_train_names_snapshots_as_caffe_logs_parse_and_resume_is_exact(small_dir, tmp_path):
    # One uninterrupted run of 4 iterations ...
    (tmp_path / "full").mkdir()
    full = fresh(small_dir, tmp_path / "full", 4, 2)
    r = caffe(full, "train", "-solver", "solver.prototxt")
    for i in (2, 4):
        for ext in (".caffemodel", ".solverstate", ".state.pt"):
            assert (full / f"small_iter_{i}{ext}").is_file(), f"small_iter_{i}{ext}"
    log = full / "train.log"
    log.write_text(r.stderr)
    train, test = parse_log(log)
    assert [row["NumIters"] for row in train] == [0, 1, 2, 3]
    assert all(set(row) == {"NumIters", "Seconds", "LearningRate", "loss"} for row in train)
    # parse_log gives a row the last rate printed before its outputs: Caffe prints iteration N's rate after
    # N's outputs, so row N carries N-1's (row 0 is copied from row 1); the step at 3 shows in the lr lines
    assert [row["LearningRate"] for row in train] == [0.01, 0.01, 0.01, 0.01]
    assert re.findall(r"\] Iteration (\d+), lr = (\S+)", r.stderr) == [
        ("0", "0.01"), ("1", "0.01"), ("2", "0.01"), ("3", "0.001")]
    assert [row["NumIters"] for row in test] == [0, 2, 4]
    assert all(set(row) == {"NumIters", "Seconds", "LearningRate", "accuracy", "accuracy_top5", "loss"}
               for row in test)
    ours = parse_log_files([log])
    assert [p.iter for p in ours.tests] == [0, 2, 4]
    assert [p.top1 for p in ours.tests] == [row["accuracy"] for row in test]
    assert "Solving SmallCaffeNet" in r.stderr and r.stderr.rstrip().endswith("Optimization Done.")

    # ... equals 2 iterations, then -snapshot small_iter_2.solverstate to 4 (our .state.pt beside it).
    part = tmp_path / "part"
    part.mkdir()
    fresh(small_dir, part, 4, 2)
    (part / "solver.prototxt").write_text(SOLVER.format(max_iter=2, snapshot=2))
    caffe(part, "train", "-solver", "solver.prototxt")
    assert not (part / "small_iter_4.caffemodel").exists()
    (part / "solver.prototxt").write_text(SOLVER.format(max_iter=4, snapshot=2))
    r = caffe(part, "train", "-solver", "solver.prototxt", "-snapshot", "small_iter_2.solverstate")
    assert "Resuming from small_iter_2.solverstate" in r.stderr
    assert same_weights(read_caffemodel(part / "small_iter_4.caffemodel"),
                        read_caffemodel(full / "small_iter_4.caffemodel"))


def test_max_iter_0_writes_iter_0_and_weights_fine_tune(small_dir, tmp_path):
    # Caffe's snapshot_after_train: max_iter 0, snapshot 0 writes <prefix>_iter_0.caffemodel (the filled net)
    d = fresh(small_dir, tmp_path, 0, 0)
    caffe(d, "train", "-solver", "solver.prototxt")
    filled = read_caffemodel(d / "small_iter_0.caffemodel")
    # -weights copies a net's layers before training: with a net of other values, iter 0 holds those
    other = {k: [np.full_like(a, 0.01 * (i + 1)) for i, a in enumerate(v)] for k, v in filled.items()}
    from repro.caffemodel import write_caffemodel

    write_caffemodel(d / "other.caffemodel", "SmallCaffeNet", [(k, "", [], [], v) for k, v in other.items()])
    (d / "small_iter_0.caffemodel").unlink()
    r = caffe(d, "train", "-solver", "solver.prototxt", "--weights=other.caffemodel")
    assert "Finetuning from other.caffemodel" in r.stderr
    assert same_weights(read_caffemodel(d / "small_iter_0.caffemodel"), other)
    assert not same_weights(other, filled)
    r = caffe(d, "train", "-solver", "solver.prototxt", "-weights", "other.caffemodel", "-snapshot",
              "small_iter_0.solverstate", check=False)
    assert r.returncode == 2 and "not both" in r.stderr


# ---------------------------------------------------------------------------------------------- test / time


def test_test_prints_caffes_batch_and_mean_lines(small_dir, tmp_path):
    d = fresh(small_dir, tmp_path, 0, 0)
    caffe(d, "train", "-solver", "solver.prototxt")
    r = caffe(d, "test", "-model", "prototxt/small/train_val.prototxt", "-weights", "small_iter_0.caffemodel",
              "-iterations", "3")
    batch = {}
    for _, name, v in re.findall(r"\] Batch (\d+), (\w+) = (\S+)", r.stderr):
        batch.setdefault(name, []).append(float(v))
    assert set(batch) == {"accuracy", "accuracy_top5", "loss"} and all(len(v) == 3 for v in batch.values())
    acc = float(re.search(r"\] accuracy = (\S+)", r.stderr).group(1))
    loss = re.search(r"\] loss = (\S+) \(\* 1 = (\S+) loss\)", r.stderr)
    # the means of the printed per-batch values (6 significant digits each)
    assert acc == pytest.approx(np.mean(batch["accuracy"]), rel=1e-5)
    assert float(loss.group(1)) == pytest.approx(np.mean(batch["loss"]), rel=1e-5)
    assert float(re.search(r"\] Loss: (\S+)", r.stderr).group(1)) == pytest.approx(float(loss.group(1)), rel=1e-5)


def test_time_prints_a_per_layer_table_that_sums_to_its_total(small_dir, tmp_path):
    d = fresh(small_dir, tmp_path, 0, 0)
    r = caffe(d, "time", "-model", "prototxt/small/train_val.prototxt", "-iterations", "2")
    fwd = re.findall(r"\] +(\S+)\tforward: (\S+) ms\.", r.stderr)
    bwd = re.findall(r"\] +(\S+)\tbackward: (\S+) ms\.", r.stderr)
    from repro.net import Net

    names = Net(d / "prototxt/small/train_val.prototxt", phase="TRAIN").layer_names
    assert [n for n, _ in fwd] == names and [n for n, _ in bwd] == names
    total_f = float(re.search(r"Average Forward pass: (\S+) ms", r.stderr).group(1))
    total_b = float(re.search(r"Average Backward pass: (\S+) ms", r.stderr).group(1))
    # each printed value has 6 significant digits: the sum agrees to that rounding
    assert sum(float(v) for _, v in fwd) == pytest.approx(total_f, rel=1e-4)
    assert sum(float(v) for _, v in bwd) == pytest.approx(total_b, rel=1e-4)
    assert len(re.findall(r"Iteration: \d+ forward-backward time: \S+ ms\.", r.stderr)) == 2
    assert "*** Benchmark ends ***" in r.stderr and total_f > 0 and total_b > 0


def test_device_query_needs_a_device(tmp_path):
    r = caffe(tmp_path, "device_query", check=False)
    assert r.returncode == 2 and "Need a device ID to query" in r.stderr


# ---------------------------------------------------------------------------------------------- run()'s caffe.log


def test_every_run_writes_a_caffe_log_beside_log_jsonl(small_dir, tmp_path):
    import json

    from repro.train import run

    d = fresh(small_dir, tmp_path, 3, 0)
    cwd = os.getcwd()
    os.chdir(d)
    try:
        summary = run("solver.prototxt", d / "run", onnx=False, log=lambda *_: None)
    finally:
        os.chdir(cwd)
    assert summary["status"] == "finished"
    train, test = parse_log(d / "run" / "caffe.log")
    records = [json.loads(x) for x in (d / "run" / "log.jsonl").read_text().splitlines()]
    jtrain = [x for x in records if x["type"] == "train"]
    jtest = [x for x in records if x["type"] == "test"]
    assert [row["NumIters"] for row in train] == [x["iter"] for x in jtrain if x["iter"] < 3]
    assert [row["loss"] for row in train] == pytest.approx([x["loss"] for x in jtrain if x["iter"] < 3],
                                                           rel=1e-5)
    assert [row["NumIters"] for row in test] == [x["iter"] for x in jtest]
    assert [row["accuracy"] for row in test] == pytest.approx([x["top1"] for x in jtest], rel=1e-5)
    ours = parse_log_files([d / "run" / "caffe.log"])
    assert [p.iter for p in ours.tests] == [x["iter"] for x in jtest]


def test_sighup_snapshots_and_sigint_stops_with_a_snapshot(small_dir, tmp_path):
    import signal

    d = fresh(small_dir, tmp_path, 100000, 0)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.Popen([sys.executable, str(TOOL), "train", "-solver", "solver.prototxt"], cwd=d, env=env,
                         stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        sent_hup = False
        for line in p.stderr:
            lines.append(line)
            m = re.search(r"\] Iteration (\d+), lr", line)
            if m and not sent_hup and int(m.group(1)) >= 2:
                p.send_signal(signal.SIGHUP)   # Caffe's default -sighup_effect snapshot: snapshot, go on
                sent_hup = True
            elif sent_hup and "Snapshotting solver state" in line:
                p.send_signal(signal.SIGINT)   # -sigint_effect stop: finish the iteration, snapshot, stop
                break
        rest = p.communicate(timeout=300)[1]
    finally:
        if p.poll() is None:
            p.kill()
    log = "".join(lines) + rest
    assert p.returncode == 3, log[-2000:]
    snaps = sorted(int(m) for m in re.findall(r"small_iter_(\d+)\.caffemodel", log))
    assert len(snaps) == 2 and snaps[0] < snaps[1] < 100000
    assert all((d / f"small_iter_{i}.state.pt").is_file() for i in snaps)
    assert "Optimization stopped early." in log


def test_reader_takes_caffe_1_lines_glog_years_and_other_threads(tmp_path):
    # Caffe 1.0's wording under glog 0.7 (dated prefix), with the prefetch thread's line inside a test block
    log = tmp_path / "train.log"
    log.write_text(
        "I20261206 05:10:18.546095 21880 solver.cpp:289] Solving Net\n"
        "I20261206 05:10:18.546952 21880 solver.cpp:347] Iteration 10, Testing net (#0)\n"
        "I20261206 05:10:18.869753 21882 data_layer.cpp:73] Restarting data prefetching from start.\n"
        "I20261206 05:10:18.898761 21880 solver.cpp:414]     Test net output #0: accuracy = 0.15\n"
        "I20261206 05:10:18.898870 21880 solver.cpp:414]     Test net output #1: loss = 3.00744 (* 1 = 3.00744 loss)\n"
        "I20261206 05:10:18.913346 21880 solver.cpp:239] Iteration 10 (35.7 iter/s, 0.028s/1 iters), loss = 3.3\n"
        "I20261206 05:10:18.913488 21880 sgd_solver.cpp:112] Iteration 10, lr = 0.002\n")
    got = parse_log_files([log])
    assert [(p.iter, p.top1, p.loss) for p in got.tests] == [(10, 0.15, 3.00744)]
    assert got.train_loss == {10: 3.3} and got.lr == {10: 0.002}
