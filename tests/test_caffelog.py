"""The paper's Caffe logs: every net's test points and metric as recomputed in paper_results.csv, and the quirks."""
import csv
import gzip

import pytest

from repro import resources
from repro.caffelog import read_caffe_logs, read_net_logs
from repro.study.results import scores


@pytest.fixture(scope="module")
def logs(shared):
    return shared / "reference" / "caffe_logs"


@pytest.fixture(scope="module")
def test_lines(logs):
    return dict(read_caffe_logs(logs / "test_lines"))


def test_every_net_matches_the_papers_recomputed_numbers(test_lines):
    rows = {r["name"]: r for r in resources.paper_results()}
    with_data = {n for n, r in rows.items() if r["has_data"] == "True"}
    assert set(test_lines) == with_data and len(with_data) == 148
    for name, pts in test_lines.items():
        r = rows[name]
        iters = [p.iter for p in pts]
        assert iters == sorted(set(iters))
        assert (len(pts), iters[0], iters[-1]) == (int(r["n_test_points"]), int(r["first_test_iteration"]),
                                                   int(r["last_test_iteration"])), name
        assert pts[-1].top1 == pytest.approx(float(r["final_top1"]), abs=1e-7), name
        assert pts[-1].loss == pytest.approx(float(r["final_loss"]), abs=1e-5), name
        assert max(p.top1 for p in pts) == pytest.approx(float(r["max_top1"]), abs=1e-7), name
        # the metric: paper_results.csv writes it to 6 significant digits
        assert dict(scores([(name, pts)]))[name] == pytest.approx(float(r["nb_top10_mean_top1"]), rel=1e-5), name


def test_log_gaps_and_partial_logs_are_kept_as_they_are(test_lines):
    # transfer0A0A_1_1 lacks the piece for 37.7k-50k; transfer2B2A_1_4 starts at 360k (PROTOCOL.md section 9).
    gap = {p.iter for p in test_lines["transfer0A0A_1_1"]}
    assert 37000 in gap and not gap & set(range(38000, 50001, 1000)) and 51000 in gap
    assert test_lines["transfer2B2A_1_4"][0].iter == 361000 and len(test_lines["transfer2B2A_1_4"]) == 90


def test_full_multi_piece_logs(logs, test_lines, shared):
    for name in ("half0A", "transfer-ft0A0B_1_3"):
        log = read_net_logs(logs / "full" / name)
        assert log.tests == test_lines[name]           # the full logs hold the same test lines
        assert len(log.tests) == 450 and log.tests[-1].iter == 450000
        row = next(r for r in resources.paper_results() if r["name"] == name)
        assert log.train_loss[450000] == float(row["final_train_loss"])
        # the paper's Caffe logged lr = base_lr * gamma ^ floor(iter / stepsize) (PROTOCOL.md section 4)
        assert all(lr == pytest.approx(0.01 * 0.1 ** (it // 100000), rel=1e-9) for it, lr in log.lr.items())
        assert len(log.lr) == 22500 and min(log.lr) == 20
    # A stray ~12k-iteration run from scratch (May 13) overwrites the first test points of transfer-ft0A0B_1_3
    # under the notebook's latest-timestamp rule; the lineage curve keeps the original run's (FIGURES.md sec. 1).
    ft = {p.iter: p.top1 for p in read_net_logs(logs / "full" / "transfer-ft0A0B_1_3").tests}
    assert ft[1000] == 0.20478
    lineage = shared / "reference" / "paper_learning_curves.csv"
    if lineage.is_file():
        with open(lineage) as f:
            lin = {int(r["iteration"]): float(r["top1"])
                   for r in csv.DictReader(f) if r["net"] == "transfer-ft0A0B_1_3"}
        differ = sorted(it for it in lin if lin[it] != ft[it])
        assert len(differ) == 9 and max(differ) <= 12000


def _glog(mmdd, clock, msg, line="solver.cpp:96"):
    return f"I{mmdd} {clock}.000001 12196 {line}] {msg}\n"


def _test(mmdd, clock, it, top1, loss):
    return (_glog(mmdd, clock, f"Iteration {it}, Testing net") +
            _glog(mmdd, clock, f"Test score #0: {top1}", "solver.cpp:123") +
            _glog(mmdd, clock, f"Test score #1: {loss}", "solver.cpp:123"))


def test_latest_timestamp_wins_and_scoreless_tests_are_dropped(tmp_path):
    net = tmp_path / "half1B"
    net.mkdir()
    # "a" sorts first but holds the *later* run: the timestamp decides, not the file order.
    with gzip.open(net / "a.o2.gz", "wt") as f:
        f.write(_test("0420", "10:00:00", 2000, 0.5, 2.0) + _test("0420", "11:00:00", 3000, 0.6, 1.5))
    (net / "b.o1").write_text(
        "job header: nvidia-smi | Tesla K20m |\n"
        + _test("0419", "10:00:00", 1000, 0.3, 3.0) + _test("0419", "11:00:00", 2000, 0.4, 2.5)
        + _glog("0419", "12:00:00", "Iteration 3000, Testing net")          # killed: no scores
        + _glog("0419", "12:00:01", "Iteration 3020, lr = 0.01", "solver.cpp:217")
        + _glog("0419", "12:00:01", "Iteration 3020, loss = 4.5", "solver.cpp:74"))
    (net / "b.o3.gz").write_bytes(gzip.compress(b""))                      # an empty piece
    (net / "imagenet_train.prototxt").write_text(_test("1231", "23:59:59", 1000, 0.99, 0.1))  # not a log
    log = read_net_logs(net)
    assert [(p.iter, p.top1, p.loss) for p in log.tests] == [(1000, 0.3, 3.0), (2000, 0.5, 2.0), (3000, 0.6, 1.5)]
    assert log.train_loss == {3020: 4.5} and log.lr == {3020: 0.01}
    assert [p.name for p in log.files] == ["a.o2.gz", "b.o1", "b.o3.gz"]
    assert read_caffe_logs(tmp_path) == [("half1B", log.tests)]
    assert read_caffe_logs(net) == [("half1B", log.tests)]     # a net folder itself


def test_newer_caffe_lines_and_truncated_gzip(tmp_path):
    net = tmp_path / "netbase"
    net.mkdir()
    text = (_glog("0101", "00:00:01", "Iteration 1000, Testing net (#0)")
            + _glog("0101", "00:00:02", "Test net output #0: accuracy = 0.25")
            + _glog("0101", "00:00:02", "Test net output #1: loss = 3.5 (* 1 = 3.5 loss)")
            + _glog("0101", "00:00:03", "Iteration 1000 (2.5 iter/s, 8s/20 iters), loss = 4.25")
            + "".join(_test("0101", f"{i // 60:02d}:{i % 60:02d}:30", 2000 + 1000 * i, 0.3, 3.0) for i in range(200)))
    data = gzip.compress(text.encode())
    (net / "caffe.log.gz").write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="caffe.log.gz: unreadable after line"):
        log = read_net_logs(net)
    assert log.tests[0].top1 == 0.25 and log.tests[0].loss == 3.5 and log.train_loss == {1000: 4.25}
    assert 2 < len(log.tests) < 201


def test_a_folder_without_test_scores_is_an_error(tmp_path):
    (tmp_path / "half0A").mkdir()
    (tmp_path / "half0A" / "x.o1").write_text(_glog("0101", "00:00:01", "Iteration 20, loss = 6.9"))
    with pytest.raises(FileNotFoundError, match="no Caffe log with test scores"):
        read_caffe_logs(tmp_path)
