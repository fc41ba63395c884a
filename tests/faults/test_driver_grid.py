"""run_grid under signals and kills: Ctrl-C stops its workers with a snapshot in one line, its workers die with
it, and a rerun after a kill -9 can never be a second writer of a folder a surviving worker still trains."""
import os
import signal

import pytest

from .driver_common import make_data, no_traceback, solver, start, tool, train_iters, wait_for

LONG = {"max_iter": 200, "snapshot": 50, "display": 1, "test_interval": 100}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("grid"))


def grid_args(root, tmp_path, s):
    return ("--net", "small", "--name", "half0A", "--devices", "cpu", "--threads", "1", "--data", root, "--runs",
            tmp_path / "runs",
            "--solver", s, "--test-iter", "1")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _worker_pid(run_dir) -> int:
    text = (run_dir / ".lock").read_text()
    return int(text.split()[1])


def test_ctrl_c_stops_the_grid_in_one_line_and_a_rerun_resumes(root, tmp_path):
    s = solver(tmp_path / "s.prototxt", **LONG)
    run_dir = tmp_path / "runs" / "half0A"
    p = start("run_grid", *grid_args(root, tmp_path, s), cwd=root, start_new_session=True)
    wait_for(lambda: max(train_iters(run_dir), default=0) >= 5, what="the worker to train")
    os.killpg(p.pid, signal.SIGINT)          # what a terminal's Ctrl-C does: the whole process group
    out, err = p.communicate(timeout=120)
    assert p.returncode == 3, out + err
    assert no_traceback(out, err) and no_traceback((run_dir / "console.log").read_text())
    assert "stopping the running nets" in out and "1 stopped (rerun the same command to resume): half0A" in out
    assert list((run_dir / "snapshots").glob("*.state.pt"))
    r = tool("run_grid", *grid_args(root, tmp_path, s), cwd=root, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resuming from" in (run_dir / "console.log").read_text()


def test_workers_die_with_a_killed_grid_and_a_rerun_is_no_second_writer(root, tmp_path):
    s = solver(tmp_path / "s.prototxt", **LONG)
    run_dir = tmp_path / "runs" / "half0A"
    p = start("run_grid", *grid_args(root, tmp_path, s), cwd=root)
    wait_for(lambda: max(train_iters(run_dir), default=0) >= 5, what="the worker to train")
    worker = _worker_pid(run_dir)
    os.kill(worker, signal.SIGSTOP)          # hold the worker where it is while its parent dies
    try:
        p.kill()
        p.wait(timeout=60)   # (not communicate: the stopped worker still holds the pipes open)
        # The orphan still holds the folder: the rerun's worker is refused at once, naming it.
        r = tool("run_grid", *grid_args(root, tmp_path, s), cwd=root, timeout=120)
        assert r.returncode == 1 and f"process {worker} " in r.stdout and "one writer" in r.stdout
    finally:
        os.kill(worker, signal.SIGCONT)
    # The kernel sent it SIGTERM when run_grid died (PR_SET_PDEATHSIG): it stops after its iteration.
    wait_for(lambda: not _alive(worker), timeout=60, what="the orphaned worker to stop")
    assert "signal SIGTERM: stopping" in (run_dir / "console.log").read_text()
    done = tool("run_grid", *grid_args(root, tmp_path, s), cwd=root, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
