"""The grid on Ray: one task per net, a transfer's task fed its base net's result; on a local CPU Ray with tiny
nets (skipped when Ray, an optional extra, is not installed)."""
import json
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from repro.study.cells import builtin_study  # noqa: E402
from repro.study.grid import cell_from_name  # noqa: E402
from repro.study.ray_grid import run_plan_ray  # noqa: E402
from repro.study.scheduler import plan  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    # Workers start in this working directory (pytest runs from the checkout), so they import repro as we do.
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def foreign_run(run_dir: Path):
    """A run folder holding another run's snapshot (a stale folder): repro.train refuses to resume it."""
    from repro.checkpoint import save_state

    save_state(run_dir / "snapshots" / "snapshot_iter_1.state.pt", {"iter": 1})
    (run_dir / "solver.prototxt").write_text("# another run\n")


def test_grid_on_ray_follows_dependencies(local_ray, tmp_path):
    from repro.data.builtin import ensure_builtin

    ensure_builtin(tmp_path / "data" / "builtin", train_per_class=8, val_per_class=5)
    st = builtin_study(runs=tmp_path / "runs", root=tmp_path, max_iter=2, test_iter=1)
    foreign_run(st.run_dir(cell_from_name("half1A")))   # this base net fails, and so must its transfer
    cells = [cell_from_name(n) for n in ("transfer0A0B_1_2", "transfer1A1B_1_1")]
    lines = []
    status = run_plan_ray(st, plan(st, cells), num_gpus=0, num_cpus=1, log=lines.append)
    assert [line.split()[1] for line in lines[:2]] == ["half0A", "half1A"]   # submitted in dependency order
    assert status["half0A"] == status["transfer0A0B_1_2"] == "done"
    rec = json.loads((st.run_dir(cell_from_name("transfer0A0B_1_2")) / "run.json").read_text())
    assert rec["record"]["base_weights"] == str(st.run_dir(cell_from_name("half0A")) / "final.caffemodel")
    assert rec["device"] == "cpu"
    assert status["half1A"].startswith("failed: RunError") and "different run" in status["half1A"]
    assert status["transfer1A1B_1_1"] == "not run: base net half1A failed"   # Ray passed the base's error on
    # Again: the finished nets are skipped.
    status = run_plan_ray(st, plan(st, cells[:1]), num_gpus=0, num_cpus=1, log=lines.append)
    assert status == {"transfer0A0B_1_2": "skipped (finished)"}
