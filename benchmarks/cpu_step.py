"""The faithful CPU training step against this machine's fp32 roofline, and when fast mode pays on a CPU.

  python -m benchmarks.cpu_step                                   # small net, batch 16: seconds
  python -m benchmarks.cpu_step --net caffenet --batch 32         # the issue's roofline: full CaffeNet
  python -m benchmarks.cpu_step --net small --batch 64 --fast     # + fast mode (bf16 + channels_last) vs faithful

Roofline: one training iteration of the base net (every layer learns; ``Solver.train_iteration``, faithful
numerics) is timed (best of rounds) and its floating-point work counted from the net's layer shapes
(``step_flops``: every Convolution and InnerProduct, 2 FLOPs per multiply-add, for the forward, the weight
gradient of a layer that learns, and the data gradient where the bottom carries one -- not the first conv,
whose bottom is the data, as Caffe's ``bottom_need_backward_`` says). Everything else (ReLU, pooling, LRN,
softmax, the update) is not counted: it is memory-bound work the roofline does not include, so the fraction
is conservative. The same run times ``torch.mm`` of two float32 ``--gemm`` x ``--gemm`` matrices with the same
threads: the machine's sgemm rate. Prints ``step_gflop``, ``achieved_gflops``, ``sgemm_gflops`` and
``roofline_fraction: X`` (achieved / sgemm).

Fast mode on the CPU (``--fast``): bf16 autocast + channels_last (repro.engine.modes) is timed beside the
faithful step. bf16 convolutions and GEMMs are fast only with hardware bf16 (the ``avx512_bf16`` or AMX
``amx_bf16`` CPU flags, from /proc/cpuinfo); without them oneDNN falls back to slow reference kernels.
Prints the flags, ``ratio_fast_vs_faithful: X`` and ``fast_pays: yes|no`` (yes: fast is at least
``PAYS`` = 1.1x faster, beyond the run-to-run noise of a shared machine).
"""
from __future__ import annotations

import argparse
import sys

import torch

from repro.numerics import numerics_state, set_faithful

from .common import NETS, best_seconds, command_line, cpu_flags, environment, write_json
from .train_throughput import build

FLOP_TYPES = ("Convolution", "InnerProduct")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
PAYS = 1.1  # fast mode "pays" from this speed-up on: smaller gains are within a shared CPU's noise


def step_flops(net) -> dict:
    """FLOPs of one forward + backward of `net` (a repro.net.Net with its batch), per Convolution /
    InnerProduct layer and in total: {"layers": {name: {"forward", "data_grad", "weight_grad"}}, "total"}.

    A layer's multiply-adds for one pass are (top elements) x (weight elements per output: C/group x kh x kw
    for a convolution, K for an inner product); each of the three passes costs that many again. The data
    gradient is counted only where a bottom carries a gradient, by Caffe's Net::Init rule (a blob needs one
    when the layer producing it has a learnable parameter or a bottom that needs one); the weight gradient only
    where the weights learn (lr_mult != 0)."""
    grad_blobs = set(net.inputs_needing_grad)
    layers, total = {}, 0
    for name in net.layer_names:
        layer = net.layer(name)
        if layer.is_input:
            continue
        bottoms, tops = net.bottom_names[name], net.top_names[name]
        pd = list(layer.param.propagate_down)
        carries = [b in grad_blobs and (not pd or pd[i]) for i, b in enumerate(bottoms)]
        learns = any(p.requires_grad for p in layer.parameters())
        if layer.type in FLOP_TYPES:
            w = layer.blobs[0]
            macs = torch.Size(net.blob_shapes[tops[0]]).numel() * w[0].numel()
            row = {"forward": 2 * macs, "data_grad": 2 * macs if any(carries) else 0,
                   "weight_grad": 2 * macs if w.requires_grad else 0}
            layers[name] = row
            total += sum(row.values())
        for t in tops:
            if learns or any(carries):
                grad_blobs.add(t)
            else:
                grad_blobs.discard(t)
    return {"layers": layers, "total": total}


