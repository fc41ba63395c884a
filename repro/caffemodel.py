"""Caffe's binary files: .caffemodel weights, .binaryproto means, .solverstate resume state.

Caffe: ReadProtoFromBinaryFile, Net::CopyTrainedLayersFrom (what a weights file holds per layer),
Net::ToProto / Blob::ToProto (how it is written), compute_image_mean (the mean file), and
SGDSolver::SnapshotSolverStateToBinaryProto / RestoreSolverStateFromBinaryProto.

Blob shapes. New files give each blob a `shape`; old ones give 4-D legacy dims (num, channels, height, width),
right-aligned: an InnerProduct weight M x N is stored 1 x 1 x M x N and every bias N as 1 x 1 x 1 x N (Caffe's
Blob::ShapeEquals compares them that way). read_caffemodel normalises legacy blobs of Convolution and
InnerProduct layers (the only ones the weights of the paper's nets live in) to today's shapes --
Convolution (out, in/group, kh, kw) + bias (out,), InnerProduct (out, in) + bias (out,) -- so a loader can
compare shapes directly; legacy blobs of any other layer type are returned with their raw 4-D shape.
"""
import collections
import dataclasses
from pathlib import Path

import numpy as np
from google.protobuf import message as pb_message

from repro.atomic import atomic_write_bytes
from repro.proto import caffe_pb2

from .errors import ReproError

__all__ = ["WeightsError", "SolverState", "read_caffemodel", "write_caffemodel", "read_mean", "write_mean",
           "read_solverstate", "write_solverstate", "blob_to_array", "array_to_blob"]

_V1 = caffe_pb2.V1LayerParameter
# Layer types (V2 string, V1 enum, V0 string) whose legacy 4-D blobs are normalised.
_CONV = {"Convolution", _V1.CONVOLUTION, "conv"}
_IP = {"InnerProduct", _V1.INNER_PRODUCT, "innerproduct"}


class WeightsError(ReproError):
    """A binary Caffe file that cannot be read as what it should be; names the file and what failed."""

    def __init__(self, path, message):
        self.path, self.message = str(path), message
        super().__init__(f"{path}: {message}")


@dataclasses.dataclass
class SolverState:
    """Caffe's SolverState message: the resume point written beside a snapshot's .caffemodel."""
    iter: int
    learned_net: str
    history: list  # SGD momentum history, one float32 array per learnable blob, Caffe's param order
    current_step: int = 0  # the "multistep" lr policy's position


# ---------------------------------------------------------------- blobs

def blob_to_array(blob, what="blob"):
    """Caffe: Blob::FromProto. A BlobProto -> float32 array in the blob's shape (legacy dims: 4-D).
    double_data, when present, wins over data, as in Caffe (then it is rounded to float32)."""
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        shape = (blob.num, blob.channels, blob.height, blob.width)
    else:  # no dims at all is a 0-axis blob holding one value, as in Caffe
        shape = tuple(int(d) for d in blob.shape.dim)
    if any(d < 0 for d in shape):
        raise ValueError(f"{what}: negative dimension in shape {shape}")
    values = np.array(blob.double_data, dtype=np.float64) if len(blob.double_data) else \
        np.array(blob.data, dtype=np.float32)
    count = int(np.prod(shape, dtype=np.int64))
    if values.size != count:
        raise ValueError(f"{what}: shape {shape} holds {count} values but the file has {values.size}")
    return values.astype(np.float32, copy=False).reshape(shape)


def array_to_blob(arr, blob=None):
    """Caffe: Blob::ToProto (data only, `shape` not legacy dims)."""
    blob = caffe_pb2.BlobProto() if blob is None else blob
    arr = np.asarray(arr)
    if arr.dtype != np.float32:
        raise TypeError(f"Caffe blobs are float32; got {arr.dtype} (convert explicitly)")
    blob.shape.dim.extend(int(d) for d in arr.shape)
    blob.data.extend(arr.ravel().tolist())
    return blob


def _normalise_legacy(arrays, blobs, layer_type):
    """Right-aligned legacy 4-D shapes -> today's shapes for Convolution / InnerProduct (see module doc)."""
    out = []
    for j, (arr, blob) in enumerate(zip(arrays, blobs)):
        if not blob.HasField("shape") and arr.ndim == 4:
            if j == 1 and (layer_type in _CONV or layer_type in _IP) and arr.shape[:3] == (1, 1, 1):
                arr = arr.reshape(arr.shape[3])
            elif j == 0 and layer_type in _IP and arr.shape[:2] == (1, 1):
                arr = arr.reshape(arr.shape[2:])
        out.append(arr)
    return out


# ---------------------------------------------------------------- files

