"""Run any subset of the study's grid, base nets before the nets that copy them, one net per device.

  python tools/run_grid.py --dry-run                                  # the plan for all 170 nets, and its data
  python tools/run_grid.py --mini                                     # Figure 2, split 0 of the miniature: 30 nets
  python tools/run_grid.py --kind base --split 0 1 --devices cuda:0 cuda:1
  python tools/run_grid.py --name 'transfer0A0B_*' 'half0?' --devices cpu cpu --threads 1
  python tools/run_grid.py --net caffenet --data /data/ilsvrc12 --batch 128 --kind base --split 0
  python tools/run_grid.py --kind transfer --n 3 5 --ray --ray-address auto --gpus-per-net 1

Filters combine (a net must match each one given): --kind, --split, --n, --condition, --name (shell patterns
on the cell name, any may match). A selected transfer whose base net is neither selected nor finished gets it
added. --dry-run prints each net with its state (new, resume, done), the nets it waits for and the datasets it
reads (training set, validation set, the dataset whose mean it subtracts), then every data path the selection
needs and whether it is there.

Finished nets are skipped; an unfinished net resumes from its newest snapshot; rerun the same command after an
interruption. Each net trains in its own process (its console in <runs>/<net>/console.log); the workers die
with run_grid, even when it is killed. Ctrl-C or SIGTERM stops the running nets after their iteration with a
snapshot and starts no new one (exit 3); a second Ctrl-C stops waiting for them. --devices lists one device
per worker (repeat `cpu` for several CPU workers; default: --device, else every GPU, else one CPU worker); --ray
sends one Ray task per net to a cluster instead (pip install ray). --report DIR writes Figure 2/3, the tables
and results.md from every finished run under --runs when the grid is done.

Exit codes: 0 every net finished, 1 a net failed, 2 bad input, 3 stopped, 4 a net diverged.
"""
import argparse
import os
import signal
import sys


def _interrupted_while_starting(signum, frame):
    # A Ctrl-C while torch is imported: one line, not an import traceback (nothing was written yet).
    print("run_grid: interrupted while starting", file=sys.stderr, flush=True)
    os._exit(130)


signal.signal(signal.SIGINT, _interrupted_while_starting)

from repro.cli import tool_main  # noqa: E402 (after the start-up Ctrl-C handler)
from repro.study.cells import StudyError  # noqa: E402 (after the start-up Ctrl-C handler)
from repro.study.flags import add_study_flags, check_device, exit_code, study_from_args  # noqa: E402 (after the start-up Ctrl-C handler)
from repro.study.grid import KINDS  # noqa: E402 (after the start-up Ctrl-C handler)
from repro.study.scheduler import (  # noqa: E402
    default_devices,
    exit_status,
    format_data,
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


def main(argv=None) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # from here on repro.cli.tool_main reports it
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", nargs="+", default=[], choices=KINDS)
    p.add_argument("--split", nargs="+", default=[], help="0 1 2 3 natman whole")
    p.add_argument("--n", nargs="+", type=int, default=[])
    p.add_argument("--condition", nargs="+", default=[], help="base BnB BnB+ AnB AnB+ nolearn reduced")
    p.add_argument("--name", nargs="+", default=[], help="shell patterns on the net name")
    p.add_argument("--mini", nargs="?", const="0", metavar="SPLIT",
                   help="Figure 2's grid for one split (default 0): 2 base nets, AnA/AnB frozen and fine-tuned")
    p.add_argument("--devices", nargs="+", help="one per worker: cpu, cuda:0, ... (default: --device, else every "
                                                "GPU, else cpu)")
    p.add_argument("--threads", type=int, help="torch threads per CPU worker (default: cores / CPU workers)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the data it needs, and exit")
    p.add_argument("--report", metavar="DIR", help="write figures and tables of all runs into DIR at the end")
    r = p.add_argument_group("ray")
    r.add_argument("--ray", action="store_true", help="run one Ray task per net (a cluster, or a local Ray)")
    r.add_argument("--ray-address", help="cluster address (auto, ray://host:10001); default: start a local Ray")
    r.add_argument("--gpus-per-net", type=float, default=1.0, help="GPUs each net's task asks for (default 1)")
    r.add_argument("--cpus-per-net", type=float, default=1.0, help="CPUs each net's task asks for (default 1)")
    add_study_flags(p)
    a = p.parse_args(argv)
    st = study_from_args(a)
    cells = mini_cells(a.mini) if a.mini else None
    cells = select_cells(cells, kinds=a.kind, splits=a.split, ns=a.n, names=a.name, conditions=a.condition)
    if not cells:
        raise StudyError("no net matches these filters")
    if a.devices and a.device:
        raise StudyError("give --devices (one per worker) or --device, not both")
    devices = a.devices or ([a.device] if a.device else default_devices())
    jobs = plan(st, cells)
    print(format_plan(jobs, ["ray"] if a.ray else devices))
    if a.dry_run:
        print(format_data(st, [j.cell for j in jobs if j.state != "done"]))
        return 0
    for d in set(devices) if not a.ray else ():
        check_device(d)
    if a.ray:
        from repro.study.ray_grid import run_plan_ray
        status = run_plan_ray(st, jobs, num_gpus=a.gpus_per_net, num_cpus=a.cpus_per_net, threads=a.threads,
                              address=a.ray_address)
    else:
        status = run_plan(st, jobs, devices, threads=a.threads)
    print(summarise_status(status), flush=True)
    overall = exit_status(status)
    if a.report and overall != "stopped":
        write_report(st.runs, a.report)
    return exit_code(overall)


if __name__ == "__main__":
    tool_main("run_grid", main)
