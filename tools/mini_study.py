"""The mini study: Figure 2 of the paper in miniature, on the hierarchical built-in data, in one command on a CPU.

  python tools/mini_study.py                       # splits 0-3, 2 CPU workers, runs/mini -> report/mini
  python tools/mini_study.py --split 0             # one split only (30 nets)

The data (repro/data/hierarchical.py, made on first use under <data>/data/mini) has ImageNet's structure in
miniature: 32 classes in 8 families; every image is built from the same low-level statistics (1/f textures,
oriented gratings, colour blobs), a family's classes share its mid-level parts, and a class is a combination of
3 of its family's 6 parts. A random half of the classes therefore shares low- and mid-level structure with the
other half but no class, as ImageNet's random halves do.

30 nets per split (the paper's seeds 0..3 idea: each point of the figure is the mean over splits, drawn with its
95% Student-t interval): half<s>A and half<s>B, then from half<s>A's base the selffers (BnB, here A->A) and the
transfers to B (AnB), frozen and fine-tuned (BnB+, AnB+), for n = 1..7. Every net uses
prototxt/mini/solver.prototxt (800 iterations, tested every 32), as the paper's transfer nets use their base
nets' solver. Rerunning skips finished nets and resumes interrupted ones. At the end the figures and tables of
repro.study.figures (figure2.png, figure2.csv, results.md, ...) and study.json (wall time, nets, settings) are
written to --out.
"""
import argparse
import json
import time
from pathlib import Path

from repro import resources
from repro.atomic import atomic_write_text
from repro.cli import tool_main
from repro.study.cells import mini_study
from repro.study.figures import figure2_table, write_report
from repro.study.flags import exit_code
from repro.study.results import read_runs, scores
from repro.study.scheduler import exit_status, mini_cells, plan, run_plan, summarise_status

SPLITS = ("0", "1", "2", "3")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", nargs="+", default=list(SPLITS), choices=SPLITS,
                   help="random splits to run (default: all four, 0 1 2 3)")
    p.add_argument("--workers", type=int, default=2, help="nets trained at once, one per CPU worker (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    p.add_argument("--max-iter", type=int,
                   help="a shorter or longer schedule, steps scaled to it (default: the solver's 800)")
    p.add_argument("--test-interval", type=int, help="iterations between tests (default: the solver's 32)")
    p.add_argument("--runs", default="runs/mini", help="folder of run folders (default runs/mini)")
    p.add_argument("--data", "--root", dest="data",
                   help="folder holding data/mini (made on first use; default: the working directory)")
    p.add_argument("--out", default="report/mini", help="figures and tables (default report/mini)")
    a = p.parse_args(argv)
    if a.workers < 1 or a.threads < 1:
        p.error("--workers and --threads must be at least 1")
    t0 = time.time()
    st = mini_study(runs=a.runs, root=a.data, max_iter=a.max_iter, test_interval=a.test_interval)
    jobs = plan(st, [c for s in a.split for c in mini_cells(s)])
    status = run_plan(st, jobs, ["cpu"] * a.workers, threads=a.threads)
    wall = time.time() - t0
    print(summarise_status(status) + f"; {wall / 60:.1f} min")

    net_scores = scores(read_runs([st.runs]))
    written = write_report(net_scores, a.out, paper=resources.paper_scores())
    # what this invocation did, beside the figures (a rerun that finds every net finished records ~0 min)
    atomic_write_text(Path(a.out) / "study.json", json.dumps({
        "splits": a.split, "workers": a.workers, "threads": a.threads, "nets_in_plan": len(jobs),
        "nets_trained_now": sum(v == "done" for v in status.values()), "wall_s": round(wall, 1),
        "status": status}, indent=1) + "\n")
    print(f"{len(net_scores)} nets -> {len(written) + 1} files in {a.out}")
    for row in figure2_table(net_scores):
        ci = f" ± {row['ci95']:.4f} (95% t interval)" if row["ci95"] is not None else ""
        print(f"{row['condition']:5s} n={row['n']}  top-1 {row['top1']:.4f}{ci}  ({row['k']} nets)")
    return exit_code(exit_status(status))   # as run_grid: 0 finished, 3 stopped, 4 diverged, 1 failed


if __name__ == "__main__":
    tool_main("mini_study", main)
