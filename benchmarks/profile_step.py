"""Where one training step of our fast path spends its time: torch.profiler over the step that
benchmarks/train_throughput.py times, summed into categories a reader can act on.

  python -m benchmarks.profile_step --device cuda                                  # CaffeNet b256, base_fp32
  python -m benchmarks.profile_step --device cuda --variant frozen5_fp32 --json p.json --trace p.trace.json
  python -m benchmarks.profile_step --device cpu --net small --batch 16 --iters 2 --warmup 1

The step is train_throughput's ``build(variant)`` (variants ``NET_MODE``: base_fp32, frozen5_fp32, base_tf32,
base_fast, ...; see that script) on a synthetic batch already on the device. After ``--warmup`` steps it is
timed without the profiler (``step_ms``, ``images_per_s``: a plain synchronised loop, best of 3 blocks as in
train_throughput), then ``--iters`` steps run under torch.profiler (CPU, plus CUDA on cuda; record_shapes).

Time is *self* time: on cuda the device (kernel) time of each op, on cpu the op's CPU time minus its
children's. Every unit of it goes to exactly one category, so the categories add up to the profiled total.
Which layer an op belongs to comes from a ``layer:TYPE:NAME`` profiler range that a global nn.Module
forward hook opens around every Caffe layer (forward), and from the autograd sequence number that ties each
backward node to the forward op that created it (backward). The rules, first match wins, are in
``categorize``. Not knowing is said, not guessed: whatever no rule claims is ``other``.

Reading it: on cpu the profiler inflates host time (compare ``step_ms`` with the wall time under the
profiler); on cuda the categories are GPU busy time, and the idle share of the profiled wall time says how much
the step waits on the host. ``nan_fill`` is the NaN fill of every new tensor that deterministic algorithms
make torch do (torch.utils.deterministic.fill_uninitialized_memory); faithful mode turns it off
(repro.numerics), so it shows only when a user turns it back on.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections import defaultdict

import torch
from torch.autograd import DeviceType
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.profiler import ProfilerActivity, profile, record_function

from repro.atomic import atomic_write
from repro.layers.base import CaffeLayer
from repro.numerics import numerics_state

from .common import NETS, command_line, default_device, environment, pick_device, sync, timed, write_json
from .train_throughput import build

CATEGORIES = {  # key: label, in the order they are printed
    "conv_fwd": "conv forward",
    "conv_dgrad": "conv input-gradient",
    "conv_wgrad_native": "conv weight-gradient, cuDNN/oneDNN kernels (+ bias)",
    "conv_wgrad_im2col": "conv weight-gradient, our im2col + bmm (+ bias)",
    "conv_bwd_unsplit": "conv backward, input+weight in one call (not separable)",
    "pooling": "pooling",
    "lrn": "LRN",
    "relu_dropout": "ReLU / dropout",
    "fc": "fc (InnerProduct) matmuls",
    "loss": "loss (SoftmaxWithLoss)",
    "update": "solver update (foreach SGD)",
    "copies": "copies / casts / layout (copy_, to, contiguous)",
    "nan_fill": "NaN fill of new tensors (deterministic mode)",
    "overhead": "host time outside aten ops (Python, autograd, ranges)",
    "other": "other",
}
LAYER_CATEGORY = {"Pooling": "pooling", "LRN": "lrn", "ReLU": "relu_dropout", "Dropout": "relu_dropout",
                  "InnerProduct": "fc", "SoftmaxWithLoss": "loss"}
# Our custom autograd Functions: torch records a range named after the class around Function.apply, and the
# backward node is "<class>Backward". They tell the layer where no layer range does (the fused LRN is a plain
# callable, not an nn.Module, so no hook sees it).
FUNCTION_LAYER = {"_ConvCaffeWgrad": "Convolution", "CrossChannelLRN": "LRN", "_SoftmaxLoss": "SoftmaxWithLoss"}
EVAL = "autograd::engine::evaluate_function: "
COPY_OPS = {"aten::copy_", "aten::_to_copy", "aten::to", "aten::clone", "aten::contiguous", "aten::permute",
            "aten::_copy_from", "aten::_copy_from_and_resize"}
ALLOC_OPS = {"aten::empty", "aten::empty_like", "aten::empty_strided", "aten::new_empty", "aten::new_empty_strided",
             "aten::resize_"}
CONV_FWD_OPS = {"aten::convolution", "aten::_convolution", "aten::cudnn_convolution", "aten::mkldnn_convolution",
                "aten::thnn_conv2d", "aten::_slow_conv2d_forward"}
# Name rules for when no layer is known (--no-layer-ranges, compiled variants): ops only one layer kind uses.
NAME_CATEGORY = {"aten::max_pool2d_with_indices": "pooling", "aten::max_pool2d_with_indices_backward": "pooling",
                 "aten::avg_pool3d": "lrn",  # repro.layers.lrn_fused's channel window sum; nothing else pools in 3-D
                 "aten::avg_pool3d_backward": "lrn", "aten::clamp_min": "relu_dropout",
                 "aten::threshold_backward": "relu_dropout", "aten::bernoulli_": "relu_dropout",
                 "aten::native_dropout": "relu_dropout", "aten::native_dropout_backward": "relu_dropout"}


# ---------------------------------------------------------------------------------------------- layer ranges


class LayerRanges:
    """While active, every Caffe layer's forward runs inside ``record_function("layer:TYPE:NAME")``, through
    torch's global nn.Module forward hooks (repro/ is not touched; the run plan offers no hook of its own)."""

    def __init__(self):
        self.cls, self.open, self.handles = CaffeLayer, [], []

    def _pre(self, module, args):
        if isinstance(module, self.cls):
            rf = record_function(f"layer:{module.type}:{module.name}")
            rf.__enter__()
            self.open.append((module, rf))

    def _post(self, module, args, out):
        if self.open and self.open[-1][0] is module:
            self.open.pop()[1].__exit__(None, None, None)

    def __enter__(self):
        self.handles = [register_module_forward_pre_hook(self._pre), register_module_forward_hook(self._post)]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        while self.open:
            self.open.pop()[1].__exit__(None, None, None)


