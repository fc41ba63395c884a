"""What every benchmark here shares: the nets, device selection, timing, synthetic data, the machine's
description and the JSON record. Run the benchmarks as modules from the repository root
(``python -m benchmarks.train_throughput ...``) so that this package and ``repro`` import without path hacks.
"""
from __future__ import annotations

import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from repro.atomic import atomic_write_text
from repro.data.device_feed import write_store

REPO = Path(__file__).resolve().parents[1]
# name -> (train_val prototxt, stored image size, crop, classes)
NETS = {"caffenet": (REPO / "prototxt" / "caffenet" / "train_val.prototxt", 256, 227, 1000),
        "small": (REPO / "prototxt" / "small" / "train_val.prototxt", 64, 56, 20)}


# ---------------------------------------------------------------------------------------------- device


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_device(name: str) -> torch.device:
    """The torch.device for --device; SystemExit (one line, exit 2) when CUDA is asked for and absent."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"--device {name}: CUDA is not available here", file=sys.stderr)
        raise SystemExit(2)
    return device


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def free(device) -> None:
    """Drop the previous measurement's garbage (and on CUDA its cached blocks and peak counter)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device):
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


# ---------------------------------------------------------------------------------------------- timing


def best_seconds(fn, calls: int, warmup: int, device, rounds: int = 3) -> float:
    """Seconds per call of fn() after `warmup` calls: the best of `rounds` blocks of calls/rounds calls (as
    timeit does: the fastest block is the one least disturbed by other work on the machine)."""
    for _ in range(warmup):
        fn()
    sync(device)
    per = max(1, -(-calls // rounds))
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(per):
            fn()
        sync(device)
        best = min(best, (time.perf_counter() - t) / per)
    return best


def timed(fn, iters: int, warmup: int, batch: int, device, rounds: int = 3) -> float:
    """images/s of fn() (one batch of `batch` images per call), best of `rounds` blocks (best_seconds)."""
    return batch / best_seconds(fn, iters, warmup, device, rounds)


# ---------------------------------------------------------------------------------------------- data


def synthetic_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """n photo-like BGR images (smooth random colour fields + grain), N x 3 x size x size uint8."""
    rng = np.random.default_rng(seed)
    g = 16
    coarse = rng.integers(0, 220, (n, 3, g, g)).astype(np.float32)
    # bilinear upsampling as two small matrix products (no OpenCV / PIL needed)
    pos = np.clip((np.arange(size) + 0.5) * g / size - 0.5, 0, g - 1)
    i0 = np.floor(pos).astype(int)
    i1 = np.minimum(i0 + 1, g - 1)
    f = (pos - i0).astype(np.float32)
    U = np.zeros((size, g), np.float32)
    U[np.arange(size), i0] += 1 - f
    U[np.arange(size), i1] += f
    smooth = np.einsum("ij,ncjk,lk->ncil", U, coarse, U, optimize=True)
    grain = rng.integers(0, 32, (n, 3, size, size), dtype=np.uint8)
    return (smooth.astype(np.uint8) + grain).astype(np.uint8)


def synthetic_store(path, images: int, size: int, classes: int, unique: int = 512):
    """A store (repro.data.store layout) of `images` images, tiles of `unique` distinct synthetic ones, labels
    0..classes-1 in turn. Returns (store, the distinct images, their mean image as float32 C x H x W)."""
    u = synthetic_images(min(unique, images), size)
    labels = np.arange(images) % classes
    reps = -(-images // len(u))
    chunks = (u[: min(len(u), images - r * len(u))] for r in range(reps))
    return write_store(path, chunks, labels), u, u.astype(np.float32).mean(0)


# ---------------------------------------------------------------------------------------------- record


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device) -> dict:
    """Where a number was measured: date, host, torch, threads, the CPU (model, bf16/AMX flags) or the GPU."""
    flags = cpu_flags()
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "host": platform.node(),
            "torch": torch.__version__, "device": str(device), "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(), "cpu": cpu_model(),
            "cpu_bf16_flags": sorted(flags & {"avx512_bf16", "amx_bf16", "amx_tile", "avx512f"}),
            "gpu": torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else None}


def command_line(module: str, argv) -> str:
    return " ".join(["python -m", module, *(sys.argv[1:] if argv is None else argv)])


def write_json(path, record: dict) -> None:
    """The benchmark's record as indented JSON, atomically (repro.atomic)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
