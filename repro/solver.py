"""Caffe's SGD solver: ``SGDSolver::ApplyUpdate`` (ClipGradients, Normalize, Regularize, ComputeUpdateValue)
on PyTorch tensors (repro.sgd), and the pycaffe-shaped :class:`Solver` around a :class:`repro.Net`, whose
``step`` runs every iteration through the engine (repro.engine.plan.NetPlan) in a numerics mode.

Caffe's update, per learnable blob with multipliers (lr_mult, decay_mult)::

    g <- g / iter_size                                   (Normalize)
    g <- g + weight_decay * decay_mult * w               (Regularize, L2; L1 uses sign(w))
    v <- momentum * v + rate * lr_mult * g               (ComputeUpdateValue)
    w <- w - v                                           (Net::Update)

The rate multiplies *inside* the history, so a drop of the rate does not rescale momentum already
accumulated. ``torch.optim.SGD`` keeps ``v <- m v + g`` and applies ``w <- w - rate * v``; the two agree only
while the rate is constant (tests/test_solver.py shows the difference).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from . import caffe_rng
from .numerics import resolve_device

# The update itself lives in sgd.py; re-exported here for callers that know it as part of the solver.
from .sgd import SolverError, clip_gradients_, sgd_update_  # noqa: F401


class DivergedError(SolverError):
    """Training diverged: a loss (or a weight) that is not finite. ``iter``: the iteration; ``loss``: its
    value (None when a weight was found instead)."""

    def __init__(self, it: int, loss: float | None, what: str | None = None):
        self.iter, self.loss = int(it), loss
        what = what or f"the training loss is {loss}"
        super().__init__(f"training diverged at iteration {it}: {what}")

_f32 = np.float32
_MAX_PENDING = 256  # iterations whose losses may wait on the device before one read-back


# ------------------------------------------------------------------------------------------------ the solver

_TYPES = {"SGD": False, "Nesterov": True}  # type -> Nesterov's update


def resolve_path(value: str, solver_dir: Path | None, what: str) -> Path:
    """A file the solver names: as Caffe opens it (relative to the working directory), else relative to the
    solver file, so a folder of prototxts works from anywhere."""
    p = Path(value)
    tried = [p] if p.is_absolute() or solver_dir is None else [p, solver_dir / p]
    for t in tried:
        if t.exists():
            return t
    raise SolverError(f"{what}: {value!r} not found (looked at {', '.join(str(t.absolute()) for t in tried)})")


def train_net_source(p, solver_dir: Path | None):
    """Caffe: Solver::InitTrainNet: one of train_net_param, train_net, net_param, net (a NetParameter, or the
    path of a prototxt resolved against the solver's folder). The one implementation: the Solver builds from
    it, and repro.runfolder writes the run folder's copies from it."""
    for field in ("train_net_param", "net_param"):
        if p.HasField(field):
            return getattr(p, field)
    field = "train_net" if p.HasField("train_net") else "net"
    return resolve_path(getattr(p, field), solver_dir, field)


def test_net_sources(p, solver_dir: Path | None) -> list:
    """Caffe: Solver::InitTestNets: test_net_param, test_net files, then the generic net (net / net_param) in
    TEST phase for each remaining test_iter. NetParameters and resolved paths, as :func:`train_net_source`."""
    out = list(p.test_net_param) + [resolve_path(f, solver_dir, "test_net") for f in p.test_net]
    generic = len(p.test_iter) - len(out)
    if generic > 0 and (p.HasField("net") or p.HasField("net_param")):
        src = p.net_param if p.HasField("net_param") else resolve_path(p.net, solver_dir, "net")
        out += [src] * generic
    return out


def _scalars(out: dict) -> dict:
    """Output blobs as Python numbers (a list for a blob of several values, as Caffe logs each value)."""
    res = {}
    for k, v in out.items():
        v = v.detach().float().cpu().reshape(-1)
        res[k] = float(v[0]) if v.numel() == 1 else [float(x) for x in v]
    return res


class Solver:
    """pycaffe's ``caffe.get_solver`` / ``SGDSolver``: a TRAIN net, its TEST nets and Caffe's SGD (or Nesterov).

    ``Solver(solver_prototxt, weights=None, *, device=None, data_root=None, test_feed=None)``:
    ``solver_prototxt`` is a path or a ``caffe_pb2.SolverParameter`` (e.g. from ``repro.study.grid.realise``);
    ``weights``: a caffemodel (or a comma-separated list, as ``caffe train -weights a,b``) copied into the TRAIN
    net by layer name; ``data_root``: where relative data sources are looked for after the working directory
    (default: the solver file's folder); ``test_feed``: inputs for TEST nets without a Data layer (dict or
    callable ``feed(i)``).

    * ``step(k, feed=None)``: k iterations (Caffe: Solver::Step), testing every ``test_interval`` and
      snapshotting every ``snapshot``. ``feed``: a dict of input tensors used for every forward pass, or a
      callable ``feed(i)`` returning the inputs of this solver's i-th forward pass
      (``i = iter * iter_size + pass``); without it the net pulls batches from its Data layer.
    * ``iter`` (updates applied), ``lr`` (rate of the last update), ``history`` (layer -> momentum tensors),
      ``smoothed_loss``, ``net``, ``test_nets``.
    * ``test(i=0)`` (Caffe's Solver::Test), ``evaluate(i=0)`` (one exact pass over the test data),
      ``snapshot()``, ``restore(path)``, ``solve()``.
    """

    def __init__(self, solver_prototxt, weights=None, *, device=None, data_root=None, test_feed=None,
                 numerics="faithful", compile: bool = False, comm=None):
        from .net import Net
        from .prototxt import read_solver

        if isinstance(solver_prototxt, (str, os.PathLike)):
            self.solver_path: Path | None = Path(solver_prototxt)
            self.param = read_solver(self.solver_path)
        else:
            self.solver_path = None
            self.param = type(solver_prototxt)()
            self.param.CopyFrom(solver_prototxt)
        self._dir = self.solver_path.parent.absolute() if self.solver_path is not None else None
        self._check_param()
        self.device = resolve_device(device)
        self.data_root = data_root if data_root is not None else self._dir
        # Caffe: Solver::Init seeds before building the nets (fillers, dropout, crop/mirror draws follow);
        # random_seed -1 means a fresh seed, which we draw and keep so a run can be repeated.
        seed = int(self.param.random_seed)
        self.seed = seed if seed >= 0 else int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
        _seed_everything(self.seed)
        # A given random_seed on the CPU: Caffe's own generator (repro.caffe_rng), so fillers, data transformers
        # and dropout masks draw Caffe's numbers in Caffe's order; on CUDA Caffe uses cuRAND: torch's streams.
        self.caffe_rng = caffe_rng.CaffeRNG(seed) if seed >= 0 and self.device.type == "cpu" else None
        with caffe_rng.active(self.caffe_rng):
            # Caffe: train_state / test_state select layers by level and stage (the phase is fixed per net)
            ts = self.param.train_state
            self.net = Net(self._train_source(), phase="TRAIN", level=ts.level, stages=tuple(ts.stage),
                           data_root=self.data_root).to(self.device)
            # Caffe: the solver's own `weights` fields (Solver::InitTrainNet), then `caffe train -weights`
            for w in self.param.weights:
                self.net.copy_from(resolve_path(w, self._dir, "weights"))
            for w in _split_weights(weights):
                self.net.copy_from(w)
            states = list(self.param.test_state)
            self.test_nets = [Net(src, phase="TEST", data_root=self.data_root,
                                  **({"level": states[i].level, "stages": tuple(states[i].stage)}
                                     if i < len(states) else {})).to(self.device)
                              for i, src in enumerate(self._test_sources())]
        self.test_feed = test_feed
        self.snapshot_prefix = self._snapshot_prefix()
        self.iter = 0
        self.lr: float | None = None
        self._smoothed_loss: float | None = None
        self._losses: list[float] = []
        # Losses of the iterations since the last read-back, kept on the device as (iteration, tensor):
        # reading a CUDA loss every iteration would stall the GPU, so they come back once per display.
        self._pending: list[tuple[int, torch.Tensor]] = []
        self._start_iter = 0
        self.callbacks: list = []  # fn(event dict); event["type"] in {"train", "test", "snapshot"}
        self._stop_requested = False
        self._keep_window = False  # a restore brought the smoothing window back: the next step() keeps it
        self._snapshot_requested = False
        # How the forward/backward of one pass runs and what the ranks agree on: LocalComm in one process,
        # repro.engine.ddp.DataParallel under torchrun (it wraps this solver's plan in DDP).
        self.comm = comm if comm is not None else LocalComm()
        # Caffe's learnable params in net order with their multipliers, each with a zero history blob.
        self._blobs = [(layer, j, w, float(lr), float(dm))
                       for layer, params in self.net.params.items()
                       for j, (w, (lr, dm)) in enumerate(zip(params, self.net.param_specs[layer]))]
        self._history = [torch.zeros_like(w).detach() for _, _, w, _, _ in self._blobs]
        self._plan = None
        self.set_numerics(numerics, compile)

    # ------------------------------------------------------------------------------------------ set-up

    def _where(self) -> str:
        return f"{self.solver_path}: " if self.solver_path is not None else ""

    def _check_param(self) -> None:
        from .lr import LRPolicyError, validate

        p, where = self.param, self._where()
        if p.type not in _TYPES:
            raise SolverError(f"{where}type: {p.type!r} is not implemented; repro's solvers are "
                              f"{', '.join(_TYPES)} (Caffe's SGDSolver and NesterovSolver)")
        try:
            validate(p)
        except LRPolicyError as e:
            raise SolverError(f"{where}{e}") from None
        if p.regularization_type not in ("L2", "L1"):
            raise SolverError(f'{where}regularization_type: unknown {p.regularization_type!r}; Caffe knows '
                              f'"L2" and "L1"')
        for field, low in (("iter_size", 1), ("average_loss", 1), ("test_interval", 0), ("display", 0),
                           ("snapshot", 0), ("max_iter", 0)):
            if getattr(p, field) < low:
                raise SolverError(f"{where}{field} must be >= {low}, got {getattr(p, field)}")
        if any(n <= 0 for n in p.test_iter):
            raise SolverError(f"{where}test_iter must be > 0, got {list(p.test_iter)}")

    def _train_source(self):
        src = train_net_source(self.param, self._dir)
        return str(src) if isinstance(src, Path) else src

    def _test_sources(self) -> list:
        return [str(s) if isinstance(s, Path) else s for s in test_net_sources(self.param, self._dir)]

    def _snapshot_prefix(self) -> str:
        """Caffe: UpgradeSnapshotPrefixProperty: unset -> the solver file's path without its extension; a
        folder -> folder/<solver file stem>. Relative to the working directory, as Caffe writes."""
        prefix = self.param.snapshot_prefix
        stem = self.solver_path.stem if self.solver_path is not None else "solver"
        if not prefix:
            return str(self.solver_path.with_suffix("")) if self.solver_path is not None else stem
        return str(Path(prefix) / stem) if Path(prefix).is_dir() else prefix

    @property
    def history(self) -> "OrderedDict[str, list[torch.Tensor]]":
        """Caffe's momentum history ``v`` by layer, in the params' shapes (zeros for frozen blobs)."""
        out: OrderedDict[str, list[torch.Tensor]] = OrderedDict()
        for (layer, _, _, _, _), v in zip(self._blobs, self._history):
            out.setdefault(layer, []).append(v)
        return out

    def add_callback(self, fn) -> None:
        """``fn(event)`` is called with each train display, test result and snapshot (a dict)."""
        self.callbacks.append(fn)

    def _emit(self, event: dict) -> None:
        for fn in self.callbacks:
            fn(event)

    def request_stop(self) -> None:
        """Caffe's SolverAction::STOP (SIGINT under `caffe train`): finish this iteration, snapshot, stop."""
        self._stop_requested = True

    def request_snapshot(self) -> None:
        """Caffe's SolverAction::SNAPSHOT (SIGHUP under `caffe train`): snapshot after this iteration, go on."""
        self._snapshot_requested = True

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested

    # ------------------------------------------------------------------------------------------ the engine

    def set_numerics(self, numerics="faithful", compile: bool = False) -> None:
        """Train in numerics mode ``numerics`` (faithful, fp32, tf32, fast: repro.engine.modes), optionally
        with torch.compile. Sets the process-wide backend switches and rebuilds the run plan."""
        from .engine.modes import apply_numerics, plan_options, to_channels_last

        self.numerics = apply_numerics(numerics)
        self.compile = bool(compile)
        if self.numerics.channels_last:
            to_channels_last((w for _, _, w, _, _ in self._blobs), self._history)
        self._plan_options = plan_options(self.numerics, self.device, self.compile)
        self._plan = None

    @property
    def plan(self):
        """The TRAIN net's run plan (repro.engine.plan.NetPlan): what every training forward runs through."""
        if self._plan is None:
            from .engine.plan import NetPlan

            self._plan = NetPlan(self.net, **self._plan_options)
        return self._plan

    def forward_backward(self, feed=None) -> torch.Tensor:
        """Caffe: ClearParamDiffs, then iter_size x Net::ForwardBackward with the diffs accumulating. Returns
        the mean loss as a float32 device tensor (summed in pass order, as Caffe's ``Dtype loss``), not read
        back: reading a CUDA loss every iteration would stall the GPU."""
        for _, _, w, _, _ in self._blobs:
            w.grad = None
        n = self.param.iter_size
        total = None
        with caffe_rng.active(self.caffe_rng):   # Dropout draws its masks from the run's Caffe stream, if any
            for j in range(n):
                loss = self.comm.forward_backward(self, _inputs(feed, self.iter * n + j), last=j == n - 1)
                term = loss.detach().to(torch.float32)
                total = term if total is None else total + term
        return total / n

    def train_iteration(self, feed=None) -> torch.Tensor:
        """One training iteration without testing, display or snapshots (the body of Caffe's Solver::Step):
        ForwardBackward, ApplyUpdate, ++iter. Returns the loss (a device tensor)."""
        loss = self.forward_backward(feed)
        self.apply_update()
        self.iter += 1
        return loss

    def _plan_loss(self, inputs: dict) -> torch.Tensor:
        """The TRAIN net's total loss for one pass through the plan (the comm's forward)."""
        loss, _ = self.plan(inputs)
        if loss is None:
            raise SolverError(f"{self._where()}the TRAIN net {self.net.name!r} has no loss output to minimise")
        return loss

    # ------------------------------------------------------------------------------------------ training

    def step(self, iters: int, feed=None) -> None:
        """Caffe: Solver::Step: per iteration, test (every test_interval), iter_size forward/backward passes,
        ApplyUpdate, ++iter, snapshot (every ``snapshot``). A loss that is not finite stops it with
        :class:`DivergedError` before anything is snapshotted (Caffe would train on)."""
        p = self.param
        stop_iter, start_iter = self.iter + int(iters), self.iter
        if not self._keep_window:  # Caffe resets the smoothing window in every Step call
            self._losses, self._smoothed_loss, self._pending, self._start_iter = [], None, [], start_iter
        self._keep_window = False
        while self.iter < stop_iter:
            if p.test_interval and self.iter % p.test_interval == 0 and (self.iter > 0 or p.test_initialization):
                self.test_all()
            display = bool(p.display) and self.iter % p.display == 0
            loss = self.forward_backward(feed)
            self._pending.append((self.iter, loss))
            if len(self._pending) >= _MAX_PENDING or display:
                self._flush_losses()
            rate = self.apply_update()
            if display:
                self._emit({"type": "train", "iter": self.iter, "loss": self._smoothed_loss, "lr": rate,
                            "outputs": _scalars(self._last_outputs())})
            self.iter += 1  # Caffe: iter_ counts the updates applied, so it moves after ApplyUpdate
            stop = self.comm.agree_stop(self._stop_requested, self.iter)
            if stop:
                self._stop_requested = True
            if (p.snapshot and self.iter % p.snapshot == 0) or stop or self._snapshot_requested:
                self._snapshot_requested = False
                self.snapshot()
            if stop:
                break

    def solve(self, feed=None) -> None:
        """Caffe: Solver::Solve: step to max_iter; snapshot unless one was just written
        (snapshot_after_train); then a forward-only display pass and a last test when max_iter falls on
        display / test_interval."""
        p = self.param
        self.step(p.max_iter - self.iter, feed)
        if self._stop_requested:
            return
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot):
            self.snapshot()
        if p.display and self.iter % p.display == 0:
            with torch.no_grad():
                loss = self._plan_loss(_inputs(feed, self.iter * p.iter_size))
            self._pending.append((self.iter, loss))
            self._flush_losses()
            self._emit({"type": "train", "iter": self.iter, "loss": self._smoothed_loss, "lr": self.lr,
                        "outputs": _scalars(self._last_outputs())})
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()

    def _last_outputs(self) -> dict:
        return {b: self.net.blobs[b] for b in self.net.outputs if b in self.net.blobs}

    def _flush_losses(self) -> None:
        """Read the pending losses back in one transfer (averaged over the ranks of a data-parallel run), stop
        on one that is not finite, and fold them into Caffe's smoothed loss in order."""
        if not self._pending:
            return
        its, losses = zip(*self._pending)
        self._pending = []
        values = self.comm.mean_over_ranks(torch.stack(losses)).cpu().numpy()
        for it, v in zip(its, values):
            if not np.isfinite(v):
                raise DivergedError(it, float(v))
            self._update_smoothed_loss(float(v), self._start_iter, it)

    @property
    def smoothed_loss(self) -> float | None:
        """Caffe's smoothed training loss (the mean of the last ``average_loss`` iterations' losses)."""
        self._flush_losses()
        return self._smoothed_loss

    def _update_smoothed_loss(self, loss: float, start_iter: int, it: int) -> None:
        """Caffe: Solver::UpdateSmoothedLoss: the mean of the last ``average_loss`` losses."""
        k = self.param.average_loss
        if len(self._losses) < k:
            self._losses.append(loss)
            size = len(self._losses)
            self._smoothed_loss = float((_f32(self._smoothed_loss or 0) * (size - 1) + _f32(loss)) / _f32(size))
        else:
            idx = (it - start_iter) % k
            self._smoothed_loss = float(_f32(self._smoothed_loss) + (_f32(loss) - _f32(self._losses[idx]))
                                        / _f32(k))
            self._losses[idx] = loss

    @torch.no_grad()
    def apply_update(self) -> float:
        """Caffe: SGDSolver::ApplyUpdate on the diffs now in the params' ``.grad``; returns the rate used."""
        from .lr import learning_rate

        p = self.param
        rate = learning_rate(p, self.iter)
        live = [i for i, b in enumerate(self._blobs) if b[3] != 0]
        params = [self._blobs[i][2] for i in live]
        grads = [w.grad if w.grad is not None else torch.zeros_like(w) for w in params]
        sgd_update_(params, grads, [self._history[i] for i in live], rate=rate,
                    lr_mults=[self._blobs[i][3] for i in live], decay_mults=[self._blobs[i][4] for i in live],
                    momentum=p.momentum, weight_decay=p.weight_decay, regularization_type=p.regularization_type,
                    iter_size=p.iter_size, clip_gradients=p.clip_gradients, nesterov=_TYPES[p.type])
        for w in params:
            w.grad = None
        self.lr = rate
        return rate

    # ------------------------------------------------------------------------------------------ testing

    def share_weights(self, test_net) -> None:
        """Caffe: Net::ShareTrainedLayersWith: a TEST net uses the TRAIN net's blobs of same-named layers."""
        train = self.net.params
        with torch.no_grad():
            for layer, blobs in test_net.params.items():
                src = train.get(layer)
                if src is None:
                    continue
                if len(src) != len(blobs) or any(a.shape != b.shape for a, b in zip(src, blobs)):
                    raise SolverError(f"layer {layer!r}: the TEST net's blobs "
                                      f"{[tuple(b.shape) for b in blobs]} do not match the TRAIN net's "
                                      f"{[tuple(a.shape) for a in src]}")
                for a, b in zip(src, blobs):
                    b.copy_(a)

    @torch.no_grad()
    def test(self, test_net_id: int = 0, feed=None) -> dict:
        """Caffe: Solver::Test: ``test_iter`` forward passes of TEST net ``test_net_id``, each output value
        averaged over the passes. The net's Data layer keeps its cursor between calls and wraps at the end of
        its source, so a test set smaller than test_iter x batch is counted partly twice, as in Caffe."""
        net = self.test_nets[test_net_id]
        self.share_weights(net)
        feed = feed if feed is not None else self.test_feed
        n = int(self.param.test_iter[test_net_id])
        sums: dict[str, np.ndarray] = {}
        for i in range(n):
            out = net(**_inputs(feed, i))
            for k, v in out.items():
                v = v.detach().float().cpu().reshape(-1).numpy()
                sums[k] = v.copy() if k not in sums else (sums[k] + v).astype(np.float32)  # Caffe: float sums
        scores = {k: (float(v[0] / _f32(n)) if v.size == 1 else [float(x) for x in v / _f32(n)])
                  for k, v in sums.items()}
        return self._test_record(scores, test_net_id)

    def _test_record(self, scores: dict, test_net_id: int) -> dict:
        rec = {"type": "test", "iter": self.iter, **summary_metrics(scores), "scores": scores}
        if test_net_id:
            rec["net"] = test_net_id
        return rec

    def test_all(self) -> list[dict]:
        """Caffe: Solver::TestAll: test every TEST net; each result is also sent to the callbacks. In a
        data-parallel run only the writer rank tests (the weights are the same on every rank)."""
        if not self.comm.is_writer:
            return []
        results = []
        for i in range(len(self.test_nets)):
            rec = self.test(i)
            self._emit(rec)
            results.append(rec)
        return results

    @torch.no_grad()
    def evaluate(self, test_net_id: int = 0, batches=None) -> dict:
        """One exact pass over the TEST net's data (each image once; the last batch cut to what is left), with
        a fresh reader that leaves the net's own test cursor alone. ``batches``: an iterable of input dicts
        for a TEST net fed without a Data layer. Values are weighted by batch size."""
        net = self.test_nets[test_net_id]
        self.share_weights(net)
        it = _one_pass(net, self.data_root) if batches is None else ((b, None) for b in batches)
        sums: dict[str, float] = {}
        count = 0
        for inputs, size in it:
            out = net(**inputs)
            size = size if size is not None else int(next(iter(inputs.values())).shape[0])
            for k, v in out.items():
                if v.numel() == 1:
                    sums[k] = sums.get(k, 0.0) + float(v) * size
            count += size
        if count == 0:
            raise SolverError("evaluate: the test data is empty")
        rec = self._test_record({k: v / count for k, v in sums.items()}, test_net_id)
        rec.update(type="eval", images=count)
        return rec

    # ------------------------------------------------------------------------------------------ snapshots

    def snapshot(self, prefix: str | os.PathLike | None = None) -> dict[str, Path]:
        """Caffe: Solver::Snapshot: ``<prefix>_iter_<N>.caffemodel`` and ``.solverstate`` (Caffe's formats),
        plus ``.state.pt`` (exact resume: RNG, data cursors). Atomic. Returns the paths by kind."""
        from .checkpoint import snapshot_solver

        self._flush_losses()  # a loss that went NaN since the last display must not be snapshotted
        self._check_weights()
        if not self.comm.is_writer:
            return {}
        paths = snapshot_solver(self, prefix if prefix is not None else self.snapshot_prefix)
        self._emit({"type": "snapshot", "iter": self.iter, **{k: str(v) for k, v in paths.items()}})
        return paths

    def _check_weights(self) -> None:
        """Raise DivergedError when a weight or history value is not finite (one read-back for all blobs)."""
        tensors = [w for _, _, w, _, _ in self._blobs] + self._history
        if not tensors:
            return
        finite = torch.stack([torch.isfinite(t).all() for t in tensors]).all()
        if not bool(finite):
            bad = next(self._blobs[i % len(self._blobs)][0] for i, t in enumerate(tensors)
                       if not bool(torch.isfinite(t).all()))
            raise DivergedError(self.iter, None, f"layer {bad!r} holds values that are not finite")

    def restore(self, path: str | os.PathLike) -> None:
        """Caffe: Solver::Restore: resume from a ``.state.pt`` (ours, exact) or a Caffe ``.solverstate``
        (iter, history and the weights of its learned_net)."""
        from .checkpoint import restore_solver

        restore_solver(self, path)


