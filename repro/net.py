"""A pycaffe-shaped ``Net``: a Caffe prototxt as a ``torch.nn.Module`` with Caffe's numerics.

    net = Net("prototxt/caffenet/train_val.prototxt", phase="TRAIN", seed=1)
    out = net(data=images, label=labels)       # {"loss": tensor(...)}: the net's output blobs
    net.total_loss.backward()                   # sum of loss_weight * loss over the loss tops
    net.blobs["fc7"], net.params["conv1"][0]    # blobs after the last forward; weights in Caffe shapes
    net.copy_from("base.caffemodel")            # Net::CopyTrainedLayersFrom: by layer name
    net.save("snapshot.caffemodel")

Caffe's Net::Init, in short: layers are filtered by phase/level/stage (repro.prototxt.filter_net), built in
order from their bottoms' shapes, weights filled by their fillers; the output blobs are the tops no later layer
consumes; a layer's learnable blobs with lr_mult 0 get no diff at all (requires_grad False), so backward stops
at the lowest layer that still needs a gradient; force_backward makes the inputs' gradients computed too.

In-place layers (top == bottom, e.g. ReLU) are functional here: ``net.blobs[name]`` holds the blob's final
value (post-ReLU, as in Caffe), and ``net.diffs[name]`` (with ``keep_diffs = True``) the gradient at the
blob's first producer, which is what Caffe's shared diff holds after backward (the pre-ReLU gradient).

``net.inputs`` lists the tops of the net-input layers (Input, Data, ImageData, MemoryData) -- the names
``net(**inputs)`` takes (pycaffe lists only legacy net-level inputs there); ``net.outputs`` the output blobs.

Layer modules live in ``net.layers`` (an nn.ModuleDict). Its keys are the Caffe layer names, except that
'.' and '%' are written %2E and %25 and a name that clashes with a ModuleDict attribute gets a '%' prefix
(PyTorch forbids both); use ``net.layer(name)`` to look a layer up by its Caffe name.
"""
from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from . import caffe_rng, caffemodel
from .errors import ReproError
from .layers import LayerError, build_layer, phase_name
from .numerics import set_faithful
from .prototxt import filter_net, is_path, read_net
from .weights import CopyReport, WeightsError, copy_file


class NetError(ReproError):
    """Wrong use of a Net: missing or mis-shaped inputs, weights that do not fit (names layer and shapes)."""


def module_key(layer_name: str) -> str:
    """The ModuleDict key for a Caffe layer name (see the module docstring)."""
    key = layer_name.replace("%", "%25").replace(".", "%2E")
    if not key or hasattr(nn.ModuleDict(), key):
        key = "%" + key
    return key


def _auto_top(lp) -> str | None:
    """Caffe: Net::Init gives a layer whose AutoTopBlobs() is true (every LossLayer) the top it needs when the
    prototxt names none (the paper's V0 nets: a ``softmax_loss`` layer without a top); the blob is anonymous
    ("(automatic)"; we add the layer's name to keep blob names unique) and not a net output. Returns its name,
    or None when the layer names its tops."""
    from .layers.base import _REGISTRY

    if len(lp.top) or not getattr(_REGISTRY.get(lp.type), "is_loss", False):
        return None
    return f"(automatic) {lp.name}"


def _with_top(lp, top: str):
    """A copy of LayerParameter ``lp`` with ``top`` added (the net's own NetParameter stays as written)."""
    out = type(lp)()
    out.CopyFrom(lp)
    out.top.append(top)
    return out


