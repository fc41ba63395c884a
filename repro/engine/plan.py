"""The training engine's forward: a static run plan of a :class:`repro.net.Net` (:class:`NetPlan`).

``Solver.step`` (repro/solver.py) runs every training iteration through a NetPlan: this is the one training
engine of the project, behind every tool (train_base, transfer, run_grid, caffe.py, train_ddp). What the plan
adds to ``Net.forward`` for training:

* ``NetPlan`` resolves, once, which layer reads which blobs and which layers need a backward at all. Caffe's
  ``Net::Init`` does the same (``layer_need_backward_``): a layer none of whose learnable blobs has a nonzero
  lr_mult and none of whose bottoms carries a gradient gets no backward. In the paper's transfer nets that is
  the frozen prefix (conv1 ... conv n with ``blobs_lr: 0``), which Caffe's log reports as "does not need
  backward computation" and which made those nets ~1.7x faster to train. Those layers run under
  ``torch.no_grad()``: nothing is recorded, no activation is kept for a backward.
* Caffe's cross-channel LRN runs as one autograd node with Caffe's closed-form backward
  (:mod:`repro.layers.lrn_fused`) when ``fused_lrn`` (default: on CUDA; on the CPU the LRN layer does so
  itself).
* the numerics modes of :mod:`repro.engine.modes` (bf16 autocast around the non-float32 layers,
  channels_last inputs, torch.compile of each run of layers between float32 layers).

Net inputs come from ``Net.input_blobs``: given tensors, else the net's Data layer feeders (the Net's own
reader, or one a driver put into ``net.feeders``, e.g. a :class:`repro.data.device_feed.DeviceFeed`). The loss
comes back as a device tensor: nothing here waits for the device.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..layers import build_layer
from ..layers.lrn_fused import lrn_across_channels_fused
from ..prototxt import filter_net, read_net

# Layers kept out of autocast and torch.compile: Caffe's losses and metrics (float32 on purpose; they check
# labels on the host and read protobuf fields, which would split a compiled graph anyway).
FP32_TYPES = frozenset({"SoftmaxWithLoss", "Softmax", "Accuracy", "EuclideanLoss", "SigmoidCrossEntropyLoss",
                        "HingeLoss", "InfogainLoss", "MultinomialLogisticLoss", "ContrastiveLoss"})


@dataclass
class _Step:
    name: str
    type: str
    fn: object                    # the layer module, or a replacement with the same (*bottoms) -> tops
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    detach: tuple[bool, ...]      # propagate_down: false for that bottom
    needs_backward: bool          # Caffe's layer_need_backward_
    fp32: bool                    # run outside autocast, float32 bottoms
    to_device: bool               # no bottoms (DummyData): its CPU tops are moved


class NetPlan:
    """Runs ``net``'s non-input layers in order from a plan built once (see module doc).

    ``plan(inputs) -> (total_loss, outputs)``: ``inputs`` maps net-input blobs (data, label) to tensors; those
    not given come from the net's Data layer feeders (``Net.input_blobs``); ``outputs`` are the net's output
    blobs (``net.outputs``); ``total_loss`` is sum(loss_weight * top) as in ``Net.forward`` (None without a
    loss). Options: ``fused_lrn`` (None: on CUDA; on the CPU the LRN layer
    itself trains through the fused node, so the option changes nothing there), ``autocast`` (a dtype, e.g.
    torch.bfloat16, or None), ``channels_last`` (4-D inputs in that layout), ``compile`` (torch.compile each
    run of layers between fp32 layers).
    """

    def __init__(self, net, *, fused_lrn: bool | None = None, autocast: torch.dtype | None = None,
                 channels_last: bool = False, compile: bool = False, compile_options: dict | None = None):
        self.net = net
        self.device = next((b.device for b in net.buffers()), torch.device("cpu"))
        if fused_lrn is None:
            fused_lrn = self.device.type == "cuda"
        self.fused_lrn, self.autocast, self.channels_last = bool(fused_lrn), autocast, bool(channels_last)
        self.loss_weights = dict(net.loss_weights)
        self.outputs = list(net.outputs)
        self.steps = self._plan(net)
        self.segments = self._segments(compile, compile_options or {})

    # ------------------------------------------------------------------------------------------ planning

    def _plan(self, net) -> list[_Step]:
        grad_blobs = net.inputs_needing_grad
        steps = []
        for name in net.layer_names:
            layer = net.layer(name)
            if layer.is_input:
                continue
            bottoms, tops = tuple(net.bottom_names[name]), tuple(net.top_names[name])
            pd = list(layer.param.propagate_down)
            detach = tuple(bool(pd) and not pd[i] for i in range(len(bottoms)))
            learns = any(p.requires_grad for p in layer.parameters())
            # Caffe: Net::Init: need_backward = any bottom needs it (and propagates down) or a param learns
            needs = learns or any(b in grad_blobs and not d for b, d in zip(bottoms, detach))
            fn = layer
            if self.fused_lrn and layer.type == "LRN" and not layer.within:
                fn = _FusedLRN(layer.size, layer.alpha, layer.beta, layer.k)
            steps.append(_Step(name, layer.type, fn, bottoms, tops, detach, needs, layer.type in FP32_TYPES,
                               not bottoms))
            for t in tops:
                # an in-place top (ReLU) keeps needing a gradient when its bottom did
                if needs:
                    grad_blobs.add(t)
                else:
                    grad_blobs.discard(t)
        return steps

    def _segments(self, compile: bool, options: dict) -> list[tuple[bool, object]]:
        """Consecutive steps grouped into (eager?, runner) pairs; only non-fp32 runs are compiled."""
        groups: list[list[_Step]] = []
        for s in self.steps:
            eager = s.fp32 or s.to_device
            if groups and not eager and not groups[-1][0].fp32 and not groups[-1][0].to_device:
                groups[-1].append(s)
            else:
                groups.append([s])
        out = []
        for g in groups:
            eager = g[0].fp32 or g[0].to_device
            run = _make_runner(self, g)
            if compile and not eager:
                run = torch.compile(run, **options)
            out.append((eager, run))
        return out

    @property
    def frozen_layers(self) -> list[str]:
        """Layers that get no backward (run under no_grad), in order."""
        return [s.name for s in self.steps if not s.needs_backward]

    # ------------------------------------------------------------------------------------------ running

    def __call__(self, inputs: dict | None = None):
        net = self.net
        # Drop the last forward's blobs first (they would keep a second copy of every activation alive).
        net.blobs, net.total_loss = {}, None
        blobs = dict(net.input_blobs(inputs or {}, channels_last=self.channels_last))
        for _, run in self.segments:
            blobs = run(blobs)
        total = None
        for t, w in self.loss_weights.items():
            if t in blobs:
                term = blobs[t].float().sum()
                term = term * w if w != 1.0 else term
                total = term if total is None else total + term
        # pycaffe's solver.net.blobs after a step: the blobs of this forward (held until the next one starts)
        net.blobs, net.total_loss = blobs, total
        return total, {b: blobs[b] for b in self.outputs if b in blobs}


class _FusedLRN:
    """A CaffeLayer-shaped callable (``*bottoms -> tops``) for ACROSS_CHANNELS LRN."""

    def __init__(self, size, alpha, beta, k):
        self.args = (size, alpha, beta, k)

    def __call__(self, x):
        return (lrn_across_channels_fused(x, *self.args),)


def _make_runner(plan: NetPlan, steps: list[_Step]):
    """A function blobs -> blobs running ``steps`` (the unit torch.compile sees)."""
    autocast, device = plan.autocast, plan.device

    def run(blobs: dict) -> dict:
        blobs = dict(blobs)
        for s in steps:
            xs = [blobs[b].detach() if d else blobs[b] for b, d in zip(s.bottoms, s.detach)]
            if s.fp32:
                xs = [x.float() if x.is_floating_point() else x for x in xs]
                ctx = torch.autocast(device.type, enabled=False) if autocast is not None else contextlib.nullcontext()
            elif autocast is not None:
                ctx = torch.autocast(device.type, dtype=autocast)
            else:
                ctx = contextlib.nullcontext()
            with ctx, (contextlib.nullcontext() if s.needs_backward else torch.no_grad()):
                tops = s.fn(*xs)
            if s.to_device:
                tops = tuple(t.to(device) for t in tops)
            for name, t in zip(s.tops, tops):
                blobs[name] = t
        return blobs

    return run


# ---------------------------------------------------------------------------------------------- feeding


def feedable(net_param, phase: str = "TRAIN", batch_size: int | None = None):
    """``net_param`` for ``phase`` with each Data / ImageData layer replaced by an Input layer of the same name,
    tops and shapes (data: batch x C x crop x crop, label: batch), so batches come from outside (a
    :class:`repro.data.loader.Loader`, :class:`repro.data.device_feed.DeviceFeed`, a sharded DDP reader). Returns
    (new NetParameter, {layer name: the replaced LayerParameter}) -- the latter keeps the transform and source
    settings the feeder needs. ``batch_size`` overrides the prototxt's."""
    src = filter_net(read_net(net_param), phase)
    out = type(src)()
    out.CopyFrom(src)
    del out.layer[:]
    replaced = {}
    for lp in src.layer:
        if lp.type not in ("Data", "ImageData"):
            out.layer.add().CopyFrom(lp)
            continue
        shapes = build_layer(lp, [], phase).top_shapes
        if batch_size is not None:
            shapes = [(int(batch_size),) + tuple(s[1:]) for s in shapes]
        new = out.layer.add()
        new.name, new.type = lp.name, "Input"
        new.top.extend(lp.top)
        for s in shapes:
            new.input_param.shape.add().dim.extend(int(d) for d in s)
        replaced[lp.name] = lp
    return out, replaced