# ---------------------------------------------------------------------------------------------- analysis


class _Ctx:
    """What an event is nested in: the layer range, one of our Functions, the backward node, the
    convolution_backward call, a foreach op, a conv forward op."""

    __slots__ = ("layer", "function", "node", "conv_bwd", "foreach", "conv_fwd")

    def __init__(self, parent: "_Ctx | None", e):
        for k in self.__slots__:
            setattr(self, k, getattr(parent, k) if parent else None)
        name = e.name
        if name.startswith("layer:"):
            _, t, n = name.split(":", 2)
            self.layer = (t, n)
        elif name in FUNCTION_LAYER:
            self.function = name
        elif name.startswith(EVAL):
            self.node = e
        elif name == "aten::convolution_backward":
            self.conv_bwd = e
        elif name.startswith("aten::_foreach_"):
            self.foreach = True
        elif name in CONV_FWD_OPS:
            self.conv_fwd = True


def _mask(conv_bwd):
    """convolution_backward's output_mask (input, weight, bias) from the recorded concrete inputs, or None."""
    ci = getattr(conv_bwd, "concrete_inputs", None) or []
    m = ci[-1] if ci else None
    return [bool(v) for v in m] if isinstance(m, (list, tuple)) and len(m) == 3 else None


def _nan_or_unknown(fill) -> bool:
    """Whether a fill_'s recorded value is NaN (True when the value was not recorded)."""
    ci = getattr(fill, "concrete_inputs", None) or []
    v = ci[1] if len(ci) > 1 else None
    return not isinstance(v, (int, float)) or v != v


