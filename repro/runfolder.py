"""The run folder: the record of one training run, owned by one process at a time.

    solver.prototxt, train.prototxt, val*.prototxt   the resolved solver and nets (data paths absolute)
    run.json       identity (what was asked: files, weights, numerics), git hash, versions, device, seed,
                   command line, the caller's record (e.g. the cell), resumes
    log.jsonl      the run's records (repro.runlog); caffe.log: the same run in Caffe's own log format
    snapshots/     Caffe's snapshot_iter_<N>.caffemodel + .solverstate, and our .state.pt (exact resume)
    summary.json   status ("finished" or "diverged"), the paper's metric, the final single-pass evaluation
    final.caffemodel, final.pt, final.onnx   the trained weights, written last: their presence marks a
                   finished run
    .lock          the owner's lock (an OS lock on this file; the kernel releases it when the owner dies)

A run has one *identity*: its resolved solver and nets, the weights it starts from and its numerics. A folder
asked to run something else refuses, finished or not (``force`` moves the old run aside instead of
overwriting it, so nothing is lost). Every file is written atomically (repro.atomic).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

from .atomic import atomic_write_text, clean_stale_temps
from .errors import ReproError
from .runlog import LOG_FILE, dumps

SOLVER_FILE, TRAIN_FILE, SUMMARY_FILE, RUN_FILE, CAFFE_LOG = (
    "solver.prototxt", "train.prototxt", "summary.json", "run.json", "caffe.log")
SNAPSHOT_DIR = "snapshots"
SNAPSHOT_PREFIX = f"{SNAPSHOT_DIR}/snapshot"
FINAL_PT, FINAL_CAFFEMODEL, FINAL_ONNX = "final.pt", "final.caffemodel", "final.onnx"
LOCK_FILE = ".lock"


class RunError(ReproError):
    """A run folder that cannot be used for this run (it holds a different one, or is damaged)."""


class RunLockedError(RunError):
    """Another live process owns the run folder."""


def val_file(i: int) -> str:
    return "val.prototxt" if i == 0 else f"val{i}.prototxt"


def file_id(path) -> dict:
    """A weights file's identity: its path and the sha256 of its bytes (a file replaced under the same name is
    a different start)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return {"path": str(Path(path).absolute()), "sha256": h.hexdigest()}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def identity(files: dict[str, str], weights: list | None = None, numerics: str = "faithful",
             compile: bool = False, init: dict | None = None) -> dict:
    """What makes two runs the same run: the resolved prototxt texts, the weights they start from (files by
    content, an ``init`` description from the caller) and the numerics."""
    return {"files": {name: _sha(text) for name, text in sorted(files.items())},
            "weights": [file_id(w) for w in (weights or [])], "init": init, "numerics": numerics,
            "compile": bool(compile)}


def _first_difference(name: str, old: str, new: str) -> str:
    a, b = old.splitlines(), new.splitlines()
    for x, y in zip(a, b):
        if x != y:
            return f"{name}: {x.strip()!r} here, {y.strip()!r} asked"
    return f"{name}: {len(a)} lines here, {len(b)} asked"


# ---------------------------------------------------------------------------------------------- the record


def git_state() -> dict:
    """The commit of the code that runs (None outside a git checkout) and whether it has local changes."""
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip() or None if head.returncode == 0 else None,
            "dirty": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None}


def versions() -> dict:
    import numpy as np
    import torch

    from . import __version__

    return {"repro": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "platform": platform.platform()}


