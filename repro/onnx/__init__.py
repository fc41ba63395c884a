"""ONNX interchange: a Caffe net written as ONNX from its layer list, verified with onnxruntime, read back.

The public face: :func:`export_onnx` (a prototxt, run folder or state file -> a verified ``.onnx``),
:func:`check_onnx` (verify an existing file), :func:`net_from_onnx` (a runnable :class:`repro.Net`),
:func:`load_weights` (weights by Caffe layer name from .caffemodel / .pt / .onnx) and :func:`describe`.
Naming and layout: docs/ONNX.md.
"""
from .importer import net_from_onnx
from .inspect import describe
from .io import export_onnx, load_weights
from .verify import check_onnx

__all__ = ["export_onnx", "check_onnx", "net_from_onnx", "load_weights", "describe"]
