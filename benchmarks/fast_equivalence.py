"""Does fast mode learn what faithful mode learns? The small net on the built-in data, trained both ways.

  python -m benchmarks.fast_equivalence --device cuda                      # 3000 iterations x 2 seeds x 2 modes
  python -m benchmarks.fast_equivalence --device cpu --iters 300 --seeds 1

prototxt/small on all 20 built-in classes (6000 training images, 1000 validation), with the study's solver
(prototxt/small/solver.prototxt: the paper's SGD settings) compressed to --iters iterations (the step at
the same fraction of the run). Each mode trains from the same seeds (same initial weights, same batches,
crops and mirrors); every --test-every iterations the TEST net (float32, centre crops) makes one exact pass
over the validation images. Faithful mode is IEEE float32 (repro.numerics); fast mode is bf16 autocast +
channels_last + TF32 (+ torch.compile with --compile).

Verdict: fast mode is equivalent when the difference of the mean final top-1 over the seeds is within the
seed-to-seed spread of faithful mode (max - min over seeds), or within 2 points, whichever is larger.
Prints ``fast_equivalence: yes|no`` and ``delta_top1: X``; --json writes the curves.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from repro.caffemodel import read_mean
from repro.data.builtin import ensure_builtin
from repro.data.device_feed import DeviceFeed
from repro.data.store import Store
from repro.data.transform import TransformSpec
from repro.engine.plan import NetPlan, feedable
from repro.net import Net
from repro.numerics import set_faithful
from repro.prototxt import read_solver
from repro.solver import Solver

from .common import REPO, command_line, environment, pick_device, write_json

NET = REPO / "prototxt" / "small" / "train_val.prototxt"
SOLVER = REPO / "prototxt" / "small" / "solver.prototxt"


def train_once(mode: str, seed: int, iters: int, test_every: int, root: Path, device, compile: bool) -> dict:
    base = read_solver(SOLVER)
    train, _ = feedable(NET, "TRAIN")
    batch = train.layer[0].input_param.shape[0].dim[0]
    test, _ = feedable(NET, "TEST", batch_size=100)
    sp = type(base)()
    sp.CopyFrom(base)
    for f in ("net", "test_iter", "test_interval", "snapshot", "snapshot_prefix"):
        sp.ClearField(f)
    sp.net_param.CopyFrom(train)
    sp.max_iter, sp.random_seed, sp.display = iters, seed, 0
    sp.stepsize = max(1, round(iters * base.stepsize / base.max_iter))  # the step at the same fraction
    solver = Solver(sp, device=device)
    test_net = Net(test, "TEST").to(device)
    mean = read_mean(root / "mean.binaryproto")
    crop = int(test.layer[0].input_param.shape[0].dim[2])
    feed = DeviceFeed(Store(root / "train"), batch, TransformSpec(crop_size=crop, mirror=True, mean=mean),
                      seed=seed, device=device, shuffle=True, order_seed=seed)
    val = Store(root / "val")
    solver.set_numerics("fast" if mode == "fast" else "faithful", compile=compile and mode == "fast")
    test_plan = NetPlan(test_net)

    def evaluate():
        solver.share_weights(test_net)
        vf = DeviceFeed(val, 100, TransformSpec(crop_size=crop, mean=mean), phase="TEST", device=device, workers=2)
        accs = []
        with torch.no_grad():
            for _ in range(len(val) // 100):
                _, out = test_plan(vf.next_batch())
                accs.append(out["accuracy"].float())
        vf.close()
        return float(torch.stack(accs).mean())

    curve, losses = [], []
    t = time.perf_counter()
    while solver.iter < iters:
        losses.append(solver.train_iteration(feed.next_batch()))
        if solver.iter % test_every == 0 or solver.iter == iters:
            curve.append((solver.iter, evaluate(), float(torch.stack(losses[-20:]).mean())))
    if device.type == "cuda":
        torch.cuda.synchronize()
    feed.close()
    set_faithful(True)
    return {"mode": mode, "seed": seed, "seconds": time.perf_counter() - t, "final_top1": curve[-1][1],
            "curve": [{"iter": i, "top1": a, "train_loss": l} for i, a, l in curve]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--iters", type=int, default=3000)
    ap.add_argument("--test-every", type=int, help="default: iters / 10")
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--compile", action="store_true", help="fast mode with torch.compile")
    ap.add_argument("--data", help="built-in data folder (default: generated in a temporary folder)")
    ap.add_argument("--json", help="write the curves and the verdict here")
    a = ap.parse_args(argv)
    device = pick_device(a.device)
    seeds = [int(s) for s in a.seeds.split(",")]
    test_every = a.test_every or max(1, a.iters // 10)
    with tempfile.TemporaryDirectory(prefix="repro-eq-") as tmp:
        root = ensure_builtin(a.data or Path(tmp) / "builtin")
        runs = []
        for seed in seeds:
            for mode in ("faithful", "fast"):
                r = train_once(mode, seed, a.iters, test_every, Path(root), device, a.compile)
                print(f"{mode:8s} seed {seed}: final top-1 {r['final_top1']:.4f} ({r['seconds']:.1f}s, "
                      f"{a.iters / r['seconds']:.0f} it/s)", flush=True)
                runs.append(r)
    final = {m: [r["final_top1"] for r in runs if r["mode"] == m] for m in ("faithful", "fast")}
    delta = float(np.mean(final["fast"]) - np.mean(final["faithful"]))
    spread = float(max(final["faithful"]) - min(final["faithful"])) if len(seeds) > 1 else 0.0
    tol = max(spread, 0.02)
    ok = abs(delta) <= tol
    print(f"faithful top-1 {np.mean(final['faithful']):.4f} (seeds {final['faithful']}), fast top-1 "
          f"{np.mean(final['fast']):.4f} (seeds {final['fast']})")
    print(f"delta_top1: {delta:+.4f}")
    print(f"seed_spread_faithful: {spread:.4f}")
    print(f"fast_equivalence: {'yes' if ok else 'no'} (|delta| <= {tol:.4f})")
    if a.json:
        write_json(a.json, {**environment(device), "command": command_line("benchmarks.fast_equivalence", argv),
                            "iters": a.iters, "seeds": seeds, "compile": a.compile, "runs": runs,
                            "delta_top1": delta, "seed_spread_faithful": spread, "tolerance": tol,
                            "equivalent": ok})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
