"""The grid on a Ray cluster: one Ray task per net, holding a GPU; a transfer waits for its base net's result.

Ray (an optional extra: `pip install ray`) does the scheduling that repro.study.scheduler does on one machine:
each net of a plan (`repro.study.scheduler.plan`) becomes one `@ray.remote` task that asks for `num_gpus` GPUs (Ray
sets CUDA_VISIBLE_DEVICES, so the task trains on "cuda"; with 0 it trains on the CPU). A transfer's task
takes its base net's task result (an ObjectRef) as an argument, so Ray starts it only once that base net
has finished, and it copies the weights file the result names. A base net that fails fails its dependants
with it (Ray passes the error on); the others go on.

The run folders (`Study.runs`) and the data (`Study.root`) must be on a file system every node sees, as the
paper's cluster jobs shared one results/ folder. Finished nets are skipped and unfinished ones resume, as
with the local scheduler: each task calls `repro.study.cells.run_cell` (its console output goes to the run folder's
console.log).
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

from .cells import Study, StudyError
from .scheduler import DIVERGED, STOPPED, Job


def _ray():
    try:
        import ray
    except ImportError:
        raise StudyError("the Ray backend needs Ray: pip install 'ray>=2.9' (or pip install repro[ray])") from None
    return ray


class NetEnded(StudyError):
    """A net's run ended without finishing: ``status`` is the run's ("diverged", "stopped"), so the grid reports
    and exits as the local scheduler does (a diverged net is not a crash of the task)."""

    def __init__(self, name: str, status: str, summary: dict | None = None):
        it = (summary or {}).get("iter")
        super().__init__(f"{name}: the run ended {status!r}" + (f" at iteration {it}" if it is not None else "")
                         + ", not finished")
        self.status = status

    def __reduce__(self):  # Ray pickles the task's exception back to the driver
        return (_net_ended, (str(self), self.status))


def _net_ended(message: str, status: str) -> "NetEnded":
    e = NetEnded.__new__(NetEnded)
    StudyError.__init__(e, message)
    e.status = status
    return e


def task_status(cause: BaseException) -> str:
    """The grid status of a task that raised ``cause``: "diverged: ..." / "stopped: ..." for a run that ended
    so (repro.study.scheduler's words, hence its exit codes), else "failed: <type>: <message>"."""
    if isinstance(cause, NetEnded) and cause.status in (STOPPED, DIVERGED):
        return f"{cause.status}: {cause}"
    return f"failed: {type(cause).__name__}: {cause}"


def train_net(study: Study, name: str, threads: int, *bases: dict) -> dict:
    """The body of one Ray task: train net `name`; `bases` are the results of the tasks it depends on."""
    import os

    import torch

    from .cells import run_cell_quietly
    from .grid import cell_from_name

    torch.set_num_threads(max(1, threads))
    # Ray hides the other GPUs: the one it gave this task is "cuda" (cuda:0 of CUDA_VISIBLE_DEVICES).
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    device = "cuda" if gpus.strip() and torch.cuda.is_available() else "cpu"
    weights = bases[0]["weights"] if bases else None
    t0 = time.time()
    result = run_cell_quietly(study, cell_from_name(name), device=device, weights=weights)
    if result["status"] != "finished":
        raise NetEnded(name, result["status"], result.get("summary"))
    return {**result, "device": device, "seconds": time.time() - t0}


def run_plan_ray(study: Study, jobs: Sequence[Job], *, num_gpus: float = 1, num_cpus: float = 1,
                 threads: int | None = None, address: str | None = None, init_kwargs: dict | None = None,
                 log: Callable[[str], None] = print) -> dict[str, str]:
    """Run a plan's unfinished nets as Ray tasks; returns {net: "done" | "skipped (finished)" | "failed: why" |
    "not run: base net X failed"}, as repro.study.scheduler.run_plan does.

    address: the cluster to join ("auto", "ray://host:10001"); None starts a local Ray instance unless one is
    running in this process already. num_gpus / num_cpus: the resources each net's task asks for.
    """
    from .cells import ensure_study_data

    ray = _ray()
    if not ray.is_initialized():
        # Workers must import repro: a local instance's workers start in this working directory (run from the
        # checkout, or install repro); on a cluster install it on every node. A runtime_env in init_kwargs
        # can ship it instead, at the cost of a slower worker start.
        ray.init(address=address, **(init_kwargs or {}))
    threads = threads or max(1, int(num_cpus))
    task = ray.remote(train_net).options(num_gpus=num_gpus, num_cpus=num_cpus, max_retries=0)
    status = {j.name: "skipped (finished)" for j in jobs if j.state == "done"}
    todo = [j for j in jobs if j.state != "done"]
    ensure_study_data(study, [j.cell for j in todo])   # built here once, before any task reads it
    refs = {}
    for j in todo:   # the plan lists base nets before their dependants, so their refs exist already
        bases = [refs[d] for d in j.deps if d in refs]
        refs[j.name] = task.remote(study, j.name, threads, *bases)
        log(f"submit  {j.name} ({j.state})" + (f", after {', '.join(j.deps)}" if j.deps else ""))
    names = {ref: name for name, ref in refs.items()}
    waiting = list(refs.values())
    while waiting:
        ready, waiting = ray.wait(waiting, num_returns=1)
        name = names[ready[0]]
        try:
            r = ray.get(ready[0])
            status[name] = "done"
            score = f", top-1 (mean of 10 best) {r['score']:.4f}" if r.get("score") is not None else ""
            log(f"done    {name} on {r['device']} in {r['seconds']:.0f} s{score}")
        except Exception as e:  # RayTaskError wraps the task's exception (or its base net's)
            cause = getattr(e, "cause", None) or e
            status[name] = task_status(cause)
            log(f"FAILED  {name}: {status[name].splitlines()[0]}")
    # A task whose base net failed got that failure as its own (Ray resolves its arguments): say so, as the
    # local scheduler does.
    for j in todo:
        bad = [d for d in j.deps if status.get(d, "").startswith(("failed", "not run", STOPPED, DIVERGED))]
        if bad:
            status[j.name] = f"not run: base net {bad[0]} {status[bad[0]].split(':')[0]}"
    return status
