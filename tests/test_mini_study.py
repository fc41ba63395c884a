"""The miniature as a user meets it: the study flags' default is prototxt/mini on the hierarchical built-in data,
its datasets are made from that data, and tools/mini_study.py runs Figure 2's grid end to end into a report."""
import argparse
import json
import re

import numpy as np
import pytest
from conftest import load_tool

from repro.data import hierarchical as h
from repro.data.builtin import ensure_builtin
from repro.study.cells import MINI_NET, SMALL_NET
from repro.study.data import ensure_builtin_path
from repro.study.flags import add_study_flags, study_from_args


def _study(*argv):
    p = argparse.ArgumentParser()
    add_study_flags(p)
    return study_from_args(p.parse_args(list(argv)))


def test_the_default_study_is_the_miniature():
    st = _study()
    assert (st.net, st.builtin, st.builtin_kind, str(st.runs)) == (MINI_NET, True, "hierarchical", "runs/mini")
    small = _study("--net", "small")
    assert (small.net, small.builtin_kind, str(small.runs)) == (SMALL_NET, "procedural", "runs/builtin")
    assert _study("--study", "builtin").net == SMALL_NET        # the old flag still means the small net


@pytest.fixture(scope="module")
def mini_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini")
    ensure_builtin(root / "data" / "mini", train_per_class=8, val_per_class=5, kind="hierarchical")
    return root


def test_a_half_of_the_miniature_shares_families_but_no_class(mini_root):
    data = mini_root / "data" / "mini"
    from repro.data.store import Store

    a = Store(ensure_builtin_path(data / "half0A_train", "hierarchical"))
    assert len(a) == 8 * h.N_CLASSES // 2 and sorted(set(a.labels.tolist())) == list(range(h.N_CLASSES // 2))
    maps = {half: np.loadtxt(data / "splits" / "train" / f"half0{half}" / "idxmap.txt", dtype=int)[:, 0]
            for half in "AB"}
    assert not set(maps["A"]) & set(maps["B"])
    fam = {half: {h.family_of(c) for c in maps[half]} for half in "AB"}
    assert len(fam["A"] & fam["B"]) >= h.FAMILIES - 2, fam     # mid-level parts are shared across the halves
    assert ensure_builtin_path(data / "half0A_mean.binaryproto", "hierarchical").is_file()


def test_a_procedural_request_on_the_miniature_folder_names_both(mini_root):
    with pytest.raises(FileExistsError, match=r"kind=hierarchical, version \d+ \(asked: .*kind=procedural"):
        ensure_builtin(mini_root / "data" / "mini", train_per_class=8, val_per_class=5)


def test_mini_study_runs_figure_2_into_a_report(mini_root, capsys):
    tool = load_tool("mini_study")
    runs, out = mini_root / "runs", mini_root / "report"
    argv = ["--split", "0", "--max-iter", "2", "--data", str(mini_root), "--runs", str(runs), "--out", str(out)]
    assert tool.main(argv) == 0
    printed = capsys.readouterr().out
    assert "30 trained, 0 already finished, 0 failed" in printed and re.search(r"^AnB\+\s+n=7\s+top-1", printed, re.M)
    study = json.loads((out / "study.json").read_text())
    assert study["nets_in_plan"] == 30 and study["nets_trained_now"] == 30 and study["splits"] == ["0"]
    rows = (out / "figure2.csv").read_text().splitlines()
    assert rows[0].startswith("condition,n,") and len(rows) > 28
    summary = json.loads((runs / "half0A" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["iter"] == 2
    # a rerun finds every net finished and trains none
    assert tool.main(argv) == 0
    assert json.loads((out / "study.json").read_text())["nets_trained_now"] == 0


def test_analyze_gives_cka_one_where_a_transfer_froze_the_base_layers(mini_root):
    """tools/analyze.py from the command line on the mini study's runs: transfer0A0A_1_3 froze half0A's conv1-3
    (lr_mult 0), so their outputs equal the base net's and their CKA is 1 (to float32 forward rounding: 1e-5).
    (Two iterations leave every other layer near the filler values the fixed random_seed gives every net, so
    nothing here can be told apart by CKA: the measured values are in the README.)"""
    runs = mini_root / "runs"
    if not (runs / "transfer0A0A_1_3" / "final.caffemodel").is_file():
        pytest.skip("needs test_mini_study_runs_figure_2_into_a_report's runs (run the module)")
    out = mini_root / "cka"
    data = mini_root / "data" / "mini"
    rc = load_tool("analyze").main(["--base", str(runs / "half0A"), "--nets", str(runs / "transfer0A0A_1_3"),
                                    str(runs / "half0B"), "--val", str(data / "half0B_val"), "--mean",
                                    str(data / "half0A_mean.binaryproto"), "--images", "40", "--out", str(out)])
    assert rc is None or rc == 0
    rows = [line.split(",") for line in (out / "cka.csv").read_text().splitlines()[1:]]
    cka = {(net, layer): float(v) for net, layer, v in rows}
    layers = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    assert sorted(cka) == sorted((n, layer) for n in ("transfer0A0A_1_3", "half0B") for layer in layers)
    for layer in ("conv1", "conv2", "conv3"):
        assert cka[("transfer0A0A_1_3", layer)] == pytest.approx(1.0, abs=1e-5)
    assert all(-1e-6 <= v <= 1 + 1e-6 for v in cka.values())
    assert (out / "cka.png").is_file()


def test_analyze_names_a_run_that_is_not_finished_before_any_work(tmp_path):
    from repro.study.cka import CKAError

    (tmp_path / "half0A").mkdir()
    with pytest.raises(CKAError, match=r"half0A has no final.caffemodel \(not a finished run\)"):
        load_tool("analyze").main(["--base", str(tmp_path / "half0A"), "--nets", str(tmp_path / "x")])
    with pytest.raises(CKAError, match=r"/x does not exist"):
        load_tool("analyze").main(["--base", str(tmp_path / "x"), "--nets", str(tmp_path / "half0A")])
