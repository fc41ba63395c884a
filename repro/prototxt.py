"""Text prototxt -> upgraded V2 NetParameter / SolverParameter, with file:line errors.

Caffe: ReadNetParamsFromTextFileOrDie (parse + UpgradeNetAsNeeded), ReadSolverParamsFromTextFileOrDie,
Net::FilterNet / Net::StateMeetsRule, and the checks of Net::Init a user hits first (unknown layer type,
unknown bottom blob, a top produced twice). Unlike Caffe we also reject duplicate layer names within one
phase, since weights are copied by layer name.

    net = read_net("imagenet_train.prototxt")          # any of V0 / V1 / V2 syntax
    train = filter_net(net, "TRAIN")                    # the layers Caffe instantiates for TRAIN
    solver = read_solver("imagenet_solver.prototxt")
"""
import difflib
import os
import re
import warnings
from pathlib import Path

from google.protobuf import message as pb_message
from google.protobuf import text_format

from repro.atomic import atomic_write_text
from repro.proto import caffe_pb2
from repro.upgrade import PrototxtError, PrototxtWarning, upgrade_net_with_origins, upgrade_solver

__all__ = ["SUPPORTED_LAYER_TYPES", "PrototxtError", "PrototxtWarning", "read_net", "read_solver",
           "filter_net", "write_text", "parse_text"]

# The V2 layer types this project implements -- the one list repro.layers builds from (it must register
# exactly these).
SUPPORTED_LAYER_TYPES = frozenset({
    "Input", "Data", "ImageData", "DummyData", "MemoryData",
    "Convolution", "Pooling", "LRN", "InnerProduct", "Dropout",
    "ReLU", "Sigmoid", "TanH", "Power", "AbsVal",
    "Softmax", "SoftmaxWithLoss", "Accuracy",
    "Concat", "Slice", "Eltwise", "Flatten", "Split", "Silence", "Reshape",
    "Scale", "Bias", "BatchNorm",
})

_PHASES = {"TRAIN": caffe_pb2.TRAIN, "TEST": caffe_pb2.TEST}


# ---------------------------------------------------------------- reading text

def is_path(source, message_cls=caffe_pb2.NetParameter) -> bool:
    """The text-vs-path rule for a prototxt given as a str: it is a path unless it parses as prototxt (a
    ``message_cls``) and names no existing file. So an existing file always wins (a path containing ``{``
    works), and text is recognised by parsing, not by its characters. A string that is neither a file nor
    valid prototxt is read as text when it holds a newline or a brace (the parse error then names its line
    and column), else as a path (the error says the file is missing). PathLike: always a path."""
    if isinstance(source, os.PathLike):
        return True
    if not isinstance(source, str):
        return False
    if os.path.isfile(source):
        return True
    try:
        text_format.Parse(source, message_cls())
    except text_format.ParseError:
        return "\n" not in source and "{" not in source
    return False


def _load(source, message_cls=caffe_pb2.NetParameter, text=None):
    """-> (text, path or None): ``text`` when given (explicitly text), else ``source`` by :func:`is_path`."""
    if text is not None:
        if source is not None:
            raise TypeError("give a prototxt source or text=, not both")
        return text, None
    if is_path(source, message_cls):
        path = os.fspath(source)
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise PrototxtError(f"cannot read: {e.strerror or e}", path=path) from None
        try:
            return data.decode("utf-8"), path
        except UnicodeDecodeError as e:
            line = data[:e.start].count(b"\n") + 1
            raise PrototxtError("not a text prototxt (invalid UTF-8); a binary .caffemodel / .binaryproto "
                                "is read with repro.caffemodel", path=path, line=line) from None
    if isinstance(source, str):
        return source, None
    raise TypeError(f"expected a path, prototxt text or a NetParameter, got {type(source).__name__}")


def _field_from_parse_error(msg, line_text, column):
    for pattern in (r'has no field named "(\w+)"', r"for field (\w+)", r'multiple "(\w+)" fields',
                    r'field "?([\w.]+)"?'):
        m = re.search(pattern, msg)
        if m:
            return m.group(1).split(".")[-1]
    # Otherwise the field is the identifier before the error column on that line, e.g. `stride: x`.
    names = re.findall(r"(\w+)\s*:", line_text[:max(column, 0)] if column else line_text)
    return names[-1] if names else None


