"""Running a subset of the grid on one machine: selection, dependency order, skip/resume, one net per device.

The paper ran its nets in two blocks (PROTOCOL.md section 7): the base nets first, then the transfer nets that
copy their final snapshots. `plan` puts any subset of cells in that order, adds the unfinished base nets a
selected transfer needs, and marks each net done (skipped), resume (a snapshot is there) or new. `run_plan`
runs it with a process pool of one worker per device: a net starts as soon as its base net is finished and a
device is free; each net gets a fresh process (clean RNG, memory and thread settings) and its own device. A
net that fails is reported and the nets that copy it are not started; the others go on. Rerunning the same
command skips what finished and resumes what did not (repro.train resumes from the newest snapshot).

The same plan runs on a Ray cluster through repro/ray_grid.py.
"""
from __future__ import annotations

import fnmatch
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from ..numerics import resolve_device
from .cells import Study, StudyError, has_snapshot, is_finished
from .grid import Cell, all_cells, cell_from_name, dependencies

# The mini study's schedule (tools/mini_study.py): prototxt/small/solver.prototxt stretched from 600 to 1200
# iterations (the rate drops at 800 instead of 400): after 600 a base net is still far from trained (half0A:
# 0.46 mean of its 10 best tests against 0.76 after 1200). A base net then takes ~136 s of one CPU core, and the
# 30 nets ~27 min on 2 cores. Tested every 40 iterations instead of 200: the paper's metric, the mean of the 10
# best test points, is then taken from 31 points rather than 7 (the first of them untrained).
MINI_MAX_ITER = 1200
MINI_TEST_INTERVAL = 40


@dataclass(frozen=True)
class Job:
    """One net of a plan: its cell, the names of the nets it waits for, and its state when planned."""

    cell: Cell
    deps: tuple[str, ...]
    state: str           # "done" (skipped), "resume" or "new"
    added: bool = False  # not selected, but a selected net copies it

    @property
    def name(self) -> str:
        return self.cell.name


# ---- selection -------------------------------------------------------------------------------------------------

def select_cells(cells: Iterable[Cell] | None = None, *, kinds: Sequence[str] = (), splits: Sequence[str] = (),
                 ns: Sequence[int] = (), names: Sequence[str] = (), conditions: Sequence[str] = ()) -> list[Cell]:
    """The cells (default: the paper's 170, `repro.study.grid.all_cells()`) that match every given filter.

    kinds: base / transfer / nolearn / reduced; splits: "0".."3", "natman", "whole"; ns: layer counts;
    names: shell patterns on the cell name (`transfer0A*`, `half?A`), a cell matching any of them is kept;
    conditions: the figure's names (base, BnB, BnB+, AnB, AnB+, nolearn, reduced).
    """
    out = []
    for c in (all_cells() if cells is None else cells):
        if kinds and c.kind not in kinds:
            continue
        if splits and c.split not in splits:
            continue
        if ns and c.n not in ns:
            continue
        if conditions and c.condition not in conditions:
            continue
        if names and not any(fnmatch.fnmatchcase(c.name, p) for p in names):
            continue
        out.append(c)
    return out


def mini_cells(split: str = "0", n_max: int = 7) -> list[Cell]:
    """Figure 2's grid for one random split: both half nets, and from half A the selffers (AnA = BnB),
    transfers to B (AnB), each frozen and fine-tuned (+), for n = 1..n_max (2 + 4 * n_max nets)."""
    base = [Cell("base", target=t, split=split) for t in ("A", "B")]
    return base + [Cell("transfer", "A", tgt, n, ft, split)
                   for ft in (False, True) for tgt in ("A", "B") for n in range(1, n_max + 1)]


# ---- the plan --------------------------------------------------------------------------------------------------

def plan(study: Study, cells: Iterable[Cell]) -> list[Job]:
    """The selected cells in dependency order (base nets first), with the unfinished base nets that a selected
    transfer copies added, and each net's state on disk."""
    selected = list(dict.fromkeys(cells))
    chosen = set(selected)
    extra = []
    for c in selected:
        for d in dependencies(c):
            if d not in chosen and not is_finished(study, d):
                chosen.add(d)
                extra.append(d)
    # Base nets first; then the longest nets first (fine-tuned ones train every layer, a frozen net's cost falls
    # with n), so that the cheap nets fill the devices at the end (longest-processing-time-first).
    ordered = [c for c in extra + selected if not dependencies(c)] + \
        sorted((c for c in extra + selected if dependencies(c)), key=lambda c: (not c.fine_tune, c.n))
    jobs = []
    for c in ordered:
        deps = tuple(d.name for d in dependencies(c) if d in chosen)
        state = "done" if is_finished(study, c) else ("resume" if has_snapshot(study, c) else "new")
        jobs.append(Job(c, deps, state, added=c in extra))
    return jobs


