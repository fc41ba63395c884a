"""The run driver under faults, through the tools as a user runs them: one writer per folder, divergence as a
failure, one identity per folder, damaged snapshots and stale temp files, full disks, signals, exact resume."""
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import replace

import pytest

from repro.study.cells import StudyError, builtin_study, is_finished, realised
from repro.study.grid import cell_from_name
from repro.study.results import read_runs
from repro.study.scheduler import plan

from .driver_common import (
    env,
    make_data,
    no_traceback,
    solver,
    start,
    strict_json,
    tool,
    train_iters,
    wait_for,
)

QUICK = ("--net", "small", "--test-iter", "1")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("driver"))


def base(root, runs, *args, timeout=180):
    return tool("train_base", "--data", root, "--runs", runs, *QUICK, *args, cwd=root, timeout=timeout)


def one_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, text
    return lines[0]


def test_second_writer_fails_at_once_naming_the_owner(root, tmp_path):
    folder = tmp_path / "runs" / "half0A"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom repro.runfolder import RunFolder\n"
                               "RunFolder(sys.argv[1])._acquire(); print('owned', flush=True); time.sleep(120)",
                               str(folder)], env=env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "owned"
        t0 = time.time()
        r = base(root, tmp_path / "runs", "--max-iter", 5)
        assert r.returncode == 2 and time.time() - t0 < 60
        line = one_line(r.stderr)
        assert f"process {holder.pid} " in line and str(folder) in line and "one writer" in line
        assert not (folder / "log.jsonl").exists() and not (folder / "run.json").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_diverged_run_is_a_failure_everywhere(root, tmp_path):
    runs = tmp_path / "runs"
    s = solver(tmp_path / "nan_solver.prototxt", base_lr=1e6, max_iter=20, snapshot=1, display=1)
    r = base(root, runs, "--solver", s)
    assert r.returncode == 4, r.stdout + r.stderr
    run_dir = runs / "half0A"
    summary = strict_json(run_dir / "summary.json")          # strict JSON: no bare NaN
    assert summary["status"] == "diverged" and isinstance(summary["iter"], int)
    last = summary["last_good_snapshot"]
    # the last snapshot whose weights are finite: taken before the iteration whose loss was not
    assert os.path.isfile(last) and int(last.split("_iter_")[1].split(".")[0]) <= summary["iter"]
    final_line = r.stdout.strip().splitlines()[-1]
    assert final_line.startswith(f"half0A: diverged in {run_dir} at iteration {summary['iter']}")
    assert f"last good snapshot: {last}" in final_line
    strict_json(run_dir / "run.json")
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=pytest.fail)
    assert not (run_dir / "final.caffemodel").exists()
    # Nothing downstream takes it as finished: the grid, the figures, a transfer, a rerun.
    st = replace(builtin_study(runs=runs, root=root), solver=s)
    assert not is_finished(st, cell_from_name("half0A"))
    assert [j.state for j in plan(st, [cell_from_name("half0A")])] != ["done"]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert read_runs([runs]) == []
    assert any("diverged" in str(x.message) for x in w)
    t = tool("transfer", "--from", "A", "--to", "B", "--n", "1", "--data", root, "--runs", runs, "--solver", s,
             *QUICK, cwd=root)
    assert t.returncode == 2 and "diverged" in one_line(t.stderr)
    again = base(root, runs, "--solver", s)
    assert again.returncode == 4 and "diverged" in again.stdout


def test_a_finished_folder_refuses_other_settings_unless_forced(root, tmp_path):
    runs = tmp_path / "runs"
    assert base(root, runs, "--max-iter", 20).returncode == 0
    r = base(root, runs, "--max-iter", 40)
    assert r.returncode == 2
    line = one_line(r.stderr)
    assert "holds a different run (solver.prototxt: " in line and "--force" in line
    assert strict_json(runs / "half0A" / "summary.json")["iter"] == 20      # nothing touched
    f = base(root, runs, "--max-iter", 40, "--force")
    assert f.returncode == 0, f.stderr
    assert strict_json(runs / "half0A" / "summary.json")["iter"] == 40
    aside = [p for p in runs.iterdir() if p.name.startswith("half0A.replaced-")]
    assert len(aside) == 1 and strict_json(aside[0] / "summary.json")["iter"] == 20


