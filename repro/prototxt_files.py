"""Where our own net files live: ``prototxt/<net>/{train_val,deploy,solver}.prototxt``.

In a source checkout that is the repository's ``prototxt/`` folder; a package built with a copy in
``repro/resources/prototxt/`` finds it there (the first of the two that exists wins).
"""
from __future__ import annotations

from pathlib import Path

NETS = ("caffenet", "mini", "small")
KINDS = ("train_val", "deploy", "solver")

_HERE = Path(__file__).resolve().parent
_CANDIDATES = (_HERE.parent / "prototxt", _HERE / "resources" / "prototxt")


def prototxt_dir() -> Path:
    """The folder holding one sub-folder per net."""
    for d in _CANDIDATES:
        if d.is_dir():
            return d
    raise FileNotFoundError(f"no prototxt folder; looked at {', '.join(map(str, _CANDIDATES))}")


def prototxt_path(net: str, kind: str = "train_val") -> Path:
    """The file of ``net`` ("caffenet", "mini", "small") of ``kind`` ("train_val", "deploy", "solver")."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    path = prototxt_dir() / net / f"{kind}.prototxt"
    if not path.is_file():
        known = sorted(p.name for p in prototxt_dir().iterdir() if p.is_dir())
        raise FileNotFoundError(f"{path} does not exist; nets: {', '.join(known)}")
    return path


def all_prototxt_files() -> list[Path]:
    """Every .prototxt under the folder, sorted."""
    return sorted(prototxt_dir().rglob("*.prototxt"))


# ------------------------------------------------------------------------------------------ param shapes

PARAM_SHAPES_FILE = "param_shapes.json"


def param_shapes(net) -> dict:
    """{"layers": {layer: {"shapes": [[...], ...], "count": n}}, "total": n} of a built repro.net.Net."""
    layers = {name: {"shapes": [list(b.shape) for b in blobs], "count": sum(b.numel() for b in blobs)}
              for name, blobs in net.params.items()}
    return {"layers": layers, "total": sum(v["count"] for v in layers.values())}


def param_shape_table() -> dict:
    """param_shapes of every net's train_val.prototxt (TRAIN phase), keyed by net folder name."""
    from .net import Net

    table = {}
    for net in sorted(p.name for p in prototxt_dir().iterdir() if (p / "train_val.prototxt").is_file()):
        table[net] = param_shapes(Net(prototxt_path(net, "train_val"), "TRAIN", faithful=False,
                                      input_shapes=None))
    return table