class Net(nn.Module):
    """See the module docstring. Arguments:

    prototxt: path, prototxt text or caffe_pb2.NetParameter (any of Caffe's syntaxes; upgraded to V2). A str
        is a path unless it parses as prototxt and names no existing file (``repro.prototxt.is_path``): an
        existing file always wins, so a path containing ``{`` or a newline works; text is recognised by
        parsing. ``text=`` gives prototxt text explicitly (never taken for a path); give one of the two.
    phase: "TRAIN" or "TEST"; level, stages: Caffe's NetState for include/exclude rules.
    weights: a .caffemodel / .pt / .onnx / run folder to ``copy_from`` after initialisation; one that matches
        no layer of the net is an error.
    seed / generator: make the filler initialisation reproducible (Caffe's random_seed); a CPU generator.
    input_shapes: {top: shape} for net-input tops whose shape the prototxt does not give (a Data layer
        without crop_size) or that should differ from it.
    data_root: directory relative data sources are resolved against by the data layer feeder (default: the
        working directory, as Caffe resolves them).
    faithful: apply ``repro.numerics.set_faithful(True)`` (IEEE float32, deterministic algorithms).
    """

    def __init__(self, prototxt=None, phase="TRAIN", weights=None, level=0, stages=(), seed=None, generator=None,
                 input_shapes=None, data_root=None, faithful=True, *, text=None):
        super().__init__()
        if faithful:
            set_faithful(True)
        self.phase = phase_name(phase)
        if (prototxt is None) == (text is None):
            raise TypeError("Net needs a prototxt (path, text or NetParameter) or text=, exactly one")
        self.source = os.fspath(prototxt) if text is None and is_path(prototxt) else None
        net = read_net(text=text) if text is not None else read_net(prototxt)
        self.net_param = filter_net(net, self.phase, level, stages)
        self.name = self.net_param.name
        self.force_backward = bool(self.net_param.force_backward)
        self.data_root = data_root
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        self.layers = nn.ModuleDict()
        self.register_buffer("_device_probe", torch.empty(0), persistent=False)
        self.layer_names: list[str] = []
        self.bottom_names: dict[str, list[str]] = {}
        self.top_names: dict[str, list[str]] = {}
        self.blob_shapes: OrderedDict[str, tuple] = OrderedDict()
        self.param_specs: OrderedDict[str, list[tuple[float, float]]] = OrderedDict()
        self.loss_weights: OrderedDict[str, float] = OrderedDict()
        self.inputs: list[str] = []
        self._build(input_shapes or {}, generator)
        self.train(self.phase == "TRAIN")
        # After each forward: final value per blob, every version of each blob (first = producer's output).
        self.blobs: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._first: dict[str, torch.Tensor] = {}
        self.total_loss: torch.Tensor | None = None
        self.keep_diffs = False
        self._feeders: dict[str, object] = {}
        if weights is not None:
            self.copy_from(weights)

    # ------------------------------------------------------------------------------------------ building

    def _build(self, input_shapes, generator):
        self._caffe_seeds: dict[str, dict] = {}  # data layer -> its seeds drawn from Caffe's stream at set-up
        available: list[str] = []  # Caffe's available_blobs, in order
        consumers_allow: dict[str, bool] = {}
        for lp in self.net_param.layer:
            name = lp.name
            anonymous = _auto_top(lp)
            if anonymous:
                lp = _with_top(lp, anonymous)
            shapes = [self.blob_shapes[b] for b in lp.bottom]
            top_shapes = self._given_top_shapes(lp, input_shapes)
            try:
                layer = build_layer(lp, shapes, phase_name(lp.phase), generator, top_shapes=top_shapes)
            except LayerError as e:
                raise NetError(f"{self.source or self.name or '<net>'}: {e}") from None
            self.layers[module_key(name)] = layer
            self.layer_names.append(name)
            if lp.type in ("Data", "ImageData") and caffe_rng.current() is not None:
                self._caffe_seeds[name] = _data_layer_draws(lp, phase_name(lp.phase), caffe_rng.current())
            self.bottom_names[name] = list(lp.bottom)
            self.top_names[name] = list(lp.top)
            if layer.is_input:
                self.inputs.extend(lp.top)
            for i, b in enumerate(lp.bottom):
                consumers_allow[b] = consumers_allow.get(b, False) or layer.allow_force_backward(i)
                if b in available:
                    available.remove(b)
            for t, shape in zip(lp.top, layer.top_shapes):
                self.blob_shapes[t] = tuple(shape)
                if t != anonymous:  # Caffe: an anonymous top is never a net output
                    available.append(t)
            self._setup_params(lp, layer)
            self._setup_loss_weights(lp, layer)
        self.outputs = sorted(available)  # Caffe keeps them in a std::set: sorted by name
        self._input_needs_grad = {b: consumers_allow.get(b, False) for b in self.inputs}

    def _given_top_shapes(self, lp, input_shapes):
        given = [input_shapes.get(t) for t in lp.top]
        if all(g is None for g in given):
            return None
        if given[0] is None:
            raise NetError(f"layer {lp.name!r}: input_shapes gives {lp.top[1]!r} but not {lp.top[0]!r}")
        # A label top left out gets (batch,), as Caffe's data layers give it.
        return [tuple(g) if g is not None else (int(given[0][0]),) for g in given]

    def _setup_params(self, lp, layer):
        blobs = layer.caffe_blobs
        if not blobs:
            return
        if len(lp.param) > len(blobs):
            raise NetError(f"layer {lp.name!r}: {len(lp.param)} param specs for {len(blobs)} learnable blobs")
        specs = []
        for j, blob in enumerate(blobs):
            spec = lp.param[j] if j < len(lp.param) else None
            if spec is not None and spec.name:
                raise NetError(f"layer {lp.name!r}: parameter sharing (param {{ name: {spec.name!r} }}) is not "
                               f"supported")
            if layer.type == "BatchNorm":
                lr, decay = 0.0, float(spec.decay_mult) if spec is not None else 1.0  # Caffe forces lr_mult 0
            else:
                lr = float(spec.lr_mult) if spec is not None else 1.0
                decay = float(spec.decay_mult) if spec is not None else 1.0
            specs.append((lr, decay))
            # Caffe: lr_mult 0 means param_propagate_down false -- no diff is computed for the blob at all.
            blob.requires_grad_(lr != 0.0)
        self.param_specs[lp.name] = specs

    def _setup_loss_weights(self, lp, layer):
        # Caffe: Layer::SetLossWeights -- one loss_weight per top, or none (loss layers: 1 on top 0).
        if len(lp.loss_weight):
            if len(lp.loss_weight) != len(lp.top):
                raise NetError(f"layer {lp.name!r}: loss_weight must be given once per top blob or not at all")
            weights = [float(w) for w in lp.loss_weight]
        else:
            weights = [1.0] + [0.0] * (len(lp.top) - 1) if getattr(layer, "is_loss", False) else []
        for t, w in zip(lp.top, weights):
            if w != 0.0:
                self.loss_weights[t] = w

    # ------------------------------------------------------------------------------------------ lookups

    def layer(self, name: str):
        """The module of the Caffe layer ``name``."""
        try:
            return self.layers[module_key(name)]
        except KeyError:
            raise KeyError(f"no layer {name!r} in net {self.name!r}") from None

    @property
    def params(self) -> OrderedDict:
        """layer name -> list of learnable blobs (nn.Parameter, Caffe shapes: weight, bias), in layer order."""
        return OrderedDict((n, self.layer(n).caffe_blobs) for n in self.param_specs)

    def layer_params(self, name: str) -> list[tuple[float, float]]:
        """(lr_mult, decay_mult) of each learnable blob of layer ``name``."""
        return list(self.param_specs[name])

    @property
    def diffs(self) -> OrderedDict:
        """blob -> Caffe's diff after backward (set ``keep_diffs = True`` before the forward): the gradient
        at the blob's first producer; None where none was computed."""
        return OrderedDict((b, t.grad) for b, t in self._first.items())

    def _device(self):
        return self._device_probe.device

    # ------------------------------------------------------------------------------------------ forward

    def forward(self, end: str | None = None, **inputs) -> dict:
        """Run the layers in order (up to and including layer ``end``); returns {output blob: tensor}
        (the tops of ``end`` when given). Inputs are keyed by blob name; missing Data/ImageData tops are
        read from the data layer feeder."""
        unknown = set(inputs) - set(self.inputs)
        if unknown:
            raise NetError(f"unknown input blob(s) {sorted(unknown)}; the net's inputs are {self.inputs}")
        if end is not None and end not in self.top_names:
            raise NetError(f"end={end!r} is not a layer of net {self.name!r}")
        # Drop the last forward's blobs before computing new ones: holding them would keep a second copy of
        # every activation alive during this forward.
        self.blobs, self._first, self.total_loss = OrderedDict(), {}, None
        given = self.input_blobs(inputs)
        blobs, first = OrderedDict(), {}
        total = None
        for name in self.layer_names:
            layer = self.layer(name)
            if layer.is_input:
                tops = tuple(given[t] for t in self.top_names[name])
            else:
                bottoms = [blobs[b] for b in self.bottom_names[name]]
                pd = list(layer.param.propagate_down)
                if pd:
                    bottoms = [b if pd[i] else b.detach() for i, b in enumerate(bottoms)]
                tops = layer(*bottoms)
                if not self.bottom_names[name]:  # DummyData fills on the CPU
                    tops = tuple(t.to(self._device()) for t in tops)
            for t_name, t in zip(self.top_names[name], tops):
                if t_name not in first:
                    first[t_name] = t
                    if self.keep_diffs and t.requires_grad and not t.is_leaf:
                        t.retain_grad()
                blobs[t_name] = t
                w = self.loss_weights.get(t_name)
                if w is not None:
                    term = t.sum() * w if w != 1.0 else t.sum()
                    total = term if total is None else total + term
            if name == end:
                break
        self.blobs, self._first, self.total_loss = blobs, first, total
        names = self.top_names[end] if end is not None else self.outputs
        return {b: blobs[b] for b in names if b in blobs}

    def input_blobs(self, inputs: dict, channels_last: bool = False) -> "OrderedDict[str, torch.Tensor]":
        """Every net-input blob (the tops of Input / Data / ImageData layers) as a float32 tensor on the net's
        device: from ``inputs`` where given, else the next batch of the layer's data feeder (Caffe's
        DataLayer::Forward). Checked against the declared shapes (only the batch size may differ). 4-D blobs
        are stored channels-last on the CPU, or anywhere with ``channels_last`` (layout only)."""
        out = OrderedDict()
        for name in self.layer_names:
            layer = self.layer(name)
            if layer.is_input:
                out.update(zip(self.top_names[name], self._input_tops(name, layer, inputs, channels_last)))
        return out

    def _input_tops(self, name, layer, inputs, channels_last=False):
        tops = self.top_names[name]
        batch = None
        if layer.reads_data and any(t not in inputs for t in tops):
            batch = self._feeder(name, layer).next_batch()
        out = []
        for t, declared in zip(tops, layer.top_shapes):
            if t in inputs:
                value = inputs[t]
            elif batch is not None and t in batch:
                value = batch[t]
            else:
                raise NetError(f"net input {t!r} (layer {name!r}, {layer.type}, shape {declared}) was not given")
            x = torch.as_tensor(np.asarray(value) if not torch.is_tensor(value) else value)
            # Caffe holds every blob, labels too, as float
            x = x.to(device=self._device(), dtype=torch.float32, non_blocking=True)
            if x.dim() == 4 and (channels_last or x.device.type == "cpu"):
                # Layout only (values and shapes stay NCHW): PyTorch's CPU max-pool kernel is ~10x faster on
                # channels-last tensors, and oneDNN convolutions keep that layout through the net.
                x = x.contiguous(memory_format=torch.channels_last)
            if x.dim() != len(declared) or tuple(x.shape[1:]) != tuple(declared[1:]):
                src = "the data source gives" if t not in inputs else "got"
                raise NetError(f"net input {t!r}: {src} shape {tuple(x.shape)}, the net was built for {declared} "
                               f"(only the batch size may differ; rebuild with input_shapes= to change it)")
            if self.force_backward and self._input_needs_grad.get(t) and not x.requires_grad:
                x = x.detach().requires_grad_(True)
            out.append(x)
        return tuple(out)

    def feeder(self, name: str):
        """The reader of Data / ImageData layer ``name`` (Caffe's DataLayer prefetch): ``net.feeders[name]``,
        opened now if no forward has opened it yet."""
        return self._feeder(name, self.layer(name))

    def _feeder(self, name, layer):
        feeder = self._feeders.get(name)
        if feeder is None:
            try:
                from .data.layer import DataLayerFeeder  # lazy: the net works without the data package
            except ImportError as e:
                raise NetError(f"layer {name!r} ({layer.type}) reads its data from {self._source_of(layer)!r}, "
                               f"but the data layer feeder is unavailable ({e}); pass the tops "
                               f"{self.top_names[name]} to the net instead") from None
            base = self.data_root if self.data_root is not None else os.getcwd()
            seeded = {"caffe_seeds": self._caffe_seeds[name]} if name in self._caffe_seeds else {}
            feeder = self._feeders[name] = DataLayerFeeder(layer.param, self.phase, base, device=self._device(),
                                                           **seeded)
        return feeder

    @staticmethod
    def _source_of(layer):
        p = layer.param
        return p.data_param.source if p.type == "Data" else p.image_data_param.source

    # ------------------------------------------------------------------------------------------ weights

    def copy_from(self, path, require="any") -> CopyReport:
        """Caffe's ``Net::CopyTrainedLayersFrom`` (repro.weights, the one implementation): copy every layer of
        the file (.caffemodel, .pt, .onnx or a run folder) whose name is a layer of this net; layers of the
        file the net lacks are ignored, layers of the net the file lacks keep their initialisation (how a
        renamed ``conv4-new`` is re-initialised). A blob count or shape that differs is an error naming the
        layer and both shapes; so is copying no layer at all unless ``require=None`` (``"all"`` or a list of
        names asks for more). Returns a ``repro.weights.CopyReport``: the list of layers copied, with
        ``.skipped`` and ``.missing``."""
        try:
            return copy_file(self, path, require=require)
        except WeightsError as e:
            raise NetError(str(e)) from None  # Net's methods raise NetError, as they always have

    @property
    def feeders(self) -> dict:
        """Data-layer name → the feeder that fills its tops (made on first use; a training driver may put its
        own feeder here, e.g. repro.data.device_feed.DeviceFeed, and snapshots save every feeder's cursor)."""
        return self._feeders

    @property
    def inputs_needing_grad(self) -> set:
        """Net inputs that get a gradient (force_backward and a consumer that propagates down)."""
        return {b for b, need in self._input_needs_grad.items() if need and self.force_backward}

    @classmethod
    def from_onnx(cls, path, phase="TEST", input_shape=None) -> "Net":
        """Rebuild a runnable Net from an ONNX file: one we exported (its embedded prototxt + initializers) or a
        plain AlexNet-like graph (see repro.onnx.translate for the operators it maps)."""
        from .onnx.importer import net_from_onnx

        return net_from_onnx(path, phase=phase, input_shape=input_shape)

    def save(self, path) -> None:
        """Write the weights as a .caffemodel (Caffe's ``Net::ToProto``: every layer, with its blobs)."""
        layers = [(n, self.layer(n).type, self.bottom_names[n], self.top_names[n],
                   [b.detach().cpu().numpy().astype(np.float32) for b in self.layer(n).caffe_blobs])
                  for n in self.layer_names]
        caffemodel.write_caffemodel(os.fspath(path), self.name, layers)

    def state_dict_caffe(self) -> OrderedDict:
        """{"LAYER/j": tensor} of every learnable blob (j = 0 weight, 1 bias), detached, for .pt files."""
        return OrderedDict((f"{n}/{j}", b.detach()) for n, blobs in self.params.items()
                           for j, b in enumerate(blobs))

    def load_state_dict_caffe(self, state: dict, strict: bool = True) -> None:
        """Load what ``state_dict_caffe`` wrote. strict: every key must match a blob of this net and every
        blob must be given; shapes must match exactly."""
        own = self.state_dict_caffe()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            raise NetError(f"state dict does not match net {self.name!r}: missing {missing}, unexpected "
                           f"{unexpected}")
        for key, value in state.items():
            if key not in own:
                continue
            layer, j = key.rsplit("/", 1)
            blob = self.params[layer][int(j)]
            value = torch.as_tensor(value)
            if tuple(value.shape) != tuple(blob.shape):
                raise NetError(f"layer {layer!r}: cannot copy param {j}: shape mismatch; the state dict has shape "
                               f"{tuple(value.shape)}, the net's layer has shape {tuple(blob.shape)}")
            with torch.no_grad():
                blob.copy_(value)


def _data_layer_draws(lp, phase: str, rng) -> dict:
    """What a Data / ImageData layer's set-up draws from Caffe's generator, in Caffe's order: BaseDataLayer::
    LayerSetUp's DataTransformer::InitRand (one draw when the transform is random), ImageDataLayer's shuffle seed
    and rand_skip draw, BasePrefetchingDataLayer::LayerSetUp's second InitRand (the seed the transformer keeps)
    and InternalThread::StartInternalThread's seed of the prefetch thread (drawn always)."""
    tp = lp.transform_param
    needs_rand = bool(tp.mirror) or (phase == "TRAIN" and tp.crop_size > 0)
    out = {}
    if needs_rand:
        rng.rand()
    if lp.type == "ImageData":
        ip = lp.image_data_param
        if ip.shuffle:
            out["shuffle"] = rng.rand()
        if ip.rand_skip:
            out["skip"] = rng.rand() % ip.rand_skip
    if needs_rand:
        out["transform"] = rng.rand()
    out["thread"] = rng.rand()
    return out
