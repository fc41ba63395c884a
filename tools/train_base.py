"""Train a base network of the study (the paper's half0A ... half3B, halfnatmanA/B) as the paper's Caffe did.

  python tools/train_base.py                               # the miniature: prototxt/mini on its half0A
  python tools/train_base.py --net small                   # prototxt/small on the 20-class built-in data
  python tools/train_base.py --split 1 --half B            # half1B
  python tools/train_base.py --split natman --half A       # halfnatmanA (natural classes)
  python tools/train_base.py --net caffenet --data /data/ilsvrc12 --device cuda   # ImageNet, CaffeNet
  python tools/train_base.py --net caffenet --data D --device cuda --batch 64     # 4 x 64 = the paper's 256
  python tools/train_base.py --max-iter 500                # a shorter schedule, steps scaled to it

Data. The built-in data and the split's datasets are made on first use under <data>/data/mini (the
miniature's hierarchical images, repro/data/hierarchical.py) or <data>/data/builtin (--net small,
repro/data/procedural.py). With --net caffenet the datasets are yours: the Data layers of
prototxt/caffenet/train_val.prototxt name them relative to --data, as data/<dataset>_train,
data/<dataset>_val and data/<dataset>_mean.binaryproto (tools/run_grid.py --dry-run lists every dataset a
selection needs).

The run folder <runs>/<name>/ (e.g. runs/mini/half0A/) holds the resolved prototxts, run.json (what was
asked, the git commit, versions, device, numerics), log.jsonl, snapshots/, summary.json and, once finished,
final.caffemodel, final.pt and final.onnx. One process trains a folder at a time (a second one stops at once,
naming the first's pid). Running the same command again resumes an unfinished run from its newest snapshot and
reports a finished one; a command with other settings (another --max-iter, --batch, --numerics, ...) refuses
the folder unless --force moves the old run aside.

Ctrl-C or SIGTERM stops after the current iteration with a snapshot (exit 3; rerun to resume); SIGHUP writes a
snapshot and goes on. A loss or weight that is not finite stops the run as diverged (exit 4; summary.json says
so and names the last good snapshot). Exit codes: 0 finished, 2 bad input, 3 stopped, 4 diverged.
"""
import argparse
import os
import signal
import sys


def _interrupted_while_starting(signum, frame):
    # A Ctrl-C while torch is imported: one line, not an import traceback (nothing was written yet).
    print("train_base: interrupted while starting", file=sys.stderr, flush=True)
    os._exit(130)


signal.signal(signal.SIGINT, _interrupted_while_starting)

from repro.cli import tool_main  # noqa: E402 (after the start-up Ctrl-C handler)
from repro.study.cells import run_cell  # noqa: E402 (after the start-up Ctrl-C handler)
from repro.study.flags import add_study_flags, device_from_args, exit_code, result_line, study_from_args  # noqa: E402 (after the start-up Ctrl-C handler)
from repro.study.grid import Cell  # noqa: E402 (after the start-up Ctrl-C handler)


def main(argv=None) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # from here on repro.cli.tool_main reports it
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", default="0", choices=("0", "1", "2", "3", "natman"),
                   help="random split seed 0-3, or natman (natural / man-made); default 0")
    p.add_argument("--half", default="A", choices=("A", "B"), help="which half to train on (default A)")
    add_study_flags(p)
    a = p.parse_args(argv)
    study = study_from_args(a)
    device = device_from_args(a)
    result = run_cell(study, Cell("base", target=a.half, split=a.split), device=device)
    print(result_line(result), flush=True)
    return exit_code(result["status"])


if __name__ == "__main__":
    tool_main("train_base", main)
