"""`convert_imageset` and `compute_image_mean`: decode + squash a dataset once, into our store or a Caffe DB.

Every image is read with `image.read_image` (Caffe's ReadImageToCVMat: BGR, squashed with INTER_LINEAR), in
parallel threads. Images that cannot be decoded (corrupt, truncated, empty) are collected, and the policy
applies once at the end: on_error="fail" raises one DataError listing them all, "skip" leaves them out and
writes `bad_files.txt`.

Store conversion is resumable: it works in `<out>.partial/`, writing image i of the (shuffled) list at row i
and checkpointing `progress.json` every chunk; a rerun with the same inputs continues where it stopped and
retries the images that were bad (so fixing a file and rerunning works). The finished folder is renamed into
place in one step.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from ..progress import Progress
from . import image
from .caffedb import DatumDB, DBWriter, datum_bytes, datum_key, db_kind, parse_datum
from .checks import BadFile, DataError, apply_policy, check_policy, format_report
from .sources import Entry
from .store import (
    BAD,
    FORMAT,
    IMAGES,
    LABELS,
    MANIFEST,
    NAMES,
    VERSION,
    Store,
    StoreError,
    atomic_save_npy,
    atomic_write_text,
    compute_mean,
    is_store,
)

CHUNK = 256  # images decoded per checkpoint


def shuffle_entries(entries: Sequence[Entry], seed: int) -> list[Entry]:
    """convert_imageset --shuffle: shuffle the list once (Caffe's own RNG is unseeded; ours is
    RandomState(seed), so a store is reproducible)."""
    perm = np.random.RandomState(seed).permutation(len(entries))
    return [entries[i] for i in perm]


def decoder_name() -> str:
    if image.default_backend() == "cv2":
        return f"opencv {image.cv2.__version__}"
    import PIL

    return f"pillow {PIL.__version__} + repro resize_linear"


def _loader(root: Path, height: int, width: int, color: bool):
    def load(entry: Entry):
        path = root / entry[0]
        try:
            return image.to_chw(image.read_image(path, height, width, color=color))
        except (image.ImageDecodeError, ValueError) as e:
            return BadFile(str(path), str(e))
        except MemoryError:
            return BadFile(str(path), "image too large to decode")
    return load


def _job_id(entries, root, height, width, color) -> str:
    h = hashlib.sha256(json.dumps([str(Path(root).resolve()), height, width, color]).encode())
    for n, l in entries:
        h.update(f"{n}\0{l}\n".encode("utf-8", errors="surrogateescape"))
    return h.hexdigest()


def convert_to_store(entries: Sequence[Entry], root: str | os.PathLike, out: str | os.PathLike, *,
                     height: int = 0, width: int = 0, gray: bool = False, shuffle: bool = False, seed: int = 0,
                     classes: Sequence[str] | None = None, on_error: str = "fail", num_workers: int | None = None,
                     source: str = "", log=None, known_bad: Sequence[BadFile] = ()) -> Path:
    """Decode + squash `entries` (paths relative to `root`) into a store at `out`; returns `out`.

    height/width 0 keep the decoded size, which must then be the same for every image (a store holds one
    size). Raises FileExistsError when `out` is already a complete store.
    """
    check_policy(on_error)
    root, out = Path(root), Path(out)
    if is_store(out):
        raise FileExistsError(f"{out} is already a complete store; remove it to rebuild")
    if out.exists():
        raise FileExistsError(f"{out} exists and is not a store; refusing to overwrite it")
    if not entries:
        raise ValueError("nothing to convert: the list is empty")
    entries = shuffle_entries(entries, seed) if shuffle else list(entries)
    color = not gray
    work = Path(f"{out}.partial")
    job = _job_id(entries, root, height, width, color)
    load = _loader(root, height, width, color)
    workers = num_workers or (os.cpu_count() or 1)  # decoding is GIL-free (libjpeg / OpenCV): every core
    say = log or (lambda msg: None)

    progress = _read_progress(work)
    if progress is not None and progress.get("job") != job:
        say(f"{work} is from different inputs or settings; starting over")
        shutil.rmtree(work)
        progress = None
    with ThreadPoolExecutor(workers) as pool:
        if progress is None:
            if height and width:
                shape = (1 if gray else 3, height, width)
            else:  # the store's size is the first good image's; every other image must match it
                tried = []
                for e in entries:
                    res = load(e)
                    if not isinstance(res, BadFile):
                        shape = tuple(res.shape)
                        break
                    tried.append(res)
                else:
                    raise DataError(f"converting {source or root}: no image could be decoded", tried)
            work.mkdir(parents=True)
            with open(work / IMAGES, "wb") as f:
                f.truncate(len(entries) * int(np.prod(shape)))  # sparse until written
            progress = {"job": job, "shape": list(shape), "next": 0, "bad": {}, "started": time.time()}
            _write_progress(work, progress)
        shape = tuple(progress["shape"])
        mm = np.memmap(work / IMAGES, dtype=np.uint8, mode="r+", shape=(len(entries),) + shape)
        bad: dict[str, list[str]] = progress["bad"]

        def put(i: int, res):
            if isinstance(res, BadFile):
                bad[str(i)] = [res.path, res.reason]
            elif res.shape != shape:
                bad[str(i)] = [str(root / entries[i][0]),
                               f"size {res.shape[1]}×{res.shape[2]} differs from the store's {shape[1]}×{shape[2]} "
                               "(give --resize_height/--resize_width)"]
            else:
                mm[i] = res  # noqa: F821  (a closure over mm; `del mm` below closes the map)
                bad.pop(str(i), None)

        retry = sorted(int(i) for i in bad)  # rerun after fixing files: try the bad ones again
        for i, res in zip(retry, pool.map(load, [entries[i] for i in retry])):
            put(i, res)
        start = progress["next"]
        if start:
            say(f"resuming at image {start} of {len(entries)}")
        bar = Progress(f"converting {source or root}", len(entries), say, done=start)
        for s in range(start, len(entries), CHUNK):
            idx = range(s, min(s + CHUNK, len(entries)))
            for i, res in zip(idx, pool.map(load, [entries[i] for i in idx])):
                put(i, res)
            mm.flush()
            progress["next"] = idx[-1] + 1
            _write_progress(work, progress)
            bar.update(progress["next"])
        mm.flush()
        del mm
        _write_progress(work, progress)

    # known_bad: what indexing already left out (missing or 0-byte files) belongs in the same report and count
    report = list(known_bad) + [BadFile(*bad[k]) for k in sorted(bad, key=int)]
    apply_policy(f"converting {source or root}", report, on_error)  # "fail": raises, .partial kept
    keep = np.array([i for i in range(len(entries)) if str(i) not in bad], np.int64)
    _compact(work / IMAGES, keep, int(np.prod(shape)))
    kept = [entries[i] for i in keep]
    atomic_save_npy(work / LABELS, np.array([l for _, l in kept], np.int32))
    atomic_write_text(work / NAMES, "".join(f"{n} {l}\n" for n, l in kept))
    if report:
        atomic_write_text(work / BAD, format_report(report))
    manifest = {"format": FORMAT, "version": VERSION, "count": len(kept), "channels": shape[0],
                "height": shape[1], "width": shape[2], "dtype": "uint8", "layout": "NCHW", "color": "BGR"
                if color else "GRAY", "classes": list(classes) if classes is not None else None,
                "source": source or str(root), "resize": [height, width], "shuffle": shuffle, "seed": seed,
                "bad": len(report), "decoder": decoder_name()}
    atomic_write_text(work / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    (work / "progress.json").unlink(missing_ok=True)
    os.replace(work, out)
    say(f"wrote {len(kept)} images to {out}")
    return out


def _compact(path: Path, keep: np.ndarray, row: int):
    """Move the kept rows down over the skipped ones (in place, in order), then truncate."""
    n_before = path.stat().st_size // row if row else 0
    if len(keep) == n_before and (keep == np.arange(n_before)).all():
        return
    mm = np.memmap(path, dtype=np.uint8, mode="r+", shape=(n_before, row))
    for dst, src in enumerate(keep):
        if dst != src:
            mm[dst] = mm[src]
    mm.flush()
    del mm
    with open(path, "r+b") as f:
        f.truncate(len(keep) * row)


def _read_progress(work: Path):
    p = work / "progress.json"
    if not p.is_file():
        if work.exists():
            shutil.rmtree(work)  # a .partial without progress is from a crash before the first checkpoint
        return None
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        # written atomically, so this is damage from outside: say which file, keep the work for inspection
        raise StoreError(f"{p}: not valid JSON ({e}); remove {work} to start the conversion over") from None


def _write_progress(work: Path, progress: dict):
    atomic_write_text(work / "progress.json", json.dumps(progress))


def convert_to_db(entries: Sequence[Entry], root: str | os.PathLike, out: str | os.PathLike, *,
                  backend: str = "lmdb", height: int = 0, width: int = 0, gray: bool = False,
                  shuffle: bool = False, seed: int = 0, check_size: bool = False, on_error: str = "fail",
                  num_workers: int | None = None, log=None) -> Path:
    """convert_imageset into a Caffe LMDB/LevelDB of raw Datum records: keys `%08d_<name>` with the line's
    index in the (shuffled) list (a skipped line leaves a gap, as in Caffe), values byte-identical to
    Caffe's. Built in `<out>.partial` and renamed when complete."""
    check_policy(on_error)
    root, out = Path(root), Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists")
    entries = shuffle_entries(entries, seed) if shuffle else list(entries)
    work = Path(f"{out}.partial")
    if work.exists():
        shutil.rmtree(work)
    load = _loader(root, height, width, not gray)
    say = log or (lambda msg: None)
    bad, size, count = [], None, 0
    writer = DBWriter(work, backend)
    try:
        with ThreadPoolExecutor(num_workers or min(8, os.cpu_count() or 1)) as pool:
            for s in range(0, len(entries), CHUNK):
                idx = range(s, min(s + CHUNK, len(entries)))
                for i, res in zip(idx, pool.map(load, [entries[i] for i in idx])):
                    if isinstance(res, BadFile):
                        bad.append(res)
                        continue
                    if check_size:  # Caffe: --check_size, every datum the size of the first
                        size = size or res.shape
                        if res.shape != size:
                            bad.append(BadFile(str(root / entries[i][0]), f"size {res.shape} differs from {size}"))
                            continue
                    writer.put(datum_key(i, entries[i][0]), datum_bytes(res, entries[i][1]))
                    count += 1
                say(f"processed {idx[-1] + 1} of {len(entries)} files")
        writer.close()
        apply_policy(f"converting {root}", bad, on_error)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    os.replace(work, out)
    return out


