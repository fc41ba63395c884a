"""Batches: sources that fill uint8 batches, a prefetcher with worker threads and pinned memory, the Loader.

The hot path has no per-image Python: a batch from a store is one or two memcpys out of the memory map into
a pinned buffer (a worker thread; numpy/torch copies release the GIL), then the consumer moves the uint8
batch to the device and applies Caffe's transform there with a few torch ops (`transform.Transformer`).

Order is Caffe's: a cursor over the records, read sequentially and wrapping at the end (DataLayer; the
database was shuffled once when built). `shuffle=True` (ImageData's `shuffle`, or a Loader option) draws a
fresh permutation per epoch instead, from the seed, so batch k is a pure function of (seed, k). That makes
the state small and exact: the number of batches consumed plus the transform's RNG state. Restoring it
resumes a killed run on the same images with the same crops.
"""
from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .caffedb import DatumDB, parse_datum
from .image import ImageDecodeError, read_image, to_chw
from .store import Store
from .transform import Transformer, TransformSpec


class Order:
    """Record index at stream position p: p % n in the stored order, or through a per-epoch permutation."""

    def __init__(self, n: int, shuffle: bool = False, seed: int = 0):
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self._perms: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def _perm(self, epoch: int) -> np.ndarray:
        with self._lock:
            p = self._perms.get(epoch)
            if p is None:
                p = np.random.RandomState([self.seed & 0xFFFFFFFF, epoch]).permutation(self.n)
                if len(self._perms) > 3:
                    self._perms.pop(min(self._perms))
                self._perms[epoch] = p
            return p

    def indices(self, start: int, count: int) -> np.ndarray:
        pos = np.arange(start, start + count, dtype=np.int64)
        j = pos % self.n
        if not self.shuffle:
            return j
        e = pos // self.n
        out = np.empty(count, np.int64)
        for ep in np.unique(e):  # at most two epochs per batch
            m = e == ep
            out[m] = self._perm(int(ep))[j[m]]
        return out


# ------------------------------------------------------------------------------------------------ sources
class StoreSource:
    """Batches from a Store (random access: any batch can be built by any worker)."""

    parallel = True

    def __init__(self, store: Store, order: Order):
        self.store, self.order = store, order
        self.item_shape, self.dtype = store.shape, np.uint8

    def __len__(self):
        return len(self.store)

    def fill(self, start: int, out: np.ndarray) -> np.ndarray:
        idx = self.order.indices(start, len(out))
        self.store.read_into(idx, out)
        return self.store.labels[idx]


class DatumDBSource:
    """Batches from a Caffe LMDB/LevelDB through a cursor, sequential and wrapping (DataLayer::Next)."""

    parallel = False

    def __init__(self, db: DatumDB, force_color: bool = False, force_gray: bool = False):
        self.db, self.fc, self.fg = db, force_color, force_gray
        self._it, self._pos = None, None
        first, _ = self._parse(next(db.items()))
        self.item_shape, self.dtype = first.shape, first.dtype

    def __len__(self):
        return len(self.db)

    def reset(self):
        self._it, self._pos = None, None

    @property
    def known_len(self):
        return self.db.known_len

    def _parse(self, kv):
        return parse_datum(kv[1], self.fc, self.fg, where=f"{self.db.path} record {kv[0]!r}")

    def fill(self, start: int, out: np.ndarray) -> np.ndarray:
        if self._it is None or self._pos != start:  # first call or a restore: seek (positions are absolute)
            self._it = self.db.items(start % len(self.db) if start else 0)
            self._pos = start
        labels = np.empty(len(out), np.int64)
        for i in range(len(out)):
            kv = next(self._it, None)
            if kv is None:  # Caffe: "Restarting data prefetching from start."
                self._it = self.db.items(0)
                kv = next(self._it)
            arr, labels[i] = self._parse(kv)
            if arr.shape != self.item_shape:
                raise ValueError(f"{self.db.path}: record {kv[0]!r} is {arr.shape}, the first was "
                                 f"{self.item_shape}; a batch needs one size")
            out[i] = arr
            self._pos += 1
        return labels


