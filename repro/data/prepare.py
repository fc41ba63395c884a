"""prepare_imagenet: every dataset of the study from an ILSVRC-2012 copy, decoding each image once.

    DATA/train/                       a store of every training image (squashed to 256×256, BGR, Caffe's
                                      convert_imageset --resize_height=256 --resize_width=256), class order
    DATA/val/                         the same for the validation images (`name label` list order)
    DATA/<dataset>_train_lmdb         an index list (repro/data/store.py): the rows of DATA/train the dataset
                                      trains on, shuffled with a seed derived from --seed and its name, and its
                                      labels (a half's labels are ranks within the half, as make_reduced_dataset)
    DATA/<dataset>_val_lmdb           the same into DATA/val (a reduced set validates on the whole val set)
    DATA/<dataset>_mean.binaryproto   compute_image_mean of the dataset's training images
    DATA/prepare.json                 what was prepared: classes, counts, seed, decoder

The `<dataset>_train_lmdb` names are what the study's prototxts (prototxt/caffenet/train_val.prototxt) name;
the Data layer recognises an index list by its content, whatever its name. Datasets: whole, half0A … half3B
(the paper's random halves), halfnatmanA/B (natural / man-made, 1000 classes only) and reduced0001 …
reduced1000 (the first k training images of each class), as repro.study.splits defines them.

Resumable: the stores resume inside `<store>.partial/` (convert.convert_to_store); each index list and mean
appears atomically and is skipped when present, so a rerun after a kill finishes the remaining parts only.
"""
from __future__ import annotations

import json
import os
import warnings
import zlib
from pathlib import Path

import numpy as np

from .. import resources
from ..atomic import atomic_write_text
from ..errors import ReproError
from .convert import convert_to_store, decoder_name
from .sources import index_folder, read_class_list, read_list
from .store import Store, compute_mean, is_index, is_store, open_index, write_index

ROW_BYTES = 3 * 256 * 256   # one squashed image in a store
HEIGHT = WIDTH = 256


class PrepareError(ReproError):
    """Inputs prepare_imagenet cannot use."""


def disk_need(n_train: int, n_val: int, n_datasets: int) -> int:
    """Bytes prepare writes: every image once (uint8 3×256×256), plus per dataset an index list (~12 bytes a row
    of JSON, rows + labels) and a float32 mean, plus the stores' name lists (~40 bytes an image)."""
    images = (n_train + n_val) * ROW_BYTES
    lists = (n_train + n_val) * 40
    means = n_datasets * 4 * ROW_BYTES
    index = 2 * (n_train + n_val) * 12 * n_datasets // 2  # a dataset's lists cover about half the images
    return images + lists + means + index


def _size(n: int) -> str:
    for unit, f in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= f:
            return f"{n / f:.1f} {unit}"
    return f"{n / 1e3:.1f} kB"


def _seed(base: int, name: str) -> int:
    return (int(base) * 1000003 + zlib.crc32(name.encode())) % (2 ** 32)


def datasets(num_classes: int, val: bool):
    """The study's datasets for `num_classes` (repro.study.splits); natman only with ILSVRC's 1000 classes."""
    from ..study.splits import study_datasets

    partition = True if num_classes == resources.NUM_CLASSES else None
    return study_datasets(num_classes, partition=partition, per_class=() if val else resources.REDUCED_PER_CLASS)


def _rows_for(store: Store, ds) -> tuple[np.ndarray, np.ndarray]:
    """(rows, labels) of `ds` in `store` (class order within the store's order, as splits.select)."""
    from ..study.splits import select

    pos = {n: i for i, n in enumerate(store.names)}
    picked = select(list(zip(store.names, (int(x) for x in store.labels))), ds)
    rows = np.fromiter((pos[n] for n, _ in picked), np.int64, len(picked))
    labels = np.fromiter((lab for _, lab in picked), np.int64, len(picked))
    return rows, labels


def prepare(train_dir, val_dir, val_labels, out, *, synsets=None, seed: int = 0, shuffle: bool = True,
            workers: int | None = None, on_error: str = "fail", log=print) -> dict:
    """Run the whole preparation (see the module docstring); returns the summary written to prepare.json."""
    out = Path(out)
    classes = read_class_list(synsets) if synsets else None
    train_entries, classes = index_folder(train_dir, classes, on_error=on_error)
    k = len(classes)
    if k != resources.NUM_CLASSES:
        warnings.warn(f"{train_dir}: {k} classes, not ILSVRC-2012's {resources.NUM_CLASSES}; preparing a trial "
                      "copy (no natural/man-made halves; halves and reduced sets are not the paper's)", stacklevel=2)
    if k % 2:
        raise PrepareError(f"{train_dir}: {k} classes is odd, so the study's halves would be uneven; use an even "
                           "number of class folders")
    val_entries = read_list(val_labels, root=val_dir, num_classes=k, on_error=on_error)
    tr_sets, va_sets = datasets(k, val=False), datasets(k, val=True)
    need = disk_need(len(train_entries), len(val_entries), len(tr_sets))
    log(f"prepare_imagenet: {len(train_entries)} training + {len(val_entries)} validation images of {k} classes; "
        f"decoding each once; {len(tr_sets)} datasets; needs about {_size(need)} of disk in {out}")
    out.mkdir(parents=True, exist_ok=True)
    kw = dict(height=HEIGHT, width=WIDTH, on_error=on_error, num_workers=workers, log=log)
    for name, entries, root, src in (("train", train_entries, train_dir, str(train_dir)),
                                     ("val", val_entries, val_dir, str(val_labels))):
        if is_store(out / name):
            log(f"{out / name}: done, skipped")
        else:
            # stores keep list order: every dataset reads them through its own shuffled index list
            convert_to_store(entries, root, out / name, classes=classes, source=src, **kw)
    train, val = Store(out / "train"), Store(out / "val")
    whole_val = None
    for part, store, sets in (("train", train, tr_sets), ("val", val, va_sets)):
        for ds in sets:
            path = out / f"{ds.name}_{part}_lmdb"
            if part == "val" and ds.name == "whole":
                whole_val = path
            if is_index(path):
                continue
            rows, labels = _rows_for(store, ds)
            if shuffle:
                perm = np.random.RandomState(_seed(seed, f"{ds.name}_{part}")).permutation(len(rows))
                rows, labels = rows[perm], labels[perm]
            names = [classes[c] for c in ds.classes]
            write_index(path, out / part, rows, labels, classes=names, dataset=ds.name, part=part,
                        shuffle=shuffle, seed=_seed(seed, f"{ds.name}_{part}") if shuffle else None)
            log(f"wrote {path} ({len(rows)} images)")
    # the paper reduced only the training sets: a reduced net validates on the whole val set
    for ds in tr_sets:
        path = out / f"{ds.name}_val_lmdb"
        if not is_index(path):
            atomic_write_text(path, whole_val.read_text())
    for ds in tr_sets:
        mean = out / f"{ds.name}_mean.binaryproto"
        if mean.is_file():
            continue
        from ..caffemodel import write_mean

        write_mean(mean, compute_mean(open_index(out / f"{ds.name}_train_lmdb"), log=log))
        log(f"wrote {mean}")
    summary = {"classes": list(classes), "train": len(train), "val": len(val), "seed": seed, "shuffle": shuffle,
               "datasets": [ds.name for ds in tr_sets], "decoder": decoder_name(),
               "size": [HEIGHT, WIDTH], "cores": workers or os.cpu_count()}
    atomic_write_text(out / "prepare.json", json.dumps(summary, indent=1) + "\n")
    log(f"prepare_imagenet: done, {out}")
    return summary
