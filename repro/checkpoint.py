"""Snapshots and resume state, kept apart as Caffe keeps them (``Solver::Snapshot``):

* ``<prefix>_iter_<N>.caffemodel``: the weights only — what transfer experiments copy from;
* ``<prefix>_iter_<N>.solverstate``: Caffe's own binary ``SolverState`` (iter, learned_net, history,
  current_step; written by ``repro.caffemodel.write_solverstate``), so a real Caffe can resume from our
  snapshot and we can resume from Caffe's;
* ``<prefix>_iter_<N>.state.pt``: everything an exact resume needs here — {iter, weights and momentum history
  by Caffe layer name, the solver text, RNG states, data cursors, smoothed-loss window}. It is written last,
  so its presence marks a complete snapshot.

Every file is written to a temporary file in the same folder, flushed, then ``os.replace``d: a killed run
leaves either the old file or the new one, never half of one.
"""
from __future__ import annotations

import errno
import random
import re
import shutil
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_write, atomic_write_bytes, atomic_write_text  # noqa: F401  (the run writes through these)
from .errors import ReproError

STATE_FORMAT = "repro-solverstate"
STATE_VERSION = 1
_ITER_RE = re.compile(r"_iter_(\d+)\.state\.pt$")


class CheckpointError(ReproError):
    """A snapshot file that cannot be used to resume (missing, truncated, or from another net)."""


# --------------------------------------------------------------------------------------------- atomic writes


def atomic_torch_save(obj, path: str | Path) -> Path:
    """torch.save, atomically. A failed write (a full disk: torch reports it as a RuntimeError from its zip
    writer) becomes an OSError naming the file and the free space, so a tool prints one line."""
    def save(tmp):
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:
            if "write" not in str(e).lower():
                raise
            free = shutil.disk_usage(Path(tmp).parent).free
            raise OSError(errno.ENOSPC if free < (64 << 20) else errno.EIO,
                          f"could not write {path} ({free / 2**20:.0f} MiB free on that disk): "
                          f"{str(e).splitlines()[0]}") from None
    return atomic_write(path, save)


# ------------------------------------------------------------------------------------------------ RNG states


def rng_state() -> dict:
    """The random streams a training run draws from (torch CPU and CUDA, numpy's global, Python's)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": list(random.getstate()[1]),
        "python_version": int(random.getstate()[0]),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _caffe_rng_state(solver) -> dict | None:
    rng = getattr(solver, "caffe_rng", None)
    if rng is None:
        return None
    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in rng.main.state_dict().items()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate((state["python_version"], tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# ------------------------------------------------------------------------------------------- snapshot files


def snapshot_paths(prefix: str | Path, it: int) -> dict[str, Path]:
    """Caffe: ``Solver::SnapshotFilename``: ``<prefix>_iter_<N>`` + extension."""
    base = f"{prefix}_iter_{int(it)}"
    return {"caffemodel": Path(base + ".caffemodel"), "solverstate": Path(base + ".solverstate"),
            "state": Path(base + ".state.pt")}


def save_state(path: str | Path, state: dict) -> Path:
    """Write a resume state (see the module docstring) atomically."""
    return atomic_torch_save({"format": STATE_FORMAT, "version": STATE_VERSION, **state}, path)


def load_state(path: str | Path) -> dict:
    """Read a resume state written by :func:`save_state`; a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such snapshot state file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle error, not a torch file
        first = (str(e).strip().splitlines() or [""])[0]  # torch's unpickler errors run to many lines
        raise CheckpointError(f"{path}: not a readable snapshot state ({type(e).__name__}: {first})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not a repro snapshot state (expected format {STATE_FORMAT!r})")
    if state.get("version", 0) > STATE_VERSION:
        raise CheckpointError(f"{path}: snapshot state version {state['version']} is newer than this code's "
                              f"({STATE_VERSION})")
    return state