def _absolute_data_paths(net_param, bases: list[Path]) -> None:
    """Make the data sources and mean files of a net absolute (working directory first, then ``bases``), so
    the recorded prototxts work from anywhere. Paths found nowhere are left for the data layer to report."""
    def fix(value: str) -> str:
        if not value or Path(value).is_absolute():
            return value
        for b in [Path.cwd()] + bases:
            if (b / value).exists():
                return str((b / value).resolve())
        return value

    for layer in net_param.layer:
        if layer.type == "Data":
            layer.data_param.source = fix(layer.data_param.source)
        elif layer.type == "ImageData":
            layer.image_data_param.source = fix(layer.image_data_param.source)
            if layer.image_data_param.root_folder:
                layer.image_data_param.root_folder = fix(layer.image_data_param.root_folder)
        if layer.transform_param.mean_file:
            layer.transform_param.mean_file = fix(layer.transform_param.mean_file)


def resolved_files(solver, max_iter: int | None = None, data_root=None) -> dict[str, str]:
    """The texts of solver.prototxt, train.prototxt and val*.prototxt for a run folder: the nets inlined from
    wherever the solver names them (Caffe's rules plus the solver's folder), data paths absolute, the solver
    pointing at the files beside it and snapshotting into snapshots/."""
    from google.protobuf import text_format

    from .prototxt import read_net, read_solver
    from .solver import test_net_sources, train_net_source

    if isinstance(solver, (str, os.PathLike)):
        solver_dir = Path(solver).parent
        param = read_solver(solver)
    else:
        solver_dir, param = None, type(solver)()
        param.CopyFrom(solver)
    bases = [Path(data_root)] if data_root is not None else []
    bases += [solver_dir] if solver_dir is not None else []

    def net(src):  # a NetParameter, or a prototxt path whose folder relative data paths may start from
        return (read_net(src), [src.parent]) if isinstance(src, Path) else (src, [])

    train, extra = net(train_net_source(param, solver_dir))
    tests = [net(src) for src in test_net_sources(param, solver_dir)]
    _absolute_data_paths(train, bases + extra)
    for t, ex in tests:
        _absolute_data_paths(t, bases + ex)
    for f in ("net", "net_param", "train_net", "train_net_param", "test_net", "test_net_param"):
        param.ClearField(f)
    param.train_net = TRAIN_FILE
    param.test_net.extend(val_file(i) for i in range(len(tests)))
    param.snapshot_prefix = SNAPSHOT_PREFIX
    if max_iter is not None:
        param.max_iter = int(max_iter)
    fmt = lambda m: text_format.MessageToString(m)
    files = {SOLVER_FILE: fmt(param), TRAIN_FILE: fmt(train)}
    files.update({val_file(i): fmt(t) for i, (t, _) in enumerate(tests)})
    return files



# ---------------------------------------------------------------------------------------------- the folder


