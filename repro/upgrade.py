"""Caffe's upgrade_proto.cpp: old net and solver definitions -> today's V2 form.

Caffe reads a prototxt, then runs UpgradeNetAsNeeded, which in order
  1. V0 -> V1  (UpgradeV0Net: fold `padding` layers into the next conv/pool, move the flat V0 settings
     into the per-type *_param messages, V0 type strings -> V1 enum),
  2. moves data-layer transform fields into transform_param (UpgradeNetDataTransformation),
  3. V1 -> V2  (UpgradeV1Net: enum type -> type string, blobs_lr / weight_decay -> param { lr_mult decay_mult }),
  4. turns net-level input / input_dim / input_shape into an "Input" layer (UpgradeNetInput),
  5. zeroes the multipliers of old 3-param BatchNorm layers (UpgradeNetBatchNorm).
We do the same. Where Caffe aborts (LOG(FATAL) / CHECK) we raise PrototxtError; where Caffe logs an error and
continues (a V0 setting that means nothing for the layer's type) we warn with PrototxtWarning.

Every upgraded layer remembers which input layer it came from (`origins`), so the text reader can point an
error at the right line of the file.
"""
import warnings

from repro.proto import caffe_pb2

from .errors import ReproError

V1 = caffe_pb2.V1LayerParameter


class PrototxtError(ReproError):
    """A net or solver definition Caffe would reject. Formats as `path:line:col: message`.

    Attributes: path, line, column (1-based, None when unknown), field (the offending field name or None),
    layer (the layer's name or None), message (without the location prefix), layer_index (index of the layer
    in the parsed file's `layer`/`layers` list, used to find its line).
    """

    def __init__(self, message, path=None, line=None, field=None, column=None, layer=None, layer_index=None):
        self.message, self.path, self.line, self.field = message, path, line, field
        self.column, self.layer, self.layer_index = column, layer, layer_index
        super().__init__(self._format())

    def _format(self):
        where = [str(self.path) if self.path is not None else "<net>"]
        if self.line is not None:
            where.append(str(self.line))
            if self.column is not None:
                where.append(str(self.column))
        return ":".join(where) + ": " + self.message

    def locate(self, path, line=None, column=None):
        """Fill in the file location (the reader knows it, the upgrader does not)."""
        self.path = path
        if line is not None:
            self.line, self.column = line, column
        self.args = (self._format(),)
        return self

    def __str__(self):
        return self._format()


class PrototxtWarning(UserWarning):
    """Something Caffe accepts with a logged error, e.g. a V0 setting the layer's type does not use."""


# Caffe: UpgradeV0LayerType. "padding" is handled separately (folded away).
V0_LAYER_TYPES = {
    "accuracy": V1.ACCURACY, "bnll": V1.BNLL, "concat": V1.CONCAT, "conv": V1.CONVOLUTION,
    "data": V1.DATA, "dropout": V1.DROPOUT, "euclidean_loss": V1.EUCLIDEAN_LOSS, "flatten": V1.FLATTEN,
    "hdf5_data": V1.HDF5_DATA, "hdf5_output": V1.HDF5_OUTPUT, "im2col": V1.IM2COL, "images": V1.IMAGE_DATA,
    "infogain_loss": V1.INFOGAIN_LOSS, "innerproduct": V1.INNER_PRODUCT, "lrn": V1.LRN,
    "multinomial_logistic_loss": V1.MULTINOMIAL_LOGISTIC_LOSS, "pool": V1.POOLING, "relu": V1.RELU,
    "sigmoid": V1.SIGMOID, "softmax": V1.SOFTMAX, "softmax_loss": V1.SOFTMAX_LOSS, "split": V1.SPLIT,
    "tanh": V1.TANH, "window_data": V1.WINDOW_DATA,
}