def _read_message(path, msg):
    """Caffe: ReadProtoFromBinaryFile, with the failure named instead of a CHECK."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise WeightsError(path, f"cannot read: {e.strerror or e}") from None
    if not data:
        raise WeightsError(path, "the file is empty")
    try:
        msg.ParseFromString(data)
    except pb_message.DecodeError as e:
        hint = ""
        head = data[:64].lstrip()
        if head[:1].isalpha() and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
            hint = " -- it looks like a text prototxt; read it with repro.prototxt"
        raise WeightsError(path, f"not a valid {msg.DESCRIPTOR.name} (truncated or corrupt: "
                                 f"protobuf says {e}){hint}") from None
    return msg


def _records(net):
    """(name, type, blobs) of each layer record: V2 `layer`, V1 `layers`, or V0 `layers { layer }`."""
    if net.layer:
        return [(l.name, l.type, l.blobs) for l in net.layer]
    out = []
    for l in net.layers:
        if l.HasField("layer"):  # V0: everything, blobs included, sits in the nested V0LayerParameter
            out.append((l.layer.name, l.layer.type, l.layer.blobs))
        else:
            out.append((l.name, l.type, l.blobs))
    return out


def read_caffemodel(path):
    """Read a .caffemodel -> OrderedDict {layer name: [float32 arrays]} in file order.

    Every layer record is listed, those without parameters with an empty list (Caffe's CopyTrainedLayersFrom
    checks blob counts, so a loader needs to see them). When a name repeats, the later record wins, as it does
    when Caffe copies them in order. Legacy blob shapes: see the module docstring."""
    net = _read_message(path, caffe_pb2.NetParameter())
    records = _records(net)
    if not records:
        raise WeightsError(path, "no layer records: not a Caffe NetParameter (.caffemodel)"
                                 + (" -- it looks like a BlobProto (.binaryproto mean file)"
                                    if _looks_like_blob(path) else ""))
    weights = collections.OrderedDict()
    for name, layer_type, blobs in records:
        try:
            arrays = [blob_to_array(b, f"layer {name!r} blob {j}") for j, b in enumerate(blobs)]
        except ValueError as e:
            raise WeightsError(path, str(e)) from None
        weights[name] = _normalise_legacy(arrays, blobs, layer_type)
    return weights


def _looks_like_blob(path):
    try:
        blob = caffe_pb2.BlobProto()
        blob.ParseFromString(Path(path).read_bytes())
        return len(blob.data) > 0 or len(blob.double_data) > 0
    except (OSError, pb_message.DecodeError):
        return False


def write_caffemodel(path, net_name, layers):
    """Write a V2 .caffemodel (Caffe: Net::ToProto + WriteProtoToBinaryFile), atomically.

    layers: iterable of (name, type, bottoms, tops, [float32 arrays]); blobs are written with `shape`."""
    net = caffe_pb2.NetParameter(name=net_name)
    for name, layer_type, bottoms, tops, arrays in layers:
        layer = net.layer.add(name=name, type=layer_type)
        layer.bottom.extend(bottoms)
        layer.top.extend(tops)
        for arr in arrays:
            array_to_blob(arr, layer.blobs.add())
    atomic_write_bytes(path, net.SerializeToString())


def read_mean(path):
    """Read a mean .binaryproto (compute_image_mean's output) -> float32 array (C, H, W)."""
    blob = _read_message(path, caffe_pb2.BlobProto())
    if not (len(blob.data) or len(blob.double_data)):
        raise WeightsError(path, "no values: not a mean BlobProto (.binaryproto)")
    try:
        arr = blob_to_array(blob, "mean blob")
    except ValueError as e:
        raise WeightsError(path, str(e)) from None
    # Caffe: DataTransformer uses the mean as one C x H x W image (num must be 1).
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise WeightsError(path, f"mean blob has shape {arr.shape}; expected 1 x C x H x W or C x H x W")
    return arr


def write_mean(path, arr):
    """Write a (C, H, W) mean as compute_image_mean does: legacy dims num=1, channels, height, width."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError(f"a mean is C x H x W; got shape {arr.shape}")
    if arr.dtype != np.float32:
        raise TypeError(f"a mean is float32; got {arr.dtype}")
    blob = caffe_pb2.BlobProto(num=1, channels=arr.shape[0], height=arr.shape[1], width=arr.shape[2])
    blob.data.extend(arr.ravel().tolist())
    atomic_write_bytes(path, blob.SerializeToString())


def read_solverstate(path):
    """Read a .solverstate (Caffe: SGDSolver::RestoreSolverStateFromBinaryProto) -> SolverState."""
    state = _read_message(path, caffe_pb2.SolverState())
    if not state.HasField("iter"):
        raise WeightsError(path, "no `iter`: not a Caffe SolverState (.solverstate)")
    try:
        history = [blob_to_array(b, f"history blob {j}") for j, b in enumerate(state.history)]
    except ValueError as e:
        raise WeightsError(path, str(e)) from None
    return SolverState(iter=state.iter, learned_net=state.learned_net, history=history,
                       current_step=state.current_step)


def write_solverstate(path, state):
    """Write a SolverState (Caffe: SGDSolver::SnapshotSolverStateToBinaryProto), atomically."""
    msg = caffe_pb2.SolverState(iter=state.iter, learned_net=state.learned_net, current_step=state.current_step)
    for arr in state.history:
        array_to_blob(arr, msg.history.add())
    atomic_write_bytes(path, msg.SerializeToString())
