"""One cell of the study as a run: its data, mean, base weights, realised prototxts and the call into training.

The paper's 170 result folders each hold three prototxts plus symlinks to the data, the mean and the base net's
snapshot (the paper's training protocol). Here a `Study` names one base net (train_val prototxt + solver) and a run
folder; `realised(study, cell)` gives the cell's own train/val/solver messages (`emit` writes them as the paper's
folders hold them), and `run_cell` trains the cell into `<runs>/<cell name>/` through repro.train.run.

Data sources. The base net's Data layers name the dataset they read (`data/builtin/half0A_train`,
`data/half0A_val_lmdb`): the dataset token (half0A, halfnatmanB, whole, reduced0010) in each source and mean
path is rewritten per cell, as the paper's folders point their symlinks at another dataset:
  * TRAIN data layer: the cell's training set (`Cell.dataset`);
  * TEST data layer: the cell's validation set (`Cell.val_dataset`);
  * every mean_file: the *source* half's training mean for transfers (`repro.study.grid.mean_source`).
Relative paths are resolved against `Study.root` and written absolute, so a run folder works from anywhere.
With `Study.builtin`, a missing `<dir>/<dataset>_train|_val` store or `<dataset>_mean.binaryproto` whose folder
is the built-in dataset's root is generated from it (repro.study.data); otherwise a missing source is an
error that says what to create.

Base weights. A transfer copies its source half's final snapshot by layer name, as Caffe's
Net::CopyTrainedLayersFrom: layers the file lacks (the renamed `-new` ones) keep their filler values. The file is
the one given, or the base run's `final.caffemodel`, `final.pt` or `final.onnx`, the first found.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ReproError
from .grid import Cell, GridError, dependencies, mean_source, realise

REPO = Path(__file__).resolve().parents[2]
SMALL_NET = REPO / "prototxt" / "small" / "train_val.prototxt"
SMALL_SOLVER = REPO / "prototxt" / "small" / "solver.prototxt"
MINI_NET = REPO / "prototxt" / "mini" / "train_val.prototxt"
MINI_SOLVER = REPO / "prototxt" / "mini" / "solver.prototxt"
CAFFENET_NET = REPO / "prototxt" / "caffenet" / "train_val.prototxt"
CAFFENET_SOLVER = REPO / "prototxt" / "caffenet" / "solver.prototxt"

# A dataset name as repro.study.splits writes it; the last one in a path is the one a cell rewrites.
DATASET_TOKEN = re.compile(r"half(?:\d+|natman)[AB]|whole|reduced\d{4}")
# The realised nets' file names (the paper's imagenet_train/val.prototxt, as repro.train names them).
TRAIN_FILE, VAL_FILE = "train.prototxt", "val.prototxt"
FINAL_WEIGHTS = ("final.caffemodel", "final.pt", "final.onnx")   # lookup order for a base net's weights


class StudyError(ReproError):
    """A cell that cannot be run as asked: missing data or base weights, a base net without dataset names."""


@dataclass(frozen=True)
class Study:
    """Where a study's inputs and outputs live.

    net, solver: the base net (one train_val prototxt with phase rules) and its solver; every cell is realised
                 from these (the paper's transfer nets use the base nets' solver unchanged).
    runs:        run folders, one per cell, named by the cell (`runs/half0A`, `runs/transfer0A0B_1_3`).
    root:        relative data paths of the prototxt are resolved against it (default: the working directory).
    builtin:     generate missing built-in datasets (splits, stores, means) on demand.
    builtin_kind: which built-in data to generate (repro.data.builtin.KINDS): "procedural" (prototxt/small's
                 20 classes) or "hierarchical" (prototxt/mini's 32 classes in 8 families, the miniature).
    max_iter:    run a shorter schedule: max_iter and every interval scaled to it (`scale_solver`).
    test_iter:   batches per test (default: the solver's, one pass over the validation set).
    test_interval: iterations between tests (default: the solver's, scaled with max_iter).
    batch:       images per forward pass of the TRAIN net; the solver's iter_size makes up the effective
                 batch (Caffe's own means), so the schedule and learning rate stay the paper's.
    effective_batch: another effective batch (batch x iter_size) than the prototxt's (a different experiment:
                 the paper's learning rate and schedule were tuned for 256).
    numerics, compile: repro.engine.modes; keep: keep every snapshot (Caffe's way); force: move a folder that
                 holds a different run aside; allow_other_base: let a transfer copy a base run trained on
                 another schedule than this study's.
    """

    net: Path
    solver: Path
    runs: Path
    root: Path = field(default_factory=Path.cwd)
    builtin: bool = False
    builtin_kind: str = "procedural"
    max_iter: int | None = None
    test_iter: int | None = None
    test_interval: int | None = None
    batch: int | None = None
    effective_batch: int | None = None
    numerics: str = "faithful"
    compile: bool = False
    keep: bool = False
    force: bool = False
    allow_other_base: bool = False

    def run_dir(self, cell: Cell) -> Path:
        return Path(self.runs) / cell.name


def builtin_study(runs="runs/builtin", *, root=None, max_iter=None, test_iter=None, test_interval=None, net=None,
                  solver=None, kind: str = "procedural") -> Study:
    """The study of the built-in data: the small CaffeNet (prototxt/small) and datasets generated on demand."""
    return Study(Path(net or SMALL_NET), Path(solver or SMALL_SOLVER), Path(runs),
                 Path(root) if root is not None else Path.cwd(), builtin=True, builtin_kind=kind,
                 max_iter=max_iter, test_iter=test_iter, test_interval=test_interval)


def mini_study(runs="runs/mini", *, root=None, max_iter=None, test_iter=None, test_interval=None) -> Study:
    """The miniature: prototxt/mini on the hierarchical built-in data (repro.data.hierarchical), made on demand."""
    return builtin_study(runs, root=root, max_iter=max_iter, test_iter=test_iter, test_interval=test_interval,
                         net=MINI_NET, solver=MINI_SOLVER, kind="hierarchical")


def paper_study(runs="runs/imagenet", *, root=None, max_iter=None, test_iter=None, test_interval=None) -> Study:
    """The paper's study: CaffeNet (prototxt/caffenet) on ILSVRC-2012 datasets you prepared (see the README)."""
    return Study(CAFFENET_NET, CAFFENET_SOLVER, Path(runs), Path(root) if root is not None else Path.cwd(),
                 builtin=False, max_iter=max_iter, test_iter=test_iter, test_interval=test_interval)


# ---- the solver ------------------------------------------------------------------------------------------------

# A scaled schedule snapshots at most every SNAPSHOT_FLOOR iterations (a run shorter than that once, at its end,
# plus whenever it is stopped): a CaffeNet snapshot is ~1 GB (.caffemodel, .solverstate, .state.pt), and the
# paper's 10000-of-450000 scaled to a 20-iteration smoke test would otherwise write one every iteration.
SNAPSHOT_FLOOR = 1000


def scale_solver(solver, max_iter: int):
    """The solver's schedule compressed to `max_iter` iterations: stepsize (and stepvalue), test_interval,
    snapshot and display scaled by max_iter / the original max_iter (each at least 1), test_iter kept (every
    test is still one full pass over the validation set). The snapshot interval is at least
    min(SNAPSHOT_FLOOR, max_iter)."""
    if max_iter < 1:
        raise StudyError(f"max_iter must be >= 1, got {max_iter}")
    out = type(solver)()
    out.CopyFrom(solver)
    if not solver.max_iter:
        raise StudyError("the base solver has no max_iter to scale from")
    f = max_iter / solver.max_iter

    def scaled(x):
        return max(1, round(x * f)) if x else 0

    out.max_iter = max_iter
    out.stepsize = scaled(solver.stepsize)
    out.stepvalue[:] = [scaled(v) for v in solver.stepvalue]
    out.test_interval = scaled(solver.test_interval)
    out.snapshot = max(scaled(solver.snapshot), min(SNAPSHOT_FLOOR, max_iter)) if solver.snapshot else 0
    out.display = scaled(solver.display)
    return out


# ---- realisation -----------------------------------------------------------------------------------------------

def _rewrite(path: str, dataset: str, where: str) -> str:
    matches = list(DATASET_TOKEN.finditer(path))
    if not matches:
        raise StudyError(f"{where}: {path!r} names no dataset (half0A, halfnatmanB, whole, reduced0010, ...); the "
                         f"study rewrites that name per cell, so the base net's data paths must contain one")
    m = matches[-1]
    return path[:m.start()] + dataset + path[m.end():]


def _absolute(path: str, root: Path) -> str:
    p = Path(path)
    return str(p if p.is_absolute() else (Path(root) / p).resolve())


def data_layers(net_param):
    """The Data / ImageData layers of a net."""
    return [layer for layer in net_param.layer if layer.type in ("Data", "ImageData")]


def set_data(net_param, dataset: str, mean_dataset: str, root: Path, where: str) -> None:
    """Point every data layer of one phase's net at `dataset` and every mean_file at `mean_dataset`."""
    for layer in data_layers(net_param):
        p = layer.data_param if layer.type == "Data" else layer.image_data_param
        if not p.source:
            raise StudyError(f"{where}: data layer {layer.name!r} has no source")
        p.source = _absolute(_rewrite(p.source, dataset, f"{where}: layer {layer.name!r} source"), root)
        tp = layer.transform_param
        if tp.mean_file:
            tp.mean_file = _absolute(_rewrite(tp.mean_file, mean_dataset, f"{where}: layer {layer.name!r} "
                                              f"mean_file"), root)


def _one_phase(net_param) -> None:
    """Drop the include/exclude rules, the layers' phase and the net state that filter_net left: the realised
    train and val nets are separate files, each valid in any phase, like the paper's imagenet_train.prototxt
    and imagenet_val.prototxt (every layer they hold already met its rules for their phase)."""
    net_param.ClearField("state")
    for layer in net_param.layer:
        for f in ("include", "exclude", "phase"):
            layer.ClearField(f)


def realised(study: Study, cell: Cell):
    """(train NetParameter, val NetParameter, SolverParameter) of `cell` with its data, mean and schedule:
    repro.study.grid.realise (frozen layers, `-new` renames, reduced-data solver) plus the data paths and the
    `max_iter` override. The solver names its nets `train.prototxt` / `val.prototxt` (files of the run folder)
    and snapshots into the run folder."""
    from ..prototxt import read_net, read_solver

    base_net, base_solver = read_net(study.net), read_solver(study.solver)
    try:
        train, val, solver = realise(cell, base_net, base_solver)
    except GridError as e:
        raise StudyError(f"{study.net}: {e}") from None
    for net in (train, val):
        _one_phase(net)
    mean = mean_source(cell)
    set_data(train, cell.dataset, mean, study.root, f"{cell.name} (train net)")
    set_data(val, cell.val_dataset, mean, study.root, f"{cell.name} (val net)")
    if study.max_iter is not None:
        solver = scale_solver(solver, study.max_iter)
    if study.test_iter is not None:
        solver.test_iter[:] = [study.test_iter]
    if study.test_interval is not None:
        solver.test_interval = study.test_interval
    if study.batch is not None or study.effective_batch is not None:
        set_batch(train, solver, study.batch, study.effective_batch, cell.name)
    for f in ("net", "net_param", "train_net_param", "test_net_param", "test_net", "train_net"):
        solver.ClearField(f)
    solver.train_net = TRAIN_FILE
    solver.test_net.append(VAL_FILE)
    del solver.test_iter[1:]   # one test net, as the paper's solvers have
    solver.snapshot_prefix = "snapshots/snapshot"   # repro.train's layout
    return train, val, solver


def set_batch(train, solver, batch: int | None, effective: int | None, where: str) -> None:
    """Caffe's way to train at another per-pass batch: the TRAIN Data layer reads ``batch`` images and the
    solver accumulates ``iter_size`` passes (Solver::Step sums their diffs, Normalize divides by iter_size),
    so an update sees ``batch * iter_size`` images — the prototxt's effective batch unless ``effective`` says
    otherwise."""
    layers = data_layers(train)
    if len(layers) != 1:
        raise StudyError(f"{where}: --batch needs exactly one TRAIN data layer, found {len(layers)}")
    p = layers[0].data_param if layers[0].type == "Data" else layers[0].image_data_param
    ours = effective if effective is not None else int(p.batch_size) * max(1, int(solver.iter_size))
    batch = batch if batch is not None else int(p.batch_size)
    if batch < 1 or ours < 1:
        raise StudyError(f"{where}: batch sizes must be >= 1, got --batch {batch}, effective batch {ours}")
    if ours % batch:
        raise StudyError(f"{where}: the effective batch {ours} is not a multiple of --batch {batch} (Caffe's "
                         f"iter_size accumulates whole passes); choose a divisor of {ours}")
    p.batch_size = batch
    solver.iter_size = ours // batch


# What a transfer's base run must share with the study for its weights to be the paper's kind of base net.
SCHEDULE_FIELDS = ("base_lr", "lr_policy", "gamma", "power", "stepsize", "stepvalue", "max_iter", "momentum",
                   "weight_decay", "type")


def schedule(solver_text: str, train_text: str) -> dict:
    """The training schedule of a run folder's solver and train net: the fields above and the effective batch."""
    from google.protobuf import text_format

    from ..proto import caffe_pb2

    s = text_format.Parse(solver_text, caffe_pb2.SolverParameter())
    net = text_format.Parse(train_text, caffe_pb2.NetParameter())
    out = {}
    for f in SCHEDULE_FIELDS:
        v = getattr(s, f)
        out[f] = list(v) if f == "stepvalue" else v
    layers = data_layers(net)
    if layers:
        p = layers[0].data_param if layers[0].type == "Data" else layers[0].image_data_param
        out["effective_batch"] = int(p.batch_size) * max(1, int(s.iter_size))
    return out


def check_base_schedule(study: "Study", cell: Cell, base: Cell) -> None:
    """Refuse a base run trained on another schedule than this study's (a smoke test's 20-iteration weights
    would otherwise be copied into every transfer), unless ``study.allow_other_base``."""
    from ..runfolder import SOLVER_FILE, TRAIN_FILE, resolved_files

    run_dir = study.run_dir(base)
    if study.allow_other_base or not (run_dir / SOLVER_FILE).is_file():
        return
    want = resolved_files(inlined_solver(study, base))
    have = schedule((run_dir / SOLVER_FILE).read_text(), (run_dir / TRAIN_FILE).read_text())
    asked = schedule(want[SOLVER_FILE], want[TRAIN_FILE])
    diff = [f"{k} {have.get(k)} there, {asked.get(k)} here" for k in asked if have.get(k) != asked.get(k)]
    if diff:
        raise StudyError(f"{cell.name} would copy {run_dir}, trained on another schedule than this study's "
                         f"({'; '.join(diff)}); retrain the base net on this schedule, or pass "
                         f"--allow-other-base to copy it anyway")


def data_paths(train, val) -> list[Path]:
    """Every source and mean file the realised nets read."""
    out = []
    for net in (train, val):
        for layer in data_layers(net):
            p = layer.data_param if layer.type == "Data" else layer.image_data_param
            out.append(Path(p.source))
            if layer.transform_param.mean_file:
                out.append(Path(layer.transform_param.mean_file))
    return list(dict.fromkeys(out))


def inlined_solver(study: Study, cell: Cell):
    """The realised solver with the train and val nets inside it (train_net_param / test_net_param): what
    repro.train.run is given, and what it writes into the run folder as three files."""
    train, val, solver = realised(study, cell)
    out = type(solver)()
    out.CopyFrom(solver)
    for f in ("train_net", "test_net"):
        out.ClearField(f)
    out.train_net_param.CopyFrom(train)
    out.test_net_param.add().CopyFrom(val)
    return out


def emit(study: Study, cell: Cell, out_dir) -> list[Path]:
    """Write the realised `train.prototxt`, `val.prototxt` and `solver.prototxt` of `cell` into `out_dir`, the
    same text a run of the cell records in its folder (for audit: nothing is trained, no data is read or
    generated). Returns the paths written."""
    from ..checkpoint import atomic_write_text
    from ..train import resolved_files

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in resolved_files(inlined_solver(study, cell)).items():
        atomic_write_text(out_dir / name, text)
        written.append(out_dir / name)
    return written


# ---- data and base weights -------------------------------------------------------------------------------------

def ensure_data(study: Study, paths) -> None:
    """Make sure every data path exists: generate built-in ones (Study.builtin), else say what is missing."""
    missing = [p for p in paths if not Path(p).exists()]
    if missing and study.builtin:
        from .data import ensure_builtin_path

        for p in missing:
            ensure_builtin_path(p, study.builtin_kind)
        missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise StudyError("missing data: " + ", ".join(map(str, missing)) + ". Prepare them with "
                         "tools/prepare_imagenet.py --out <root>/data (README, section 'ImageNet') and point "
                         "--data at <root>, or use the built-in data (--net small)")


def find_weights(run_dir) -> Path | None:
    """A finished run's final weights: final.caffemodel, final.pt or final.onnx (the first present)."""
    for name in FINAL_WEIGHTS:
        p = Path(run_dir) / name
        if p.is_file():
            return p
    return None


def base_weights(study: Study, cell: Cell, given=None) -> Path | None:
    """The weights file a transfer copies from: `given`, else its base run's final weights; None for nets
    trained from scratch."""
    if given is not None:
        given = Path(given)
        if not given.is_file():
            raise StudyError(f"{cell.name}: base weights {given} do not exist")
        if cell.kind != "transfer":
            raise StudyError(f"{cell.name}: a {cell.kind} net is trained from scratch and takes no base weights")
        return given
    deps = dependencies(cell)
    if not deps:
        return None
    base = deps[0]
    from ..runfolder import RunFolder

    folder = RunFolder(study.run_dir(base))
    if folder.diverged:
        raise StudyError(f"{cell.name} copies {base.name}, whose run in {folder.path} diverged (iteration "
                         f"{(folder.summary() or {}).get('iter')}): it has no weights to copy; retrain it (lower "
                         f"base_lr, then --force)")
    if not folder.finished:
        raise StudyError(f"{cell.name} copies {base.name}, which has no final weights in {folder.path} (its run "
                         f"has not finished); train it first (tools/run_grid.py runs both in order) or pass "
                         f"--weights")
    check_base_schedule(study, cell, base)
    found = find_weights(study.run_dir(base))
    if found is None:
        raise StudyError(f"{cell.name} copies {base.name}, which has no final weights in {study.run_dir(base)} "
                         f"(looked for {', '.join(FINAL_WEIGHTS)}); train it first (tools/run_grid.py runs both "
                         f"in order) or pass --weights")
    return found


def load_base(net, path) -> list[str]:
    """Copy a weights file (.caffemodel, .pt or .onnx) into `net` by layer name (Caffe:
    Net::CopyTrainedLayersFrom); returns the layers copied."""
    from ..weights import copy_file

    return copy_file(net, path)


# ---- one run ---------------------------------------------------------------------------------------------------

def is_finished(study: Study, cell: Cell) -> bool:
    """Finished as repro.train decides: final weights and a summary whose status is "finished" (a diverged
    run is not finished)."""
    from ..runfolder import RunFolder

    return RunFolder(study.run_dir(cell)).finished


def has_snapshot(study: Study, cell: Cell) -> bool:
    """Whether an unfinished run left a snapshot to resume from (a resume state file is there; which one loads
    is repro.train's choice: a CaffeNet state is large, so a plan of 170 nets does not open them)."""
    from ..runfolder import RunFolder

    return RunFolder(study.run_dir(cell)).has_snapshot()


def cell_record(study: Study, cell: Cell, weights: Path | None) -> dict:
    """What run.json records about the cell (beside repro.train's own record of the run)."""
    return {"cell": cell.name, "kind": cell.kind, "source": cell.source, "target": cell.target, "n": cell.n,
            "fine_tune": cell.fine_tune, "split": cell.split, "per_class": cell.per_class,
            "condition": cell.condition, "dataset": cell.dataset, "val_dataset": cell.val_dataset,
            "mean_source": mean_source(cell), "base_weights": None if weights is None else str(weights),
            "base_net": str(study.net), "base_solver": str(study.solver), "max_iter": study.max_iter,
            "test_iter": study.test_iter, "test_interval": study.test_interval}


def ensure_study_data(study: Study, cells) -> None:
    """Check (or, for the built-in data, make) the data of every cell before any of them starts."""
    paths = []
    for cell in cells:
        paths += data_paths(*realised(study, cell)[:2])
    ensure_data(study, list(dict.fromkeys(paths)))


def _copier(cell: Cell, path: Path, train_net):
    """init(net) for repro.train.run: copy the base weights by layer name and check that exactly the layers
    the cell copies were copied (a base net whose layers are named differently would otherwise silently train
    from scratch)."""
    from .grid import copied_layers, learnable_layers

    want = set(copied_layers(cell, learnable_layers(train_net)))

    def init(net):
        got = {name for name in load_base(net, path) if net.params.get(name)}
        if got != want:
            raise StudyError(f"{cell.name}: copying {path} set layers {sorted(got)}, but the cell copies "
                             f"{sorted(want)} (is it the base net of this study?)")
    return init


def run_cell(study: Study, cell: Cell, *, device=None, weights=None, log=print) -> dict:
    """Train `cell` into `study.run_dir(cell)` (skipped when finished, resumed when a snapshot is there).

    weights: the base net's weights for a transfer (default: its base run's final weights). Returns
    {"cell", "run_dir", "status" (finished, stopped, diverged), "weights" (the run's final weights),
    "score" (the paper's metric), "summary"}.
    """
    from .. import train as trainer
    from ..runfolder import RunFolder, file_id

    inlined = inlined_solver(study, cell)
    train, val = inlined.train_net_param, inlined.test_net_param[0]
    ensure_data(study, data_paths(train, val))
    run_dir = study.run_dir(cell)
    folder = RunFolder(run_dir)
    try:
        base = base_weights(study, cell, weights)
        init_id = None if base is None else {"base_weights": file_id(base)}
    except StudyError:
        if not folder.has_history():
            raise
        # a run that already started keeps the base it recorded (its snapshots hold the copied weights)
        base, init_id = None, folder.record().get("identity", {}).get("init")
    init = _copier(cell, base, train) if base is not None else None
    summary = trainer.run(inlined, run_dir, init=init, init_id=init_id, device=device,
                          record=cell_record(study, cell, base), numerics=study.numerics, compile=study.compile,
                          retention=trainer.Retention(keep_all=study.keep), force=study.force, log=log)
    final = find_weights(run_dir) if is_finished(study, cell) else None
    return {"cell": cell.name, "run_dir": str(run_dir), "status": summary.get("status", "finished"),
            "weights": None if final is None else str(final),
            "score": summary.get(f"top1_best{trainer.TOP_K}_mean"), "summary": summary}


def run_cell_quietly(study: Study, cell: Cell, *, device=None, weights=None) -> dict:
    """`run_cell` with its console output (and the traceback of a failure) appended to
    `<run dir>/console.log` instead of the terminal: what a grid worker runs, many nets side by side."""
    import traceback

    path = study.run_dir(cell) / "console.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        def log(msg):
            f.write(f"{msg}\n")
            f.flush()
        try:
            return run_cell(study, cell, device=device, weights=weights, log=log)
        except BaseException:
            f.write(traceback.format_exc())
            raise