def _did_you_mean(msg_type_name, field):
    desc = caffe_pb2.DESCRIPTOR.message_types_by_name.get(msg_type_name.split(".")[-1])
    if desc is None or field is None:
        return ""
    close = difflib.get_close_matches(field, [f.name for f in desc.fields], n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def parse_text(text, message, path=None):
    """Parse prototxt text into `message` (Caffe: ReadProtoFromTextFile), turning protobuf's ParseError into
    a PrototxtError naming the file, line, column and field."""
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        line, column = e.GetLine(), e.GetColumn()
        raw = str(e)
        msg = raw.split(" : ", 1)[1] if re.match(r"^\d+:\d+ : ", raw) else raw
        msg = re.sub(r"^'[^\n]*?': ", "", msg)  # protobuf repeats the offending line; we print file:line
        lines = text.splitlines()
        line_text = lines[line - 1] if line and 0 < line <= len(lines) else ""
        field = _field_from_parse_error(msg, line_text, column)
        m = re.search(r'Message type "([\w.]+)" has no field named "(\w+)"', msg)
        if m:
            msg = f'unknown field "{m.group(2)}" in {m.group(1)}{_did_you_mean(m.group(1), m.group(2))}'
        raise PrototxtError(msg, path=path, line=line, column=column, field=field) from None
    return message


class _Blocks:
    """Line spans of the top-level `layer {...}` / `layers {...}` blocks of a prototxt, in file order, found
    by a small scanner that skips strings and comments (protobuf's parser keeps no positions)."""

    def __init__(self, text):
        self.lines = text.splitlines()
        self.spans = {"layer": [], "layers": []}
        depth, line, i, n = 0, 1, 0, len(text)
        pending = None  # (kind, line) of a depth-0 `layer`/`layers` name waiting for its brace
        starts = []
        while i < n:
            c = text[i]
            if c == "\n":
                line += 1
            elif c == "#":
                while i < n and text[i] != "\n":
                    i += 1
                continue
            elif c in "\"'":
                j = i + 1
                while j < n and text[j] != c and text[j] != "\n":
                    j += 2 if text[j] == "\\" else 1
                i = j + 1
                continue
            elif c in "{<":
                if depth == 0 and pending:
                    starts.append(pending)
                pending = None
                depth += 1
            elif c in "}>":
                depth -= 1
                if depth == 0 and starts:
                    kind, start = starts.pop()
                    self.spans[kind].append((start, line))
            elif depth == 0 and (c.isalpha() or c == "_"):
                j = i
                while j < n and (text[j].isalnum() or text[j] == "_"):
                    j += 1
                word = text[i:j]
                pending = (word, line) if word in ("layer", "layers") else None
                i = j
                continue
            i += 1

    def span(self, kind, index):
        spans = self.spans.get(kind, [])
        return spans[index] if index is not None and 0 <= index < len(spans) else None

    def field_line(self, kind, index, field=None, value=None):
        """Line of `field: "value"` inside block `index`, else the block's opening line, else None."""
        span = self.span(kind, index)
        if span is None:
            return None
        if field:
            pattern = re.compile(r"(?<![\w])" + re.escape(field) + r"\s*:\s*" +
                                 (r"[\"']?" + re.escape(str(value)) + r"[\"']?(?![\w-])" if value is not None else ""))
            for ln in range(span[0], span[1] + 1):
                if pattern.search(self.lines[ln - 1].split("#", 1)[0]):
                    return ln
        return span[0]


# ---------------------------------------------------------------- validation (Net::Init's first checks)

def _rule_met(state, rule):
    """Caffe: Net::StateMeetsRule."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    if any(s not in state.stage for s in rule.stage):
        return False
    return not any(s in state.stage for s in rule.not_stage)


def _kept_indices(net, state):
    """Caffe: Net::FilterNet. Indices of the layers instantiated for `state`."""
    kept = []
    for i, layer in enumerate(net.layer):
        if layer.include and layer.exclude:
            raise PrototxtError(f'layer "{layer.name}": give include rules or exclude rules, not both',
                                field="include", layer=layer.name, layer_index=i)
        included = not layer.include
        if included and any(_rule_met(state, r) for r in layer.exclude):
            included = False
        if not included and any(_rule_met(state, r) for r in layer.include):
            included = True
        if included:
            kept.append(i)
    return kept


def _check_types(net):
    for i, layer in enumerate(net.layer):
        if layer.type not in SUPPORTED_LAYER_TYPES:
            what = f'unknown layer type "{layer.type}"' if layer.type else "layer has no type"
            by_lower = {t.lower(): t for t in SUPPORTED_LAYER_TYPES}
            close = difflib.get_close_matches(layer.type.lower(), sorted(by_lower), n=2, cutoff=0.6)
            hint = f" (did you mean {' or '.join(by_lower[c] for c in close)}?)" if close else ""
            raise PrototxtError(f'{what} for layer "{layer.name}"{hint}; supported: '
                                f'{", ".join(sorted(SUPPORTED_LAYER_TYPES))}',
                                field="type", layer=layer.name, layer_index=i)


def _check_wiring(net, indices, phase_name):
    """Caffe: Net::AppendBottom / AppendTop checks, plus unique layer names, for one filtered net."""
    where = f" in phase {phase_name}" if phase_name else ""
    produced, names = {}, {}
    for i in indices:
        layer = net.layer[i]
        if layer.name in names:
            raise PrototxtError(f'duplicate layer name "{layer.name}"{where}',
                                field="name", layer=layer.name, layer_index=i)
        names[layer.name] = i
        for blob in layer.bottom:
            if blob not in produced:
                raise PrototxtError(f'layer "{layer.name}": bottom "{blob}" is not produced by any earlier '
                                    f'layer{where}', field="bottom", layer=layer.name, layer_index=i)
        for t, blob in enumerate(layer.top):
            in_place = t < len(layer.bottom) and layer.bottom[t] == blob
            if blob in produced and not in_place:
                raise PrototxtError(f'layer "{layer.name}": top "{blob}" is already produced by layer '
                                    f'"{produced[blob]}"{where}', field="top", layer=layer.name, layer_index=i)
            produced[blob] = layer.name


def _validate(net):
    _check_types(net)
    has_rules = any(layer.include or layer.exclude for layer in net.layer)
    for phase_name in (("TRAIN", "TEST") if has_rules else (None,)):
        state = caffe_pb2.NetState(phase=_PHASES[phase_name or "TRAIN"])
        indices = _kept_indices(net, state)
        if indices or not has_rules:
            _check_wiring(net, indices, phase_name)


def _data_field_warnings(net, blocks, kind, origins, path):
    """Caffe 1.0 ignores transform fields left in a V2 data_param / image_data_param; say so."""
    for i, layer in enumerate(net.layer):
        for host in ("data_param", "image_data_param"):
            if layer.HasField(host):
                for field in ("scale", "mean_file", "crop_size", "mirror"):
                    if getattr(layer, host).HasField(field):
                        line = blocks.field_line(kind, origins[i], field) if blocks else None
                        loc = f"{path or '<text>'}:{line}: " if line else ""
                        warnings.warn(f'{loc}layer "{layer.name}": {host}.{field} is ignored by Caffe; '
                                      f'put it in transform_param', PrototxtWarning, stacklevel=3)


# ---------------------------------------------------------------- public API

def read_net(source=None, *, text=None):
    """Read a net definition (V0, V1 or V2 syntax) and upgrade it to V2 as Caffe does; check it.

    source: a path (str or PathLike), prototxt text, or a NetParameter; a str is told apart by :func:`is_path`.
    text: prototxt text, explicitly (never taken for a path).
    Returns a new caffe_pb2.NetParameter whose layers are all in `layer` (V2). Raises PrototxtError
    (path:line: message, with .field and .layer) for malformed text, an unknown field or layer type, a bottom
    no earlier layer produces, a top produced twice, or a duplicate layer name, checked for TRAIN and TEST.
    """
    if isinstance(source, caffe_pb2.NetParameter):
        text, path, parsed = None, None, source
    else:
        text, path = _load(source, caffe_pb2.NetParameter, text)
        parsed = parse_text(text, caffe_pb2.NetParameter(), path if path is not None else "<text>")
    kind = "layers" if len(parsed.layers) else "layer"
    blocks = _Blocks(text) if text is not None else None
    label = path if path is not None else ("<text>" if text is not None else None)

    def located(e, input_index):
        line = _error_line(e, blocks, kind, input_index) if blocks is not None else None
        return e.locate(label, line)

    try:
        net, origins = upgrade_net_with_origins(parsed)  # errors index the input's layer list
    except PrototxtError as e:
        raise located(e, e.layer_index) from None
    try:
        if not net.layer:
            raise PrototxtError("the net defines no layers", field="layer")
        _validate(net)  # errors index the upgraded net
    except PrototxtError as e:
        m = re.search(r'bottom "([^"]*)"', e.message)
        if e.field == "bottom" and m and m.group(1) in parsed.input:
            e.message += (f'; "{m.group(1)}" is a net-level `input`, which needs input_shape or input_dim '
                          f'to become an Input layer')
        raise located(e, origins[e.layer_index] if e.layer_index is not None else None) from None
    _data_field_warnings(net, blocks, kind, origins, label)
    return net


def _error_line(e, blocks, kind, idx):
    """The line to blame: the offending `field: "value"` inside the layer's block, else the block's first line."""
    if idx is None:  # net-level fields (legacy inputs)
        if e.field in ("input", "input_dim", "input_shape"):
            for ln, text in enumerate(blocks.lines, 1):
                if re.match(r"\s*" + e.field + r"\s*[:{]", text):
                    return ln
        return None
    value = None
    if e.field in ("bottom", "top", "type"):
        m = re.search(e.field + r' "([^"]*)"', e.message)
        value = m.group(1) if m else None
    elif e.field == "name":
        value = e.layer
    return blocks.field_line(kind, idx, e.field if value is not None else None, value)


def read_solver(source=None, *, text=None):
    """Read a solver prototxt (path or text) and upgrade it (Caffe: ReadSolverParamsFromTextFileOrDie).

    Checks what Solver::Init / InitTestNets check first: exactly one train net (net, net_param, train_net or
    train_net_param) and one test_iter per test net. Net paths are returned as written (Caffe resolves them
    against the working directory)."""
    text, path = _load(source, caffe_pb2.SolverParameter, text)
    label = path if path is not None else "<text>"
    solver = parse_text(text, caffe_pb2.SolverParameter(), label)

    def line_of(field):
        return next((n for n, t in enumerate(text.splitlines(), 1) if re.match(r"\s*" + field + r"\s*[:{]", t)),
                    None)

    def fail(message, field):
        raise PrototxtError(message, path=label, line=line_of(field), field=field)

    try:
        solver = upgrade_solver(solver)
    except PrototxtError as e:
        fail(e.message, e.field)
    train_fields = [f for f in ("train_net_param", "train_net", "net_param", "net") if solver.HasField(f)]
    if not train_fields:
        raise PrototxtError("the solver names no net: give `net` (or train_net / net_param / "
                            "train_net_param)", path=label, field="net")
    if len(train_fields) > 1:
        second = sorted(train_fields, key=lambda f: line_of(f) or 0)[1]  # point at the later one
        fail(f"the solver names more than one train net ({', '.join(train_fields)}); give exactly one", second)
    n_test = len(solver.test_net) + len(solver.test_net_param)
    generic = solver.HasField("net") or solver.HasField("net_param")
    if (generic and len(solver.test_iter) < n_test) or (not generic and len(solver.test_iter) != n_test):
        fail(f"{len(solver.test_iter)} test_iter value(s) for {n_test} test net(s); give one per test net",
             "test_iter" if solver.test_iter else ("test_net" if solver.test_net else "test_net_param"))
    return solver


def filter_net(net_param, phase, level=0, stages=()):
    """Caffe's Net::FilterNet for NetState(phase, level, stages): keep the layers whose include/exclude rules
    the state meets, set `state`, and give each kept layer the net's phase unless it has its own (Net::Init).

    phase: "TRAIN" / "TEST" or caffe_pb2.TRAIN / TEST. Returns a new NetParameter; checks the filtered
    net's wiring (PrototxtError without a file location: use read_net's errors for that)."""
    if isinstance(phase, str):
        if phase.upper() not in _PHASES:
            raise ValueError(f'phase must be "TRAIN" or "TEST", got {phase!r}')
        phase = _PHASES[phase.upper()]
    if isinstance(stages, str):
        stages = (stages,)
    state = caffe_pb2.NetState(phase=phase, level=level, stage=list(stages))
    indices = _kept_indices(net_param, state)
    _check_wiring(net_param, indices, caffe_pb2.Phase.Name(phase))
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    del out.layer[:]
    out.state.CopyFrom(state)
    for i in indices:
        layer = out.layer.add()
        layer.CopyFrom(net_param.layer[i])
        if not layer.HasField("phase"):
            layer.phase = phase
    return out


def write_text(msg, path):
    """Write a message as prototxt text (Caffe: WriteProtoToTextFile), atomically."""
    if not isinstance(msg, pb_message.Message):
        raise TypeError(f"expected a protobuf message, got {type(msg).__name__}")
    text = text_format.MessageToString(msg)  # floats print as the shortest text that reads back exactly
    atomic_write_text(path, text)