class RunFolder:
    """One run's folder (see the module doc). ``with folder.owned():`` holds its lock."""

    def __init__(self, path):
        self.path = Path(path).absolute()
        self._lock_fd = None

    def __truediv__(self, name) -> Path:
        return self.path / name

    # ------------------------------------------------------------------------------------------ ownership

    def owned(self):
        """Context manager: own the folder (an exclusive OS lock on ``.lock``), clean temp files a killed
        writer left. A second owner fails at once with RunLockedError naming the owner's pid."""
        return _Owned(self)

    def _acquire(self) -> None:
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            owner = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise RunLockedError(f"{self.path} is being trained by {owner}; a run folder has one writer at a "
                                 f"time (wait for it, or stop that process: it resumes later)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {os.uname().nodename} since "
                     f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n".encode())
        self._lock_fd = fd
        for folder in (self.path, self.path / SNAPSHOT_DIR):
            clean_stale_temps(folder)

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the lock
            self._lock_fd = None

    # ------------------------------------------------------------------------------------------ state

    def record(self) -> dict:
        """run.json (empty when there is none); a damaged one is an error naming the file."""
        p = self.path / RUN_FILE
        if not p.is_file():
            return {}
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunError(f"{p}: not valid JSON ({e}); it is the run's record: restore it or remove the "
                           f"folder") from None
        if not isinstance(rec, dict):
            raise RunError(f"{p}: expected a JSON object, got {type(rec).__name__}")
        return rec

    def write_record(self, rec: dict) -> None:
        atomic_write_text(self.path / RUN_FILE, dumps(rec, indent=1) + "\n")

    def summary(self) -> dict | None:
        p = self.path / SUMMARY_FILE
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise RunError(f"{p}: not valid JSON ({e})") from None

    def write_summary(self, summary: dict) -> None:
        atomic_write_text(self.path / SUMMARY_FILE, dumps(summary, indent=1) + "\n")

    @property
    def finished(self) -> bool:
        """final.caffemodel and a summary that says finished (a diverged run is not finished)."""
        s = self.summary() if (self.path / FINAL_CAFFEMODEL).is_file() else None
        return bool(s) and s.get("status", "finished") == "finished"

    @property
    def diverged(self) -> bool:
        s = self.summary()
        return bool(s) and s.get("status") == "diverged"

    def has_snapshot(self) -> bool:
        """Whether a resume state file is there (which one loads is checked when resuming)."""
        d = self.path / SNAPSHOT_DIR
        return d.is_dir() and any(p.name.endswith(".state.pt") for p in d.iterdir())

    def has_history(self) -> bool:
        """Anything a fresh start would lose: snapshots, log records, a summary or final weights."""
        log = self.path / LOG_FILE
        return (self.has_snapshot() or (log.is_file() and log.stat().st_size > 0)
                or (self.path / SUMMARY_FILE).is_file() or (self.path / FINAL_CAFFEMODEL).is_file())

    # ------------------------------------------------------------------------------------------ identity

    def check_identity(self, files: dict[str, str], ident: dict, force: bool = False) -> str:
        """Compare what is asked with what the folder holds. Returns "new" (nothing to lose: write the files),
        "same" (resume or report), or "replaced" (``force``: the old run was moved aside). A different run
        with something to lose raises RunError saying what differs."""
        rec = self.record()
        old_ident = rec.get("identity")
        if not self.has_history():
            return "new"
        if old_ident is None:
            # a folder from before identities were recorded: compare its files
            old_files = {n: (self.path / n).read_text() for n in files if (self.path / n).is_file()}
            same = old_files == files
        else:
            same = old_ident == ident
        if same:
            return "same"
        why = self._differences(files, ident, old_ident)
        if not force:
            raise RunError(f"{self.path} holds a different run ({why}); use another output folder, or pass "
                           f"--force to move the old run aside (nothing is deleted)")
        aside = self.path.with_name(f"{self.path.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        moved = [p for p in self.path.iterdir() if p.name != LOCK_FILE]
        aside.mkdir()
        for p in moved:
            shutil.move(str(p), aside / p.name)
        return "replaced"

    def _differences(self, files, ident, old_ident) -> str:
        out = []
        for name, text in files.items():
            p = self.path / name
            if not p.is_file():
                out.append(f"{name} missing here")
            elif p.read_text() != text:
                out.append(_first_difference(name, p.read_text(), text))
        if old_ident is not None:
            for key in ("weights", "init", "numerics", "compile"):
                if old_ident.get(key) != ident.get(key):
                    out.append(f"{key}: {_short(old_ident.get(key))} here, {_short(ident.get(key))} asked")
        return "; ".join(out) or "its identity differs"

    def write_files(self, files: dict[str, str]) -> None:
        for name, text in files.items():
            p = self.path / name
            if not p.is_file() or p.read_text() != text:
                atomic_write_text(p, text)


def _short(value) -> str:
    if isinstance(value, list) and value and isinstance(value[0], dict) and "path" in value[0]:
        return ", ".join(Path(v["path"]).name + "@" + v["sha256"][:8] for v in value)
    return json.dumps(value)[:80]


class _Owned:
    def __init__(self, folder: RunFolder):
        self.folder = folder

    def __enter__(self) -> RunFolder:
        self.folder._acquire()
        return self.folder

    def __exit__(self, *exc) -> None:
        self.folder._release()
