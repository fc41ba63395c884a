"""The study's command-line flags: one set, one meaning and one default in train_base, transfer and run_grid.

``add_study_flags(parser)`` adds them; ``study_from_args(args)`` turns the parsed flags into a
:class:`repro.study.cells.Study`; ``device_from_args(args)`` checks ``--device`` before anything is built (a
missing CUDA is one line, not a torch traceback). The three tools therefore cannot disagree on which study a
command means: without flags, every one of them works on the miniature (prototxt/mini on the hierarchical
built-in data) under ``runs/mini``.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from ..engine.modes import MODES
from .cells import CAFFENET_NET, SMALL_NET, Study, StudyError, builtin_study, mini_study, paper_study

NETS = ("mini", "small", "caffenet")
_OLD_STUDY = {"builtin": "small", "imagenet": "caffenet"}  # the --study names of earlier releases


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def add_study_flags(parser: argparse.ArgumentParser, *, device: bool = True) -> None:
    """The flags that choose a study and how its runs train (see the module doc)."""
    g = parser.add_argument_group("study (the same flags and defaults in train_base, transfer and run_grid)")
    g.add_argument("--net", default="mini", metavar="mini|small|caffenet|PATH",
                   help="mini: the miniature, prototxt/mini on the hierarchical built-in data (32 classes in "
                        "8 families), made on first use (default); small: prototxt/small on the 20-class "
                        "procedural built-in data; caffenet: "
                        f"{CAFFENET_NET.relative_to(CAFFENET_NET.parents[2])} on the ILSVRC-2012 datasets you "
                        "prepared; or a train_val prototxt PATH whose Data layers name the datasets "
                        "(half0A, whole, ...)")
    g.add_argument("--solver", metavar="PATH", help="the solver (default: solver.prototxt beside the net)")
    g.add_argument("--study", choices=tuple(_OLD_STUDY), help=argparse.SUPPRESS)  # old name of --net
    g.add_argument("--data", "--data-root", "--root", dest="data", metavar="DIR",
                   help="data root: the net's relative data paths (data/<dataset>_train, "
                        "data/<dataset>_mean.binaryproto, ...) start from it (default: the working directory)")
    g.add_argument("--runs", "--out", dest="runs", metavar="DIR",
                   help="folder of run folders, one per net (default runs/mini; runs/builtin for --net small, "
                        "runs/imagenet for --net caffenet)")
    g.add_argument("--max-iter", type=_positive, metavar="N",
                   help="a shorter schedule: max_iter N, with stepsize, test_interval, snapshot and display "
                        "scaled to it (snapshots stay at least 1000 iterations apart, or one at the end of a "
                        "shorter run)")
    g.add_argument("--test-iter", type=_positive, metavar="N",
                   help="batches per test (default: the solver's, one pass over the validation set)")
    g.add_argument("--test-interval", type=_positive, metavar="N",
                   help="iterations between tests (default: the solver's, scaled with --max-iter)")
    g.add_argument("--batch", type=_positive, metavar="N",
                   help="images per forward pass; the solver's iter_size makes up the paper's effective batch "
                        "(Caffe's own means), so the learning rate and schedule stay the paper's. N must "
                        "divide the effective batch (256 for CaffeNet)")
    g.add_argument("--effective-batch", type=_positive, metavar="N",
                   help="train with another effective batch (images per update) than the prototxt's: a "
                        "different experiment, the paper's rates were tuned for 256")
    g.add_argument("--numerics", choices=tuple(MODES), default="faithful",
                   help="faithful: Caffe's arithmetic (default); fp32: native fp32 kernels; tf32; fast: bf16 + "
                        "channels_last. Recorded in run.json")
    g.add_argument("--compile", action="store_true", help="torch.compile the training step")
    g.add_argument("--keep", action="store_true",
                   help="keep every snapshot, as Caffe does (default: the newest resume states and the weights "
                        "before each rate drop)")
    g.add_argument("--force", action="store_true",
                   help="a run folder that holds a different run (other settings, or a diverged run) is moved "
                        "aside to <folder>.replaced-<time> and the run starts afresh; nothing is deleted")
    g.add_argument("--allow-other-base", action="store_true",
                   help="let a transfer copy a base run trained on another schedule than this study's")
    if device:
        g.add_argument("--device", metavar="DEV", help="cpu, cuda, cuda:1 ... (default cpu)")


def study_from_args(a) -> Study:
    """The Study the flags of :func:`add_study_flags` describe (a missing net or solver file is named)."""
    net = a.net
    if getattr(a, "study", None):
        if net not in ("mini", _OLD_STUDY[a.study]):
            raise StudyError(f"--study {a.study} and --net {net} disagree; use --net alone")
        net = _OLD_STUDY[a.study]
    kw = {"root": a.data, "max_iter": a.max_iter, "test_iter": a.test_iter, "test_interval": a.test_interval}
    if a.runs:
        kw["runs"] = a.runs
    if net == "caffenet":
        st = paper_study(**kw)
    elif net == "mini":
        st = mini_study(**kw)
    else:
        st = builtin_study(**kw)
        if net != "small":
            st = replace(st, net=Path(net), solver=Path(net).parent / "solver.prototxt")
    if a.solver:
        st = replace(st, solver=Path(a.solver))
    for what, path in (("--net", st.net), ("--solver", st.solver)):
        if not Path(path).is_file():
            hint = "" if what == "--net" or a.solver else " (give --solver)"
            raise StudyError(f"{what}: {path} does not exist{hint}")
    return replace(st, batch=a.batch, effective_batch=a.effective_batch, numerics=a.numerics,
                   compile=bool(a.compile), keep=bool(a.keep), force=bool(a.force),
                   allow_other_base=bool(a.allow_other_base))


def check_device(device: str | None) -> str | None:
    """``device`` unchanged when this machine has it; a DeviceError (one line) otherwise."""
    if device is None:
        return None
    from ..numerics import resolve_device

    resolve_device(device)
    return device


def device_from_args(a) -> str | None:
    return check_device(getattr(a, "device", None))




def result_line(result: dict) -> str:
    """A tool's last console line for one net (``run_cell``'s result): its status, folder and the run's one
    headline number (repro.runlog.headline_line, as summary.json and the figures hold it)."""
    from ..runlog import headline_line

    status, summary = result["status"], result.get("summary") or {}
    head = f"{result['cell']}: {status} in {result['run_dir']}"
    if status == "finished":
        return f"{head}; {headline_line(summary)}"
    if status == "stopped":
        return f"{head} at iteration {summary.get('iter')}; run the same command again to resume"
    if status == "diverged":
        last = summary.get("last_good_snapshot")
        return (f"{head} at iteration {summary.get('iter')}; last good snapshot: {last or 'none'}; not a result "
                f"(lower base_lr, then rerun with --force)")
    return head


def exit_code(status: str) -> int:
    """The training tools' exit code for a run's status (repro.train.EXIT_CODES)."""
    from ..train import EXIT_CODES

    return EXIT_CODES.get(status, 1)


__all__ = ["add_study_flags", "study_from_args", "device_from_args", "check_device", "result_line", "exit_code",
           "NETS", "SMALL_NET"]
