"""``caffe time``: Caffe's per-layer forward / backward benchmark (tools/caffe.cpp ``time()``) on our Net.

Each layer runs on its own: its bottoms enter as fresh leaves, so one layer's forward and its backward (the
gradients of its bottoms and params, given its tops' gradients) are timed apart, as Caffe times
``Layer::Forward`` and ``Layer::Backward``. The gradients flow down the net by hand in reverse layer order
(a blob used by several layers sums their gradients, Caffe's split layers). A Data layer's forward is its
batch read. CUDA work is synchronised before each clock read.

Caffe's "Average Forward pass" is its own clock around the layer loop; ours is the sum of the per-layer
times, so the printed table adds up to its total (the loop's Python overhead is not a layer's cost).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass
class Timing:
    layers: list[str]
    forward_ms: list[float]    # per layer, averaged over the iterations
    backward_ms: list[float]
    iteration_ms: list[float]  # each iteration's forward-backward wall time
    total_ms: float
    initial_loss: float

    @property
    def forward_total_ms(self) -> float:
        return sum(self.forward_ms)

    @property
    def backward_total_ms(self) -> float:
        return sum(self.backward_ms)


def _clock(device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class _Pass:
    """One layer-by-layer forward and backward of ``net`` with per-layer times (seconds)."""

    def __init__(self, net):
        self.net = net
        self.device = net._device()

    def forward(self, times: list[float]):
        net = self.net
        blobs: dict[str, tuple[int, int]] = {}   # blob name -> (layer index, top index) of its latest version
        self.records = []                        # per layer: (leaf bottoms, tops, bottom sources)
        loss = 0.0
        for i, name in enumerate(net.layer_names):
            layer = net.layer(name)
            t0 = _clock(self.device)
            if layer.is_input:
                tops = tuple(net._input_tops(name, layer, {}))
                leaves, sources = [], []
            else:
                sources = [blobs[b] for b in net.bottom_names[name]]
                leaves = []
                for li, ti in sources:
                    top = self.records[li][1][ti]
                    # Caffe's bottom_need_backward: a bottom gets a gradient only if its producer wants one
                    x = top.detach().requires_grad_(top.requires_grad)
                    leaves.append(x)
                tops = layer(*leaves)
                if not net.bottom_names[name]:
                    tops = tuple(t.to(self.device) for t in tops)
            times[i] += _clock(self.device) - t0
            self.records.append((leaves, tuple(tops), sources))
            for k, t_name in enumerate(net.top_names[name]):
                blobs[t_name] = (i, k)
                w = net.loss_weights.get(t_name)
                if w is not None:
                    loss += float(tops[k].detach().sum()) * w
        return loss

    def backward(self, times: list[float]) -> None:
        net = self.net
        grads: dict[tuple[int, int], torch.Tensor] = {}
        for i in range(len(net.layer_names) - 1, -1, -1):
            name = net.layer_names[i]
            leaves, tops, sources = self.records[i]
            outs, grad_outs = [], []
            for k, (t_name, t) in enumerate(zip(net.top_names[name], tops)):
                g = grads.pop((i, k), None)
                w = net.loss_weights.get(t_name)
                if w:
                    g = torch.full_like(t, w) if g is None else g + w
                if g is not None and t.requires_grad:
                    outs.append(t)
                    grad_outs.append(g)
            t0 = _clock(self.device)
            if outs:
                torch.autograd.backward(outs, grad_outs)
            times[i] += _clock(self.device) - t0
            for x, src in zip(leaves, sources):
                if x.grad is not None:
                    grads[src] = x.grad if src not in grads else grads[src] + x.grad
        for params in net.params.values():
            for w in params:
                w.grad = None


def time_net(net, iterations: int, log=lambda msg: None) -> Timing:
    """Caffe's ``caffe time``: one clean forward/backward, then ``iterations`` timed ones. ``log(msg)`` gets
    Caffe's progress lines ("Iteration: j forward-backward time: t ms.")."""
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    p = _Pass(net)
    n = len(net.layer_names)
    scratch = [0.0] * n
    log("Performing Forward")
    initial = p.forward(scratch)
    log(f"Initial loss: {initial:.6g}")
    log("Performing Backward")
    p.backward(scratch)
    fwd, bwd, per_iter = [0.0] * n, [0.0] * n, []
    log("*** Benchmark begins ***")
    log(f"Testing for {iterations} iterations.")
    start = _clock(p.device)
    for j in range(iterations):
        t0 = _clock(p.device)
        p.forward(fwd)
        p.backward(bwd)
        per_iter.append((_clock(p.device) - t0) * 1e3)
        log(f"Iteration: {j + 1} forward-backward time: {per_iter[-1]:.6g} ms.")
    total = (_clock(p.device) - start) * 1e3
    return Timing(list(net.layer_names), [t * 1e3 / iterations for t in fwd], [t * 1e3 / iterations for t in bwd],
                  per_iter, total, initial)
