"""The paper's datasets from one file list: random A/B halves, the natural/man-made halves, reduced sets.

Reproduces yosinski/convnet_transfer `ilsvrc12/make_reduced_dataset.py` (driven by `make_reduced_datasets.sh`)
byte for byte, generic over the number of classes so the same definitions apply to the built-in data:

* random halves (`--seed s`): numpy's legacy MT19937 seeded with the one-element *list* [s] (init_by_array, a
  different stream from seeding with the integer s), then legacy `choice(arange(N), N//2, replace=False)`;
  sorted, that is half A; the other classes are half B.
* a given partition (`--half-files A B`): the natural/man-made halves for ILSVRC-2012.
* in a half, a class's new label is its rank among the half's classes (ascending original index); the line order
  of the input list is kept.
* reduced sets (`--perclass k`): the first k lines of each class in input order; labels stay original.

Output, one folder per dataset: `<out>/<name>/files.txt` (`name label` lines, Caffe's convert_imageset input)
and `<out>/<name>/idxmap.txt` (`# Orig_idx new_idx` then `orig new` lines; identity for whole/reduced sets).
Names: `half0A` … `half3B`, `halfnatmanA` (natural), `halfnatmanB` (man-made), `reduced0001` … `reduced1000`,
and `whole` (the input list itself).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .. import resources
from ..atomic import atomic_write_text
from ..data.sources import IMAGE_EXTENSIONS, index_folder, parse_list
from ..errors import ReproError


class SplitError(ReproError):
    """Bad input to the split code: the message names the file, line and what was expected."""


@dataclass(frozen=True)
class Dataset:
    """One dataset of the study: which original classes it keeps and, for reduced sets, how many per class."""

    name: str
    classes: tuple[int, ...]          # original class indices kept, ascending
    per_class: int | None = None      # reduced sets: first k images of each class
    remap: bool = True                # halves relabel to 0..len(classes)-1; whole/reduced keep original labels

    def idxmap(self) -> list[tuple[int, int]]:
        new = range(len(self.classes)) if self.remap else self.classes
        return list(zip(self.classes, new))


# ---- class selection -------------------------------------------------------------------------------------------

def random_half(num_classes: int, seed: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Half A and half B of `num_classes` classes for split `seed`, by the paper's seeding rule."""
    if num_classes < 2:
        raise SplitError(f"a random half needs at least 2 classes, got num_classes={num_classes}")
    # make_reduced_dataset.py: random.seed(args.seed) where args.seed is argparse's nargs=1 *list* [s];
    # RandomState([s]) goes through init_by_array exactly as numpy.random.seed([s]) does.
    rng = np.random.RandomState([int(seed)])
    a = sorted(int(i) for i in rng.choice(np.arange(num_classes), num_classes // 2, replace=False))
    b = sorted(set(range(num_classes)) - set(a))
    return tuple(a), tuple(b)


def read_indices(path: str | os.PathLike) -> tuple[int, ...]:
    """A partition file: one original class index per line (blank lines ignored)."""
    out = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            s = line.strip()
            if not s:
                continue
            try:
                out.append(int(s))
            except ValueError:
                raise SplitError(f"{path}:{lineno}: expected one integer class index, got {s!r}") from None
    return tuple(out)


def check_partition(a: Sequence[int], b: Sequence[int], num_classes: int, where: str = "partition"):
    """The two halves of a partition must be disjoint and together cover 0..num_classes-1 exactly once."""
    both = sorted(list(a) + list(b))
    if both != list(range(num_classes)):
        dup = sorted(set(a) & set(b))
        missing = sorted(set(range(num_classes)) - set(both))
        extra = sorted(set(both) - set(range(num_classes)))
        raise SplitError(
            f"{where}: the two halves must cover classes 0..{num_classes - 1} exactly once; "
            f"in both halves: {dup[:10]}, missing: {missing[:10]}, out of range: {extra[:10]}")


def study_datasets(num_classes: int = resources.NUM_CLASSES,
                   seeds: Iterable[int] = resources.SPLIT_SEEDS,
                   partition: tuple[Sequence[int], Sequence[int]] | None | bool = True,
                   per_class: Iterable[int] = resources.REDUCED_PER_CLASS) -> list[Dataset]:
    """Every dataset of the study for `num_classes` classes.

    partition: (half A indices, half B indices) for `halfnatmanA/B`; True means ILSVRC-2012's natural/man-made
    partition shipped in repro/resources (only valid with 1000 classes); None/False skips the partition halves.
    """
    everything = tuple(range(num_classes))
    out = [Dataset("whole", everything, remap=False)]
    for s in seeds:
        a, b = random_half(num_classes, s)
        out += [Dataset(f"half{s}A", a), Dataset(f"half{s}B", b)]
    if partition is True:
        if num_classes != resources.NUM_CLASSES:
            raise SplitError(f"the natural/man-made partition is ILSVRC-2012's ({resources.NUM_CLASSES} classes); "
                             f"give a partition for num_classes={num_classes}")
        partition = (resources.natural_indices(), resources.manmade_indices())
    if partition:
        a, b = partition
        check_partition(a, b, num_classes)
        out += [Dataset("halfnatmanA", tuple(sorted(a))), Dataset("halfnatmanB", tuple(sorted(b)))]
    for k in per_class:
        if k < 1:
            raise SplitError(f"per-class counts must be >= 1, got {k}")
        out.append(Dataset(f"reduced{k:04d}", everything, per_class=int(k), remap=False))
    return out


# ---- file lists -----------------------------------------------------------------------------------------------

def read_file_list(path: str | os.PathLike, num_classes: int = resources.NUM_CLASSES) -> list[tuple[str, int]]:
    """`name label` lines (Caffe's convert_imageset list, read by repro.data.sources.parse_list: the name is
    everything before the last space) → [(name, label)], labels checked against num_classes. The first bad
    line is the error (file:line: why)."""
    entries, bad = parse_list(path, num_classes)
    if bad:
        more = f" (and {len(bad) - 1} more bad lines)" if len(bad) > 1 else ""
        raise SplitError(f"{bad[0].path}: {bad[0].reason}{more}")
    if not entries:
        raise SplitError(f"{path}: the file list is empty")
    return entries


def list_image_folder(folder: str | os.PathLike, synsets: Sequence[str] | None = None) -> list[tuple[str, int]]:
    """A folder of class subfolders named by WordNet id (ILSVRC2012 train/, or val/ sorted into classes).

    Names are relative to `folder` (`n01440764/n01440764_10026.JPEG`), labels follow `synsets` (Caffe's
    synsets.txt order by default); the subfolders present are indexed by repro.data.sources.index_folder (an
    empty class folder or an empty file is a DataError). Lines are ordered by (label, name): the original
    training list is lost (the paper's training protocol), and this order only matters for the reduced sets.
    """
    folder = Path(folder)
    synsets = tuple(synsets if synsets is not None else resources.synsets())
    label_of = {w: i for i, w in enumerate(synsets)}
    if not folder.is_dir():
        raise SplitError(f"{folder}: not a folder")
    subdirs = sorted(p.name for p in folder.iterdir() if p.is_dir())
    unknown = [d for d in subdirs if d not in label_of]
    if not subdirs or unknown:
        hint = " (give ILSVRC2012's train/ or val/ folder itself)" if {"train", "val"} & set(subdirs) else ""
        raise SplitError(f"{folder}: expected one subfolder per class named by WordNet id (e.g. {synsets[0]}); "
                         f"found {len(subdirs)} subfolders, unknown: {unknown[:5]}{hint}")
    present = sorted(subdirs, key=label_of.__getitem__)
    entries, _ = index_folder(folder, present, IMAGE_EXTENSIONS)
    spaced = next((name for name, _ in entries if any(c.isspace() for c in name)), None)
    if spaced is not None:
        raise SplitError(f"{folder / spaced}: the paper's list files cannot hold names with spaces")
    return [(name, label_of[present[i]]) for name, i in entries]


def select(entries: Sequence[tuple[str, int]], ds: Dataset) -> list[tuple[str, int]]:
    """The lines of `ds`, in input order, relabelled as the paper's makeit / makeit_keep_first_n do."""
    new_of = dict(ds.idxmap())
    if ds.per_class is None:
        return [(name, new_of[lab]) for name, lab in entries if lab in new_of]
    seen: dict[int, int] = {}
    out = []
    for name, lab in entries:
        if lab in new_of and seen.get(lab, 0) < ds.per_class:
            seen[lab] = seen.get(lab, 0) + 1
            out.append((name, new_of[lab]))
    return out


def write_dataset(entries: Sequence[tuple[str, int]], ds: Dataset, out_dir: str | os.PathLike) -> Path:
    """Write `<out_dir>/<ds.name>/files.txt` and `idxmap.txt` exactly as make_reduced_dataset.py formats them."""
    folder = Path(out_dir) / ds.name
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "files.txt", "".join(f"{n} {lab:d}\n" for n, lab in select(entries, ds)))
    atomic_write_text(folder / "idxmap.txt",
                      "# Orig_idx new_idx\n" + "".join(f"{o:d} {n:d}\n" for o, n in ds.idxmap()))
    return folder


def check_class_count(num_classes: int, warn: bool = True):
    """The paper's splits assume ILSVRC-2012's 1000 classes: an odd count gives uneven halves (refused), any
    other count gives datasets that are not the paper's (warned once, so a small trial copy still works;
    ``warn=False`` for data that is not ImageNet by design, such as the built-in set)."""
    if num_classes < 2:
        raise SplitError(f"the study needs at least 2 classes, got num_classes={num_classes}")
    if num_classes % 2:
        raise SplitError(f"num_classes={num_classes} is odd: half A and half B would differ in size "
                         f"({num_classes // 2} vs {num_classes - num_classes // 2}); use an even class count")
    if warn and num_classes != resources.NUM_CLASSES:
        warnings.warn(f"num_classes={num_classes}: the paper's splits are over ILSVRC-2012's "
                      f"{resources.NUM_CLASSES} classes; these halves and reduced sets are not the paper's",
                      stacklevel=3)


def make_splits(source: str | os.PathLike | Sequence[tuple[str, int]], out_dir: str | os.PathLike, *,
                num_classes: int = resources.NUM_CLASSES,
                seeds: Iterable[int] = resources.SPLIT_SEEDS,
                partition: tuple[Sequence[int], Sequence[int]] | None | bool = True,
                per_class: Iterable[int] = resources.REDUCED_PER_CLASS,
                warn_not_paper: bool = True) -> dict[str, Path]:
    """Write every dataset of the study from a file list, an image folder, or (name, label) pairs.

    `source`: a `name label` list file, a folder of class subfolders (see `list_image_folder`; ILSVRC-2012 only),
    or a sequence of (name, label). Returns {dataset name: its folder}. Pass `per_class=()` for validation lists
    (the paper reduced only training sets) and `partition=None` to skip the natural/man-made halves;
    `warn_not_paper=False` silences the "not the paper's datasets" warning for a class count other than 1000.
    """
    check_class_count(num_classes, warn=warn_not_paper)
    if isinstance(source, (str, os.PathLike)):
        entries = (list_image_folder(source) if Path(source).is_dir()
                   else read_file_list(source, num_classes))
    else:
        entries = [(str(n), int(lab)) for n, lab in source]
        bad = [lab for _, lab in entries if not 0 <= lab < num_classes]
        if bad:
            raise SplitError(f"labels outside 0..{num_classes - 1}: {sorted(set(bad))[:10]}")
    return {ds.name: write_dataset(entries, ds, out_dir)
            for ds in study_datasets(num_classes, seeds, partition, per_class)}
