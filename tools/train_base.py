"""Train a base network of the study (the paper's half0A ... half3B, halfnatmanA/B) as the paper's Caffe did.

  python tools/train_base.py                               # built-in data: prototxt/small on half0A
  python tools/train_base.py --split 1 --half B            # half1B
  python tools/train_base.py --split natman --half A       # halfnatmanA (natural classes)
  python tools/train_base.py --net caffenet --data-root /data/ilsvrc12 --device cuda   # ImageNet, CaffeNet
  python tools/train_base.py --max-iter 500                # a shorter schedule, steps scaled to it

The built-in data (repro/data/builtin.py) and the split's datasets are made on first use under
<data-root>/data/builtin. With --net caffenet the datasets are yours: the Data layers of
prototxt/caffenet/train_val.prototxt name them relative to --data-root (see the README). The run goes to
<out>/<name>/ (e.g. runs/builtin/half0A/): resolved prototxts, run.json, log.jsonl, snapshots/, summary.json,
final.caffemodel and final.pt. Ctrl-C stops after the current iteration with a snapshot; running the same
command again resumes from the newest snapshot.
"""
import argparse
import dataclasses
import sys
from pathlib import Path

from repro.study.cells import builtin_study, paper_study, run_cell
from repro.study.grid import Cell


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", default="0", choices=("0", "1", "2", "3", "natman"),
                   help="random split seed 0-3, or natman (natural / man-made); default 0")
    p.add_argument("--half", default="A", choices=("A", "B"), help="which half to train on (default A)")
    p.add_argument("--net", default="small",
                   help="small (prototxt/small, built-in data; default), caffenet (prototxt/caffenet, your "
                        "ImageNet datasets) or a train_val prototxt PATH (with --solver)")
    p.add_argument("--solver", help="solver prototxt (default: the chosen net's solver.prototxt)")
    p.add_argument("--data-root", help="folder the prototxt's relative data paths start from (default: here)")
    p.add_argument("--out", help="folder of run folders (default runs/builtin, or runs/imagenet for caffenet)")
    p.add_argument("--max-iter", type=int, help="a shorter schedule: max_iter, with stepsize, test_interval, "
                                                "snapshot and display scaled to it")
    p.add_argument("--test-iter", type=int, help="batches per test (default: the solver's)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default cpu)")
    a = p.parse_args(argv)
    try:
        kw = {"root": a.data_root, "max_iter": a.max_iter, "test_iter": a.test_iter}
        if a.out:
            kw["runs"] = a.out
        study = paper_study(**kw) if a.net == "caffenet" else builtin_study(**kw)
        if a.net not in ("small", "caffenet") or a.solver:
            net = Path(a.net) if a.net not in ("small", "caffenet") else study.net
            solver = Path(a.solver) if a.solver else net.parent / "solver.prototxt"
            study = dataclasses.replace(study, net=net, solver=solver)
        result = run_cell(study, Cell("base", target=a.half, split=a.split), device=a.device)
    except (ValueError, OSError) as e:  # GridError, StudyError, PrototxtError, SolverError, DataLayerError ...
        sys.exit(f"train_base: {e}")
    score = result.get("score")
    print(f"{result['cell']}: {result['status']} in {result['run_dir']}"
          + (f"; mean of the (up to) 10 best test top-1: {score:.4f}" if score is not None else ""))


if __name__ == "__main__":
    main()
