"""Convolution weight gradients: Caffe's algorithm (faithful mode's im2col path) against the native kernel.

  python -m benchmarks.conv_wgrad --device cuda                  # CaffeNet's conv1-5 at batch 256
  python -m benchmarks.conv_wgrad --device cpu --batch 16        # the same shapes, CPU
  python -m benchmarks.conv_wgrad --device cpu --net small --batch 64

Faithful mode on CUDA computes every learning convolution's weight gradient with
``repro.layers.vision.conv_weight_grad_im2col`` (im2col + one GEMM per image and group, summed over the batch:
Caffe's ``BaseConvolutionLayer::weight_cpu_gemm`` order), because cuDNN's fp32 weight gradient of CaffeNet's
grouped conv2 lands ~1.4e-3 away from Caffe's. This script times, for each Convolution layer of the net at its
real blob shapes, under faithful numerics (repro.numerics.set_faithful):

  native   the framework's own weight gradient (cuDNN on CUDA, oneDNN/native on the CPU) -- the baseline;
  ours     conv_weight_grad_im2col, what faithful mode runs;
  stacked  the same im2col, but one GEMM per group with the chunk's images stacked along K (the formulation
           faithful mode used before; kept here to show which of the two a device prefers).

and each one's error against a float64 computation of the same gradient (max |err| / max |ref|). Prints
``ms_<layer>_<route>: X``, ``err_<layer>_<route>: X``, ``ratio_wgrad_<layer>: native_ms / ours_ms`` and
``ratio_wgrad_total`` / ``ratio_wgrad_vs_stacked`` over all layers (> 1: ours is faster). ``--json`` writes
everything.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from repro.engine.plan import feedable
from repro.layers.vision import conv_weight_grad_im2col
from repro.net import Net
from repro.numerics import numerics_state, set_faithful

from .common import NETS, command_line, default_device, environment, pick_device, sync, write_json


def conv_shapes(net_path, batch: int):
    """[(name, bottom shape, weight shape, stride, pad, dilation, group)] for the net's Convolution layers."""
    net_param, _ = feedable(net_path, "TRAIN", batch_size=batch)
    net = Net(net_param, "TRAIN")
    out = []
    for lp in net_param.layer:
        if lp.type == "Convolution":
            conv = net.layer(lp.name)
            out.append((lp.name, net.blob_shapes[lp.bottom[0]], tuple(conv.blobs[0].shape), conv.stride, conv.pad,
                        conv.dilation, conv.group))
    return out


def native_wgrad(x, gy, w, stride, pad, dilation, groups):
    return torch.ops.aten.convolution_backward(gy, x, w, None, stride, pad, dilation, False, [0, 0], groups,
                                               [False, True, False])[1]


def stacked_wgrad(x, gy, w_shape, stride, pad, dilation, groups, max_elems=1 << 26):
    """im2col, then per group ONE GEMM with the chunk's images stacked along the reduction axis (m*L deep)."""
    n, out = x.shape[0], w_shape[0]
    cin_g, kh, kw = w_shape[1:]
    ckk, og = cin_g * kh * kw, out // groups
    length = gy.shape[2] * gy.shape[3]
    step = max(1, max_elems // (groups * ckk * length))
    gw = x.new_zeros(groups, og, ckk)
    for i in range(0, n, step):
        xs, gs = x[i: i + step], gy[i: i + step]
        m = xs.shape[0]
        cols = F.unfold(xs, (kh, kw), dilation=dilation, padding=pad, stride=stride)
        cols = cols.view(m, groups, ckk, length).permute(1, 0, 3, 2).reshape(groups, m * length, ckk)
        top = gs.reshape(m, groups, og, length).permute(1, 2, 0, 3).reshape(groups, og, m * length)
        gw += torch.bmm(top, cols)
    return gw.view(w_shape)


def timed_ms(fn, device, iters: int, warmup: int) -> float:
    """Median milliseconds of fn() over `iters` synchronised calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    times.sort()
    return 1e3 * times[len(times) // 2]


def rel_err(ours, ref) -> float:
    return float((ours.double() - ref).abs().max() / ref.abs().max())


def measure(shapes, device, iters: int, warmup: int, seed: int = 0) -> dict:

    gen = torch.Generator().manual_seed(seed)
    rows = {}
    for name, x_shape, w_shape, stride, pad, dilation, groups in shapes:
        # Post-ReLU-like bottoms (non-negative) and signed top diffs, as in a real backward pass.
        x = torch.rand(x_shape, generator=gen).to(device)
        w = (torch.randn(w_shape, generator=gen) * 0.01).to(device)
        y_shape = F.conv2d(x[:1], w, None, stride, pad, dilation, groups).shape[1:]
        gy = (torch.randn((x_shape[0], *y_shape), generator=gen) * 1e-3).to(device)
        ref = native_wgrad(x.double(), gy.double(), w.double(), stride, pad, dilation, groups)
        routes = {"native": lambda: native_wgrad(x, gy, w, stride, pad, dilation, groups),
                  "ours": lambda: conv_weight_grad_im2col(x, gy, w_shape, stride, pad, dilation, groups),
                  "stacked": lambda: stacked_wgrad(x, gy, w_shape, stride, pad, dilation, groups)}
        row = {"bottom": list(x_shape), "weight": list(w_shape), "group": groups}
        for route, fn in routes.items():
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            row[f"err_{route}"] = rel_err(fn(), ref)
            row[f"ms_{route}"] = timed_ms(fn, device, iters, warmup)
            if device.type == "cuda":
                row[f"extra_gib_{route}"] = (torch.cuda.max_memory_allocated(device) - base) / 2**30
        rows[name] = row
        del x, w, gy, ref
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=default_device())
    ap.add_argument("--net", choices=sorted(NETS), default="caffenet")
    ap.add_argument("--batch", type=int, default=None, help="default: 256 on cuda, 16 on cpu")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    device = pick_device(args.device)
    batch = args.batch or (256 if device.type == "cuda" else 16)
    set_faithful(True)
    shapes = conv_shapes(NETS[args.net][0], batch)
    rows = measure(shapes, device, args.iters, args.warmup)
    for name, row in rows.items():
        for route in ("native", "ours", "stacked"):
            print(f"ms_{name}_{route}: {row[f'ms_{route}']:.3f}   err_{name}_{route}: {row[f'err_{route}']:.2e}")
        print(f"ratio_wgrad_{name}: {row['ms_native'] / row['ms_ours']:.3f}")
    total = {route: sum(r[f"ms_{route}"] for r in rows.values()) for route in ("native", "ours", "stacked")}
    ratios = {"wgrad_total": total["native"] / total["ours"], "wgrad_vs_stacked": total["stacked"] / total["ours"]}
    print(f"ms_total: native {total['native']:.2f}, ours {total['ours']:.2f}, stacked {total['stacked']:.2f} "
          f"(batch {batch}, {args.net}, {device})")
    for key, value in ratios.items():
        print(f"ratio_{key}: {value:.3f}")
    if args.json:
        report = {**environment(device), "command": command_line("benchmarks.conv_wgrad", argv), "net": args.net,
                  "batch": batch, "iters": args.iters, "numerics": numerics_state(), "layers": rows,
                  "total_ms": total, "ratios": ratios}
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