def format_plan(jobs: Sequence[Job], devices: Sequence[str]) -> str:
    """What `--dry-run` prints: one line per net in run order, then the totals."""
    lines = []
    for j in jobs:
        after = f"  after {', '.join(j.deps)}" if j.deps else ""
        note = "  (needed by a selected net)" if j.added else ""
        lines.append(f"{j.state:6s}  {j.name:26s} {j.cell.condition:8s}{after}{note}")
    todo = sum(j.state != "done" for j in jobs)
    lines.append(f"{len(jobs)} nets: {todo} to run ({sum(j.state == 'resume' for j in jobs)} resumed), "
                 f"{len(jobs) - todo} finished; devices: {', '.join(devices)}")
    return "\n".join(lines)


# ---- running ---------------------------------------------------------------------------------------------------

def default_devices() -> list[str]:
    """Every CUDA device, else one CPU worker."""
    try:
        import torch

        n = torch.cuda.device_count()
    except Exception:
        n = 0
    return [f"cuda:{i}" for i in range(n)] or ["cpu"]


def _threads_for(devices: Sequence[str], threads: int | None) -> int:
    if threads:
        return threads
    cpu_workers = sum(d.startswith("cpu") for d in devices) or 1
    return max(1, (os.cpu_count() or 1) // cpu_workers)


def _run_one(study: Study, name: str, device: str, threads: int) -> dict:
    """A pool worker: train one net (in a fresh process) on `device`."""
    import torch

    torch.set_num_threads(threads)
    from .cells import run_cell_quietly

    t0 = time.time()
    result = run_cell_quietly(study, cell_from_name(name), device=device)
    if result["status"] != "finished":   # stopped by a signal: it resumes on the next run
        raise StudyError(f"the run ended {result['status']!r} (rerun to resume)")
    return {**result, "seconds": time.time() - t0}


def run_plan(study: Study, jobs: Sequence[Job], devices: Sequence[str] = ("cpu",), *, threads: int | None = None,
             log: Callable[[str], None] = print) -> dict[str, str]:
    """Run the plan's unfinished nets, one per device at a time. Returns {net: "done" | "skipped (finished)" |
    "failed: why" | "not run: base net X failed"}.

    Workers are started with multiprocessing's "spawn" (safe with CUDA and threads): a script that calls this
    must guard its entry point with `if __name__ == "__main__":`, as tools/*.py do. A worker's console output
    goes to `<run dir>/console.log`; `log` gets one line per start, finish and failure."""
    from .cells import ensure_study_data

    devices = list(devices)
    if not devices:
        raise StudyError("no devices to run on")
    for d in set(devices):
        resolve_device(d)  # a device this machine lacks is one line now, not a failure in every worker
    threads = _threads_for(devices, threads)
    status = {j.name: "skipped (finished)" for j in jobs if j.state == "done"}
    pending = [j for j in jobs if j.state != "done"]
    # Data is made once here, before the workers start: no two workers build the same dataset.
    ensure_study_data(study, [j.cell for j in pending])
    free = list(devices)
    running = {}
    ctx = multiprocessing.get_context("spawn")
    # max_tasks_per_child=1: every net starts in a fresh process (Caffe ran one `caffe train` per net).
    with ProcessPoolExecutor(len(devices), mp_context=ctx, max_tasks_per_child=1) as pool:
        try:
            while pending or running:
                for j in list(pending):
                    bad = [d for d in j.deps if status.get(d, "done").startswith(("failed", "not run"))]
                    if bad:
                        status[j.name] = f"not run: base net {bad[0]} failed"
                        log(f"skip    {j.name}: its base net {bad[0]} failed")
                        pending.remove(j)
                    elif free and all(status.get(d) in ("done", "skipped (finished)") for d in j.deps):
                        dev = free.pop(0)
                        log(f"start   {j.name} on {dev} ({j.state})")
                        running[pool.submit(_run_one, study, j.name, dev, threads)] = (j, dev)
                        pending.remove(j)
                if not running:
                    if pending:   # cannot happen with a plan from `plan`: deps precede their users
                        raise StudyError(f"nets wait for nets that are not in the plan: {[j.name for j in pending]}")
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    j, dev = running.pop(fut)
                    free.append(dev)
                    try:
                        r = fut.result()
                        status[j.name] = "done"
                        log(f"done    {j.name} in {r['seconds']:.0f} s" + _score(r))
                    except Exception as e:  # a failing net must not stop the nets that do not need it
                        status[j.name] = f"failed: {type(e).__name__}: {e}"
                        log(f"FAILED  {j.name}: {type(e).__name__}: {e}")
        except KeyboardInterrupt:
            for fut in running:
                fut.cancel()
            log("interrupted: rerun the same command to resume")
            raise
    return status


def summarise_status(status: dict[str, str]) -> str:
    """One paragraph for the end of a grid: counts, and each failure with its reason."""
    done = sum(v == "done" for v in status.values())
    skipped = sum(v.startswith("skipped") for v in status.values())
    failed = {k: v for k, v in status.items() if v.startswith("failed")}
    not_run = [k for k, v in status.items() if v.startswith("not run")]
    lines = [f"{done} trained, {skipped} already finished, {len(failed)} failed, {len(not_run)} not run "
             f"(their base net failed), of {len(status)} nets"]
    lines += [f"  {k}: {v}" for k, v in failed.items()]
    return "\n".join(lines)


def _score(r: dict) -> str:
    return f", top-1 (mean of 10 best) {r['score']:.4f}" if r.get("score") is not None else ""
