"""Training throughput (images/s) of our path against a plain PyTorch baseline measured in the same run.

  python -m benchmarks.train_throughput --device cuda                     # CaffeNet, batch 256, 20k-image store
  python -m benchmarks.train_throughput --device cpu --quick              # tiny: small net, seconds
  python -m benchmarks.train_throughput --device cpu --net small --batch 64 --iters 10

Three measurements, each beside the baseline (benchmarks.baseline: the same layers as stock modules +
torch.optim.SGD, JPEG files decoded by PIL in DataLoader workers), and the tools' own path:

  (a) loader alone: our DeviceFeed over a pre-resized uint8 store (crop/mirror/mean on the device, side-stream
      copies) vs the JPEG folder loader, each delivering float batches on the device;
  (b) training step alone on a fixed synthetic batch already on the device (``Solver.train_iteration``: the
      engine, the harness's number);
  (c) end to end: loader + step;
  (tool) ``repro.train.run`` -- what tools/train_base.py, transfer.py and run_grid.py run -- on the same store
      with the same net and batch: the run folder, the Data layer's reading (a DeviceFeed on CUDA),
      log.jsonl and snapshots included (``time_tool``). ``ratio_tool_vs_engine`` is its images/s over (b)'s
      base_fp32 images/s: what a user's command gets, relative to what the harness times.

Variants of our step, each NET_MODE: NET is ``base`` (every layer learns) or ``frozenN`` (the paper's transfer
net AnB: the first N learned layers at lr_mult 0, run under no_grad). MODE is one of
  fp32       faithful: IEEE float32, TF32 off, deterministic algorithms (repro.numerics)
  fp32bench  IEEE float32 with cudnn.benchmark's (nondeterministic) algorithm choice
  layerlrn   fp32 with the LRN layer instead of the plan's fused LRN (repro.layers.lrn_fused); on CUDA only does
             that differ, as the layer trains through the fused node on the CPU
  solver     Solver.step: the reference path (reads the loss back every iteration, keeps net.blobs)
  tf32       float32 weights, TF32 tensor-core products, cudnn.benchmark
  fast       bf16 autocast + channels_last + TF32 (repro.engine.modes)
  bf16       fast without channels_last (with the fused LRN)
  compile    fast + torch.compile
Ratios are against the float32 baseline. Prints one ``ratio_<what>: X`` line per ratio (``ratio_loader``,
``ratio_step``, ``ratio_end_to_end`` for base_fp32, then ``ratio_step_<variant>``, ``ratio_end_to_end_<variant>``,
``ratio_tool_vs_engine``),
``images_per_s_<what>: X`` and ``peak_mem_gib_<variant>: X`` (CUDA); ``--json`` writes everything.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from repro.caffemodel import write_mean
from repro.data.device_feed import DeviceFeed
from repro.data.device_feed import default_workers as feed_workers
from repro.data.transform import TransformSpec
from repro.engine.modes import MODES
from repro.engine.plan import feedable
from repro.net import Net
from repro.numerics import numerics_state, set_faithful
from repro.proto import caffe_pb2
from repro.prototxt import read_net, read_solver
from repro.runlog import read_records
from repro.solver import Solver
from repro.train import run

from .baseline import BaselineTrainer, baseline_loader, default_workers, write_jpegs
from .common import (
    NETS,
    command_line,
    default_device,
    environment,
    free,
    peak_gib,
    pick_device,
    sync,
    synthetic_store,
    timed,
    write_json,
)

FULL_VARIANTS = ("base_fp32,base_fp32bench,base_layerlrn,base_solver,frozen5_fp32,frozen7_fp32,frozen7_fp32bench,"
                 "base_tf32,frozen5_tf32,base_fast,base_bf16")
QUICK_VARIANTS = "base_fp32,frozen5_fp32,base_fast"
TOOL_VARIANT = {"faithful": "base_fp32", "fp32": "base_fp32bench", "tf32": "base_tf32", "fast": "base_fast"}


# ---------------------------------------------------------------------------------------------- data


def make_data(tmp: Path, images: int, jpegs: int, size: int, classes: int):
    """A synthetic store of `images` images and `jpegs` JPEG files of the same images (the baseline's; none
    when `jpegs` is 0)."""
    t = time.perf_counter()
    store, u, mean = synthetic_store(tmp / "store", images, size, classes)
    t_store = time.perf_counter() - t
    t = time.perf_counter()
    k = min(jpegs, len(u))
    write_jpegs(tmp / "jpegs", u, (np.arange(jpegs) % classes))
    t_jpeg = time.perf_counter() - t
    print(f"data: store {len(store)} images {size}x{size} ({store.images.nbytes / 2**30:.2f} GiB) in {t_store:.1f}s; "
          f"{jpegs} JPEGs ({k} distinct) in {t_jpeg:.1f}s", flush=True)
    return store, mean


# ---------------------------------------------------------------------------------------------- nets


def solver_param(net_path, batch: int, frozen: int = 0):
    """The paper's solver around the feedable TRAIN net (data as inputs); the first `frozen` learned layers
    at lr_mult 0 (the paper's AnB transfer net)."""
    net, _ = feedable(net_path, "TRAIN", batch_size=batch)
    learned = [l for l in net.layer if l.type in ("Convolution", "InnerProduct")]
    for layer in learned[:frozen]:
        for p in layer.param:
            p.lr_mult = 0
    sp = caffe_pb2.SolverParameter()
    sp.net_param.CopyFrom(net)
    sp.base_lr, sp.lr_policy, sp.gamma, sp.stepsize = 0.01, "step", 0.1, 100000
    sp.momentum, sp.weight_decay, sp.max_iter, sp.random_seed, sp.display = 0.9, 5e-4, 450000, 1, 0
    return sp


def build(variant: str, net_path, batch: int, device):
    """(step function batch -> None, solver) for a NET_MODE variant (module doc): every variant is the
    Solver's own engine (``Solver.train_iteration`` through its run plan) in one numerics mode."""
    net_kind, mode = variant.split("_", 1)
    frozen = 0 if net_kind == "base" else int(net_kind[len("frozen"):])
    solver = Solver(solver_param(net_path, batch, frozen), device=device)  # builds nets: faithful numerics
    if mode == "solver":  # the whole Solver::Step (test/display/snapshot checks included)
        return (lambda b: solver.step(1, feed=b)), solver
    variants = {"fp32": MODES["faithful"], "layerlrn": replace(MODES["faithful"], fused_lrn=False),
                "tf32": MODES["tf32"], "fp32bench": MODES["fp32"], "fast": MODES["fast"],
                "bf16": replace(MODES["fast"], channels_last=False), "compile": MODES["fast"]}
    if mode not in variants:
        raise SystemExit(f"unknown variant mode {mode!r} in {variant!r}")
    solver.set_numerics(variants[mode], compile=mode == "compile")
    return solver.train_iteration, solver


# ---------------------------------------------------------------------------------------------- the tool's path


def tool_solver(net_path, store: Path, mean_file: Path, batch: int, max_iter: int, display: int):
    """The solver a ``tools/train_base.py`` run of this net would get, on the synthetic store: the net's Data
    layers read `store` (mean image `mean_file`), at `batch`; the paper's SGD settings; no test nets; a train
    record in log.jsonl every `display` iterations; the final snapshot (snapshot_after_train) only."""
    net = read_net(net_path)
    for layer in net.layer:
        if layer.type == "Data":
            layer.data_param.source, layer.data_param.batch_size = str(store), batch
            layer.transform_param.mean_file = str(mean_file)
    sp = caffe_pb2.SolverParameter()
    sp.net_param.CopyFrom(net)
    sp.base_lr, sp.lr_policy, sp.gamma, sp.stepsize = 0.01, "step", 0.1, 100000
    sp.momentum, sp.weight_decay, sp.max_iter, sp.random_seed, sp.display = 0.9, 5e-4, max_iter, 1, display
    return sp


def time_tool(net_path, store: Path, mean: np.ndarray, batch: int, iters: int, warmup: int, device,
              out: Path, numerics: str = "faithful") -> dict:
    """Time ``repro.train.run`` (what train_base / transfer / run_grid call: run folder, the Data layer's own
    reading, log.jsonl with an fsync per record, snapshots, final weights) for warmup + iters + 1 iterations
    on `device`, in the numerics mode `numerics` (the tools' ``--numerics``).

    The net's own solver.prototxt gives ``display`` (capped at iters / 3, so the timed window holds at least
    3 blocks between records) and ``snapshot``. From log.jsonl's timestamps, the iterations from the first
    train record at or after `warmup` to the last one are timed in blocks of ``display``: ``iter_s`` is the
    best block's seconds per iteration, as the harness's ``timed`` takes its best block; ``iter_s_mean`` the
    whole window's. ``end_s``: what the run spends after its last iteration (snapshot, final.caffemodel /
    final.pt, summary), which a real run pays once per ``snapshot`` iterations: ``images_per_s`` amortises it
    over them, so it is the rate of the whole tool run."""
    out.mkdir(parents=True, exist_ok=True)
    write_mean(out / "mean.binaryproto", mean.astype(np.float32))
    real = read_solver(Path(net_path).parent / "solver.prototxt")
    display = max(1, min(real.display or 1, iters // 3))
    max_iter = warmup + iters + 1
    run(tool_solver(net_path, store, out / "mean.binaryproto", batch, max_iter, display), out / "run",
        device=str(device), numerics=numerics, onnx=False, log=lambda *_: None)
    t_end = time.time()
    recs = {r["iter"]: r["time"] for r in read_records(out / "run" / "log.jsonl") if r.get("type") == "train"}
    window = sorted(i for i in recs if warmup <= i < max_iter)  # record i is written after update i
    first, last = window[0], window[-1]
    iter_s_mean = (recs[last] - recs[first]) / (last - first)
    iter_s = min((recs[b] - recs[a]) / (b - a) for a, b in zip(window, window[1:]))
    end_s = max(0.0, t_end - recs[last] - (max_iter - 1 - last) * iter_s_mean)
    snapshot_every = real.snapshot or max_iter
    return {"iter_s": iter_s, "iter_s_mean": iter_s_mean, "end_s": end_s, "display": display,
            "snapshot_every": snapshot_every,
            "window_iters": last - first, "images_per_s": batch / (iter_s + end_s / snapshot_every),
            "images_per_s_no_end": batch / iter_s}


# ---------------------------------------------------------------------------------------------- loop


class Cycle:
    """Endless batches from a DataLoader (restarting it at the end of an epoch)."""

    def __init__(self, loader, device):
        self.loader, self.device, self.it = loader, device, iter(loader)

    def __call__(self):
        try:
            x, y = next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            x, y = next(self.it)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


# ---------------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=default_device(), choices=("cpu", "cuda"))
    ap.add_argument("--quick", action="store_true", help="tiny sizes (small net, batch 16, few iterations)")
    ap.add_argument("--net", choices=tuple(NETS), help="caffenet (default) or small (default with --quick)")
    ap.add_argument("--batch", type=int, help="batch size (default: 256 caffenet, 64 small, 16 quick)")
    ap.add_argument("--iters", type=int, help="timed iterations per measurement")
    ap.add_argument("--warmup", type=int, help="untimed iterations first (cudnn autotuning, compilation)")
    ap.add_argument("--images", type=int, help="images in the synthetic store (default 20480; quick 256)")
    ap.add_argument("--jpegs", type=int, help="JPEG files for the baseline loader (default 8192; quick 128)")
    ap.add_argument("--workers", type=int, help="our reader threads (default min(8, cores/2))")
    ap.add_argument("--base-workers", type=int, help="baseline DataLoader processes (default cores-2, <= 12)")
    ap.add_argument("--variants", help=f"comma list (default {FULL_VARIANTS}; quick {QUICK_VARIANTS})")
    ap.add_argument("--sections", default="loader,step,e2e,tool", help="which of loader,step,e2e,tool to run")
    ap.add_argument("--tool-modes", default="faithful",
                    help="numerics modes of the tool section's runs (comma list of faithful,fp32,tf32,fast); each "
                         "is compared with its harness variant (base_fp32, base_fp32bench, base_tf32, base_fast)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the baseline (ratios are then absent)")
    ap.add_argument("--json", help="write all numbers to this file")
    a = ap.parse_args(argv)

    net_name = a.net or ("small" if a.quick else "caffenet")
    net_path, size, crop, classes = NETS[net_name]
    batch = a.batch or (16 if a.quick else {"caffenet": 256, "small": 64}[net_name])
    iters = a.iters or (3 if a.quick else 30)
    warmup = a.warmup if a.warmup is not None else (1 if a.quick else 5)
    variants = (a.variants or (QUICK_VARIANTS if a.quick else FULL_VARIANTS)).split(",")
    sections = set(a.sections.split(","))
    device = pick_device(a.device)
    workers = a.workers or (2 if a.quick else feed_workers())
    base_workers = a.base_workers if a.base_workers is not None else (2 if a.quick else default_workers())
    res = {**environment(device), "command": command_line("benchmarks.train_throughput", argv), "net": net_name,
           "batch": batch, "iters": iters, "warmup": warmup, "our_workers": workers,
           "baseline_workers": base_workers, "images_per_s": {}, "ratios": {}, "peak_mem_gib": {}}
    print(f"device {res['gpu'] or res['cpu']}, torch {torch.__version__}, {net_name} batch {batch}, "
          f"{iters} timed iterations after {warmup}", flush=True)

    def record(kind, name, value):
        res[kind][name] = value
        print(f"{kind[:-1] if kind != 'images_per_s' else kind}_{name}: {value:.4g}" if kind != "ratios"
              else f"ratio_{name}: {value:.3f}", flush=True)

    set_faithful(True)
    ref_net = Net(net_path, "TRAIN", input_shapes={"data": (batch, 3, crop, crop)})
    with tempfile.TemporaryDirectory(prefix="repro-bench-") as tmp:
        tmp = Path(tmp)
        need_data = bool(sections & {"loader", "e2e", "tool"})
        if need_data:
            jpegs = a.jpegs or (128 if a.quick else 8192)
            if a.no_baseline or not sections & {"loader", "e2e"}:
                jpegs = 0  # only the baseline reads JPEGs
            store, mean = make_data(tmp, a.images or (256 if a.quick else 20480), jpegs, size, classes)
            spec = TransformSpec(crop_size=crop, mirror=True, mean=mean)
            mean_rgb = mean[::-1].copy()

        def our_feed():
            return DeviceFeed(store, batch, spec, seed=0, device=device, workers=workers)

        def base_feed():
            return Cycle(baseline_loader(tmp / "jpegs", crop, mean_rgb, batch, base_workers,
                                         device.type == "cuda"), device)

        # (a) the loader alone --------------------------------------------------------------------------
        if "loader" in sections:
            feed = our_feed()
            record("images_per_s", "loader_ours", timed(lambda: feed.next_batch(), iters * 2, warmup, batch, device))
            feed.close()
            if not a.no_baseline:
                bf = base_feed()
                record("images_per_s", "loader_baseline", timed(bf, iters * 2, warmup, batch, device))
                del bf
                record("ratios", "loader", res["images_per_s"]["loader_ours"] / res["images_per_s"]["loader_baseline"])

        # the baseline step / end to end (float32, faithful numerics) -------------------------------------
        if not a.no_baseline and sections & {"step", "e2e"}:
            set_faithful(True)
            free(device)
            base = BaselineTrainer(ref_net, device)
            x = torch.randn(batch, 3, crop, crop, device=device) * 50
            y = torch.randint(0, classes, (batch,), device=device)
            if "step" in sections:
                record("images_per_s", "step_baseline", timed(lambda: base.step(x, y), iters, warmup, batch, device))
                res["peak_mem_gib"]["baseline"] = peak_gib(device)
            if "e2e" in sections:
                bf = base_feed()
                record("images_per_s", "e2e_baseline", timed(lambda: base.step(*bf()), iters, warmup, batch, device))
                del bf
            del base

        # our variants --------------------------------------------------------------------------------
        for v in variants:
            free(device)
            try:
                t0 = time.perf_counter()
                step, _ = build(v, net_path, batch, device)
                res.setdefault("numerics", {})[v] = numerics_state()
                if "step" in sections:
                    b = {"data": torch.randn(batch, 3, crop, crop, device=device) * 50,
                         "label": torch.randint(0, classes, (batch,), device=device).float()}
                    t1 = time.perf_counter()
                    step(b)  # first step (compilation, autotuning) timed on its own
                    sync(device)
                    res.setdefault("first_step_s", {})[v] = time.perf_counter() - t1
                    record("images_per_s", f"step_{v}", timed(lambda: step(b), iters, warmup, batch, device))
                    if device.type == "cuda":
                        record("peak_mem_gib", v, peak_gib(device))
                    if "step_baseline" in res["images_per_s"]:
                        r = res["images_per_s"][f"step_{v}"] / res["images_per_s"]["step_baseline"]
                        record("ratios", "step" if v == "base_fp32" else f"step_{v}", r)
                if "e2e" in sections:
                    feed = our_feed()
                    record("images_per_s", f"e2e_{v}", timed(lambda: step(feed.next_batch()), iters, warmup,
                                                             batch, device))
                    feed.close()
                    if "e2e_baseline" in res["images_per_s"]:
                        r = res["images_per_s"][f"e2e_{v}"] / res["images_per_s"]["e2e_baseline"]
                        record("ratios", "end_to_end" if v == "base_fp32" else f"end_to_end_{v}", r)
                res.setdefault("variant_s", {})[v] = time.perf_counter() - t0
                step = None  # free the net before the next variant
            except Exception as e:  # one variant failing (e.g. compile) must not lose the others
                res.setdefault("errors", {})[v] = f"{type(e).__name__}: {e}"
                print(f"variant {v} failed: {type(e).__name__}: {e}", flush=True)
            set_faithful(True)

        # the tools' own path: repro.train.run on the same store, against the harness's matching step ------
        if "tool" in sections:
            for mode in a.tool_modes.split(","):
                free(device)
                set_faithful(True)
                tool = time_tool(net_path, store.path, mean, batch, iters, warmup, device, tmp / f"tool_{mode}", mode)
                res.setdefault("tool", {})[mode] = tool
                name = "tool" if mode == "faithful" else f"tool_{mode}"
                record("images_per_s", name, tool["images_per_s"])
                print(f"{name}: {1000 * tool['iter_s']:.1f} ms/iteration, {tool['end_s']:.2f} s after the last one "
                      f"(snapshot, final weights), amortised over {tool['snapshot_every']} iterations", flush=True)
                variant = TOOL_VARIANT[mode]
                engine = res["images_per_s"].get(f"step_{variant}")
                if engine:
                    record("ratios", "tool_vs_engine" if mode == "faithful" else f"tool_vs_engine_{mode}",
                           tool["images_per_s"] / engine)
                else:
                    print(f"{name}: no ratio without the {variant} variant in the step section", flush=True)
            set_faithful(True)

    if a.json:
        write_json(a.json, res)
    return 1 if res.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
