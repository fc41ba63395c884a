"""python -m benchmarks.train_throughput runs end to end on the CPU and reports its ratios (tiny sizes, seconds).

The numbers themselves are not asserted (speed targets live in the benchmark, not in unit tests); what is
checked is that every measurement runs and is reported in the format benchmarks/RESULTS.md quotes.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def test_quick_benchmark_prints_every_ratio(tmp_path):
    out_json = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "benchmarks.train_throughput", "--device", "cpu",
                          "--quick", "--variants", "base_fp32", "--json", str(out_json)],
                         capture_output=True, text=True, env=env, timeout=180, cwd=REPO)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    ratios = dict(re.findall(r"^ratio_(\w+): ([0-9.]+)$", res.stdout, re.M))
    assert set(ratios) == {"loader", "step", "end_to_end", "tool_vs_engine"}, res.stdout
    assert all(float(v) > 0 for v in ratios.values())
    rec = json.loads(out_json.read_text())
    assert rec["device"] == "cpu" and rec["net"] == "small" and rec["batch"] == 16
    assert set(rec["images_per_s"]) >= {"loader_ours", "loader_baseline", "step_baseline", "e2e_baseline",
                                        "step_base_fp32", "e2e_base_fp32"}
    assert rec["numerics"]["base_fp32"]["faithful"] is True
    # the tool's path: a real run folder's log timed, the run's end cost amortised over the solver's snapshot
    tool = rec["tool"]["faithful"]
    assert tool["iter_s"] > 0 and tool["end_s"] > 0 and tool["snapshot_every"] == 600
    assert tool["images_per_s"] < tool["images_per_s_no_end"]


def test_baseline_model_has_the_nets_shapes():
    """The baseline is the same computation as stock modules: the small net's layers, fc8's output shape."""
    from benchmarks.baseline import sequential_from_net
    from repro.net import Net

    net = Net(REPO / "prototxt" / "small" / "train_val.prototxt", "TRAIN", input_shapes={"data": (2, 3, 56, 56)})
    model = sequential_from_net(net)
    assert model(torch.zeros(2, 3, 56, 56)).shape == (2, 20)
    ours = sum(p.numel() for blobs in net.params.values() for p in blobs)
    assert sum(p.numel() for p in model.parameters()) == ours


def test_conv_wgrad_benchmark_routes_agree(tmp_path):
    """benchmarks.conv_wgrad times three routes to the same weight gradient: all three must compute it (the
    im2col routes to float32 rounding of a float64 reference), for every Convolution layer of the net."""
    from benchmarks import conv_wgrad
    out_json = tmp_path / "wgrad.json"
    assert conv_wgrad.main(["--device", "cpu", "--net", "small", "--batch", "3", "--iters", "1", "--warmup", "0",
                            "--json", str(out_json)]) == 0
    rec = json.loads(out_json.read_text())
    from repro.engine.plan import feedable
    net_convs = [l.name for l in feedable(conv_wgrad.NETS["small"][0], "TRAIN", batch_size=3)[0].layer
                 if l.type == "Convolution"]
    assert list(rec["layers"]) == net_convs and len(net_convs) == 5
    for name, row in rec["layers"].items():
        assert row["bottom"][0] == 3
        assert row["err_ours"] < 1e-6 and row["err_stacked"] < 1e-6, (name, row)
        assert row["err_native"] < 1e-4, (name, row)
        assert all(row[f"ms_{r}"] > 0 for r in ("native", "ours", "stacked"))
    assert rec["ratios"]["wgrad_total"] > 0 and rec["numerics"]["faithful"] is True
