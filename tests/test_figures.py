"""Figures 2, 3, the reduced curve and Table 1: the paper's numbers from its logs, our run logs, the tool."""
import csv
import json
import os
import re
import statistics
import subprocess
import sys

import pytest
from conftest import REPO

from repro import resources
from repro.runlog import paper_metric
from repro.study.figures import figure2_table, figure3_table, reduced_table, table1, write_report
from repro.study.results import ResultsError, TestPoint, read_run_log, read_runs, scores

HALF_ULP_4DP = 0.5e-4 + 1e-9   # "equal to 4 decimals": FIGURES.md rounds (0.48505 is printed 0.4850)


def _md_section(text, title):
    """Rows (lists of cells) of the first Markdown table after the line starting with `title`."""
    lines = text[text.index(title):].splitlines()[1:]
    rows, started = [], False
    for line in lines:
        if line.startswith("|"):
            started = True
            rows.append([c.strip() for c in line.strip("|").split("|")])
        elif started:
            break
    return rows[2:]


def _num(cell):
    m = re.match(r"[-+]?\d*\.?\d+", cell)
    return float(m.group()) if m else None


@pytest.fixture(scope="module")
def figures_md(shared):
    return (shared / "reference" / "FIGURES.md").read_text()


@pytest.fixture(scope="module")
def paper_log_scores(shared):
    from repro.caffelog import read_caffe_logs
    return scores(read_caffe_logs(shared / "reference" / "caffe_logs" / "test_lines"))


def test_figure2_from_the_logs_equals_figures_md(figures_md, paper_log_scores):
    ours = {(r["condition"], r["n"]): (r["top1"], r["k"]) for r in figure2_table(paper_log_scores)}
    rows = _md_section(figures_md, "**Figure 2, notebook metric")
    assert len(rows) == 8
    for row in rows:
        n = int(row[0])
        if n == 0:
            assert ours[("base", 0)][0] == pytest.approx(_num(row[1]), abs=HALF_ULP_4DP)
            assert ours[("base", 0)][1] == 8
            continue
        for cond, cell in zip(("BnB", "BnB+", "AnB", "AnB+"), row[2:]):
            k = int(re.search(r"k=(\d+)", cell).group(1))
            assert ours[(cond, n)] == (pytest.approx(_num(cell), abs=HALF_ULP_4DP), k), (cond, n)
    assert len(ours) == 1 + 4 * 7


def test_figure3_and_reduced_from_the_logs_equal_figures_md(figures_md, paper_log_scores):
    f3 = {(r["series"], r["n"]): r for r in figure3_table(paper_log_scores)}
    cols = [("natman_natural", "top1"), ("natman_manmade", "top1"), ("natman_mean", "top1"),
            ("natman_mean", "relative"), ("random_features", "top1"), ("random_features", "relative"),
            ("anb_random", "top1"), ("anb_random", "relative")]
    rows = _md_section(figures_md, "**Figure 3 numbers")
    assert len(rows) == 8
    for row in rows:
        n = int(row[0])
        for (series, col), cell in zip(cols, row[1:]):
            assert f3[(series, n)][col] == pytest.approx(_num(cell), abs=HALF_ULP_4DP), (series, col, n)
    red = {r["per_class"]: r["top1"] for r in reduced_table(paper_log_scores)}
    rows = _md_section(figures_md, "**Reduced-data plot")
    assert sorted(red) == sorted(int(r[0]) for r in rows) and len(rows) == 12
    for row in rows:
        assert red[int(row[0])] == pytest.approx(_num(row[1]), abs=HALF_ULP_4DP)


PUBLISHED_TABLE1 = {"1-7": (1.6, 1.4), "3-7": (1.8, 1.4), "5-7": (2.1, 1.7)}   # paper Table 1, percent


@pytest.mark.parametrize("source", ["logs", "shipped"])
def test_table1_comes_out_as_published(source, request):
    s = request.getfixturevalue("paper_log_scores") if source == "logs" else resources.paper_scores()
    got = {r["layers"]: (round(100 * r["boost_over_base"], 1), round(100 * r["boost_over_bnb_plus"], 1))
           for r in table1(s)}
    assert got == PUBLISHED_TABLE1
    per_n = {r["layers"]: round(100 * r["boost_over_base_per_n"], 2) for r in table1(s)}
    assert per_n == {"1-7": 1.67, "3-7": 1.88, "5-7": 2.06}   # FIGURES.md's bracketed per-n variant