def categorize(e, ctx: _Ctx, layer, kernel: str | None, on_cpu: bool) -> str:
    """The category of ``e``'s self time (on cuda: of one of its kernels, ``kernel`` its name). ``layer`` is
    (type, name) or None. Rules, first match wins:"""
    name = e.name
    # 1. Host time in events that are not aten ops (our ranges, autograd nodes, custom Functions' Python):
    #    real on the CPU, and inflated there by the profiler itself. Never device time.
    if on_cpu and not name.startswith("aten::"):
        return "overhead"
    # 2. torch.use_deterministic_algorithms fills every new tensor with NaN
    #    (torch.utils.deterministic.fill_uninitialized_memory): a fill_ directly inside an allocation.
    if name == "aten::fill_" and e.cpu_parent is not None and e.cpu_parent.name in ALLOC_OPS and _nan_or_unknown(e):
        return "nan_fill"
    # 3. Caffe's SGD (repro.sgd.sgd_update_) is torch._foreach_* ops and what they call.
    if ctx.foreach:
        return "update"
    node = ctx.node.name[len(EVAL):] if ctx.node is not None else None
    # 4. Our faithful conv backward (repro.layers.vision._ConvCaffeWgrad): the input gradient is one
    #    convolution_backward call; everything else in the node is the im2col weight (and bias) gradient,
    #    its own copies (permute/reshape of the columns) included.
    if node == "_ConvCaffeWgradBackward":
        return "conv_dgrad" if ctx.conv_bwd is not None else "conv_wgrad_im2col"
    # 5. Copies anywhere else.
    if name in COPY_OPS:
        return "copies"
    # 6. Stock conv backward: split by its output_mask; when it computes both, by cuDNN's kernel names.
    if ctx.conv_bwd is not None:
        if name == "aten::sum":  # the bias gradient, a reduction the call makes itself
            return "conv_wgrad_native"
        m = _mask(ctx.conv_bwd)
        if m is not None and m[0] and not (m[1] or m[2]):
            return "conv_dgrad"
        if m is not None and not m[0]:
            return "conv_wgrad_native"
        k = (kernel or "").lower()
        if "dgrad" in k:
            return "conv_dgrad"
        if "wgrad" in k:
            return "conv_wgrad_native"
        return "conv_bwd_unsplit"  # e.g. oneDNN on the CPU: one op, both gradients; or an unnamed kernel
    # 7. The layer the op belongs to.
    if layer is not None:
        if layer[0] == "Convolution":
            return "conv_fwd" if node is None else "other"
        if layer[0] in LAYER_CATEGORY:
            return LAYER_CATEGORY[layer[0]]
    # 8. Names only one layer kind produces (no layer known).
    if ctx.conv_fwd and node is None:
        return "conv_fwd"
    return NAME_CATEGORY.get(name, "other")


