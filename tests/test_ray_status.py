"""A net that ends diverged or stopped on Ray is reported as the local scheduler reports it, so run_grid --ray
exits 4 / 3 as run_grid does (not 1, as for a crashed task). Needs no Ray: the status words and the pickling
that carries the exception back from a task."""
import pickle

from repro.study.ray_grid import NetEnded, task_status
from repro.study.scheduler import exit_status


def test_a_diverged_or_stopped_task_keeps_its_status_through_pickling():
    for status, code in (("diverged", "diverged"), ("stopped", "stopped")):
        err = pickle.loads(pickle.dumps(NetEnded("half0A", status, {"iter": 40})))
        assert err.status == status and "at iteration 40" in str(err)
        word = task_status(err)
        assert word.startswith(f"{status}: half0A: the run ended")
        assert exit_status({"half0A": word, "half0B": "done"}) == code


def test_a_crashed_task_is_a_failure():
    word = task_status(RuntimeError("CUDA error: out of memory"))
    assert word == "failed: RuntimeError: CUDA error: out of memory"
    assert exit_status({"half0A": word}) == "failed"