def convert_db_to_store(db_path: str | os.PathLike, out: str | os.PathLike, *, log=None) -> Path:
    """Copy an existing Caffe LMDB/LevelDB (raw or encoded Datums, one size) into a store, in key order.
    Names are the keys without convert_imageset's `%08d_` prefix."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists")
    work = Path(f"{out}.partial")
    if work.exists():
        shutil.rmtree(work)
    with DatumDB(db_path) as db:
        n = len(db)
        names, labels, mm, shape = [], np.empty(n, np.int32), None, None
        for i, (k, v) in enumerate(db.items()):
            arr, label = parse_datum(v, where=f"{db_path} record {k!r}")
            if arr.dtype != np.uint8:
                raise ValueError(f"{db_path}: record {k!r} holds float_data; a store holds uint8 images")
            if mm is None:
                shape = arr.shape
                work.mkdir(parents=True)
                mm = np.memmap(work / IMAGES, dtype=np.uint8, mode="w+", shape=(n,) + shape)
            elif arr.shape != shape:
                shutil.rmtree(work)
                raise ValueError(f"{db_path}: record {k!r} is {arr.shape}, the first was {shape}")
            mm[i] = arr
            labels[i] = label
            key = k.decode("utf-8", errors="surrogateescape")
            names.append(key[9:] if len(key) > 9 and key[8] == "_" and key[:8].isdigit() else key)
            if log and i % 10000 == 0:
                log(f"copied {i} of {n} records")
        mm.flush()
        del mm
    atomic_save_npy(work / LABELS, labels)
    atomic_write_text(work / NAMES, "".join(f"{a} {b}\n" for a, b in zip(names, labels)))
    manifest = {"format": FORMAT, "version": VERSION, "count": n, "channels": shape[0], "height": shape[1],
                "width": shape[2], "dtype": "uint8", "layout": "NCHW", "color": "BGR", "classes": None,
                "source": str(db_path), "resize": [0, 0], "shuffle": False, "seed": 0, "bad": 0,
                "decoder": f"copied from {db_kind(db_path)}"}
    atomic_write_text(work / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    os.replace(work, out)
    return out


def compute_image_mean(source: str | os.PathLike, out: str | os.PathLike | None = None, log=None) -> np.ndarray:
    """compute_image_mean over a store or a Caffe LMDB/LevelDB; writes a Caffe binaryproto (1×C×H×W) to
    `out` when given. Returns the (C, H, W) float32 mean."""
    source = Path(source)
    if is_store(source):
        mean = compute_mean(Store(source), log=log)
    elif db_kind(source):
        with DatumDB(source) as db:
            # Caffe's tool decodes encoded Datums natively and sums data (uint8) in float
            mean = compute_mean(parse_datum(v, where=f"{source} record {k!r}")[0] for k, v in db.items())
    else:
        raise ValueError(f"{source} is neither a store (manifest.json) nor a Caffe LMDB/LevelDB")
    if out is not None:
        from ..caffemodel import write_mean

        write_mean(out, mean)
    return mean