def find_resume_state(prefix: str | Path, log=None) -> Path | None:
    """The newest complete snapshot state ``<prefix>_iter_<N>.state.pt`` (highest N that loads), or None when
    there is none. A damaged one (e.g. copied half-way by hand) is named through ``log`` and the one before
    it is tried; when every one is damaged that is an error, not a silent restart from iteration 0."""
    prefix = Path(prefix)
    folder = prefix.parent if prefix.parent != Path("") else Path(".")
    if not folder.is_dir():
        return None
    found = []
    for p in folder.iterdir():
        m = _ITER_RE.search(p.name)
        if m and p.name[: m.start()] == prefix.name:
            found.append((int(m.group(1)), p))
    damaged = []
    for _, p in sorted(found, reverse=True):
        try:
            load_state(p)
        except CheckpointError as e:
            damaged.append(str(e))
            if log is not None:
                log(f"skipping a damaged snapshot: {e}")
            continue
        return p
    if damaged:
        raise CheckpointError(f"every snapshot in {folder} is damaged ({'; '.join(damaged)}); remove them to "
                              f"train from scratch (or rerun with --force, which moves the old run aside)")
    return None


def latest_state(prefix: str | Path) -> Path | None:
    """The newest complete snapshot state, skipping damaged ones silently (None when none loads)."""
    try:
        return find_resume_state(prefix)
    except CheckpointError:
        return None


def tensors_by_layer(named: "OrderedDict[str, list[torch.Tensor]]") -> "OrderedDict[str, list[torch.Tensor]]":
    """Detached CPU copies, keyed by Caffe layer name (what a state file stores)."""
    return OrderedDict((k, [t.detach().to("cpu", copy=True) for t in v]) for k, v in named.items())


# ------------------------------------------------------------------------------------- solver snapshots


def data_state(net) -> dict:
    """The cursor (and transform RNG) of each Data layer reader a Net has opened, by layer name."""
    feeders = getattr(net, "feeders", None) or {}
    return {name: f.state_dict() for name, f in feeders.items() if hasattr(f, "state_dict")}


def load_data_state(net, state: dict) -> None:
    """Reopen each Data layer reader at the saved cursor (``Net._feeder`` opens it as a forward would)."""
    for name, s in state.items():
        feeder = net._feeder(name, net.layer(name))
        feeder.load_state_dict(s)