# Caffe: UpgradeV1LayerType.
V1_TO_V2_TYPE = {
    V1.NONE: "", V1.ABSVAL: "AbsVal", V1.ACCURACY: "Accuracy", V1.ARGMAX: "ArgMax", V1.BNLL: "BNLL",
    V1.CONCAT: "Concat", V1.CONTRASTIVE_LOSS: "ContrastiveLoss", V1.CONVOLUTION: "Convolution",
    V1.DECONVOLUTION: "Deconvolution", V1.DATA: "Data", V1.DROPOUT: "Dropout", V1.DUMMY_DATA: "DummyData",
    V1.EUCLIDEAN_LOSS: "EuclideanLoss", V1.ELTWISE: "Eltwise", V1.EXP: "Exp", V1.FLATTEN: "Flatten",
    V1.HDF5_DATA: "HDF5Data", V1.HDF5_OUTPUT: "HDF5Output", V1.HINGE_LOSS: "HingeLoss", V1.IM2COL: "Im2col",
    V1.IMAGE_DATA: "ImageData", V1.INFOGAIN_LOSS: "InfogainLoss", V1.INNER_PRODUCT: "InnerProduct",
    V1.LRN: "LRN", V1.MEMORY_DATA: "MemoryData", V1.MULTINOMIAL_LOGISTIC_LOSS: "MultinomialLogisticLoss",
    V1.MVN: "MVN", V1.POOLING: "Pooling", V1.POWER: "Power", V1.RELU: "ReLU", V1.SIGMOID: "Sigmoid",
    V1.SIGMOID_CROSS_ENTROPY_LOSS: "SigmoidCrossEntropyLoss", V1.SILENCE: "Silence", V1.SOFTMAX: "Softmax",
    V1.SOFTMAX_LOSS: "SoftmaxWithLoss", V1.SPLIT: "Split", V1.SLICE: "Slice", V1.TANH: "TanH",
    V1.WINDOW_DATA: "WindowData", V1.THRESHOLD: "Threshold",
}

# Caffe: UpgradeSolverType.
SOLVER_TYPES = {0: "SGD", 1: "Nesterov", 2: "AdaGrad", 3: "RMSProp", 4: "AdaDelta", 5: "Adam"}

# Which V1 `*_param` field each V0 setting moves to, by V0 type (Caffe: UpgradeV0LayerParameter).
# (v0 field, {v0 type: (v1 param field, field there, how)}); how: "set", "add" (repeated) or "copy" (message).
_CONV_IP = {"conv": ("convolution_param",), "innerproduct": ("inner_product_param",)}
_V0_FIELD_MAP = [
    ("num_output", {t: (p[0], "num_output", "set") for t, p in _CONV_IP.items()}),
    ("biasterm", {t: (p[0], "bias_term", "set") for t, p in _CONV_IP.items()}),
    ("weight_filler", {t: (p[0], "weight_filler", "copy") for t, p in _CONV_IP.items()}),
    ("bias_filler", {t: (p[0], "bias_filler", "copy") for t, p in _CONV_IP.items()}),
    # Convolution's pad/kernel_size/stride are repeated in V2; pooling's are single values.
    ("pad", {"conv": ("convolution_param", "pad", "add"), "pool": ("pooling_param", "pad", "set")}),
    ("kernelsize", {"conv": ("convolution_param", "kernel_size", "add"),
                    "pool": ("pooling_param", "kernel_size", "set")}),
    ("group", {"conv": ("convolution_param", "group", "set")}),
    ("stride", {"conv": ("convolution_param", "stride", "add"), "pool": ("pooling_param", "stride", "set")}),
    ("pool", {"pool": ("pooling_param", "pool", "set")}),  # V0 and V2 PoolMethod share numbers
    ("dropout_ratio", {"dropout": ("dropout_param", "dropout_ratio", "set")}),
    ("local_size", {"lrn": ("lrn_param", "local_size", "set")}),
    ("alpha", {"lrn": ("lrn_param", "alpha", "set")}),
    ("beta", {"lrn": ("lrn_param", "beta", "set")}),
    ("k", {"lrn": ("lrn_param", "k", "set")}),
    ("source", {"data": ("data_param", "source", "set"), "hdf5_data": ("hdf5_data_param", "source", "set"),
                "images": ("image_data_param", "source", "set"),
                "window_data": ("window_data_param", "source", "set"),
                "infogain_loss": ("infogain_loss_param", "source", "set")}),
    ("batchsize", {"data": ("data_param", "batch_size", "set"),
                   "hdf5_data": ("hdf5_data_param", "batch_size", "set"),
                   "images": ("image_data_param", "batch_size", "set"),
                   "window_data": ("window_data_param", "batch_size", "set")}),
    ("rand_skip", {"data": ("data_param", "rand_skip", "set"), "images": ("image_data_param", "rand_skip", "set")}),
    ("shuffle_images", {"images": ("image_data_param", "shuffle", "set")}),
    ("new_height", {"images": ("image_data_param", "new_height", "set")}),
    ("new_width", {"images": ("image_data_param", "new_width", "set")}),
    ("concat_dim", {"concat": ("concat_param", "concat_dim", "set")}),
    ("det_fg_threshold", {"window_data": ("window_data_param", "fg_threshold", "set")}),
    ("det_bg_threshold", {"window_data": ("window_data_param", "bg_threshold", "set")}),
    ("det_fg_fraction", {"window_data": ("window_data_param", "fg_fraction", "set")}),
    ("det_context_pad", {"window_data": ("window_data_param", "context_pad", "set")}),
    ("det_crop_mode", {"window_data": ("window_data_param", "crop_mode", "set")}),
    ("hdf5_output_param", {"hdf5_output": (None, "hdf5_output_param", "copy")}),
]
# V0 data settings that Caffe moves straight into transform_param, whatever the type.
_V0_TRANSFORM = [("scale", "scale"), ("meanfile", "mean_file"), ("cropsize", "crop_size"), ("mirror", "mirror")]
_TRANSFORM_HOSTS = {V1.DATA: "data_param", V1.IMAGE_DATA: "image_data_param", V1.WINDOW_DATA: "window_data_param"}