class LocalComm:
    """One process: a pass is the plan's forward and autograd's backward; nothing to agree on."""

    is_writer = True
    rank, world = 0, 1

    def forward_backward(self, solver, inputs: dict, last: bool) -> torch.Tensor:
        loss = solver._plan_loss(inputs)
        loss.backward()
        return loss

    def agree_stop(self, requested: bool, it: int) -> bool:
        return requested

    def mean_over_ranks(self, values: torch.Tensor) -> torch.Tensor:
        return values


def summary_metrics(scores: dict) -> dict:
    """top1 / top5 / loss from a TEST net's outputs: ``accuracy`` (or the first accuracy output that is not
    top-5), ``accuracy_top5`` (or any output named *top5* / *top_5*), ``loss`` (or the first *loss* output)."""
    names = list(scores)

    def pick(exact, pred):
        if exact in scores:
            return scores[exact]
        return next((scores[k] for k in names if pred(k.lower())), None)

    top5 = lambda k: "top5" in k or "top_5" in k or "top-5" in k
    return {"top1": pick("accuracy", lambda k: "acc" in k and not top5(k)),
            "top5": pick("accuracy_top5", lambda k: top5(k)),
            "loss": pick("loss", lambda k: "loss" in k)}


def _inputs(feed, i: int) -> dict:
    if feed is None:
        return {}
    return dict(feed(i) if callable(feed) else feed)


