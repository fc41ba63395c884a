"""The grid scheduler: selection, dependency order, one net per device, skip finished, resume unfinished, and
a failed base net stopping only the nets that copy it."""
import json
from pathlib import Path

import pytest
from conftest import load_tool

from repro.checkpoint import save_state
from repro.errors import ReproError
from repro.study.cells import builtin_study, run_cell
from repro.study.grid import all_cells, cell_from_name
from repro.study.scheduler import format_plan, mini_cells, plan, run_plan, select_cells

_tool = load_tool


def tiny_study(root: Path):
    from repro.data.builtin import ensure_builtin

    ensure_builtin(root / "data" / "builtin", train_per_class=8, val_per_class=5)
    return builtin_study(runs=root / "runs", root=root, max_iter=3, test_iter=1)


def names(cells):
    return [c.name for c in cells]


def test_selection_filters_combine():
    assert len(select_cells()) == len(all_cells()) == 170
    assert names(select_cells(kinds=["base"], splits=["0", "natman"])) == ["half0A", "half0B", "halfnatmanA",
                                                                           "halfnatmanB"]
    sel = select_cells(kinds=["transfer"], splits=["1"], ns=[3], conditions=["AnB+"])
    assert names(sel) == ["transfer-ft1A1B_1_3", "transfer-ft1B1A_1_3"]
    assert names(select_cells(names=["nolearn_1_[12]", "reduced-13*"])) == ["reduced-1300", "nolearn_1_1",
                                                                           "nolearn_1_2"]
    assert select_cells(kinds=["base"], ns=[2]) == []


def test_mini_grid_is_figure_2_for_one_split():
    cells = mini_cells("0")
    assert len(cells) == 30 and len(set(cells)) == 30
    by = {}
    for c in cells:
        by.setdefault(c.condition, []).append(c.n)
    assert by == {"base": [0, 0], **{k: list(range(1, 8)) for k in ("BnB", "AnB", "BnB+", "AnB+")}}
    assert set(cells) <= set(all_cells())


def test_plan_orders_bases_first_and_adds_missing_ones(tmp_path):
    st = builtin_study(runs=tmp_path)
    jobs = plan(st, [cell_from_name(n) for n in ("transfer1A1B_1_3", "transfer-ft1A1B_1_7", "half0B")])
    assert [(j.name, j.deps, j.state, j.added) for j in jobs] == [
        ("half1A", (), "new", True), ("half0B", (), "new", False),
        ("transfer-ft1A1B_1_7", ("half1A",), "new", False),   # longest first: fine-tuned before frozen
        ("transfer1A1B_1_3", ("half1A",), "new", False)]
    text = format_plan(jobs, ["cpu", "cpu"])
    assert "transfer1A1B_1_3           AnB       after half1A  [data half1B, mean of half1A]" in text
    assert text.endswith("4 nets: 4 to run (0 resumed), 0 finished; devices: cpu, cpu")
    # A finished base is not added again, and the transfer does not wait for it.
    (tmp_path / "half1A").mkdir()
    (tmp_path / "half1A" / "final.caffemodel").write_text("x")
    (tmp_path / "half1A" / "summary.json").write_text('{"status": "finished"}')
    jobs = plan(st, [cell_from_name("transfer1A1B_1_3")])
    assert [(j.name, j.deps) for j in jobs] == [("transfer1A1B_1_3", ())]