def analyse(prof, iters: int, on_cpu: bool) -> dict:
    """Categories, phases, layers, top ops and kernels (ms per step) from a finished profile."""
    events = list(prof.events())
    host = [e for e in events if e.device_type == DeviceType.CPU and not e.is_async]
    host.sort(key=lambda e: (e.time_range.start, -e.time_range.end))
    ctxs, seq_layer = {}, {}
    for e in host:  # parents start no later than their children, so a parent's context is ready
        ctxs[id(e)] = c = _Ctx(ctxs.get(id(e.cpu_parent)) if e.cpu_parent is not None else None, e)
        if c.node is None and e.sequence_nr >= 0:
            # An op that records no node peeks the next sequence number, so the node numbered s was created
            # by the last forward op carrying s: later events overwrite earlier ones.
            seq_layer[(e.thread, e.sequence_nr)] = c.layer or (
                (FUNCTION_LAYER[c.function], f"({c.function})") if c.function else None)

    def layer_of(c):
        if c.node is None:
            return c.layer or ((FUNCTION_LAYER[c.function], f"({c.function})") if c.function else None)
        lay = seq_layer.get((c.node.fwd_thread, c.node.sequence_nr))
        fn = c.node.name[len(EVAL):].removesuffix("Backward")
        return lay or ((FUNCTION_LAYER[fn], f"({fn})") if fn in FUNCTION_LAYER else None)

    cat = defaultdict(float)
    phase = defaultdict(float)
    layers = defaultdict(lambda: defaultdict(float))
    ops = defaultdict(lambda: {"us": 0.0, "events": set(), "shapes": defaultdict(float)})
    kernels = defaultdict(lambda: {"us": 0.0, "n": 0})
    for e in host:
        c = ctxs[id(e)]
        units = [(None, e.self_cpu_time_total)] if on_cpu else [(k.name, k.duration) for k in e.kernels]
        lay = layer_of(c)
        for kname, us in units:
            if us <= 0:
                continue
            k = categorize(e, c, lay, kname, on_cpu)
            cat[k] += us
            ph = "backward" if c.node is not None else ("update" if k == "update" else "forward")
            phase[ph] += us
            if lay is not None and k != "overhead":
                layers[lay][ph] += us
            op = ops[(e.name, k)]
            op["us"] += us
            op["events"].add(id(e))
            op["shapes"][_shapes(e)] += us
            if kname is not None:
                kernels[(kname, k)]["us"] += us
                kernels[(kname, k)]["n"] += 1
    total = sum(cat.values())
    if not on_cpu:  # device work no op launched (rare) is counted too, so the total is all the device time
        busy = sum(e.time_range.elapsed_us() for e in events if e.device_type != DeviceType.CPU)
        if busy > total:
            cat["other"] += busy - total
            phase["unattributed"] += busy - total
            total = busy
    ms = 1e-3 / iters
    pct = (lambda us: 100.0 * us / total if total else 0.0)
    return {
        "total_ms_per_step": total * ms,
        "categories": {k: {"label": CATEGORIES[k], "ms_per_step": cat.get(k, 0.0) * ms, "pct": pct(cat.get(k, 0))}
                       for k in CATEGORIES},
        "phases": {k: {"ms_per_step": v * ms, "pct": pct(v)} for k, v in phase.items()},
        "layers": [{"layer": n, "type": t, **{f"{p}_ms": v * ms for p, v in d.items()}}
                   for (t, n), d in sorted(layers.items(), key=lambda kv: -sum(kv[1].values()))],
        "top_ops": [{"op": n, "category": k, "calls_per_step": len(d["events"]) / iters, "ms_per_step": d["us"] * ms,
                     "pct": pct(d["us"]),
                     "shapes": [{"shapes": s, "ms_per_step": v * ms}
                                for s, v in sorted(d["shapes"].items(), key=lambda kv: -kv[1])[:3]]}
                    for (n, k), d in sorted(ops.items(), key=lambda kv: -kv[1]["us"])],
        "top_kernels": [{"kernel": n, "category": k, "calls_per_step": d["n"] / iters, "ms_per_step": d["us"] * ms,
                         "pct": pct(d["us"])} for (n, k), d in sorted(kernels.items(), key=lambda kv: -kv[1]["us"])],
    }


