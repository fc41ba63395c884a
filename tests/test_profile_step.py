"""benchmarks.profile_step: the step's profiled time is split into categories that add up, and the split
sees what the variants change (a frozen prefix has no conv backward; our im2col weight gradient is told apart
from the input gradient). Tiny CPU runs of the small net; no timing is asserted."""
import json
import math
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONV_BWD = ("conv_dgrad", "conv_wgrad_native", "conv_wgrad_im2col", "conv_bwd_unsplit")


@pytest.fixture(scope="module")
def ps():
    from benchmarks import profile_step

    return profile_step


def _run(ps, tmp_path, variant, *extra):
    out = tmp_path / f"{variant}.json"
    rc = ps.main(["--device", "cpu", "--net", "small", "--batch", "4", "--iters", "1", "--warmup", "1",
                  "--variant", variant, "--json", str(out), *extra])
    assert rc == 0
    return json.loads(out.read_text())


def _ms(rec, *keys):
    return sum(rec["profile"]["categories"][k]["ms_per_step"] for k in keys)


def _check_totals(ps, rec):
    p = rec["profile"]
    assert list(p["categories"]) == list(ps.CATEGORIES)
    total = p["total_ms_per_step"]
    assert total > 0
    assert math.isclose(sum(d["ms_per_step"] for d in p["categories"].values()), total, rel_tol=1e-9)
    assert math.isclose(sum(d["pct"] for d in p["categories"].values()), 100.0, rel_tol=1e-9)
    assert math.isclose(sum(o["ms_per_step"] for o in p["top_ops"]), total, rel_tol=1e-9)
    assert math.isclose(sum(d["ms_per_step"] for d in p["phases"].values()), total, rel_tol=1e-9)
    assert rec["step_ms"] > 0 and rec["images_per_s"] > 0 and rec["numerics"]["faithful"] is True


def test_base_and_frozen7_split(ps, tmp_path, capsys):
    trace = tmp_path / "t" / "trace.json"
    base = _run(ps, tmp_path, "base_fp32", "--trace", str(trace))
    out = capsys.readouterr().out
    assert "step_ms: " in out and "images_per_s: " in out and "conv forward" in out
    _check_totals(ps, base)
    assert _ms(base, "conv_fwd") > 0 and _ms(base, "update") > 0
    # CPU: conv1 (no input gradient) is a weight-only call; conv2-5 compute both in one oneDNN call
    assert _ms(base, "conv_wgrad_native", "conv_wgrad_im2col") > 0
    assert _ms(base, "conv_bwd_unsplit") > 0
    layers = {d["layer"]: d for d in base["profile"]["layers"]}
    assert layers["conv1"].get("backward_ms", 0) > 0 and layers["fc8"].get("backward_ms", 0) > 0
    assert json.loads(trace.read_text())["traceEvents"]

    frozen = _run(ps, tmp_path, "frozen7_fp32")
    _check_totals(ps, frozen)
    # conv1..fc7 frozen: no conv backward at all, but the same conv forward and a (smaller) update
    assert _ms(frozen, *CONV_BWD) == 0
    assert _ms(frozen, "conv_fwd") > 0 and _ms(frozen, "update") > 0
    layers = {d["layer"]: d for d in frozen["profile"]["layers"]}
    assert "backward_ms" not in layers["conv1"] and "backward_ms" not in layers["fc6"]
    assert layers["fc8"].get("backward_ms", 0) > 0


def test_faithful_wgrad_path_is_told_apart(ps):
    """The CUDA faithful path's conv backward (_ConvCaffeWgrad: convolution_backward for the input gradient,
    im2col + bmm for the weight gradient), run on the CPU through the same autograd Function."""
    from repro.layers.vision import _ConvCaffeWgrad

    torch.manual_seed(0)
    x = torch.randn(2, 4, 9, 9, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, requires_grad=True)
    b = torch.zeros(6, requires_grad=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        _ConvCaffeWgrad.apply(x, w, b, (1, 1), (1, 1), (1, 1), 2).square().sum().backward()
    p = ps.analyse(prof, 1, on_cpu=True)
    cats = {k: d["ms_per_step"] for k, d in p["categories"].items()}
    assert cats["conv_fwd"] > 0 and cats["conv_dgrad"] > 0 and cats["conv_wgrad_im2col"] > 0
    assert cats["conv_wgrad_native"] == 0 and cats["conv_bwd_unsplit"] == 0
    ops = {(o["op"], o["category"]) for o in p["top_ops"]}
    assert ("aten::bmm", "conv_wgrad_im2col") in ops and ("aten::convolution_backward", "conv_dgrad") in ops
    assert p["layers"][0]["type"] == "Convolution" and p["layers"][0]["backward_ms"] > 0
