"""Train one net of the transfer study: the first n layers copied from a base net trained on half --from, the
rest re-initialised, trained on half --to (the paper's AnB; --from B --to B is the selffer BnB).

  python tools/transfer.py --from A --to B --n 5                  # transfer0A0B_1_5: conv1-conv5 frozen
  python tools/transfer.py --from A --to B --n 5 --finetune       # transfer-ft0A0B_1_5 (AnB+)
  python tools/transfer.py --from B --to B --n 3 --split 1        # transfer1B1B_1_3: a selffer
  python tools/transfer.py --from A --to B --n 5 --weights base.onnx
  python tools/transfer.py --from A --to B --n 5 --emit audit/    # only write the realised prototxts

The base weights are --weights (.caffemodel, .pt or .onnx), else the base run's final weights
(<runs>/half<split><from>/final.caffemodel, .pt or .onnx), copied by layer name as Caffe's
Net::CopyTrainedLayersFrom: layers 1..n keep the base values (frozen unless --finetune), the renamed n+1..8
(`conv4-new`, ...) keep their fillers. --emit DIR writes train.prototxt, val.prototxt and solver.prototxt as the
run folder would hold them, and trains nothing. The run goes to <runs>/<cell name>/ (resumed when interrupted).
"""
import argparse
import sys

from repro.study.cells import add_study_arguments, emit, run_cell, study_from_arguments
from repro.study.grid import Cell


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="source", required=True, choices=("A", "B"), help="half of the base net")
    p.add_argument("--to", dest="target", required=True, choices=("A", "B"), help="half trained and tested on")
    p.add_argument("--n", type=int, required=True, help="layers copied: 1 = conv1 ... 7 = fc7")
    p.add_argument("--finetune", action="store_true", help="keep training the copied layers (AnB+)")
    p.add_argument("--split", default="0", choices=("0", "1", "2", "3", "natman"),
                   help="random split seed, or natman (default 0)")
    p.add_argument("--weights", help="base weights (.caffemodel, .pt or .onnx); default: the base run's")
    p.add_argument("--emit", metavar="DIR", help="only write the realised prototxts into DIR")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default cpu)")
    add_study_arguments(p)
    a = p.parse_args(argv)
    try:
        cell = Cell("transfer", a.source, a.target, a.n, a.finetune, a.split)
        st = study_from_arguments(a)
        if a.emit:
            for path in emit(st, cell, a.emit):
                print(f"wrote {path}")
            return
        r = run_cell(st, cell, device=a.device, weights=a.weights)
    except (ValueError, OSError) as e:  # GridError, StudyError, PrototxtError, WeightsError, ...
        sys.exit(f"transfer: {e}")
    print(f"{r['cell']}: {r['status']} in {r['run_dir']}" +
          (f"; mean of the (up to) 10 best test top-1: {r['score']:.4f}" if r.get("score") is not None else ""))


if __name__ == "__main__":
    main()
