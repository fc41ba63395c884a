"""benchmarks/train_throughput.py runs end to end on the CPU and reports its ratios (tiny sizes, seconds).

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
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "train_throughput.py"), "--device", "cpu",
                          "--quick", "--variants", "base_fp32", "--json", str(out_json)],
                         capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    ratios = dict(re.findall(r"^ratio_(\w+): ([0-9.]+)$", res.stdout, re.M))
    assert set(ratios) == {"loader", "step", "end_to_end"}, res.stdout
    assert all(float(v) > 0 for v in ratios.values())
    rec = json.loads(out_json.read_text())
    assert rec["device"] == "cpu" and rec["net"] == "small" and rec["batch"] == 16
    assert set(rec["images_per_s"]) >= {"loader_ours", "loader_baseline", "step_baseline", "e2e_baseline",
                                        "step_base_fp32", "e2e_base_fp32"}
    assert rec["numerics"]["base_fp32"]["faithful"] is True


def test_baseline_model_has_the_nets_shapes():
    """The baseline is the same computation as stock modules: the small net's layers, fc8's output shape."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from baseline import sequential_from_net
    finally:
        sys.path.pop(0)
    from repro.net import Net

    net = Net(REPO / "prototxt" / "small" / "train_val.prototxt", "TRAIN", input_shapes={"data": (2, 3, 56, 56)})
    model = sequential_from_net(net)
    assert model(torch.zeros(2, 3, 56, 56)).shape == (2, 20)
    ours = sum(p.numel() for blobs in net.params.values() for p in blobs)
    assert sum(p.numel() for p in model.parameters()) == ours