def test_short_schedule_snapshots_sparsely(root, tmp_path):
    # A solver that snapshots every 10 of 600 iterations: scaled to 20 without a floor that is every iteration.
    s = solver(tmp_path / "s.prototxt", snapshot=10)
    r = base(root, tmp_path / "runs", "--solver", s, "--max-iter", 20, "--keep")
    assert r.returncode == 0, r.stderr
    run_dir = tmp_path / "runs" / "half0A"
    assert "snapshot: 20" in (run_dir / "solver.prototxt").read_text()
    assert sorted(p.name for p in (run_dir / "snapshots").iterdir()) == [
        "snapshot_iter_20.caffemodel", "snapshot_iter_20.solverstate", "snapshot_iter_20.state.pt"]


def test_damaged_snapshots_are_named_and_stale_temps_cleaned(root, tmp_path):
    runs = tmp_path / "runs"
    s = solver(tmp_path / "s.prototxt", max_iter=10, snapshot=5)
    assert base(root, runs, "--solver", s, "--keep").returncode == 0
    run_dir = runs / "half0A"
    for name in ("final.caffemodel", "final.pt", "final.onnx", "summary.json"):   # as if killed at the end
        (run_dir / name).unlink(missing_ok=True)
    stale = [run_dir / ".summary.json.abcd1234.tmp", run_dir / "snapshots" / ".snapshot_iter_9.state.pt.x1y2z3w4.tmp"]
    for p in stale:
        p.write_bytes(b"half a file")
    (run_dir / "snapshots" / "snapshot_iter_10.state.pt").write_bytes(b"not a snapshot")
    r = base(root, runs, "--solver", s, "--keep")
    assert r.returncode == 0, r.stderr
    assert "skipping a damaged snapshot" in r.stdout and "snapshot_iter_10.state.pt" in r.stdout
    assert "resuming from snapshot_iter_5.state.pt" in r.stdout
    assert not any(p.exists() for p in stale)
    # Every snapshot damaged: an error naming them, not a silent restart from iteration 0.
    for name in ("final.caffemodel", "final.pt", "final.onnx", "summary.json"):
        (run_dir / name).unlink(missing_ok=True)
    for p in (run_dir / "snapshots").glob("*.state.pt"):
        p.write_bytes(b"damaged")
    log_before = (run_dir / "log.jsonl").read_text()
    r = base(root, runs, "--solver", s, "--keep")
    assert r.returncode == 2
    line = one_line(r.stderr)
    assert "every snapshot" in line and "snapshot_iter_5.state.pt" in line and "snapshot_iter_10.state.pt" in line
    assert (run_dir / "log.jsonl").read_text() == log_before