def test_grouping_rules():
    s = [("half0A", 0.60), ("half0B", 0.62), ("transfer0A0B_1_2", 0.50), ("transfer0B0A_1_2", 0.54),
         ("transfer0A0A_1_2", 0.58), ("transfer-ft1A1B_1_2", 0.64), ("transfernatmanAB_1_2", 0.9),
         ("halfnatmanA", 0.7), ("halfnatmanB", 0.5), ("transfernatmanBA_1_2", 0.6), ("netbase", 0.55),
         ("nolearn_1_2", 0.35), ("reduced-0100", 0.2), ("reduced-0100", 0.3)]
    f2 = {(r["condition"], r["n"]): (r["top1"], r["k"]) for r in figure2_table(s)}
    assert f2 == {("base", 0): (pytest.approx(0.61), 2), ("AnB", 2): (pytest.approx(0.52), 2),
                  ("BnB", 2): (0.58, 1), ("AnB+", 2): (0.64, 1)}      # natman never enters Figure 2
    f3 = {(r["series"], r["n"]): r for r in figure3_table(s)}
    assert f3[("natman_natural", 2)]["relative"] == pytest.approx(-0.1)   # BA transfers target natural (A)
    assert f3[("natman_mean", 2)]["relative"] == pytest.approx((0.6 + 0.9) / 2 - 0.6)
    assert f3[("random_features", 2)]["relative"] == pytest.approx(-0.2)
    assert f3[("anb_random", 2)]["relative"] == pytest.approx(0.52 - 0.61)
    assert reduced_table(s) == [{"per_class": 100, "top1": pytest.approx(0.25), "k": 2}]   # repeats both count
    with pytest.warns(UserWarning, match="not cell names: \\['my_experiment'\\]"):
        assert figure2_table([("my_experiment", 0.5)]) == []


# ---- our run logs -----------------------------------------------------------------------------------------------

def _run(tmp_path, name, tops, extra=""):
    d = tmp_path / "runs" / name
    d.mkdir(parents=True)
    lines = [json.dumps({"iter": 0, "type": "header", "cell": name})]
    lines += [json.dumps({"iter": 1000 * (i + 1), "top1": t, "loss": 2.0 - t}) for i, t in enumerate(tops)]
    (d / "log.jsonl").write_text("\n".join(lines) + "\n" + extra)
    return d / "log.jsonl"


def test_run_log_reader(tmp_path):
    assert paper_metric(range(20)) == 14.5 and paper_metric([0.3, 0.1], k=10) == pytest.approx(0.2)
    path = _run(tmp_path, "half0A", [0.1, 0.2, 0.3], extra=json.dumps({"iter": 2000, "top1": 0.25}) + "\n"
                + json.dumps({"iter": 3000, "top1": 0.9, "phase": "train"}) + "\n")
    # a resumed run that re-tests iteration 2000: the later line wins
    assert read_run_log(path) == [TestPoint(1000, 0.1, 1.9), TestPoint(2000, 0.25), TestPoint(3000, 0.3, 1.7)]
    with open(path, "a") as f:
        f.write('{"iter": 4000, "top1": 0.')          # killed mid-write
    with pytest.warns(UserWarning, match="last line has no newline"):
        assert len(read_run_log(path)) == 3
    path.write_text('{"iter": 1000, "top1": 0.5}\n{"iter": 2000, "top1": 1.5}\n')
    with pytest.raises(ResultsError, match=r"log.jsonl:2: 'top1' must be a number in \[0, 1\]"):
        read_run_log(path)
    path.write_text('{"iter": 1000, "top1": 0.5}\nnot json\n')
    with pytest.raises(ResultsError, match=r"log.jsonl:2: not a JSON object"):
        read_run_log(path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResultsError, match="no log.jsonl"):
        read_runs([tmp_path / "empty"])