def _short(kernel: str, width: int = 100) -> str:
    """A kernel name without 'void ' and its parameter list, its middle cut out when still too long (the
    tail of a templated name often carries the functor that tells elementwise kernels apart)."""
    k = kernel.removeprefix("void ")
    if k.endswith(")") and "(" in k:
        depth = 0
        for i in range(len(k) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(k[i], 0)
            if depth == 0:
                k = k[:i] if i and k[i - 1] != " " else k  # "Memcpy DtoD (Device -> Device)" keeps its words
                break
    return k if len(k) <= width else k[: width - 41] + "..." + k[-38:]


def _shapes(e) -> str:
    return " ".join("x".join(map(str, s)) for s in (e.input_shapes or []) if s) or "-"


# ---------------------------------------------------------------------------------------------- report


def report(res: dict, top: int) -> None:
    p = res["profile"]
    kind = res["time_kind"]
    print(f"profiled: {res['iters']} steps, {kind} {p['total_ms_per_step']:.2f} ms/step; wall under the profiler "
          f"{res['profiled_wall_ms_per_step']:.2f} ms/step (plain step_ms {res['step_ms']:.2f})")
    if kind == "self CUDA time":  # busy < wall: the GPU waits on the host (launches, Python) part of the step
        idle = 1 - p["total_ms_per_step"] / res["profiled_wall_ms_per_step"]
        print(f"device idle under the profiler: {100 * idle:.1f}% of the wall time")
    print(f"\ncategories ({kind} per step):")
    for d in p["categories"].values():
        print(f"  {d['label']:<58} {d['ms_per_step']:10.3f} ms {d['pct']:6.1f}%")
    print("  phases: " + ", ".join(f"{k} {d['ms_per_step']:.2f} ms ({d['pct']:.1f}%)"
                                   for k, d in sorted(p["phases"].items())))
    print(f"\ntop {top} ops by {kind}:")
    print(f"  {'op':<38} {'category':<18} {'calls':>6} {'ms/step':>9} {'%':>6}  biggest input shapes")
    for i, o in enumerate(p["top_ops"][:top]):
        shapes = o["shapes"][0]["shapes"] if o["shapes"] else "-"
        if i < 10 and len(o["shapes"]) > 1:
            shapes += f"  | {o['shapes'][1]['shapes']}"
        print(f"  {o['op'][:38]:<38} {o['category']:<18} {o['calls_per_step']:6.1f} {o['ms_per_step']:9.3f} "
              f"{o['pct']:6.1f}  {shapes[:110]}")
    if p["top_kernels"]:
        print(f"\ntop {top} kernels:")
        for o in p["top_kernels"][:top]:
            print(f"  {_short(o['kernel']):<100} {o['category']:<18} {o['calls_per_step']:6.1f} "
                  f"{o['ms_per_step']:9.3f} {o['pct']:6.1f}")
    print(f"\nlayers ({kind} per step, host overhead excluded):")
    for d in p["layers"]:
        print(f"  {d['layer']:<22} {d['type']:<16} fwd {d.get('forward_ms', 0):9.3f} ms  "
              f"bwd {d.get('backward_ms', 0):9.3f} ms")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=default_device(), choices=("cpu", "cuda"))
    ap.add_argument("--net", choices=tuple(NETS), default="caffenet")
    ap.add_argument("--batch", type=int, help="batch size (default: 256 caffenet, 64 small)")
    ap.add_argument("--variant", default="base_fp32", help="a train_throughput NET_MODE variant")
    ap.add_argument("--iters", type=int, default=5, help="profiled steps (and the plain timed loop's)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (cudnn, allocator, compile)")
    ap.add_argument("--top", type=int, default=25, help="rows of the op and kernel tables")
    ap.add_argument("--no-layer-ranges", action="store_true",
                    help="no per-layer profiler ranges (off anyway for *_compile: the hooks would split graphs)")
    ap.add_argument("--json", help="write everything here (atomically)")
    ap.add_argument("--trace", help="export a Chrome trace here (chrome://tracing, ui.perfetto.dev)")
    a = ap.parse_args(argv)
    if a.iters < 1 or a.warmup < 0:
        ap.error("--iters must be >= 1 and --warmup >= 0")
    device = pick_device(a.device)
    net_path, _, crop, classes = NETS[a.net]
    batch = a.batch or {"caffenet": 256, "small": 64}[a.net]
    on_cpu = device.type == "cpu"
    res = {**environment(device), "command": command_line("benchmarks.profile_step", argv), "variant": a.variant,
           "net": a.net, "batch": batch, "iters": a.iters, "warmup": a.warmup,
           "time_kind": "self CPU time" if on_cpu else "self CUDA time"}
    print(f"{a.variant}: {a.net} batch {batch} on {res['gpu'] or res['cpu']}, torch {torch.__version__}", flush=True)
    step, _ = build(a.variant, net_path, batch, device)
    res["numerics"] = numerics_state()
    b = {"data": torch.randn(batch, 3, crop, crop, device=device) * 50,
         "label": torch.randint(0, classes, (batch,), device=device).float()}
    for _ in range(a.warmup):
        step(b)
    sync(device)
    ips = timed(lambda: step(b), a.iters, 0, batch, device)
    res["images_per_s"], res["step_ms"] = ips, 1000.0 * batch / ips
    print(f"step_ms: {res['step_ms']:.3f}\nimages_per_s: {ips:.1f}", flush=True)

    ranges = not a.no_layer_ranges and not a.variant.endswith("_compile")
    res["layer_ranges"] = ranges
    acts = [ProfilerActivity.CPU] + ([] if on_cpu else [ProfilerActivity.CUDA])
    with profile(activities=acts, record_shapes=True) as prof:
        with (LayerRanges() if ranges else contextlib.nullcontext()):
            t = time.perf_counter()
            for _ in range(a.iters):
                step(b)
            sync(device)
            res["profiled_wall_ms_per_step"] = 1000.0 * (time.perf_counter() - t) / a.iters
    res["profile"] = analyse(prof, a.iters, on_cpu)
    report(res, a.top)
    if a.trace:
        atomic_write(a.trace, prof.export_chrome_trace)
        res["trace"] = a.trace
    if a.json:
        write_json(a.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
