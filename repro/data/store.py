"""Our dataset store: images pre-resized once, kept as raw uint8, read by memory map.

Layout of a store folder (written by `convert.convert_to_store`, `builtin.ensure_builtin`):

    manifest.json   {"format": "repro-store", "version": 1, "count": N, "channels": C, "height": H,
                     "width": W, "classes": [...] | null, "source": ..., "decoder": ..., ...}
    images.u8       uint8 N×C×H×W, C-order, BGR (exactly the bytes of a non-encoded Caffe Datum)
    labels.npy      int32 (N,)
    files.txt       `relative/path label` per image, in store order (a Caffe list file)
    bad_files.txt   `path<TAB>reason` for inputs left out under on_error="skip" (only when there were any)

Why raw uint8 and not JPEG again or an LMDB: (1) it is bit-identical to what Caffe's convert_imageset stores
(re-encoding would change pixels); (2) reading a batch is one memcpy from the page cache (no decode, no
per-record parse), see benchmarks/loader_throughput.py; (3) one file is trivially memory-mapped by many worker
threads. The cost is size: 196,608 bytes per 256×256 image, the same as Caffe's raw Datum databases.

The folder appears atomically: it is built as `<path>.partial/` (with `progress.json` for resuming) and
renamed when complete. A store opened with `Store(path)` can be narrowed without copying: `subset(class_ids)`
(labels remapped to positions in `class_ids`) or `select(list_file)` (the images a split's `files.txt` names,
in its order, with its labels) — how the paper's splits use one store.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..atomic import atomic_write_bytes, atomic_write_text  # noqa: F401  (re-exported for the data package)
from ..errors import ReproError

FORMAT, VERSION = "repro-store", 1
MANIFEST, IMAGES, LABELS, NAMES, BAD = "manifest.json", "images.u8", "labels.npy", "files.txt", "bad_files.txt"


class StoreError(ReproError):
    """A store folder that is missing, incomplete or inconsistent."""


def atomic_save_npy(path: Path, arr: np.ndarray):
    import io

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def is_store(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


class Store:
    """A read-only view of a store: `len`, `shape` (C, H, W), `labels` (int64), `names`, `classes`, and
    `read(idx)` / `read_into(idx, out)` for batches. Views from subset/select share the memory map."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not mpath.is_file():
            hint = " (an unfinished conversion is in .partial; rerun it to resume)" \
                if Path(f"{self.path}.partial").exists() else ""
            raise StoreError(f"{self.path} is not a store: no {MANIFEST}{hint}")
        try:
            m = json.loads(mpath.read_text())
        except json.JSONDecodeError as e:
            raise StoreError(f"{mpath}: not valid JSON ({e})") from None
        if m.get("format") != FORMAT or m.get("version") != VERSION:
            raise StoreError(f"{mpath}: format {m.get('format')!r} v{m.get('version')}, expected {FORMAT!r} v{VERSION}")
        self.manifest = m
        n, c, h, w = (int(m[k]) for k in ("count", "channels", "height", "width"))
        ipath = self.path / IMAGES
        expect = n * c * h * w
        if not ipath.is_file() or ipath.stat().st_size != expect:
            got = ipath.stat().st_size if ipath.is_file() else "missing"
            raise StoreError(f"{ipath}: expected {expect} bytes for {n}×{c}×{h}×{w} uint8, found {got}")
        self.images = np.memmap(ipath, dtype=np.uint8, mode="r", shape=(n, c, h, w)) if n else \
            np.zeros((0, c, h, w), np.uint8)
        labels = np.load(self.path / LABELS, allow_pickle=False).astype(np.int64)
        if labels.shape != (n,):
            raise StoreError(f"{self.path / LABELS}: {labels.shape[0]} labels for {n} images")
        self._rows = None                # None: identity; else physical row per view index
        self.labels = labels
        self.classes = m.get("classes")
        self._names = None

    # -- views ----------------------------------------------------------------------------------------
    def _view(self, rows: np.ndarray, labels: np.ndarray, classes) -> "Store":
        v = object.__new__(Store)
        v.path, v.manifest, v.images = self.path, self.manifest, self.images
        v._rows = np.asarray(rows, np.int64) if self._rows is None else self._rows[rows]
        v.labels = np.asarray(labels, np.int64)
        v.classes = classes
        v._names = None if self._names is None else [self._names[i] for i in rows]
        return v

    def subset(self, class_ids: Sequence[int]) -> "Store":
        """The images whose label is in `class_ids`, in store order, relabelled to positions in `class_ids`
        (pass them ascending to get the paper's remapping: rank of the original id)."""
        class_ids = [int(c) for c in class_ids]
        if len(set(class_ids)) != len(class_ids):
            raise ValueError("class_ids repeat")
        lut = np.full(max(int(self.labels.max(initial=0)), max(class_ids, default=0)) + 1, -1, np.int64)
        lut[class_ids] = np.arange(len(class_ids))
        new = lut[self.labels]
        rows = np.nonzero(new >= 0)[0]
        classes = [self.classes[c] for c in class_ids] if self.classes else None
        return self._view(rows, new[rows], classes)

    def select(self, entries: str | os.PathLike | Sequence[tuple[str, int]]) -> "Store":
        """The images named by a list (a `files.txt` path or (name, label) pairs), in the list's order, with
        the list's labels. Every name must be in the store."""
        if isinstance(entries, (str, os.PathLike)):
            from .sources import read_list

            entries = read_list(entries)
        pos = {n: i for i, n in enumerate(self.names)}
        missing = [n for n, _ in entries if n not in pos]
        if missing:
            raise StoreError(f"{len(missing)} listed image(s) are not in the store {self.path}, "
                             f"e.g. {missing[:3]}")
        rows = np.fromiter((pos[n] for n, _ in entries), np.int64, len(entries))
        return self._view(rows, np.fromiter((l for _, l in entries), np.int64, len(entries)), None)

    # -- reading --------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def _all_names_list(self) -> list[str]:
        text = (self.path / NAMES).read_text(encoding="utf-8", errors="surrogateescape")
        return [line[:line.rfind(" ")] for line in text.splitlines() if line]

    @property
    def names(self) -> list[str]:
        """Per image, its path in the source list (store order, or the view's order)."""
        if self._names is None:
            allnames = self._all_names_list()
            self._names = allnames if self._rows is None else [allnames[i] for i in self._rows]
        return self._names

    def physical(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, np.int64)
        return idx if self._rows is None else self._rows[idx]

    def read_into(self, idx: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Copy images `idx` (view indices) into `out` (uint8 len(idx)×C×H×W), one memcpy per contiguous run."""
        rows = self.physical(idx)
        n = len(rows)
        if n == 0:
            return out
        # split into runs of consecutive rows: a sequential reader (Caffe's cursor) is one or two runs
        breaks = np.nonzero(np.diff(rows) != 1)[0] + 1
        if len(breaks) > n // 4:  # scattered (shuffled order): one fancy-index gather
            np.take(self.images, rows, axis=0, out=out)
            return out
        starts = np.concatenate([[0], breaks])
        ends = np.concatenate([breaks, [n]])
        for s, e in zip(starts, ends):
            out[s:e] = self.images[rows[s]:rows[s] + (e - s)]
        return out

    def read(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 len(idx)×C×H×W copy, int64 labels) for view indices `idx`."""
        idx = np.asarray(idx, np.int64)
        out = np.empty((len(idx),) + self.shape, np.uint8)
        return self.read_into(idx, out), self.labels[idx]

    def __repr__(self) -> str:
        c, h, w = self.shape
        return f"Store({str(self.path)!r}, {len(self)} images {c}×{h}×{w})"


def compute_mean(images, log=None) -> np.ndarray:
    """Caffe's `compute_image_mean`: per-pixel sum accumulated image by image in float32 (the BlobProto's
    float field), then divided by the count in float32 — the same rounding, so bit-identical even past 2^24.

    `images`: a Store, or an iterable of C×H×W uint8 arrays. `log`: where a progress line (rate, ETA) goes."""
    if isinstance(images, Store):
        from ..progress import Progress

        store = images
        acc = np.zeros(store.shape, np.float32)
        step = 256
        bar = Progress(f"mean of {store.path}", len(store), log)
        for s in range(0, len(store), step):
            bar.update(s)
            batch, _ = store.read(np.arange(s, min(s + step, len(store))))
            for img in batch:
                np.add(acc, img, out=acc, dtype=np.float32)
        bar.update(len(store))
        n = len(store)
    else:
        acc, n = None, 0
        for img in images:
            if acc is None:
                acc = np.zeros(img.shape, np.float32)
            elif img.shape != acc.shape:
                raise ValueError(f"image {n} is {img.shape}, the first was {acc.shape} (compute_image_mean "
                                 "needs one size)")
            np.add(acc, img, out=acc, dtype=np.float32)
            n += 1
    if not n:
        raise ValueError("no images to average")
    return (acc / np.float32(n)).astype(np.float32)


# -- index lists: a dataset as (store, rows) ----------------------------------------------------------------------
# One store per image set (ILSVRC train, val) holds every image once; each dataset of the study is a small JSON
# file naming that store and the rows it reads, in its (shuffled) order, with its labels. A Data layer whose
# `source` is such a file reads exactly what a store of those images would hold, without a second copy.
INDEX_FORMAT, INDEX_VERSION = "repro-index", 1


def is_index(path: str | os.PathLike) -> bool:
    p = Path(path)
    if not p.is_file() or p.stat().st_size < 2:
        return False
    with open(p, "rb") as f:
        head = f.read(200)
    return head.lstrip().startswith(b"{") and INDEX_FORMAT.encode() in head


def write_index(path: str | os.PathLike, store: str | os.PathLike, rows: Sequence[int], labels: Sequence[int], *,
                classes: Sequence[str] | None = None, **info):
    """Write an index list atomically; `store` is recorded relative to the index file's folder when it can be,
    so the data folder can move as a whole."""
    path, store = Path(path), Path(store)
    try:
        ref = os.path.relpath(store.resolve(), path.parent.resolve())
    except ValueError:  # another drive (Windows)
        ref = str(store.resolve())
    body = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "store": ref, "count": len(rows),
            "classes": list(classes) if classes is not None else None, **info,
            "rows": [int(r) for r in rows], "labels": [int(lab) for lab in labels]}
    # format first so is_index sees it in the first bytes
    atomic_write_text(path, json.dumps(body, separators=(",", ":")) + "\n")


def open_index(path: str | os.PathLike) -> Store:
    """The Store view an index list names (rows of its store, in order, with its labels)."""
    path = Path(path)
    try:
        m = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{path}: not a valid index list ({e})") from None
    if m.get("format") != INDEX_FORMAT or m.get("version") != INDEX_VERSION:
        raise StoreError(f"{path}: format {m.get('format')!r} v{m.get('version')}, expected {INDEX_FORMAT!r} "
                         f"v{INDEX_VERSION}")
    store = Store(path.parent / m["store"])
    rows = np.asarray(m["rows"], np.int64)
    labels = np.asarray(m["labels"], np.int64)
    if rows.shape != labels.shape or len(rows) != m.get("count", len(rows)):
        raise StoreError(f"{path}: {len(rows)} rows, {len(labels)} labels, count {m.get('count')}")
    if len(rows) and (rows.min() < 0 or rows.max() >= len(store)):
        raise StoreError(f"{path}: rows outside 0..{len(store) - 1} of the store {store.path}")
    return store._view(rows, labels, m.get("classes"))