def _warn(message):
    warnings.warn(message, PrototxtWarning, stacklevel=3)


# ---------------------------------------------------------------- V0 -> V1

def _fold_padding_layers(net, origins):
    """Caffe: UpgradeV0PaddingLayers. Drop each V0 `padding` layer and give its `pad` to the conv/pool layer
    that reads its output, rewiring that layer to the padding layer's input."""
    kept, kept_origins = [], []
    last_producer = {name: -1 for name in net.input}  # blob -> index of the layer that last wrote it
    for i, conn in enumerate(net.layers):
        v0 = conn.layer
        if v0.type != "padding":
            kept.append(_copy(conn))
            kept_origins.append(origins[i])
        for j, blob in enumerate(conn.bottom):
            if blob not in last_producer:
                raise PrototxtError(f'layer "{v0.name}": bottom "{blob}" is not produced by any earlier layer',
                                    field="bottom", layer=v0.name, layer_index=origins[i])
            src_idx = last_producer[blob]
            if src_idx < 0 or net.layers[src_idx].layer.type != "padding":
                continue
            src = net.layers[src_idx]
            if v0.type not in ("conv", "pool"):
                raise PrototxtError(f'padding layer "{src.layer.name}" feeds layer "{v0.name}" of type '
                                    f'"{v0.type}"; Caffe folds padding only into "conv" or "pool" layers',
                                    field="bottom", layer=v0.name, layer_index=origins[i])
            if len(conn.bottom) != 1 or len(src.bottom) != 1 or len(src.top) != 1:
                raise PrototxtError(f'padding layer "{src.layer.name}" and the layer it feeds must each have '
                                    f'exactly one bottom (and the padding layer one top)',
                                    field="bottom", layer=v0.name, layer_index=origins[i])
            kept[-1].layer.pad = src.layer.pad
            kept[-1].bottom[j] = src.bottom[0]
        for blob in conn.top:
            last_producer[blob] = i
    del net.layers[:]
    net.layers.extend(kept)
    return kept_origins