def test_disk_full_while_snapshotting_is_one_line_naming_the_file(root, tmp_path):
    code = ("import runpy, sys, torch\nreal = torch.save\n"
            "def save(obj, f, *a, **k):\n"
            "    if 'state.pt' in str(f):\n"
            "        raise RuntimeError('[enforce fail at inline_container.cc:626] . unexpected pos 1 vs 2: "
            "PytorchStreamWriter failed writing file data/3: file write failed')\n"
            "    return real(obj, f, *a, **k)\n"
            "torch.save = save\nsys.argv = sys.argv[1:]\nrunpy.run_path(sys.argv[0], run_name='__main__')\n")
    from .driver_common import tool_cmd

    r = subprocess.run([sys.executable, "-c", code, *tool_cmd("train_base", "--data", root, "--runs",
                        tmp_path / "runs", *QUICK, "--max-iter", 20)[1:]], cwd=root, env=env(),
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 2, r.stderr
    line = one_line(r.stderr)
    assert "could not write" in line and "snapshot_iter_20.state.pt" in line and "MiB free" in line
    assert not list((tmp_path / "runs" / "half0A" / "snapshots").glob("*.tmp"))


def test_sigint_while_starting_is_one_line(root, tmp_path):
    p = start("train_base", "--data", root, "--runs", tmp_path / "runs", *QUICK, "--max-iter", 20, cwd=root)
    time.sleep(0.4)   # importing torch
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert no_traceback(out, err), out + err
    assert p.returncode in (130, 3)
    if p.returncode == 130:
        assert one_line(err) == "train_base: interrupted while starting"


def test_batch_keeps_the_effective_batch(root, tmp_path):
    r = base(root, tmp_path / "runs", "--max-iter", 4, "--batch", 16)
    assert r.returncode == 0, r.stderr
    run_dir = tmp_path / "runs" / "half0A"
    assert "iter_size: 4" in (run_dir / "solver.prototxt").read_text()
    assert "batch_size: 16" in (run_dir / "train.prototxt").read_text()
    st = builtin_study(runs=tmp_path, root=root)
    train, _, s = realised(replace(st, batch=16, effective_batch=128), cell_from_name("half0A"))
    assert s.iter_size == 8
    with pytest.raises(StudyError, match="not a multiple of --batch 48"):
        realised(replace(st, batch=48), cell_from_name("half0A"))


# ---- stopping, killing and resuming: identical to an uninterrupted run --------------------------------------

LONG = {"max_iter": 160, "snapshot": 40, "display": 1, "average_loss": 10, "test_interval": 80}


@pytest.fixture(scope="module")
def reference(root, tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    s = solver(d / "long.prototxt", **LONG)
    r = base(root, d / "runs", "--solver", s)
    assert r.returncode == 0, r.stderr
    return s, d / "runs" / "half0A"


def _interrupted(root, tmp_path, s, sig, after):
    runs = tmp_path / "runs"
    p = start("train_base", "--data", root, "--runs", runs, *QUICK, "--solver", s, cwd=root)
    run_dir = runs / "half0A"
    wait_for(lambda: after(run_dir), what="the run to get going")
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    return p.returncode, out, err, run_dir


def test_stopped_run_exits_3_and_resumes_identically(root, tmp_path, reference):
    s, ref = reference
    rc, out, err, run_dir = _interrupted(root, tmp_path, s, signal.SIGINT,
                                         lambda d: max(train_iters(d), default=0) >= 45)
    assert rc == 3 and no_traceback(out, err), out + err
    assert "stopped" in out.strip().splitlines()[-1]
    assert not (run_dir / "final.caffemodel").exists()
    r = base(root, tmp_path / "runs", "--solver", s)
    assert r.returncode == 0 and "resuming from" in r.stdout
    assert (run_dir / "final.caffemodel").read_bytes() == (ref / "final.caffemodel").read_bytes()
    # The smoothing window (average_loss 10) was saved with the snapshot: the same losses after the resume.
    assert train_iters(run_dir) == train_iters(ref)


def test_sigkill_then_rerun_gives_identical_weights(root, tmp_path, reference):
    s, ref = reference
    rc, out, err, run_dir = _interrupted(
        root, tmp_path, s, signal.SIGKILL,
        lambda d: (d / "snapshots" / "snapshot_iter_40.state.pt").is_file() and max(train_iters(d)) >= 50)
    assert rc == -signal.SIGKILL
    r = base(root, tmp_path / "runs", "--solver", s)
    assert r.returncode == 0 and "resuming from snapshot_iter_40.state.pt" in r.stdout
    assert (run_dir / "final.caffemodel").read_bytes() == (ref / "final.caffemodel").read_bytes()
    assert train_iters(run_dir) == train_iters(ref)


def test_transfer_refuses_a_base_run_of_another_schedule(root, tmp_path):
    runs = tmp_path / "runs"
    assert base(root, runs, "--max-iter", 20).returncode == 0          # a smoke test's base net
    args = ("--from", "A", "--to", "B", "--n", "2", "--data", root, "--runs", runs, *QUICK, "--max-iter", 30)
    r = tool("transfer", *args, cwd=root)
    assert r.returncode == 2
    line = one_line(r.stderr)
    assert "another schedule" in line and "max_iter 20 there, 30 here" in line and "--allow-other-base" in line
    assert not (runs / "transfer0A0B_1_2").exists()
    ok = tool("transfer", *args, "--allow-other-base", cwd=root)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().splitlines()[-1].startswith(f"transfer0A0B_1_2: finished in {runs / 'transfer0A0B_1_2'}; "
                                                         f"paper's metric")


def test_snapshot_floor_of_a_scaled_caffenet_schedule():
    from repro.prototxt import read_solver
    from repro.study.cells import CAFFENET_SOLVER, SNAPSHOT_FLOOR, scale_solver

    paper = read_solver(CAFFENET_SOLVER)          # snapshot 10000 of max_iter 450000
    assert (paper.snapshot, paper.max_iter) == (10000, 450000)
    assert scale_solver(paper, 20).snapshot == 20                 # once, at the end (it was every iteration)
    assert scale_solver(paper, 9000).snapshot == SNAPSHOT_FLOOR == 1000
    assert scale_solver(paper, 90000).snapshot == 2000             # above the floor: scaled as before