class ImageListSource:
    """ImageData: decode (and squash to new_height×new_width) the images of a list, in worker threads."""

    parallel = True

    def __init__(self, entries: Sequence[tuple[str, int]], root: str | os.PathLike | None, order: Order,
                 new_height: int = 0, new_width: int = 0, color: bool = True, pool: ThreadPoolExecutor | None = None):
        if not entries:
            raise ValueError("ImageData: the list is empty")
        self.entries, self.root, self.order = list(entries), root, order
        self.h, self.w, self.color, self.pool = new_height, new_width, color, pool
        first = self._load(0)
        self.item_shape, self.dtype = first.shape, np.uint8

    def __len__(self):
        return len(self.entries)

    def _load(self, i: int) -> np.ndarray:
        name = self.entries[i][0]
        path = Path(self.root) / name if self.root else Path(name)  # Caffe: root_folder + filename
        try:
            return to_chw(read_image(path, self.h, self.w, color=self.color))
        except ImageDecodeError as e:
            raise ImageDecodeError(f"ImageData: {path}: {e}") from None

    def fill(self, start: int, out: np.ndarray) -> np.ndarray:
        idx = self.order.indices(start, len(out))
        imgs = list(self.pool.map(self._load, idx)) if self.pool else [self._load(i) for i in idx]
        for k, img in enumerate(imgs):
            if img.shape != self.item_shape:
                raise ValueError(f"ImageData: {self.entries[idx[k]][0]} is {img.shape[1]}×{img.shape[2]}, the "
                                 f"first image was {self.item_shape[1]}×{self.item_shape[2]}; set new_height/"
                                 "new_width or use batch_size 1")
            out[k] = img
        return np.array([self.entries[i][1] for i in idx], np.int64)


# ------------------------------------------------------------------------------------------------ prefetch
class Prefetcher:
    """Keeps `depth` batches in flight on worker threads; batch k starts at stream position start + k*B.

    Buffers are allocated pinned (when CUDA is the target) through torch's caching host allocator, which
    does not hand a block out again until the copies that read it have finished.
    """

    def __init__(self, source, batch_size: int, start: int = 0, depth: int = 4, workers: int = 2,
                 pin: bool = False):
        self.source, self.B, self.start = source, batch_size, start
        self.depth, self.pin = max(1, depth), pin
        self._workers = workers if source.parallel else 1  # a cursor (DB) is read by one thread, in order
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="repro-data")
        self._q: deque = deque()
        self._next_submit = 0
        self.k = 0  # batches handed out

    def _make(self, k: int):
        shape = (self.B,) + tuple(self.source.item_shape)
        dtype = torch.uint8 if self.source.dtype == np.uint8 else torch.float32  # float_data Datums
        t = torch.empty(shape, dtype=dtype, pin_memory=self.pin)
        labels = self.source.fill(self.start + k * self.B, t.numpy())
        return t, torch.from_numpy(labels.astype(np.float32))

    def _top_up(self):
        while len(self._q) < self.depth:
            self._q.append(self._pool.submit(self._make, self._next_submit))
            self._next_submit += 1

    def next(self):
        self._top_up()
        fut = self._q.popleft()
        out = fut.result()
        self.k += 1
        self._top_up()
        return out

    def seek(self, k: int):
        """Restart the stream at batch k (drops what is in flight)."""
        while self._q:
            self._q.popleft().cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="repro-data")
        if hasattr(self.source, "reset"):
            self.source.reset()
        self.k = self._next_submit = k

    def close(self):
        while self._q:
            self._q.popleft().cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)


def pin_default(device: torch.device) -> bool:
    """Pinned host memory only helps a copy to a CUDA device (and needs one to exist)."""
    return device.type == "cuda" and torch.cuda.is_available()


