"""Data and ImageData layers inside `repro.Net`: what Caffe's DataLayer / ImageDataLayer put in their tops.

`repro.Net` calls `DataLayerFeeder(layer_param, phase, base_dir).next_batch()` when a net with a data layer
is run without inputs. The feeder:

* finds the source by looking at the path (`data_param.backend` is not trusted): an LMDB folder
  (`data.mdb`), a LevelDB folder (`CURRENT`), our store (`manifest.json`), or an index list (a small JSON
  file naming a store and the rows of one dataset, written by tools/prepare_imagenet.py); for ImageData, a list file
  plus `root_folder`, squashed to `new_height`×`new_width` when set, gray when `is_color: false`;
* resolves a relative source, mean_file and root_folder against the working directory first, then `base_dir`;
* reads sequentially and wraps around (Caffe's cursor; DataLayer::Next), starting after `rand_skip`'s random
  skip; ImageData with `shuffle: true` reshuffles every epoch with its own RNG;
* applies `transform_param` exactly as DataTransformer::Transform (see transform.py) and returns
  {top0: float32 N×C×H×W, top1: float32 (N,) labels} — labels are floats, as Caffe's blobs hold them.

Randomness (crop/mirror, shuffle, skip) derives from `seed`; by default torch.initial_seed(), so a Solver
that seeds torch with its `random_seed` makes the data reproducible too.
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..errors import ReproError
from .caffedb import DatumDB, db_kind
from .loader import CursorState, DatumDBSource, ImageListSource, Order, Prefetcher, StoreSource, pin_default
from .sources import read_list
from .store import Store, is_index, is_store, open_index
from .transform import CaffeRand, Transformer, TransformSpec


class DataLayerError(ReproError):
    """A data layer whose source, settings or data cannot work; the message names the layer."""


def resolve_path(value: str, base_dir: str | os.PathLike | None, what: str, layer: str = "") -> Path:
    """A relative path: the working directory first, then base_dir. Raises naming both places."""
    p = Path(value)
    if p.is_absolute():
        if p.exists():
            return p
        tried = [p]
    else:
        tried = [Path.cwd() / p] + ([Path(base_dir) / p] if base_dir is not None else [])
        for t in tried:
            if t.exists():
                return t
    where = f"layer {layer!r}: " if layer else ""
    raise DataLayerError(f"{where}{what} {value!r} not found (looked at {', '.join(map(str, tried))})")


SORTED_CHECK = 4096  # labels looked at by warn_if_sorted


def label_runs_sorted(labels) -> bool:
    """True when `labels` come in long runs of one class (a class-sorted list, e.g. convert_imageset --folder
    without shuffling): fewer than one label change per 4 records. A shuffled list of K >= 2 classes changes
    label about every K/(K-1) records, so this only fires on sorted or nearly sorted data."""
    labels = np.asarray(labels)
    if len(labels) < 32 or len(np.unique(labels)) < 2:
        return False
    runs = 1 + int(np.count_nonzero(np.diff(labels)))
    return runs * 4 <= len(labels)


def warn_if_sorted(labels, what: str):
    """Caffe's DataLayer reads records in order: a TRAIN source sorted by label trains on one class per batch
    for thousands of iterations. Warn once (per source) instead of silently wasting the run."""
    if label_runs_sorted(labels):
        n = len(labels)
        runs = 1 + int(np.count_nonzero(np.diff(np.asarray(labels))))
        warnings.warn(f"{what}: training records are sorted by label ({runs} label runs in the first {n}); "
                      "every batch would hold one class. Rebuild it shuffled (convert_imageset shuffles by "
                      "default; prepare_imagenet writes shuffled index lists)", stacklevel=4)


def _derive(seed: int, stream: int) -> int:
    # independent 32-bit seeds for the transform, shuffle and skip streams of one layer
    return int(np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, stream]).generate_state(1)[0])


class DataLayerFeeder(CursorState):
    """Feeds one Data / ImageData layer. `next_batch()` -> {top name: torch.Tensor}."""

    def __init__(self, layer_param, phase: str, base_dir: str | os.PathLike | None = None, *,
                 seed: int | None = None, device: str | torch.device = "cpu", num_workers: int = 2,
                 caffe_seeds: dict | None = None):
        self.name, self.type = layer_param.name, layer_param.type
        self.tops = list(layer_param.top)
        if phase not in ("TRAIN", "TEST"):
            raise DataLayerError(f"layer {self.name!r}: phase must be 'TRAIN' or 'TEST', got {phase!r}")
        if not self.tops:
            raise DataLayerError(f"layer {self.name!r} ({self.type}) has no top")
        self.phase, self.device = phase, torch.device(device)
        self.seed = int(torch.initial_seed() if seed is None else seed)
        self.base_dir = base_dir
        self._pool = None
        try:
            source, batch_size, rand_skip, prefetch = self._open_source(layer_param, num_workers)
            tp = layer_param.transform_param
            spec = TransformSpec.from_param(
                tp, resolve=lambda m: resolve_path(m, base_dir, "transform_param.mean_file", self.name))
            # caffe_seeds: what this layer drew from Caffe's generator at set-up in a seeded run (repro.net), so
            # crops and mirrors are Caffe's; otherwise a stream derived from `seed`.
            cs = caffe_seeds or {}
            tseed = cs["transform"] if "transform" in cs else _derive(self.seed, 0)
            self.transformer = Transformer(spec, phase, seed=tseed, device=self.device)
            self.transformer._check(*source.item_shape)
        except ValueError as e:
            if isinstance(e, DataLayerError):
                raise
            raise DataLayerError(f"layer {self.name!r} ({self.type}): {e}") from None
        if batch_size <= 0:
            raise DataLayerError(f"layer {self.name!r}: batch_size must be positive")
        self.batch_size, self.source = batch_size, source
        # Caffe: skip `caffe_rng_rand() % rand_skip` records once, at setup
        self.skip = int(CaffeRand(_derive(self.seed, 2)).raw(1)[0] % rand_skip) if rand_skip else 0
        if "skip" in cs:
            self.skip = int(cs["skip"])
        self._pf = Prefetcher(source, batch_size, self.skip, depth=prefetch, workers=num_workers,
                              pin=pin_default(self.device))

    def _open_source(self, lp, num_workers):
        if self.type == "Data":
            dp = lp.data_param
            path = resolve_path(dp.source, self.base_dir, "data_param.source", self.name)
            if is_store(path) or is_index(path):
                store = Store(path) if is_store(path) else open_index(path)
                source = StoreSource(store, Order(len(store)))
                if self.phase == "TRAIN":
                    warn_if_sorted(store.labels[:SORTED_CHECK], f"layer {self.name!r}: data_param.source {path}")
            elif db_kind(path):
                tp = lp.transform_param
                source = DatumDBSource(DatumDB(path), tp.force_color, tp.force_gray)
            else:
                raise DataLayerError(f"layer {self.name!r}: data_param.source {str(path)!r} is neither an LMDB "
                                     "folder (data.mdb), a LevelDB folder (CURRENT), a store (manifest.json) nor an "
                                     "index list (prepare_imagenet)")
            return source, int(dp.batch_size), int(dp.rand_skip), max(1, int(dp.prefetch))
        if self.type == "ImageData":
            ip = lp.image_data_param
            lst = resolve_path(ip.source, self.base_dir, "image_data_param.source", self.name)
            entries = read_list(lst)
            root = self._image_root(ip.root_folder, entries)
            # indexing checks every listed file now, not hours into the run
            entries = read_list(lst, root=root)
            if (ip.new_height > 0) != (ip.new_width > 0):  # Caffe: CHECK both or neither
                raise DataLayerError(f"layer {self.name!r}: set both new_height and new_width, or neither")
            self._pool = ThreadPoolExecutor(max(1, num_workers), thread_name_prefix="repro-imagedata")
            order = Order(len(entries), bool(ip.shuffle), _derive(self.seed, 1))
            source = ImageListSource(entries, root, order, int(ip.new_height), int(ip.new_width),
                                     bool(ip.is_color), self._pool)
            return source, int(ip.batch_size), int(ip.rand_skip), 4
        raise DataLayerError(f"layer {self.name!r}: type {self.type!r} is not a data layer (Data, ImageData)")

    def _image_root(self, root_folder: str, entries) -> Path:
        # Caffe prepends root_folder to each listed name; a relative one is tried from the working directory,
        # then from base_dir, and the first place holding the first listed image wins.
        cands = [Path(root_folder)] if Path(root_folder).is_absolute() else \
            [Path.cwd() / root_folder] + ([Path(self.base_dir) / root_folder] if self.base_dir is not None else [])
        if entries:
            for c in cands:
                if (c / entries[0][0]).exists():
                    return c
        return cands[0]

    def next_batch(self) -> dict[str, torch.Tensor]:
        """The next batch: {data top: float32 N×C×H×W, label top: float32 (N,)} on the feeder's device."""
        u8, label = self._pf.next()
        out = {self.tops[0]: self.transformer(u8)}
        if len(self.tops) > 1:
            out[self.tops[1]] = label.to(self.device, non_blocking=True)
        return out

    def __len__(self) -> int:
        return len(self.source)

    @property
    def position(self) -> int:
        """Records consumed (incl. the initial skip): the cursor is at position % len(self)."""
        return self.skip + self._pf.k * self.batch_size

    def _count(self):
        # a LevelDB is not counted just to save a state (counting reads the whole database)
        return self.source.known_len if isinstance(self.source, DatumDBSource) else len(self.source)

    def state_dict(self) -> dict:
        return self._cursor_state(count=self._count())

    def load_state_dict(self, d: dict):
        if "skip" not in d:  # a DeviceFeed's state of this layer (a run resumed on another device)
            if d.get("batch_size", self.batch_size) != self.batch_size:
                raise DataLayerError(f"layer {self.name!r}: state is for batches of {d['batch_size']}, this "
                                     f"layer reads {self.batch_size}")
            d = {**d, "skip": d["start"], "seed": self.seed}
        count = self._count()
        if (None not in (d["count"], count) and d["count"] != count) or d["seed"] != self.seed:
            raise DataLayerError(f"layer {self.name!r}: state is for {d['count']} records with seed {d['seed']}, "
                                 f"this source has {count} (seed {self.seed})")
        self._restore_cursor(d)

    def close(self):
        self._pf.close()
        if isinstance(self.source, DatumDBSource):
            self.source.db.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