def test_report_from_our_runs(tmp_path):
    for name, top in [("half0A", 0.60), ("half0B", 0.62), ("transfer0A0B_1_3", 0.55), ("nolearn_1_1", 0.4)]:
        _run(tmp_path, name, [top - 0.1, top, top - 0.05])
    names = [n for n, _ in read_runs([tmp_path / "runs"])]
    assert names == ["half0A", "half0B", "nolearn_1_1", "transfer0A0B_1_3"]
    written = write_report(scores(read_runs([tmp_path / "runs"])), tmp_path / "out", paper=resources.paper_scores())
    assert {p.name for p in written} >= {"figure2.png", "figure2.pdf", "figure3.png", "figure3.pdf", "reduced.png",
                                         "reduced.pdf", "figure2.csv", "figure3.csv", "table1.csv", "reduced.csv",
                                         "results.md"}
    assert all(p.stat().st_size > 0 for p in written)
    with open(tmp_path / "out" / "figure2.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["condition", "n", "top1", "k", "ci95"]
    assert [(r["condition"], r["n"], r["k"]) for r in rows] == [("base", "0", "2"), ("AnB", "3", "1")]
    assert float(rows[0]["top1"]) == pytest.approx(0.56)     # each run: mean of its (3 < 10) test points
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| AnB | 3 | 0.5000 | 0.6189 | 1 |" in md           # ours beside the paper's
    assert (tmp_path / "out" / "figure2.pdf").read_bytes()[:4] == b"%PDF"
    # report files are for sharing: the mode open() would give (umask), not a temp file's private 0600
    umask = os.umask(0)
    os.umask(umask)
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {oct(0o666 & ~umask)}


def test_tool_reproduces_the_paper_from_its_logs(shared, tmp_path):
    logs = shared / "reference" / "caffe_logs" / "test_lines"
    r = subprocess.run([sys.executable, str(REPO / "tools" / "plot_results.py"), "--caffe-logs", str(logs),
                        "--out", str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "148 nets" in r.stdout
    with open(tmp_path / "table1.csv") as f:
        t1 = {row["layers"]: row for row in csv.DictReader(f)}
    assert {k: (round(100 * float(v["boost_over_base"]), 1), round(100 * float(v["boost_over_bnb_plus"]), 1))
            for k, v in t1.items()} == PUBLISHED_TABLE1
    with open(tmp_path / "figure2.csv") as f:
        f2 = {(row["condition"], int(row["n"])): float(row["top1"]) for row in csv.DictReader(f)}
    assert round(f2[("base", 0)], 4) == 0.6251 and round(f2[("AnB", 7)], 4) == 0.5425
    r = subprocess.run([sys.executable, str(REPO / "tools" / "plot_results.py"), "--out", str(tmp_path)],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "give --runs and/or --caffe-logs" in r.stderr


def test_plot_results_intervals_over_splits(tmp_path):
    # Four splits (seeds 0..3) of base and AnB at n = 1: each point gets mean ± t_{0.975,k-1} s / sqrt(k).
    base = [0.60, 0.62, 0.65, 0.63, 0.61, 0.64, 0.66, 0.60]
    anb = [0.58, 0.61, 0.57, 0.60]
    for i, top in enumerate(base):
        _run(tmp_path, f"half{i // 2}{'AB'[i % 2]}", [top - 0.2, top])
    for i, top in enumerate(anb):
        _run(tmp_path, f"transfer{i}A{i}B_1_1", [top])
    r = subprocess.run([sys.executable, str(REPO / "tools" / "plot_results.py"), "--runs", str(tmp_path / "runs"),
                        "--out", str(tmp_path / "out"), "--no-paper"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "out" / "figure2.csv") as f:
        rows = {(row["condition"], int(row["n"])): row for row in csv.DictReader(f)}
    # each base run's metric: the mean of its 2 test points (top - 0.1 on average)
    b = [t - 0.1 for t in base]
    t7, t3 = 2.3646242510102993, 3.182446305284263     # t_{0.975,7} and t_{0.975,3} (standard tables)
    assert float(rows[("base", 0)]["ci95"]) == pytest.approx(t7 * statistics.stdev(b) / 8 ** 0.5, rel=1e-6)
    assert float(rows[("AnB", 1)]["ci95"]) == pytest.approx(t3 * statistics.stdev(anb) / 2, rel=1e-6)
    assert float(rows[("AnB", 1)]["top1"]) == pytest.approx(statistics.mean(anb), rel=1e-6)
    assert (tmp_path / "out" / "figure2.png").stat().st_size > 0
