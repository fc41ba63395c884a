"""Print an ONNX file's layers (op, output shape, parameters, FLOPs), inputs/outputs, totals and metadata.

  python tools/inspect_onnx.py base.onnx
  python tools/inspect_onnx.py base.onnx --prototxt     # also print the embedded deploy prototxt

To look at the graph itself, open the file in Netron (docs/ONNX.md).
"""
import argparse

from repro.cli import tool_main
from repro.onnx.inspect import describe


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="ONNX file")
    p.add_argument("--prototxt", action="store_true", help="print the embedded deploy prototxt in full")
    a = p.parse_args(argv)
    print(describe(a.file, show_prototxt=a.prototxt))
    return 0


if __name__ == "__main__":
    tool_main("inspect_onnx", main)