def sgemm_gflops(n: int, rounds: int = 3) -> float:
    """GFLOP/s of a float32 n x n x n torch.mm on the CPU with the current threads (best of `rounds`)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    calls = max(rounds, round(2e10 / (2 * n**3)))  # about 20 GFLOP in all
    return 2 * n**3 / best_seconds(lambda: torch.mm(a, b, out=out), calls, 1, "cpu", rounds) / 1e9


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", choices=tuple(NETS), default="small")
    ap.add_argument("--batch", type=int, help="default: 16 small, 32 caffenet")
    ap.add_argument("--iters", type=int, default=6, help="timed iterations (best of 3 blocks)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--gemm", type=int, help="sgemm matrix size (default: 1024 small, 2048 caffenet)")
    ap.add_argument("--fast", action="store_true", help="also time fast mode (bf16 + channels_last)")
    ap.add_argument("--json", help="write all numbers to this file")
    a = ap.parse_args(argv)
    device = torch.device("cpu")
    net_path, _, crop, classes = NETS[a.net]
    batch = a.batch or {"small": 16, "caffenet": 32}[a.net]
    flags = cpu_flags()
    res = {**environment(device), "command": command_line("benchmarks.cpu_step", argv), "net": a.net,
           "batch": batch, "iters": a.iters, "warmup": a.warmup}
    print(f"cpu {res['cpu']}, {res['threads']} threads, torch {torch.__version__}, {a.net} batch {batch}; "
          f"bf16 hardware flags: {', '.join(f for f in BF16_FLAGS if f in flags) or 'none'}", flush=True)

    set_faithful(True)
    step, solver = build("base_fp32", net_path, batch, device)
    res["numerics"] = numerics_state()
    flops = step_flops(solver.net)
    b = {"data": torch.randn(batch, 3, crop, crop) * 50, "label": torch.randint(0, classes, (batch,)).float()}
    step_s = best_seconds(lambda: step(b), a.iters, a.warmup, device)
    gemm = a.gemm or {"small": 1024, "caffenet": 2048}[a.net]
    peak = sgemm_gflops(gemm)
    achieved = flops["total"] / step_s / 1e9
    res.update(step_flops=flops, step_s=step_s, gemm=gemm, sgemm_gflops=peak, achieved_gflops=achieved,
               roofline_fraction=achieved / peak, images_per_s={"faithful": batch / step_s})
    print(f"step_gflop: {flops['total'] / 1e9:.3f} ({flops['total'] / batch / 2e9:.4f} GMAC per image)\n"
          f"step_ms: {1000 * step_s:.1f}\nachieved_gflops: {achieved:.1f}\n"
          f"sgemm_gflops: {peak:.1f} (torch.mm {gemm}^3)\nroofline_fraction: {achieved / peak:.3f}", flush=True)
    step = solver = None

    if a.fast:
        fast, _ = build("base_fast", net_path, batch, device)
        fast_s = best_seconds(lambda: fast(b), a.iters, a.warmup, device)
        set_faithful(True)
        ratio = step_s / fast_s
        res["images_per_s"]["fast"] = batch / fast_s
        res["ratio_fast_vs_faithful"] = ratio
        res["fast_pays"] = ratio >= PAYS
        hw = [f for f in BF16_FLAGS if f in flags]
        print(f"images_per_s_faithful: {batch / step_s:.1f}\nimages_per_s_fast: {batch / fast_s:.1f}\n"
              f"ratio_fast_vs_faithful: {ratio:.3f}\n"
              f"fast_pays: {'yes' if ratio >= PAYS else 'no'} ({a.net} batch {batch}; bf16 hardware: "
              f"{', '.join(hw) or 'none'})", flush=True)
    if a.json:
        write_json(a.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
