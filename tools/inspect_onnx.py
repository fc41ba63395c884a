"""Print an ONNX file's layers (op, output shape, parameters, FLOPs), inputs/outputs, totals and metadata.

  python tools/inspect_onnx.py base.onnx
  python tools/inspect_onnx.py base.onnx --prototxt     # also print the embedded deploy prototxt

To look at the graph itself, open the file in Netron (docs/ONNX.md).
"""
import argparse
import sys

from repro.onnx.inspect import describe


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="ONNX file")
    p.add_argument("--prototxt", action="store_true", help="print the embedded deploy prototxt in full")
    a = p.parse_args(argv)
    try:
        print(describe(a.file, show_prototxt=a.prototxt))
    except (ValueError, OSError) as e:
        print(f"inspect_onnx: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