def snapshot_solver(solver, prefix) -> dict[str, Path]:
    """Write ``<prefix>_iter_<N>`` .caffemodel, .solverstate (Caffe's) and .state.pt (ours; last)."""
    from google.protobuf import text_format

    from .caffemodel import SolverState, write_solverstate
    from .lr import multistep_index

    paths = snapshot_paths(prefix, solver.iter)
    paths["caffemodel"].parent.mkdir(parents=True, exist_ok=True)
    solver.net.save(paths["caffemodel"])  # atomic (repro.caffemodel writes a temp file, then renames)
    history = [v.detach().cpu().numpy() for v in solver._history]
    p = solver.param
    # Caffe's current_step_ as its last GetLearningRate call (at iter_ = N - 1) left it.
    last = max(solver.iter - 1, 0)
    current_step = multistep_index(p.stepvalue, last) if p.lr_policy == "multistep" else \
        (last // p.stepsize if p.lr_policy == "step" and p.stepsize > 0 else 0)
    write_solverstate(paths["solverstate"], SolverState(iter=solver.iter, learned_net=str(paths["caffemodel"]),
                                                        history=history, current_step=current_step))
    state = {
        "iter": solver.iter,
        "lr": solver.lr,
        "seed": solver.seed,
        "solver": text_format.MessageToString(p),
        "weights": tensors_by_layer(solver.net.params),
        "history": tensors_by_layer(solver.history),
        "rng": rng_state(),
        # a seeded CPU run's Caffe stream (dropout masks go on from where they were)
        "caffe_rng": _caffe_rng_state(solver),
        "data": {"train": data_state(solver.net), "test": [data_state(n) for n in solver.test_nets]},
        # Caffe's smoothed-loss window (Solver::UpdateSmoothedLoss), so a resumed run logs the same losses
        "loss_window": {"losses": list(solver._losses), "smoothed": solver._smoothed_loss,
                        "start_iter": solver._start_iter},
        "caffemodel": paths["caffemodel"].name,
    }
    save_state(paths["state"], state)
    return paths


def _copy_blobs(solver, src: dict, what: str, target: "OrderedDict[str, list[torch.Tensor]]", path) -> None:
    missing = [k for k in target if k not in src]
    unexpected = [k for k in src if k not in target]
    if missing or unexpected:
        raise CheckpointError(f"{path}: {what} does not match the TRAIN net {solver.net.name!r}: missing layers "
                              f"{missing}, unexpected layers {unexpected}")
    with torch.no_grad():
        for layer, blobs in target.items():
            vals = src[layer]
            shapes = [tuple(v.shape) for v in vals]
            if shapes != [tuple(b.shape) for b in blobs]:
                raise CheckpointError(f"{path}: layer {layer!r}: {what} has shapes {shapes}, the net has "
                                      f"{[tuple(b.shape) for b in blobs]}")
            for b, v in zip(blobs, vals):
                b.copy_(torch.as_tensor(v))


def restore_solver(solver, path) -> None:
    """Caffe: Solver::Restore. ``.state.pt``: weights, history, iter, RNG and data cursors exactly;
    a Caffe ``.solverstate``: iter, history (Caffe's param order) and the weights of its ``learned_net``."""
    path = Path(path)
    if path.name.endswith(".solverstate"):
        _restore_caffe(solver, path)
        return
    state = load_state(path)
    _copy_blobs(solver, state["weights"], "the snapshot's weights", solver.net.params, path)
    _copy_blobs(solver, state["history"], "the snapshot's history", solver.history, path)
    solver.iter, solver.lr = int(state["iter"]), state.get("lr")
    set_rng_state(state["rng"])
    if state.get("caffe_rng") is not None and getattr(solver, "caffe_rng", None) is not None:
        solver.caffe_rng.main.load_state_dict({k: v.numpy() if isinstance(v, torch.Tensor) else v
                                               for k, v in state["caffe_rng"].items()})
    data = state.get("data", {})
    load_data_state(solver.net, data.get("train", {}))
    for net, s in zip(solver.test_nets, data.get("test", [])):
        load_data_state(net, s)
    window = state.get("loss_window")
    if window is not None:
        solver._losses, solver._smoothed_loss = list(window["losses"]), window["smoothed"]
        solver._start_iter, solver._pending, solver._keep_window = int(window["start_iter"]), [], True


def _restore_caffe(solver, path: Path) -> None:
    from .caffemodel import WeightsError, read_solverstate

    try:
        st = read_solverstate(path)
    except WeightsError as e:
        raise CheckpointError(str(e)) from None
    if len(st.history) != len(solver._history):
        raise CheckpointError(f"{path}: {len(st.history)} history blobs, the TRAIN net has "
                              f"{len(solver._history)} learnable blobs")
    for i, (h, v) in enumerate(zip(st.history, solver._history)):
        if tuple(h.shape) != tuple(v.shape) and h.size == v.numel():
            h = h.reshape(tuple(v.shape))  # legacy 4-D blob shapes
        if tuple(h.shape) != tuple(v.shape):
            layer, j = solver._blobs[i][:2]
            raise CheckpointError(f"{path}: history blob {i} ({layer}/{j}) has shape {tuple(h.shape)}, the net's "
                                  f"blob is {tuple(v.shape)}")
    if st.learned_net:
        # Caffe opens learned_net from the working directory; we also look beside the .solverstate.
        net_file = Path(st.learned_net)
        if not net_file.exists() and (path.parent / net_file.name).exists():
            net_file = path.parent / net_file.name
        solver.net.copy_from(net_file)
    with torch.no_grad():
        for h, v in zip(st.history, solver._history):
            v.copy_(torch.as_tensor(np.ascontiguousarray(h)).reshape(v.shape))
    solver.iter = int(st.iter)