def test_dry_run_prints_the_plan(tmp_path, capsys):
    _tool("run_grid").main(["--mini", "--dry-run", "--runs", str(tmp_path / "runs"), "--data", str(tmp_path),
                            "--devices", "cpu", "cpu"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["new", "half0A", "base", "[data", "half0A]"]
    assert out[30] == "30 nets: 30 to run (0 resumed), 0 finished; devices: cpu, cpu"
    # then the data the selection reads: half 0A and 0B's stores and means, made on first use
    assert out[31] == "data: 6 paths, 0 present, 6 made on first use" and len(out) == 38
    assert out[32].split()[:2] == ["to", "make"] and out[32].endswith("data/mini/half0A_train")
    with pytest.raises(ReproError, match="no net matches"):
        _tool("run_grid").main(["--kind", "base", "--n", "3", "--dry-run", "--runs", str(tmp_path)])


def _run(st, cells, devices=("cpu", "cpu")):
    """run_plan, with the number of nets running at each start/finish recorded."""
    lines, running, peak = [], [0], [0]

    def log(msg):
        lines.append(msg)
        if msg.startswith("start"):
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        elif msg.startswith(("done", "FAILED")):
            running[0] -= 1
    status = run_plan(st, plan(st, cells), list(devices), threads=1, log=log)
    return status, lines, peak[0]


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    st = tiny_study(tmp_path_factory.mktemp("grid"))
    cells = [cell_from_name(n) for n in ("transfer0A0B_1_6", "half0B")]
    return st, cells, _run(st, cells)


def test_grid_runs_in_order_one_net_per_device(ran):
    st, cells, (status, lines, peak) = ran
    assert status == {"half0A": "done", "half0B": "done", "transfer0A0B_1_6": "done"}
    assert peak == 2, "two devices: two nets at once, never more"
    starts = [line.split()[1] for line in lines if line.startswith("start")]
    dones = [line.split()[1] for line in lines if line.startswith("done")]
    assert set(starts[:2]) == {"half0A", "half0B"}                    # the bases first, side by side
    assert dones.index("half0A") < starts.index("transfer0A0B_1_6")   # a transfer starts once its base is done
    rec = json.loads((st.run_dir(cell_from_name("transfer0A0B_1_6")) / "run.json").read_text())["record"]
    assert rec["base_weights"] == str(st.run_dir(cell_from_name("half0A")) / "final.caffemodel")
    # Run again: everything is finished and skipped.
    assert all(j.state == "done" for j in plan(st, cells))
    status, lines, peak = _run(st, cells)
    assert set(status.values()) == {"skipped (finished)"} and peak == 0


def test_unfinished_nets_resume_and_failed_bases_stop_their_transfers(ran, monkeypatch):
    import repro.solver

    st, _, _ = ran
    # An interrupted run: stopped (as by Ctrl-C) after its second iteration, with a snapshot there.
    update = repro.solver.Solver.apply_update

    def stop_after_two(self):
        rate = update(self)
        if self.iter == 1:
            self.request_stop()
        return rate
    monkeypatch.setattr(repro.solver.Solver, "apply_update", stop_after_two)
    cell = cell_from_name("transfer0A0B_1_5")
    assert run_cell(st, cell, log=lambda *_: None)["status"] == "stopped"
    monkeypatch.undo()
    d = st.run_dir(cell)
    assert [p.name for p in d.glob("snapshots/*.state.pt")] == ["snapshot_iter_2.state.pt"]
    # A base net whose folder holds another run's snapshot: it fails, and so cannot be copied.
    save_state(st.run_dir(cell_from_name("half1B")) / "snapshots" / "snapshot_iter_1.state.pt", {"iter": 1})
    (st.run_dir(cell_from_name("half1B")) / "solver.prototxt").write_text("# another run\n")
    cells = [cell_from_name(n) for n in ("transfer0A0B_1_5", "transfer1B1A_1_1", "half0A")]
    assert [(j.name, j.state) for j in plan(st, cells)] == [
        ("half1B", "resume"), ("half0A", "done"), ("transfer1B1A_1_1", "new"), ("transfer0A0B_1_5", "resume")]
    status, lines, _ = _run(st, cells)
    assert status["transfer0A0B_1_5"] == "done" and status["half0A"] == "skipped (finished)"
    assert status["half1B"].startswith("failed: RunError") and "different run" in status["half1B"]
    assert status["transfer1B1A_1_1"] == "not run: base net half1B failed"
    run = json.loads((d / "run.json").read_text())
    assert [r["iter"] for r in run["resumes"]] == [2]
    assert max(json.loads(line)["iter"] for line in (d / "log.jsonl").read_text().splitlines()) == 3
