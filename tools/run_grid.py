"""Run any subset of the study's grid, base nets before the nets that copy them, one net per device.

  python tools/run_grid.py --dry-run                                  # the plan for all 170 nets
  python tools/run_grid.py --mini                                     # Figure 2 for split 0: 2 + 28 nets
  python tools/run_grid.py --kind base --split 0 1 --devices cuda:0 cuda:1
  python tools/run_grid.py --name 'transfer0A0B_*' 'half0?' --devices cpu cpu --threads 1
  python tools/run_grid.py --kind transfer --n 3 5 --ray --ray-address auto --gpus-per-net 1

Filters combine (a net must match each one given): --kind, --split, --n, --condition, --name (shell patterns
on the cell name, any may match). A selected transfer whose base net is neither selected nor finished gets it
added. Finished nets are skipped; an unfinished net resumes from its newest snapshot; rerun the same command
after an interruption. --devices lists one device per worker (repeat `cpu` for several CPU workers; default:
every GPU, else one CPU worker); --ray sends one Ray task per net to a cluster instead (pip install ray).
--report DIR writes Figure 2/3, the tables and results.md from every run under --runs when the grid is done.
"""
import argparse
import sys

from repro.study.cells import add_study_arguments, study_from_arguments
from repro.study.grid import KINDS
from repro.study.scheduler import (
    default_devices,
    format_plan,
    mini_cells,
    plan,
    run_plan,
    select_cells,
    summarise_status,
)


def write_report(runs, out):
    from repro import resources
    from repro.study.figures import write_report as report
    from repro.study.results import read_runs, scores

    written = report(scores(read_runs([runs])), out, paper=resources.paper_scores())
    print(f"report: {len(written)} files in {out}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", nargs="+", default=[], choices=KINDS)
    p.add_argument("--split", nargs="+", default=[], help="0 1 2 3 natman whole")
    p.add_argument("--n", nargs="+", type=int, default=[])
    p.add_argument("--condition", nargs="+", default=[], help="base BnB BnB+ AnB AnB+ nolearn reduced")
    p.add_argument("--name", nargs="+", default=[], help="shell patterns on the net name")
    p.add_argument("--mini", nargs="?", const="0", metavar="SPLIT",
                   help="Figure 2's grid for one split (default 0): 2 base nets, AnA/AnB frozen and fine-tuned")
    p.add_argument("--devices", nargs="+", help="one per worker: cpu, cuda:0, ... (default: every GPU, else cpu)")
    p.add_argument("--threads", type=int, help="torch threads per CPU worker (default: cores / CPU workers)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.add_argument("--report", metavar="DIR", help="write figures and tables of all runs into DIR at the end")
    r = p.add_argument_group("ray")
    r.add_argument("--ray", action="store_true", help="run one Ray task per net (a cluster, or a local Ray)")
    r.add_argument("--ray-address", help="cluster address (auto, ray://host:10001); default: start a local Ray")
    r.add_argument("--gpus-per-net", type=float, default=1.0, help="GPUs each net's task asks for (default 1)")
    r.add_argument("--cpus-per-net", type=float, default=1.0, help="CPUs each net's task asks for (default 1)")
    add_study_arguments(p)
    a = p.parse_args(argv)
    try:
        st = study_from_arguments(a)
        cells = mini_cells(a.mini) if a.mini else None
        cells = select_cells(cells, kinds=a.kind, splits=a.split, ns=a.n, names=a.name, conditions=a.condition)
        if not cells:
            sys.exit("run_grid: no net matches these filters")
        jobs = plan(st, cells)
        devices = a.devices or default_devices()
        print(format_plan(jobs, ["ray"] if a.ray else devices))
        if a.dry_run:
            return
        if a.ray:
            from repro.study.ray_grid import run_plan_ray
            status = run_plan_ray(st, jobs, num_gpus=a.gpus_per_net, num_cpus=a.cpus_per_net, threads=a.threads,
                                  address=a.ray_address)
        else:
            status = run_plan(st, jobs, devices, threads=a.threads)
    except (ValueError, OSError) as e:  # StudyError, GridError, PrototxtError, ...
        sys.exit(f"run_grid: {e}")
    bad = {k: v for k, v in status.items() if not (v == "done" or v.startswith("skipped"))}
    print(summarise_status(status))
    if a.report:
        write_report(st.runs, a.report)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
