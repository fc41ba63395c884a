"""Batches from a store, ready on the device one step ahead: :class:`DeviceFeed`.

The same stream of images, crops and mirrors as Caffe's DataLayer over our store (``repro.data.loader``):
a cursor over the records (wrapping; or a per-epoch permutation with ``shuffle``), ``DataTransformer``'s
draws from Caffe's MT19937 (``repro.data.transform``), crop / mirror / mean subtraction applied on the device
to the uint8 batch. What this adds for a GPU:

* worker threads copy each uint8 batch from the memory-mapped store into pinned host memory (numpy copies
  release the GIL; no per-image Python for sequential reads);
* the host-to-device copy and the transform run on a side CUDA stream while the previous step computes,
  one batch ahead (``wait_stream`` + ``record_stream`` hand the tensors to the compute stream safely);
* ``shard=(rank, world)`` gives rank ``rank`` its slice of every *global* batch: the global batch (images,
  draws) is exactly the one a single process would read, so data-parallel training sees the same data at
  any GPU count (repro.engine.ddp).

``state_dict()`` / ``load_state_dict()`` resume at the exact batch with the exact draws.
``DeviceFeed.from_layer(layer_param, ...)`` reads the store a Net's Data layer names with the seeds the
Net's own feeder would use, so a Solver fed by it (``train_iteration``) reproduces ``Solver.step`` bit for bit
(tests/test_fast.py).
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..errors import ReproError
from .loader import Order
from .store import Store
from .transform import Transformer, TransformSpec


class FeedError(ReproError):
    """A feed that cannot be built (a source that is not a store, a batch that does not split over ranks)."""


class DeviceFeed:
    """Iterator of {"data": float32 N x C x crop x crop, "label": float32 (N,)} on ``device``.

    store: a :class:`repro.data.store.Store` (or its path). batch_size: the *global* batch; with
    ``shard=(rank, world)`` each rank gets batch_size / world images of it. transform: a TransformSpec
    (crop, mirror, mean, scale). phase: "TRAIN" (random crops/mirrors) or "TEST". seed: the transform's
    MT19937 seed. start: stream position of the first image (Caffe's rand_skip). shuffle / order_seed: a
    fresh permutation per epoch. workers / depth: reader threads and batches in flight (default
    max(3, workers)).
    """

    def __init__(self, store, batch_size: int, transform: TransformSpec | None = None, *, phase: str = "TRAIN",
                 seed: int = 0, device="cpu", shard: tuple[int, int] = (0, 1), start: int = 0,
                 shuffle: bool = False, order_seed: int = 0, workers: int = 4, depth: int | None = None,
                 transformer: Transformer | None = None):
        self.store = store if isinstance(store, Store) else Store(store)
        rank, world = (int(v) for v in shard)
        if batch_size <= 0 or world <= 0 or not 0 <= rank < world:
            raise FeedError(f"batch_size {batch_size}, shard {shard}: need batch_size > 0 and 0 <= rank < world")
        if batch_size % world:
            raise FeedError(f"the global batch {batch_size} does not split evenly over {world} processes; "
                            f"use a batch size divisible by the process count (Caffe's batches are equal)")
        self.device = torch.device(device)
        self.batch_size, self.rank, self.world = int(batch_size), rank, world
        self.local = self.batch_size // world
        self.start = int(start)
        if transformer is None:
            transformer = Transformer(transform or TransformSpec(), phase, seed=seed, device=self.device)
        self.transformer = transformer
        self.transformer._check(*self.store.shape)
        self.order = Order(len(self.store), shuffle, order_seed)
        self.pin = self.device.type == "cuda" and torch.cuda.is_available()
        self.stream = torch.cuda.Stream(self.device) if self.pin else None
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="repro-feed")
        # batches in flight: one per reader thread (a batch is one thread's memcpy), at least 3
        self.depth = max(1, depth) if depth is not None else max(3, workers)
        self._q: deque = deque()      # (future of host batch, draws, rng state before the draw)
        self._staged = None           # (batch on device, rng state) copied ahead on the side stream
        self._submitted = 0           # global batches whose draws were taken
        self.k = 0                    # batches handed out

    # ------------------------------------------------------------------------------------------ reading

    def _read(self, k: int):
        """Host side of batch k: this rank's images (pinned uint8) and labels."""
        idx = self.order.indices(self.start + k * self.batch_size + self.rank * self.local, self.local)
        shape = (self.local,) + tuple(self.store.shape)
        u8 = torch.empty(shape, dtype=torch.uint8, pin_memory=self.pin)
        self.store.read_into(idx, u8.numpy())
        return u8, torch.from_numpy(self.store.labels[idx].astype(np.float32))

    def _submit(self):
        while len(self._q) < self.depth:
            k = self._submitted
            state = self.transformer.state_dict()
            _, h, w = self.store.shape
            # Caffe draws crops/mirrors image by image over the whole global batch; keep this rank's rows.
            h_off, w_off, mirror = self.transformer.draw(self.batch_size, h, w)
            s = slice(self.rank * self.local, (self.rank + 1) * self.local)
            draws = (h_off[s].copy(), w_off[s].copy(), mirror[s].copy())
            self._q.append((self._pool.submit(self._read, k), draws, state))
            self._submitted += 1

    def _to_device(self, u8, label, draws):
        data = self.transformer(u8, offsets=draws)
        return {"data": data, "label": label.to(self.device, non_blocking=True)}

    def _stage(self):
        self._submit()
        fut, draws, state = self._q.popleft()
        u8, label = fut.result()
        if self.stream is None:
            batch = self._to_device(u8, label, draws)
        else:
            with torch.cuda.stream(self.stream):
                batch = self._to_device(u8, label, draws)
        self._staged = (batch, state)
        self._submit()

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return self.next_batch()

    def next_batch(self) -> dict:
        if self._staged is None:
            self._stage()
        batch, _ = self._staged
        if self.stream is not None:
            cur = torch.cuda.current_stream(self.device)
            cur.wait_stream(self.stream)
            for t in batch.values():
                t.record_stream(cur)  # the side stream's allocator must not reuse them before cur is done
        self.k += 1
        self._stage()  # the next batch's copy and transform overlap the caller's step
        return batch

    # ------------------------------------------------------------------------------------------ state

    @property
    def position(self) -> int:
        """Global stream position of the next batch's first image."""
        return self.start + self.k * self.batch_size

    def state_dict(self) -> dict:
        # the draws of the next batch to hand out: it may already be staged or queued
        if self._staged is not None:
            rand = self._staged[1]
        else:
            rand = self._q[0][2] if self._q else self.transformer.state_dict()
        return {"batches": self.k, "start": self.start, "count": len(self.store), "batch_size": self.batch_size,
                "transform": rand}

    def load_state_dict(self, d: dict) -> None:
        """Restore a state of this feed, or of the Net's own reader of the same layer
        (repro.data.layer.DataLayerFeeder: its "skip" is our "start"), so a run resumes on another device."""
        batch = d.get("batch_size", self.batch_size)
        if (d["count"] is not None and d["count"] != len(self.store)) or batch != self.batch_size:
            raise FeedError(f"feed state is for {d['count']} images in global batches of {batch}; this "
                            f"feed has {len(self.store)} in batches of {self.batch_size}")
        self._drain()
        start = d["start"] if "start" in d else d["skip"]
        self.start, self.k, self._submitted = int(start), int(d["batches"]), int(d["batches"])
        self.transformer.load_state_dict(d["transform"])

    def _drain(self):
        while self._q:
            self._q.popleft()[0].cancel()
        self._staged = None

    def close(self):
        self._drain()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # ------------------------------------------------------------------------------------------ from a net

    @classmethod
    def from_layer(cls, layer_param, phase: str = "TRAIN", base_dir=None, *, seed: int | None = None,
                   device="cpu", shard=(0, 1), batch_size: int | None = None, **kw) -> "DeviceFeed":
        """The feed of a Data layer over a store, with the seeds ``repro.data.layer.DataLayerFeeder`` uses
        (``seed`` default: torch.initial_seed(), as a Net's feeder): same records, crops and mirrors."""
        from .layer import DataLayerFeeder

        feeder = DataLayerFeeder(layer_param, phase, base_dir, seed=seed)
        try:
            return cls.from_feeder(feeder, device=device, shard=shard, batch_size=batch_size, **kw)
        finally:
            feeder.close()

    @classmethod
    def from_feeder(cls, feeder, *, device="cpu", shard=(0, 1), batch_size: int | None = None,
                    **kw) -> "DeviceFeed":
        """The same stream as a Net's Data layer reader (``net.feeder(name)``) from its current position: same
        records, crops and mirrors, read on ``device``. The reader itself is left as it was."""
        from .loader import StoreSource

        if not isinstance(feeder.source, StoreSource):
            raise FeedError(f"layer {feeder.name!r}: DeviceFeed reads our store; "
                            f"{type(feeder.source).__name__} sources are read by the Net's own feeder "
                            f"(convert an LMDB with tools/convert_imageset.py / convert_db_to_store)")
        t = Transformer(feeder.transformer.spec, feeder.phase, seed=0, device=device)
        t.load_state_dict(feeder.transformer.state_dict())
        return cls(feeder.source.store, batch_size or feeder.batch_size, phase=feeder.phase, device=device,
                   shard=shard, start=feeder.position, shuffle=feeder.source.order.shuffle,
                   order_seed=feeder.source.order.seed, transformer=t, **kw)


def default_workers() -> int:
    """Reader threads: enough to keep memcpy ahead of a GPU, without oversubscribing small machines."""
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def write_store(path, images, labels, names=None, classes=None, source: str = "synthetic") -> Store:
    """Write uint8 N x C x H x W ``images`` (BGR; an array, or an iterable of such chunks whose counts add up
    to len(labels)) with int ``labels`` as a store folder (repro.data.store's layout), atomically: built
    beside ``path`` and renamed. For synthetic data (benchmarks, tests)."""
    import json
    import shutil
    from pathlib import Path

    from .store import FORMAT, IMAGES, LABELS, MANIFEST, NAMES, VERSION

    path = Path(path)
    labels = np.asarray(labels, np.int32)
    chunks = [images] if isinstance(images, np.ndarray) else images
    work = path.with_name(path.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    n, shape = 0, None
    with open(work / IMAGES, "wb") as f:
        for chunk in chunks:
            chunk = np.ascontiguousarray(chunk, dtype=np.uint8)
            if chunk.ndim != 4 or (shape is not None and chunk.shape[1:] != shape):
                raise FeedError(f"write_store: image chunks must be N x C x H x W of one size, got {chunk.shape}")
            shape = chunk.shape[1:]
            chunk.tofile(f)
            n += len(chunk)
    if shape is None or labels.shape != (n,):
        raise FeedError(f"write_store: {n} images but labels of shape {labels.shape}")
    c, h, w = shape
    names = names or [f"img_{i:07d}.png" for i in range(n)]
    np.save(work / LABELS, labels)
    (work / NAMES).write_text("".join(f"{a} {b}\n" for a, b in zip(names, labels)))
    manifest = {"format": FORMAT, "version": VERSION, "count": n, "channels": c, "height": h, "width": w,
                "dtype": "uint8", "layout": "NCHW", "color": "BGR", "classes": classes, "source": source,
                "decoder": "none (arrays)"}
    (work / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")  # last: marks it complete
    os.replace(work, path)
    return Store(path)
