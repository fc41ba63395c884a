"""The study's datasets made from the built-in data, on demand: one store per split and part, and its mean.

The paper's folders link each net to a LevelDB per dataset (`half0A` train, `half0A` val, ...) and to that
training set's `imagenet_mean.binaryproto` (the paper's training protocol). For the built-in data
(repro/data/builtin.py, at `<root>`), the same datasets are written beside it as

    <root>/<dataset>_train/               a store (repro/data/store.py) of the split's training images
    <root>/<dataset>_val/                 the split's validation images
    <root>/<dataset>_mean.binaryproto     compute_image_mean of <dataset>_train
    <root>/splits/{train,val}/<dataset>/  the split lists (repro.study.splits, the paper's make_reduced_dataset.py)

which is the layout prototxt/small/train_val.prototxt names (`data/builtin/half0A_train`, ...) and
prototxt/mini/train_val.prototxt names under `data/mini/` (the hierarchical kind). The images are
copied in the split list's order with its labels (a store is read sequentially, like Caffe's DB cursor). Every
folder and file appears atomically, so concurrent runs that need the same dataset may both try to build it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..errors import ReproError

_PART = re.compile(r"^(?P<ds>.+)_(?P<part>train|val)$")
_MEAN = re.compile(r"^(?P<ds>.+)_mean\.binaryproto$")
_CHUNK = 512


class StudyDataError(ReproError):
    """A path that is not a built-in dataset, or a dataset the built-in data cannot provide."""


def is_builtin_root(root) -> bool:
    """Whether `root` holds (or may hold, once generated) the built-in data."""
    m = Path(root) / "manifest.json"
    if m.is_file():
        try:
            return "builtin_version" in json.loads(m.read_text())
        except json.JSONDecodeError:
            return False
    return False


def _root_ready(root: Path, kind: str) -> Path:
    from ..data.builtin import ensure_builtin

    if not is_builtin_root(root):
        ensure_builtin(root, kind=kind)   # generates it (seconds), or refuses a folder that holds something else
    return root


def split_lists(root) -> Path:
    """Write the split lists of the built-in data (random halves 0-3, natural/man-made, reduced sets) once."""
    from .. import resources
    from .splits import make_splits, read_indices

    root = Path(root)
    out = root / "splits"
    if (out / "val" / "whole" / "files.txt").is_file():
        return out
    manifest = json.loads((root / "manifest.json").read_text())
    n = len(manifest["classes"])
    partition = (read_indices(root / "half_nat_idx.txt"), read_indices(root / "half_man_idx.txt"))
    # the built-in data is not ImageNet by design (20 or 32 classes): "not the paper's datasets" is no news
    make_splits(root / "train_files.txt", out / "train", num_classes=n, partition=partition,
                per_class=resources.REDUCED_PER_CLASS, warn_not_paper=False)
    make_splits(root / "val_files.txt", out / "val", num_classes=n, partition=partition, per_class=(),
                warn_not_paper=False)
    return out


def _write_store(view, out: Path, source: str) -> Path:
    """Copy a Store view into a new store folder at `out`, atomically (build beside it, then rename)."""
    from ..data.store import FORMAT, IMAGES, LABELS, MANIFEST, NAMES, VERSION

    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial."))
    try:
        n = len(view)
        c, h, w = view.shape
        with open(work / IMAGES, "wb") as f:
            for s in range(0, n, _CHUNK):
                batch, _ = view.read(np.arange(s, min(s + _CHUNK, n)))
                f.write(np.ascontiguousarray(batch).tobytes())
        np.save(work / LABELS, view.labels.astype(np.int32))
        (work / NAMES).write_text("".join(f"{name} {lab}\n" for name, lab in zip(view.names, view.labels)))
        manifest = {"format": FORMAT, "version": VERSION, "count": n, "channels": c, "height": h, "width": w,
                    "dtype": "uint8", "layout": "NCHW", "color": "BGR", "classes": None, "source": source}
        (work / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")   # last: marks it complete
        try:
            os.replace(work, out)
        except OSError:
            if not (out / MANIFEST).is_file():   # not another process's finished copy: a real error
                raise
            shutil.rmtree(work, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out


def ensure_part(root, dataset: str, part: str, kind: str = "procedural") -> Path:
    """`<root>/<dataset>_<part>`: the store of one split's train or val images (built if absent; `kind`: which
    built-in data to generate at `root` when it is not there, repro.data.builtin.KINDS)."""
    from ..data.store import Store, is_store

    root = Path(root)
    out = root / f"{dataset}_{part}"
    if is_store(out):
        return out
    _root_ready(root, kind)
    lst = split_lists(root) / part / dataset / "files.txt"
    if not lst.is_file():
        have = sorted(p.name for p in (root / "splits" / part).iterdir())
        raise StudyDataError(f"{out}: the built-in data has no {part} set {dataset!r} (it has {have})")
    view = Store(root / part).select(lst)
    return _write_store(view, out, f"repro.study.data: {dataset} {part} of {root}")


def ensure_mean(root, dataset: str, kind: str = "procedural") -> Path:
    """`<root>/<dataset>_mean.binaryproto`: compute_image_mean of the dataset's training store."""
    from ..caffemodel import write_mean
    from ..data.store import Store, compute_mean

    root = Path(root)
    out = root / f"{dataset}_mean.binaryproto"
    if out.is_file():
        return out
    write_mean(out, compute_mean(Store(ensure_part(root, dataset, "train", kind))))
    return out


def ensure_builtin_path(path, kind: str = "procedural") -> Path:
    """Build the built-in dataset file or folder `path` names (`<root>/<dataset>_train|_val` or
    `<root>/<dataset>_mean.binaryproto`); the built-in data of `kind` (repro.data.builtin.KINDS) is generated
    at `<root>` if absent."""
    path = Path(path)
    root = path.parent
    if root.exists() and any(root.iterdir()) and not is_builtin_root(root):
        raise StudyDataError(f"{path}: {root} is not the built-in dataset's folder, so the study cannot make "
                             f"this dataset from it")
    m = _MEAN.match(path.name)
    if m:
        return ensure_mean(root, m["ds"], kind)
    m = _PART.match(path.name)
    if m:
        return ensure_part(root, m["ds"], m["part"], kind)
    raise StudyDataError(f"{path}: not a built-in dataset path; expected <root>/<dataset>_train, <dataset>_val or "
                         f"<dataset>_mean.binaryproto")


def made_if_builtin(path) -> Path:
    """`path`, made first when it is a missing dataset of an existing built-in data folder (`data/mini/half0B_val`,
    its mean), as the study makes it on first use; any other path comes back as it is, for its reader to report."""
    path = Path(path)
    if path.exists() or not is_builtin_root(path.parent):
        return path
    if _MEAN.match(path.name) or _PART.match(path.name):
        return ensure_builtin_path(path)
    return path
