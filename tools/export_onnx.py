"""Export a Caffe net's TEST phase to ONNX and verify it (ONNX checker, then onnxruntime vs PyTorch).

  python tools/export_onnx.py --model prototxt/caffenet/deploy.prototxt --weights base.caffemodel --out base.onnx
  python tools/export_onnx.py --model runs/base_half0A --out base.onnx          # a run directory
  python tools/export_onnx.py --model runs/half0A/snapshots/snapshot_iter_450000.state.pt --out x.onnx
  python tools/export_onnx.py --model train_val.prototxt --weights w.pt --out x.onnx --meta kind=base --meta split=0
  python tools/export_onnx.py --check-only base.onnx                              # verify an existing file

The graph has one node per Caffe layer, named after it; weights are the initializers <layer>.weight and
<layer>.bias in Caffe's shapes (docs/ONNX.md). Exit status 1 when the check fails, 2 for bad input.
"""
import argparse
import sys

from repro.cli import tool_main
from repro.onnx.io import META_KEYS, OnnxCheckError, check_onnx, export_onnx


def _meta(items):
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"export_onnx: --meta expects KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="net prototxt, run directory, or .pt weights (final.pt, *.state.pt: the net is "
                                   "the run directory's val.prototxt or the one its solver names)")
    p.add_argument("--weights", help=".caffemodel, .onnx or .state.pt to load into the net")
    p.add_argument("--out", help="ONNX file to write")
    p.add_argument("--check-only", metavar="FILE", help="only verify an existing ONNX file")
    p.add_argument("--input-shape", help="C,H,W of the data blob when the prototxt does not fix it")
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                   help=f"metadata to store (e.g. {', '.join(META_KEYS)}); repeatable")
    p.add_argument("--batch", type=int, default=2, help="batch size of the verification forward (default 2)")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime check (not recommended)")
    a = p.parse_args(argv)
    if a.batch < 1:
        p.error(f"--batch must be at least 1 (got {a.batch}): the check runs a forward of that many images")
    try:
        if a.check_only:
            report = check_onnx(a.check_only, batch_size=a.batch)
        else:
            if not (a.model and a.out):
                p.error("--model and --out are required (or --check-only FILE)")
            shape = tuple(int(x) for x in a.input_shape.split(",")) if a.input_shape else None
            result = export_onnx(a.model, a.out, weights=a.weights, input_shape=shape, metadata=_meta(a.meta),
                                 verify=not a.no_verify, batch_size=a.batch)
            print(f"wrote {result.path}")
            report = result.report
    except OnnxCheckError as e:
        print(f"export_onnx: check FAILED: {e}", file=sys.stderr)
        return 1
    if report is not None:
        print("\n".join(report.lines()))
    return 0


if __name__ == "__main__":
    tool_main("export_onnx", main)