def _upgrade_v0_layer(conn, origin):
    """Caffe: UpgradeV0LayerParameter. One V0 `layers { layer { ... } bottom top }` -> a V1 layer."""
    out = caffe_pb2.V1LayerParameter()
    out.bottom.extend(conn.bottom)
    out.top.extend(conn.top)
    v0 = conn.layer
    if v0.HasField("name"):
        out.name = v0.name
    if v0.HasField("type"):
        if v0.type not in V0_LAYER_TYPES:
            raise PrototxtError(f'unknown layer type "{v0.type}" (V0 syntax; known: '
                                f'{", ".join(sorted(V0_LAYER_TYPES))})',
                                field="type", layer=v0.name, layer_index=origin)
        out.type = V0_LAYER_TYPES[v0.type]
    out.blobs.extend(v0.blobs)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)
    for v0_field, by_type in _V0_FIELD_MAP:
        if not v0.HasField(v0_field):
            continue
        if v0.type not in by_type:
            _warn(f'layer "{v0.name}": V0 setting "{v0_field}" means nothing for layer type "{v0.type}"; '
                  f'ignored (as Caffe does)')
            continue
        param_name, field, how = by_type[v0.type]
        target = getattr(out, param_name) if param_name else out
        value = getattr(v0, v0_field)
        if how == "copy":
            getattr(target, field).CopyFrom(value)
        elif how == "add":
            getattr(target, field).append(value)
        else:
            setattr(target, field, value)
    for v0_field, field in _V0_TRANSFORM:
        if v0.HasField(v0_field):
            setattr(out.transform_param, field, getattr(v0, v0_field))
    return out


def _upgrade_v0_net(net, origins):
    """Caffe: UpgradeV0Net. Returns the origins of the remaining layers."""
    origins = _fold_padding_layers(net, origins)
    upgraded = [_upgrade_v0_layer(conn, origins[i]) for i, conn in enumerate(net.layers)]
    del net.layers[:]
    net.layers.extend(upgraded)
    return origins


def _upgrade_data_transformation(net):
    """Caffe: UpgradeNetDataTransformation. V1 data layers kept scale/mean_file/crop_size/mirror in their
    own *_param; DataTransformer reads them only from transform_param."""
    for layer in net.layers:
        host = _TRANSFORM_HOSTS.get(layer.type)
        if host is None or not layer.HasField(host):
            continue
        param = getattr(layer, host)
        for field in ("scale", "mean_file", "crop_size", "mirror"):
            if param.HasField(field):
                setattr(layer.transform_param, field, getattr(param, field))
                param.ClearField(field)


# ---------------------------------------------------------------- V1 -> V2

_V1_COPIED = [f.name for f in caffe_pb2.V1LayerParameter.DESCRIPTOR.fields
              if f.name.endswith("_param") and f.name not in ("param",)]


def _upgrade_v1_layer(v1, origin):
    """Caffe: UpgradeV1LayerParameter."""
    out = caffe_pb2.LayerParameter()
    out.bottom.extend(v1.bottom)
    out.top.extend(v1.top)
    if v1.HasField("name"):
        out.name = v1.name
    out.include.extend(v1.include)
    out.exclude.extend(v1.exclude)
    if v1.HasField("type"):
        out.type = V1_TO_V2_TYPE[v1.type]
    out.blobs.extend(v1.blobs)
    n_specs = max(len(v1.param), len(v1.blob_share_mode), len(v1.blobs_lr), len(v1.weight_decay))
    for i in range(n_specs):
        spec = out.param.add()
        if i < len(v1.param):
            spec.name = v1.param[i]
        if i < len(v1.blob_share_mode):
            spec.share_mode = v1.blob_share_mode[i]  # V1 and V2 DimCheckMode share numbers
        if i < len(v1.blobs_lr):
            spec.lr_mult = v1.blobs_lr[i]
        if i < len(v1.weight_decay):
            spec.decay_mult = v1.weight_decay[i]
    out.loss_weight.extend(v1.loss_weight)
    for name in _V1_COPIED:
        if name != "layer" and v1.HasField(name):
            getattr(out, name).CopyFrom(getattr(v1, name))
    return out


