"""The study as data: every net of the paper is a `Cell`, realised into prototxt messages by one pure function.

The original repository holds 170 result folders with three prototxts each (the paper's training protocol). They differ
from the base net only by (the paper's training protocol):
  * frozen layers: `blobs_lr: 0 0`, `weight_decay: 0 0` (V2: every ParamSpec lr_mult 0, decay_mult 0);
  * re-initialised layers: renamed with the suffix `-new` (layer and top blob) so that Caffe's
    Net::CopyTrainedLayersFrom, which copies by layer name, skips them and they keep their filler values;
  * the solver of the reduced-data nets (base_lr 0.0125, stepsize 64000, max_iter 200000);
  * the folder's symlinks: data, mean file (`mean_source`) and base net snapshot (`dependencies`).
fc8 always keeps the base net's outputs (1000 in the paper, even for 449/500/551-class tasks).

Layer n counts the learnable layers (Convolution / InnerProduct) in net order: 1 = conv1 … 7 = fc7, 8 = fc8.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .. import resources
from ..errors import ReproError

CAFFENET_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
LEARNABLE_TYPES = ("Convolution", "InnerProduct")
NEW_SUFFIX = "-new"
KINDS = ("base", "transfer", "nolearn", "reduced")
HALVES = ("A", "B")
# Solver of the reduced-data nets relative to the standard one (reduced-*/imagenet_solver.prototxt against
# half0A's): 0.0125 / 0.01, 64000 / 100000, 200000 / 450000. Ratios, so the rule carries over to other solvers.
REDUCED_LR_FACTOR = 1.25
REDUCED_STEPSIZE_FACTOR = 0.64
REDUCED_MAX_ITER_FACTOR = 200000 / 450000
# Which random splits have fine-tuned folders (the paper's training protocol): s = 0, 1 only.
FINE_TUNED_SEEDS = (0, 1)


class GridError(ReproError):
    """An impossible cell, an unknown cell name, or a base net the cell cannot be realised on."""


@dataclass(frozen=True)
class Cell:
    """One net of the study.

    kind:      "base" (half*, halfnatman*, netbase), "transfer" (selffer when source == target), "nolearn"
               (first n layers random and frozen) or "reduced" (whole ImageNet, first per_class images per class)
    source:    "A"/"B": the half whose base net the first n layers come from (transfer only)
    target:    "A"/"B": the half trained and tested on ("" for whole-ImageNet nets)
    n:         number of copied (transfer) or random frozen (nolearn) layers; 0 for nets trained from scratch
    fine_tune: the copied layers keep training (`transfer-ft…`, the paper's "+")
    split:     "0".."3" (random split seed), "natman" (A = natural, B = man-made) or "whole"
    per_class: images per class of a reduced set (1300 = the whole training set)
    """

    kind: str
    source: str = ""
    target: str = ""
    n: int = 0
    fine_tune: bool = False
    split: str = "whole"
    per_class: int | None = None

    def __post_init__(self):
        def bad(why):
            raise GridError(f"impossible cell {self!r}: {why}")

        if self.kind not in KINDS:
            bad(f"kind must be one of {KINDS}")
        halves = self.split == "natman" or self.split.isdigit()
        if not halves and self.split != "whole":
            bad("split must be a seed ('0'..'3'), 'natman' or 'whole'")
        if halves != (self.target in HALVES):
            bad("target must be 'A' or 'B' for a split into halves and '' for split 'whole'")
        if (self.kind == "transfer") != (self.source in HALVES):
            bad("source must be 'A' or 'B' for a transfer and '' otherwise")
        if self.kind in ("transfer", "nolearn") and self.n < 1:
            bad("a transfer or nolearn net needs n >= 1")
        if self.kind in ("base", "reduced") and self.n != 0:
            bad("nets trained from scratch have n = 0")
        if self.fine_tune and self.kind != "transfer":
            bad("only transfers are fine-tuned")
        if self.kind in ("nolearn", "reduced") and self.split != "whole":
            bad(f"{self.kind} nets train on whole ImageNet (split 'whole')")
        if self.kind == "transfer" and self.split == "whole":
            bad("a transfer goes between two halves")
        if (self.kind == "reduced") != (self.per_class is not None):
            bad("per_class is set exactly for reduced nets")
        if self.per_class is not None and self.per_class < 1:
            bad("per_class must be >= 1")

    # ---- names ------------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The paper's folder name: half0A, transfer0A0B_1_3, transfer-ft0A0B_1_3, transfernatmanAB_1_5, …"""
        if self.kind == "base":
            return "netbase" if self.split == "whole" else f"half{self._split_tag}{self.target}"
        if self.kind == "nolearn":
            return f"nolearn_1_{self.n}"
        if self.kind == "reduced":
            return f"reduced-{self.per_class:04d}"
        s = self._split_tag
        ft = "-ft" if self.fine_tune else ""
        if self.split == "natman":
            return f"transfer{ft}natman{self.source}{self.target}_1_{self.n}"
        return f"transfer{ft}{s}{self.source}{s}{self.target}_1_{self.n}"

    @property
    def _split_tag(self) -> str:
        return "natman" if self.split == "natman" else self.split

    @property
    def condition(self) -> str:
        """The figure's name for the net: base, BnB, BnB+ (selffer), AnB, AnB+ (transfer), nolearn, reduced."""
        if self.kind != "transfer":
            return self.kind
        return ("BnB" if self.source == self.target else "AnB") + ("+" if self.fine_tune else "")

    @property
    def dataset(self) -> str:
        """The training dataset, named as `repro.study.splits` writes it (half0B, halfnatmanA, whole, reduced0010)."""
        if self.split == "whole":
            if self.kind == "reduced" and self.per_class < resources.WHOLE_PER_CLASS:
                return f"reduced{self.per_class:04d}"
            return "whole"
        return f"half{self._split_tag}{self.target}"

    @property
    def val_dataset(self) -> str:
        """The validation dataset: the target half, or the whole 50,000-image set (reduced sets are train-only)."""
        return "whole" if self.split == "whole" else f"half{self._split_tag}{self.target}"

    def __str__(self):
        return self.name


# ---- the paper's grid ------------------------------------------------------------------------------------------

def all_cells(seeds=resources.SPLIT_SEEDS, n_max: int = resources.TRANSFER_LAYERS) -> list[Cell]:
    """The 170 folders of the paper's results/, base nets first (they are dependencies)."""
    cells = [Cell("base", target=t, split=str(s)) for s in seeds for t in HALVES]
    cells += [Cell("base", target=t, split="natman") for t in HALVES]
    cells.append(Cell("base"))
    cells += [Cell("reduced", per_class=k) for k in resources.REDUCED_PER_CLASS + (resources.WHOLE_PER_CLASS,)]
    cells += [Cell("nolearn", n=n) for n in range(1, n_max + 1)]
    # No selffer is built on a B half (`?B?B`): the paper's "BnB" is the AnA selffer.
    pairs = (("A", "A"), ("A", "B"), ("B", "A"))
    for ft in (False, True):
        for s in seeds:
            if ft and s not in FINE_TUNED_SEEDS:
                continue
            cells += [Cell("transfer", src, tgt, n, ft, str(s)) for src, tgt in pairs for n in range(1, n_max + 1)]
    cells += [Cell("transfer", src, tgt, n, False, "natman")
              for src, tgt in (("A", "B"), ("B", "A")) for n in range(1, n_max + 1)]
    return cells


_NAME = re.compile(
    r"^(?:half(?P<half>\d+|natman)(?P<ht>[AB])"
    r"|(?P<netbase>netbase)"
    r"|nolearn_1_(?P<nl>\d+)"
    r"|reduced-(?P<pc>\d+)"
    r"|transfer(?P<ft>-ft)?(?:natman(?P<ns>[AB])(?P<nt>[AB])|(?P<s1>\d+)(?P<ts>[AB])(?P<s2>\d+)(?P<tt>[AB]))"
    r"_1_(?P<n>\d+))$")


def cell_from_name(name: str) -> Cell:
    """The cell of a paper folder name (`cell_from_name(c.name) == c`)."""
    m = _NAME.match(name)
    if not m or (m["s1"] is not None and m["s1"] != m["s2"]):
        raise GridError(f"{name!r} is not a cell name; expected e.g. half0A, halfnatmanB, netbase, nolearn_1_3, "
                        f"reduced-0010, transfer0A0B_1_3, transfer-ft0A0A_1_5, transfernatmanAB_1_2")
    g = m.groupdict()
    if g["half"] is not None:
        cell = Cell("base", target=g["ht"], split=g["half"])
    elif g["netbase"]:
        cell = Cell("base")
    elif g["nl"] is not None:
        cell = Cell("nolearn", n=int(g["nl"]))
    elif g["pc"] is not None:
        cell = Cell("reduced", per_class=int(g["pc"]))
    elif g["ns"] is not None:
        cell = Cell("transfer", g["ns"], g["nt"], int(g["n"]), bool(g["ft"]), "natman")
    else:
        cell = Cell("transfer", g["ts"], g["tt"], int(g["n"]), bool(g["ft"]), g["s1"])
    if cell.name != name:  # e.g. reduced-10 (not zero-padded) or a leading zero in n
        raise GridError(f"{name!r} is not a canonical cell name; did you mean {cell.name!r}?")
    return cell


def dependencies(cell: Cell) -> tuple[Cell, ...]:
    """The cells whose final snapshot this one needs: the base net of the source half for a transfer."""
    if cell.kind == "transfer":
        return (Cell("base", target=cell.source, split=cell.split),)
    return ()


def mean_source(cell: Cell) -> str:
    """The dataset whose training-set mean the net subtracts (the paper's training protocol).

    Transfers use the *source* half's mean even while training on the target half; reduced nets use their own
    reduced set's mean (reduced-1300: the whole set's); nolearn nets a whole-ImageNet mean (in the paper one
    that differs slightly from netbase's: 104.2/116.7/122.8 against 104.0/116.7/122.7; we use the whole set's).
    """
    if cell.kind == "transfer":
        return f"half{cell._split_tag}{cell.source}"
    return cell.dataset


def copied_layers(cell: Cell, layers=CAFFENET_LAYERS) -> tuple[str, ...]:
    """Layers initialised from the base net snapshot (by name, as Net::CopyTrainedLayersFrom does)."""
    return tuple(layers[: cell.n]) if cell.kind == "transfer" else ()


def frozen_layers(cell: Cell, layers=CAFFENET_LAYERS) -> tuple[str, ...]:
    """Layers whose every lr_mult and decay_mult is 0: copied layers unless fine-tuned; nolearn's random ones."""
    if (cell.kind == "transfer" and not cell.fine_tune) or cell.kind == "nolearn":
        return tuple(layers[: cell.n])
    return ()


def renamed_layers(cell: Cell, layers=CAFFENET_LAYERS) -> dict[str, str]:
    """Layers re-initialised by renaming (`conv4` → `conv4-new`): every layer above n of a transfer."""
    if cell.kind != "transfer":
        return {}
    return {name: name + NEW_SUFFIX for name in layers[cell.n:]}


# ---- realisation into NetParameter / SolverParameter edits ------------------------------------------------------

def learnable_layers(net_param) -> tuple[str, ...]:
    """Names of the learnable layers in net order: the layers that `n` counts."""
    return tuple(layer.name for layer in net_param.layer if layer.type in LEARNABLE_TYPES)


def _num_blobs(layer) -> int:
    p = layer.convolution_param if layer.type == "Convolution" else layer.inner_product_param
    return 2 if p.bias_term else 1


def _freeze(layer):
    # Caffe: Net::AppendParam takes a missing ParamSpec as lr_mult 1, decay_mult 1; give every blob its own
    # ParamSpec so none is left at the default.
    while len(layer.param) < _num_blobs(layer):
        layer.param.add()
    for spec in layer.param:
        spec.lr_mult = 0.0
        spec.decay_mult = 0.0


def _rename(net_param, renames: dict[str, str]):
    """Rename layers and their top blobs, and follow each renamed blob through later bottoms and in-place tops."""
    blob_map: dict[str, str] = {}
    for layer in net_param.layer:
        bottoms = list(layer.bottom)
        layer.bottom[:] = [blob_map.get(b, b) for b in bottoms]
        new_tops = []
        for t in layer.top:
            if t in bottoms:                      # in-place (relu4: conv4 -> conv4): follows its bottom
                new_tops.append(blob_map.get(t, t))
            elif layer.name in renames:           # the renamed layer's output blob gets the suffix too
                blob_map[t] = t + NEW_SUFFIX
                new_tops.append(blob_map[t])
            else:                                 # a fresh blob of the same name ends the old one's reach
                blob_map.pop(t, None)
                new_tops.append(t)
        layer.top[:] = new_tops
        if layer.name in renames:
            layer.name = renames[layer.name]


def _check_layers(cell: Cell, layers: tuple[str, ...], which: str):
    if cell.n >= len(layers):
        raise GridError(f"{cell.name}: n = {cell.n} needs at least {cell.n + 1} learnable layers "
                        f"(the last is never transferred); the {which} net has {len(layers)}: {list(layers)}")


def _scaled(x: float, factor: float) -> float:
    # 7 significant digits: the float32 field then holds the value the paper's text wrote (0.0125, not 0.01249…).
    return float(f"{x * factor:.7g}")


def realise_solver(cell: Cell, base_solver):
    """The cell's solver: the base solver, with the reduced-data schedule for reduced nets."""
    solver = type(base_solver)()
    solver.CopyFrom(base_solver)
    if cell.kind == "reduced":
        solver.base_lr = _scaled(base_solver.base_lr, REDUCED_LR_FACTOR)
        solver.stepsize = round(base_solver.stepsize * REDUCED_STEPSIZE_FACTOR)
        solver.max_iter = round(base_solver.max_iter * REDUCED_MAX_ITER_FACTOR)
    return solver


def realise(cell: Cell, base_net, base_solver, *, val_net=None):
    """(train NetParameter, val NetParameter, SolverParameter) of `cell`, from the base net's messages.

    base_net: the upgraded V2 NetParameter of the base net (e.g. `repro.prototxt.read_net(...)`): its train net
    when `val_net` (the test net) is given, or one train_val net with phase rules, split here with
    `repro.prototxt.filter_net`. The inputs are not modified.

    Train net: frozen layers get lr_mult 0 and decay_mult 0 on every blob; renamed layers and their top blobs
    get `-new`. Val net: the same renames (the test net receives the train net's weights by layer name, so a
    missing rename would evaluate untrained weights) and nothing else, as in the paper's files.
    """
    from ..proto import caffe_pb2

    if val_net is None:
        from ..prototxt import filter_net
        train, val = filter_net(base_net, "TRAIN"), filter_net(base_net, "TEST")
    else:
        train, val = caffe_pb2.NetParameter(), caffe_pb2.NetParameter()
        train.CopyFrom(base_net)
        val.CopyFrom(val_net)
    layers = learnable_layers(train)
    _check_layers(cell, layers, "train")
    missing = sorted(set(learnable_layers(val)) - set(layers))
    if missing:
        raise GridError(f"{cell.name}: the val net has learnable layers the train net lacks: {missing}")

    frozen = set(frozen_layers(cell, layers))
    for layer in train.layer:
        if layer.name in frozen:
            _freeze(layer)
    renames = renamed_layers(cell, layers)
    _rename(train, renames)
    _rename(val, renames)
    return train, val, realise_solver(cell, base_solver)
