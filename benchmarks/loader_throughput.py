"""Images/s of our loader against a plain torchvision ImageFolder + PIL loader doing the same transform.

Both produce CaffeNet training batches: squash to 256×256, random 227 crop, random mirror, subtract the
256×256 mean image. The baseline decodes and resizes every JPEG every epoch (torchvision ImageFolder + PIL in a
DataLoader with worker processes); ours reads the store written once by convert_imageset (the one-time
conversion is timed and printed separately) and crops/mirrors/subtracts on the device with torch ops.

  python -m benchmarks.loader_throughput --quick                  # generated JPEGs, < 1 minute on CPU
  python -m benchmarks.loader_throughput --folder ILSVRC2012/train --limit 5000 --device cuda

Prints `ratio_loader: X` = our images/s ÷ baseline images/s, measured in the same run.
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from repro.data.caffedb import DatumDB, parse_datum
from repro.data.convert import convert_to_db, convert_to_store
from repro.data.loader import Loader
from repro.data.sources import index_folder
from repro.data.store import Store, compute_mean

from .common import default_device, pick_device


def make_jpegs(root: Path, n: int, classes: int = 4, seed: int = 0):
    """n photo-like JPEGs (smooth colour fields + noise, 500×375 and 375×500) in root/<class>/."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 24, (500, 500, 3), dtype=np.uint8)
    for i in range(n):
        h, w = (375, 500) if i % 2 else (500, 375)
        small = Image.fromarray(rng.integers(0, 232, (16, 16, 3), dtype=np.uint8))
        img = np.asarray(small.resize((w, h), Image.BILINEAR)) + noise[:h, :w]  # smooth colours + grain
        d = root / f"class{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"img{i:05d}.jpg", quality=90)


def baseline_loader(folder: Path, mean: np.ndarray, batch: int, workers: int, limit: int | None, pin: bool):
    # here, not on top: only this baseline needs torchvision, which the GPU machine lacks
    import torchvision.datasets as dsets
    import torchvision.transforms as T

    mean_t = torch.from_numpy(mean[::-1].copy())  # our mean is BGR; torchvision/PIL work in RGB

    def to_caffe(img):  # PIL -> float32 C×H×W 0..255 minus the mean image
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float()
        return x - mean_t

    tf = T.Compose([T.Resize((256, 256)), T.Lambda(to_caffe), T.RandomCrop(227),
                    T.RandomHorizontalFlip()])
    ds = dsets.ImageFolder(str(folder), transform=tf)
    if limit:
        ds = torch.utils.data.Subset(ds, range(min(limit, len(ds))))
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                       pin_memory=pin, drop_last=True, persistent_workers=workers > 0)


def measure(next_batch, images: int, batch: int, device: torch.device) -> float:
    next_batch()  # warm-up: workers start, first files read
    n, t = 0, time.perf_counter()
    while n < images:
        x = next_batch()
        n += x.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t)


def formats(store, entries, folder: Path, tmp: Path):
    """Why the store is raw uint8: single-thread read rates of the same 256×256 images in three formats."""
    n = len(store)
    out = np.empty((64,) + store.shape, np.uint8)
    t = time.perf_counter()
    for s in range(0, 4 * n, 64):
        store.read_into(np.arange(s, s + 64) % n, out)
    rate_store = 4 * n / (time.perf_counter() - t)
    convert_to_db(entries, folder, tmp / "lmdb", backend="lmdb", height=256, width=256)
    with DatumDB(tmp / "lmdb") as db:
        t = time.perf_counter()
        for _ in range(2):
            for i, (_, v) in enumerate(db.items()):
                out[i % 64] = parse_datum(v)[0]  # into a batch, as the store read does
        rate_lmdb = 2 * n / (time.perf_counter() - t)
    jpegs = []
    for img in np.asarray(store.images):
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0))).save(buf, format="JPEG", quality=95)
        jpegs.append(buf.getvalue())
    t = time.perf_counter()
    for b in jpegs:
        np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))
    rate_jpeg = n / (time.perf_counter() - t)
    mb = lambda k: f"{k / 1e6:.1f} MB"
    print("format read rates, one thread, 256x256 (page cache warm):")
    print(f"  store (raw uint8 memmap):   {rate_store:8.0f} images/s  {mb(store.images.nbytes)}")
    print(f"  Caffe LMDB (Datum parse):   {rate_lmdb:8.0f} images/s  {mb((tmp / 'lmdb' / 'data.mdb').stat().st_size)}")
    print(f"  JPEG q95 at 256 (decode):   {rate_jpeg:8.0f} images/s  {mb(sum(map(len, jpegs)))} (lossy)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="generated JPEGs, small run (< 1 minute on CPU)")
    ap.add_argument("--folder", help="an ImageFolder tree of JPEGs (root/<class>/*.JPEG)")
    ap.add_argument("--limit", type=int, default=None, help="use at most this many images")
    ap.add_argument("--images", type=int, default=None, help="images to time per loader")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2, help="worker processes (baseline) / threads (ours)")
    ap.add_argument("--device", default=default_device())
    ap.add_argument("--formats", action="store_true", help="also time reading the store vs LMDB vs 256px JPEG")
    args = ap.parse_args(argv)
    if not args.quick and not args.folder:
        ap.error("give --quick or --folder")

    device = pick_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = Path(args.folder) if args.folder else tmp / "jpegs"
        n_gen = args.limit or 256
        if args.quick and not args.folder:
            t = time.perf_counter()
            make_jpegs(folder, n_gen)
            print(f"generated {n_gen} JPEGs (500x375) in {time.perf_counter() - t:.1f}s")
        entries, classes = index_folder(folder)
        if args.limit:
            entries = entries[: args.limit]
        t = time.perf_counter()
        store = Store(convert_to_store(entries, folder, tmp / "store", height=256, width=256, shuffle=True,
                                       classes=classes, num_workers=args.workers))
        conv = time.perf_counter() - t
        print(f"one-time conversion to the store: {conv:.1f}s ({len(store) / conv:.0f} images/s)")
        mean = compute_mean(store)
        images = args.images or (2 * len(store) if args.quick else 4096)

        ours = Loader(store, args.batch, phase="TRAIN", crop_size=227, mirror=True, mean=mean, device=device,
                      shuffle=True, seed=0, num_workers=args.workers)
        ours_ips = measure(lambda: ours.next_batch()["data"], images, args.batch, device)
        ours.close()

        base = baseline_loader(folder, mean, args.batch, args.workers, args.limit, device.type == "cuda")
        it = {"i": iter(base)}

        def base_next():
            try:
                x, _ = next(it["i"])
            except StopIteration:
                it["i"] = iter(base)
                x, _ = next(it["i"])
            return x.to(device, non_blocking=True)

        base_ips = measure(base_next, images, args.batch, device)

        if args.formats:
            formats(store, entries, folder, tmp)

    print(f"device: {device}  batch: {args.batch}  workers: {args.workers}  images timed: {images}")
    print(f"ours (store + on-device transform): {ours_ips:.0f} images/s")
    print(f"baseline (ImageFolder + PIL, DataLoader): {base_ips:.0f} images/s")
    print(f"ratio_loader: {ours_ips / base_ips:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