def _upgrade_net_input(net, origins):
    """Caffe: UpgradeNetInput. Net-level inputs become an "Input" layer placed first; inputs without any
    shape (an old caffemodel) are simply dropped."""
    n = len(net.input)
    if n and net.input_shape and len(net.input_shape) != n:
        raise PrototxtError(f"{n} net inputs but {len(net.input_shape)} input_shape entries; "
                            f"give one input_shape per input", field="input_shape")
    if n and net.input_dim and len(net.input_dim) != 4 * n:
        raise PrototxtError(f"{n} net inputs but {len(net.input_dim)} input_dim values; "
                            f"give 4 (num, channels, height, width) per input", field="input_dim")
    if n and (net.input_shape or net.input_dim):
        layer = caffe_pb2.LayerParameter(name="input", type="Input")
        for i, top in enumerate(net.input):
            layer.top.append(top)
            shape = layer.input_param.shape.add()
            if net.input_shape:
                shape.CopyFrom(net.input_shape[i])
            else:
                shape.dim.extend(net.input_dim[4 * i:4 * i + 4])
        layers = [layer] + list(net.layer)
        del net.layer[:]
        net.layer.extend(layers)
        origins = [None] + origins
    net.ClearField("input")
    net.ClearField("input_shape")
    net.ClearField("input_dim")
    return origins


def _upgrade_batch_norm(net):
    """Caffe: UpgradeNetBatchNorm. Old BatchNorm definitions listed 3 params to freeze its statistics."""
    for layer in net.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            for spec in layer.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0


def upgrade_net_with_origins(net_param):
    """Upgrade like Caffe's UpgradeNetAsNeeded. Returns (new V2 NetParameter, origins) where origins[i] is
    the index in the input's `layer` (V2 input) or `layers` (V0/V1 input) list that produced layer i, or None
    for a layer the upgrade created (the Input layer). The argument is not modified."""
    net = caffe_pb2.NetParameter()
    net.CopyFrom(net_param)
    if net.layer and net.layers:
        raise PrototxtError("the net mixes `layer` (V2) and `layers` (V0/V1) entries; Caffe would ignore the "
                            "`layer` ones. Use one syntax", field="layers")
    origins = list(range(len(net.layers) or len(net.layer)))
    if net.layers:
        v0 = [conn.HasField("layer") for conn in net.layers]
        if any(v0):
            if not all(v0):
                i = v0.index(False)
                raise PrototxtError("the net mixes V0 (`layers { layer { ... } }`) and V1 layers; Caffe would "
                                    "drop the V1 ones' settings", field="layer", layer_index=i)
            origins = _upgrade_v0_net(net, origins)
        _upgrade_data_transformation(net)
        upgraded = [_upgrade_v1_layer(v1, origins[i]) for i, v1 in enumerate(net.layers)]
        net.ClearField("layers")
        net.layer.extend(upgraded)
    origins = _upgrade_net_input(net, origins)
    _upgrade_batch_norm(net)
    return net, origins


def upgrade_net(net_param):
    """Caffe's UpgradeNetAsNeeded: any V0/V1/V2 NetParameter -> a new V2 NetParameter (`layer` only)."""
    return upgrade_net_with_origins(net_param)[0]


def upgrade_solver(solver_param):
    """Caffe's UpgradeSolverAsNeeded: the old `solver_type` enum -> the `type` string. Returns a new
    SolverParameter; train_net / test_net and the other old net fields are kept (Caffe still reads them)."""
    solver = caffe_pb2.SolverParameter()
    solver.CopyFrom(solver_param)
    if solver.HasField("solver_type"):
        if solver.HasField("type"):
            raise PrototxtError("both `solver_type` (old enum) and `type` (string) are given; keep only `type`",
                                field="solver_type")
        solver.type = SOLVER_TYPES[solver.solver_type]
        solver.ClearField("solver_type")
    return solver


def _copy(msg):
    out = type(msg)()
    out.CopyFrom(msg)
    return out
