"""Train one net of the transfer study: the first n layers copied from a base net trained on half --from, the
rest re-initialised, trained on half --to (the paper's AnB; --from B --to B is the selffer BnB).

  python tools/transfer.py --from A --to B --n 5                  # transfer0A0B_1_5: conv1-conv5 frozen
  python tools/transfer.py --from A --to B --n 5 --finetune       # transfer-ft0A0B_1_5 (AnB+)
  python tools/transfer.py --from B --to B --n 3 --split 1        # transfer1B1B_1_3: a selffer
  python tools/transfer.py --from A --to B --n 5 --weights base.onnx
  python tools/transfer.py --from A --to B --n 5 --emit audit/    # only write the realised prototxts

The base weights are --weights (.caffemodel, .pt or .onnx), else the final weights of the base run
<runs>/half<split><from>/ (final.caffemodel, .pt or .onnx), copied by layer name as Caffe's
Net::CopyTrainedLayersFrom: layers 1..n keep the base values (frozen unless --finetune), the renamed n+1..8
(`conv4-new`, ...) keep their fillers. The base run must have finished (a diverged or unfinished one is
refused) on this study's schedule: a base run trained with another --max-iter, batch or solver is refused
unless --allow-other-base (a smoke test's weights would otherwise be copied into a real transfer).

--emit DIR writes train.prototxt, val.prototxt and solver.prototxt as the run folder would hold them, and
trains nothing. The run goes to <runs>/<cell name>/ and behaves as tools/train_base.py's (one writer, resume,
identity, --force). Exit codes: 0 finished, 2 bad input, 3 stopped, 4 diverged.
"""
import argparse
import os
import signal
import sys


def _interrupted_while_starting(signum, frame):
    # A Ctrl-C while torch is imported: one line, not an import traceback (nothing was written yet).
    print("transfer: interrupted while starting", file=sys.stderr, flush=True)
    os._exit(130)


signal.signal(signal.SIGINT, _interrupted_while_starting)

from repro.cli import tool_main  # noqa: E402 (after the start-up Ctrl-C handler)
from repro.study.cells import emit, run_cell  # noqa: E402 (after the start-up Ctrl-C handler)
from repro.study.flags import add_study_flags, device_from_args, exit_code, result_line, study_from_args  # noqa: E402 (after the start-up Ctrl-C handler)
from repro.study.grid import Cell  # noqa: E402 (after the start-up Ctrl-C handler)


def main(argv=None) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # from here on repro.cli.tool_main reports it
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="source", required=True, choices=("A", "B"), help="half of the base net")
    p.add_argument("--to", dest="target", required=True, choices=("A", "B"), help="half trained and tested on")
    p.add_argument("--n", type=int, required=True, help="layers copied: 1 = conv1 ... 7 = fc7")
    p.add_argument("--finetune", action="store_true", help="keep training the copied layers (AnB+)")
    p.add_argument("--split", default="0", choices=("0", "1", "2", "3", "natman"),
                   help="random split seed, or natman (default 0)")
    p.add_argument("--weights", help="base weights (.caffemodel, .pt or .onnx); default: the base run's")
    p.add_argument("--emit", metavar="DIR", help="only write the realised prototxts into DIR")
    add_study_flags(p)
    a = p.parse_args(argv)
    cell = Cell("transfer", a.source, a.target, a.n, a.finetune, a.split)
    st = study_from_args(a)
    if a.emit:
        for path in emit(st, cell, a.emit):
            print(f"wrote {path}")
        return 0
    device = device_from_args(a)
    result = run_cell(st, cell, device=device, weights=a.weights)
    print(result_line(result), flush=True)
    return exit_code(result["status"])


if __name__ == "__main__":
    tool_main("transfer", main)
