"""Running a subset of the grid on one machine: selection, dependency order, skip/resume, one net per device.

The paper ran its nets in two blocks (the paper's training protocol): the base nets first, then the transfer nets that
copy their final snapshots. `plan` puts any subset of cells in that order, adds the unfinished base nets a
selected transfer needs, and marks each net done (skipped), resume (a snapshot is there) or new. `run_plan`
runs it with a process pool of one worker per device: a net starts as soon as its base net is finished and a
device is free; each net gets a fresh process (clean RNG, memory and thread settings) and its own device. A
net that fails is reported and the nets that copy it are not started; the others go on. Rerunning the same
command skips what finished and resumes what did not (repro.train resumes from the newest snapshot).

The same plan runs on a Ray cluster through repro.study.ray_grid.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import fnmatch
import multiprocessing
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import wait as mp_wait
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..numerics import resolve_device
from .cells import Study, StudyError, has_snapshot, is_finished
from .grid import Cell, all_cells, cell_from_name, dependencies, mean_source


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


def datasets(cell: Cell) -> str:
    """The datasets a net reads, as the plan prints them: its training and validation sets and the dataset
    whose mean it subtracts (a transfer: its source half's)."""
    out = f"data {cell.dataset}" + ("" if cell.val_dataset == cell.dataset else f", val {cell.val_dataset}")
    mean = mean_source(cell)
    return out + ("" if mean == cell.dataset else f", mean of {mean}")


def data_needed(study: Study, cells: Iterable[Cell]) -> list[tuple[Path, bool]]:
    """Every data path (stores, index lists, mean files) the cells read, with whether it exists now."""
    from .cells import data_paths, realised

    paths = []
    for c in cells:
        paths += data_paths(*realised(study, c)[:2])
    return [(p, p.exists()) for p in dict.fromkeys(paths)]


def format_data(study: Study, cells: Iterable[Cell]) -> str:
    """The dry run's data section: each path the selection reads, present or missing (made on first use for
    the built-in data)."""
    need = data_needed(study, cells)
    missing = sum(not ok for _, ok in need)
    what = "made on first use" if study.builtin else "missing"
    lines = [f"data: {len(need)} paths, {len(need) - missing} present, {missing} {what}"]
    mark = "to make" if study.builtin else "missing"
    lines += [f"  {'ok' if ok else mark:7s} {p}" for p, ok in need]
    return "\n".join(lines)


def format_plan(jobs: Sequence[Job], devices: Sequence[str]) -> str:
    """What `--dry-run` prints: one line per net in run order (with the datasets it reads), then the totals."""
    lines = []
    for j in jobs:
        after = f"  after {', '.join(j.deps)}" if j.deps else ""
        note = "  (needed by a selected net)" if j.added else ""
        lines.append(f"{j.state:6s}  {j.name:26s} {j.cell.condition:8s}{after}{note}  [{datasets(j.cell)}]")
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


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int) -> None:
    """Linux: have the kernel send this process SIGTERM when its parent dies (prctl PR_SET_PDEATHSIG), so a
    grid worker never trains on after its run_grid was killed (even by SIGKILL). SIGTERM makes repro.train
    stop after the iteration with a snapshot. Elsewhere a no-op (the run folder's lock still keeps a rerun from
    becoming a second writer)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:  # the parent died before the request was in place
        os.kill(os.getpid(), signal.SIGTERM)


def _worker(conn, study: Study, name: str, device: str, threads: int, parent_pid: int) -> None:
    """One grid worker (a fresh process per net, as Caffe ran one `caffe train` per net): train `name` on
    `device` and send back ("ok", result) or ("error", why)."""
    die_with_parent(parent_pid)
    import torch

    torch.set_num_threads(threads)
    from .cells import run_cell_quietly

    t0 = time.time()
    try:
        r = run_cell_quietly(study, cell_from_name(name), device=device)
        summary = r.get("summary") or {}
        conn.send(("ok", {"status": r["status"], "score": r.get("score"), "iter": summary.get("iter"),
                          "seconds": time.time() - t0}))
    except BaseException as e:  # noqa: BLE001 - reported to the parent (the traceback is in console.log)
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


class _Stopper:
    """run_grid's signal handling: the first SIGINT / SIGTERM asks every running net to stop (SIGTERM to each
    worker: repro.train finishes the iteration and snapshots) and starts no new net; a second SIGINT stops
    waiting (KeyboardInterrupt). SIGTERM, not SIGINT, is forwarded: a terminal's Ctrl-C already reaches the
    workers, and a second SIGINT would make them stop without a snapshot."""

    def __init__(self, log):
        self.log, self.stopping, self.procs, self.old = log, False, [], {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.stopping and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not self.stopping:
            self.log(f"signal {signal.Signals(signum).name}: stopping the running nets after their iteration "
                     f"(snapshot); run the same command again to resume")
        self.stopping = True
        self.forward(signal.SIGTERM)

    def forward(self, sig) -> None:
        for proc in self.procs:
            if proc.is_alive():
                try:
                    os.kill(proc.pid, sig)
                except ProcessLookupError:
                    pass

    def start(self, proc) -> None:
        """Start a worker with SIGINT ignored from birth (inherited through exec): a Ctrl-C while it imports
        prints no traceback; repro.train installs its own handler once the run starts."""
        old = signal.getsignal(signal.SIGINT) if self.old else None
        if self.old:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            proc.start()
        finally:
            if self.old:
                signal.signal(signal.SIGINT, old)
        self.procs.append(proc)

    def __exit__(self, exc_type, *exc):
        alive = [p for p in self.procs if p.is_alive()]
        if alive:  # leaving early (a second Ctrl-C, a bug): the workers stop with a snapshot, we wait a while
            self.forward(signal.SIGTERM)
            deadline = time.time() + 30
            for p in alive:
                p.join(max(0.0, deadline - time.time()))
            for p in alive:
                if p.is_alive():
                    p.kill()
        for sig, h in self.old.items():
            signal.signal(sig, h)


STOPPED, DIVERGED = "stopped", "diverged"


def run_plan(study: Study, jobs: Sequence[Job], devices: Sequence[str] = ("cpu",), *, threads: int | None = None,
             log: Callable[[str], None] = print) -> dict[str, str]:
    """Run the plan's unfinished nets, one per device at a time. Returns {net: "done" | "skipped (finished)" |
    "stopped: ..." | "diverged: ..." | "failed: why" | "not run: why"}.

    Each net trains in a fresh process started with multiprocessing's "spawn" (safe with CUDA and threads): a
    script that calls this must guard its entry point with `if __name__ == "__main__":`, as tools/*.py do.
    Workers die with this process (PR_SET_PDEATHSIG), and SIGINT / SIGTERM stop them with a snapshot. A
    worker's console output goes to `<run dir>/console.log`; `log` gets one line per start, finish and
    failure."""
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
    running = {}   # the parent's end of each worker's pipe -> (job, device, process)
    ctx = multiprocessing.get_context("spawn")
    with _Stopper(log) as stopper:
        while pending or running:
            for j in list(pending):
                bad = [d for d in j.deps if not status.get(d, "done").startswith(("done", "skipped"))]
                if stopper.stopping:
                    status[j.name] = "not run: the grid was stopped"
                    pending.remove(j)
                elif bad:
                    status[j.name] = f"not run: base net {bad[0]} {status[bad[0]].split(':')[0]}"
                    log(f"skip    {j.name}: its base net {bad[0]} did not finish")
                    pending.remove(j)
                elif free and all(status.get(d) in ("done", "skipped (finished)") for d in j.deps):
                    dev = free.pop(0)
                    log(f"start   {j.name} on {dev} ({j.state})")
                    here, there = ctx.Pipe(duplex=False)
                    proc = ctx.Process(target=_worker, args=(there, study, j.name, dev, threads, os.getpid()),
                                       name=f"grid-{j.name}")
                    stopper.start(proc)
                    there.close()
                    running[here] = (j, dev, proc)
                    pending.remove(j)
            if not running:
                if pending:   # cannot happen with a plan from `plan`: deps precede their users
                    raise StudyError(f"nets wait for nets that are not in the plan: {[j.name for j in pending]}")
                break
            for conn in mp_wait(list(running)):
                j, dev, proc = running.pop(conn)
                free.append(dev)
                try:
                    kind, value = conn.recv()
                except (EOFError, OSError):
                    proc.join()
                    kind, value = "error", f"the worker died (exit code {proc.exitcode})"
                conn.close()
                proc.join()
                status[j.name] = _outcome(kind, value)
                log(_outcome_line(j.name, status[j.name], value))
    return status


def _outcome(kind: str, value) -> str:
    if kind == "error":
        return f"failed: {value}"
    if value["status"] == "finished":
        return "done"
    if value["status"] == STOPPED:
        return f"stopped: at iteration {value.get('iter')} (rerun to resume)"
    return f"{value['status']}: at iteration {value.get('iter')}"


def _outcome_line(name: str, state: str, value) -> str:
    if state == "done":
        return f"done    {name} in {value['seconds']:.0f} s" + _score(value)
    word = state.split(":")[0]
    return f"{'FAILED' if word == 'failed' else word:7s} {name}: {state.split(': ', 1)[1]}"


def exit_status(status: dict[str, str]) -> str:
    """The grid's overall status for its exit code: "stopped" if any net was stopped, else "diverged" if any
    diverged, else "failed" if any failed or was not run, else "finished"."""
    words = {v.split(":")[0] for v in status.values()}
    if STOPPED in words or any(v == "not run: the grid was stopped" for v in status.values()):
        return STOPPED
    if DIVERGED in words:
        return DIVERGED
    return "failed" if words & {"failed", "not run"} else "finished"


def summarise_status(status: dict[str, str]) -> str:
    """One paragraph for the end of a grid: counts, and each failure with its reason."""
    done = sum(v == "done" for v in status.values())
    skipped = sum(v.startswith("skipped") for v in status.values())
    failed = {k: v for k, v in status.items() if v.startswith("failed")}
    not_run = [k for k, v in status.items() if v.startswith("not run")]
    lines = [f"{done} trained, {skipped} already finished, {len(failed)} failed, {len(not_run)} not run "
             f"(a base net did not finish, or the grid was stopped), of {len(status)} nets"]
    stopped = [k for k, v in status.items() if v.startswith(STOPPED)]
    diverged = {k: v for k, v in status.items() if v.startswith(DIVERGED)}
    if stopped:
        lines.append(f"{len(stopped)} stopped (rerun the same command to resume): {', '.join(stopped)}")
    lines += [f"  {k}: {v} (not a result)" for k, v in diverged.items()]
    lines += [f"  {k}: {v}" for k, v in failed.items()]
    return "\n".join(lines)


def _score(r: dict) -> str:
    return f", top-1 (mean of 10 best) {r['score']:.4f}" if r.get("score") is not None else ""