# ------------------------------------------------------------------------------------------------ Loader
class CursorState:
    """Save/restore of a sequential reader's position, shared by Loader and DataLayerFeeder: the batches
    taken, the records skipped at the start (rand_skip), the seed and the transform's random stream. Each
    reader adds its own identity fields and checks them before ``_restore_cursor``."""

    def _cursor_state(self, **identity) -> dict:
        return {"batches": self._pf.k, "skip": self.skip, "seed": self.seed, **identity,
                "transform": self.transformer.state_dict()}

    def _restore_cursor(self, d: dict) -> None:
        self.skip = int(d["skip"])
        self._pf.start = self.skip
        self._pf.seek(int(d["batches"]))
        self.transformer.load_state_dict(d["transform"])


class Loader(CursorState):
    """Batches of a Store, transformed like Caffe's DataLayer, on `device`.

    Each `next(loader)` returns {"data": float32 N×C×crop×crop, "label": float32 (N,)} on `device`.
    `mean` is a (C, H, W) array or a .binaryproto path; `phase` "TRAIN" draws random crops/mirrors, "TEST"
    takes the centre crop. Reading wraps at the end of the store, as Caffe's cursor does; `shuffle=True`
    reorders each epoch. `state_dict()` / `load_state_dict()` save and restore the cursor and RNG.
    """

    def __init__(self, store: Store | str | os.PathLike, batch_size: int, *, phase: str = "TRAIN",
                 crop_size: int = 0, mirror: bool = False, mean: np.ndarray | str | os.PathLike | None = None,
                 mean_value: Sequence[float] = (), scale: float = 1.0, device: str | torch.device = "cpu",
                 shuffle: bool = False, seed: int = 0, rand_skip: int = 0, num_workers: int = 2,
                 prefetch: int = 4):
        self.store = store if isinstance(store, Store) else Store(store)
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if isinstance(mean, (str, os.PathLike)):
            from ..caffemodel import read_mean

            mean = read_mean(mean)
        self.device = torch.device(device)
        self.batch_size, self.seed = batch_size, seed
        spec = TransformSpec(crop_size=crop_size, mirror=mirror, scale=scale, mean=mean,
                             mean_value=tuple(mean_value))
        self.transformer = Transformer(spec, phase, seed=seed, device=self.device)
        self.transformer._check(*self.store.shape)
        self.order = Order(len(self.store), shuffle, seed)
        # Caffe: rand_skip skips `rng() % rand_skip` records once at start (several solvers would differ)
        self.skip = int(np.random.RandomState(seed).randint(rand_skip)) if rand_skip else 0
        self._pf = Prefetcher(StoreSource(self.store, self.order), batch_size, self.skip, prefetch,
                              num_workers, pin=pin_default(self.device))

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        return self.next_batch()

    def next_batch(self) -> dict[str, torch.Tensor]:
        u8, label = self._pf.next()
        data = self.transformer(u8)
        return {"data": data, "label": label.to(self.device, non_blocking=True)}

    @property
    def position(self) -> int:
        """Stream position of the next image (records consumed since the start, incl. rand_skip)."""
        return self.skip + self._pf.k * self.batch_size

    @property
    def epoch(self) -> float:
        return self.position / len(self.store)

    def __len__(self) -> int:
        """Batches per epoch (rounded up)."""
        return -(-len(self.store) // self.batch_size)

    def state_dict(self) -> dict:
        return self._cursor_state(shuffle=self.order.shuffle, count=len(self.store))

    def load_state_dict(self, d: dict):
        if d["count"] != len(self.store) or d["shuffle"] != self.order.shuffle or d["seed"] != self.seed:
            raise ValueError(f"loader state is for {d['count']} images (shuffle={d['shuffle']}, seed={d['seed']});"
                             f" this loader has {len(self.store)} (shuffle={self.order.shuffle}, seed={self.seed})")
        self._restore_cursor(d)

    def close(self):
        self._pf.close()

    def __del__(self):
        try:
            self._pf.close()
        except Exception:
            pass
