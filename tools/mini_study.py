"""The mini study: Figure 2 of the paper for the random splits of the built-in data, in one command on a CPU.

  python tools/mini_study.py                       # splits 0-3, 2 CPU workers, runs/mini -> report/mini
  python tools/mini_study.py --split 0 --workers 1 --threads 2      # one split only

30 nets per split (the paper's seeds 0..3 idea: each point of the figure is then the mean over splits, drawn
with its 95% Student-t interval): half<s>A and half<s>B, then from half<s>A's base the selffers (BnB, here
A->A) and the transfers to B (AnB),
frozen and fine-tuned (BnB+, AnB+), for n = 1..7 (tools/run_grid.py --mini runs the same selection).
Every net uses the small net's solver (prototxt/small/solver.prototxt), as the paper's transfer nets use their
base nets' solver, with its schedule stretched to --max-iter iterations (default 1200 for its 600: stepsize,
snapshot and display scaled alike) and tested every --test-interval iterations (default 40: the paper's metric,
the mean of the 10 best test points, then has 31 points to choose from). Rerunning skips finished nets and
resumes interrupted ones. At the end the figures and tables of repro.study.figures (figure2.png, figure2.csv,
results.md, ...) are written to --out.
"""
import argparse
import time

from repro.cli import tool_main
from repro.study.cells import builtin_study
from repro.study.scheduler import MINI_MAX_ITER, MINI_TEST_INTERVAL, mini_cells, plan, run_plan, summarise_status


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", nargs="+", default=["0", "1", "2", "3"], choices=("0", "1", "2", "3"),
                   help="random splits to run (default: all four, 0 1 2 3)")
    p.add_argument("--workers", type=int, default=2, help="nets trained at once, one per CPU worker (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    p.add_argument("--max-iter", type=int, default=MINI_MAX_ITER,
                   help=f"iterations per net (default {MINI_MAX_ITER}; the solver's own: 600)")
    p.add_argument("--test-interval", type=int, default=MINI_TEST_INTERVAL,
                   help=f"iterations between tests (default {MINI_TEST_INTERVAL})")
    p.add_argument("--runs", default="runs/mini", help="folder of run folders (default runs/mini)")
    p.add_argument("--root", help="folder holding data/builtin (made on first use; default: here)")
    p.add_argument("--out", default="report/mini", help="figures and tables (default report/mini)")
    a = p.parse_args(argv)
    t0 = time.time()
    st = builtin_study(runs=a.runs, root=a.root, max_iter=a.max_iter, test_interval=a.test_interval)
    jobs = plan(st, [c for s in a.split for c in mini_cells(s)])
    status = run_plan(st, jobs, ["cpu"] * a.workers, threads=a.threads)
    bad = {k: v for k, v in status.items() if not (v == "done" or v.startswith("skipped"))}
    print(summarise_status(status) + f"; {(time.time() - t0) / 60:.1f} min")

    from repro import resources
    from repro.study.figures import figure2_table, write_report
    from repro.study.results import read_runs, scores

    net_scores = scores(read_runs([st.runs]))
    written = write_report(net_scores, a.out, paper=resources.paper_scores())
    print(f"{len(net_scores)} nets -> {len(written)} files in {a.out}")
    for row in figure2_table(net_scores):
        ci = f" ± {row['ci95']:.4f} (95% t interval)" if row["ci95"] is not None else ""
        print(f"{row['condition']:5s} n={row['n']}  top-1 {row['top1']:.4f}{ci}  ({row['k']} nets)")
    return 1 if bad else 0


if __name__ == "__main__":
    tool_main("mini_study", main)