def _split_weights(weights) -> list[str]:
    if weights is None:
        return []
    if isinstance(weights, (list, tuple)):
        return [os.fspath(w) for w in weights]
    return [w for w in os.fspath(weights).split(",") if w]  # caffe train -weights a,b


def _seed_everything(seed: int) -> None:
    """Caffe: Caffe::set_random_seed (torch CPU/CUDA, numpy's and Python's global streams)."""
    import random

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _one_pass(net, data_root):
    """(inputs, count) batches covering a TEST net's Data layer source exactly once, from a fresh reader."""
    from .data.layer import DataLayerFeeder

    layers = [n for n in net.layer_names if getattr(net.layer(n), "reads_data", False)]
    if len(layers) != 1:
        raise SolverError(f"evaluate: the TEST net {net.name!r} has {len(layers)} data layers; it needs exactly "
                          f"one (or pass batches=)")
    layer = net.layer(layers[0])
    feeder = DataLayerFeeder(layer.param, "TEST", data_root, seed=0)
    try:
        if feeder.skip:
            raise SolverError(f"evaluate: layer {layers[0]!r} uses rand_skip; a single pass starts at record 0")
        left = len(feeder)
        while left > 0:
            batch = feeder.next_batch()
            n = min(left, feeder.batch_size)
            yield {k: v[:n] for k, v in batch.items()}, n
            left -= n
    finally:
        feeder.close()
