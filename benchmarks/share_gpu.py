"""Can several small study nets share one GPU? Throughput of 1 vs N concurrent training processes.

  python -m benchmarks.share_gpu --device cuda --procs 1,4 --seconds 10
  python -m benchmarks.share_gpu --device cpu --procs 1,2 --seconds 2          # the script itself, on a CPU

Each process trains prototxt/small (the study's net for the built-in data; batch 64, 56x56 crops) end to end:
a DeviceFeed over one shared synthetic 64x64 store (memory-mapped by every process) into the Solver's own
engine (``train_iteration``, faithful float32). All processes of a round start their timed window at the same
moment (after their own start-up and warm-up) and run it for --seconds. Reported per round: images/s of each
process, their sum, the sum relative to one process (``share_speedup_N``), and each process's peak GPU
memory (how many fit).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from repro.data.device_feed import DeviceFeed, write_store
from repro.data.store import Store
from repro.data.transform import TransformSpec
from repro.solver import Solver

from .common import NETS, REPO, command_line, default_device, environment, synthetic_images, write_json
from .train_throughput import solver_param


def child(a) -> None:
    device = torch.device(a.device)
    sp = solver_param(NETS["small"][0], a.batch)
    sp.random_seed = a.seed
    solver = Solver(sp, device=device)
    store = Store(a.store)
    mean = np.full((3, 64, 64), 110.0, np.float32)
    feed = DeviceFeed(store, a.batch, TransformSpec(crop_size=56, mirror=True, mean=mean), seed=a.seed,
                      device=device, workers=2)
    for _ in range(20):
        solver.train_iteration(feed.next_batch())
    if device.type == "cuda":
        torch.cuda.synchronize()
    while time.time() < a.start_at:
        time.sleep(0.005)
    late = time.time() - a.start_at  # > 0: this process was not ready when the window opened
    n, t0 = 0, time.perf_counter()
    while True:
        for _ in range(10):
            solver.train_iteration(feed.next_batch())
        n += 10
        if device.type == "cuda":
            torch.cuda.synchronize()
        if time.perf_counter() - t0 >= a.seconds:
            break
    dt = time.perf_counter() - t0
    feed.close()
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    reserved = torch.cuda.max_memory_reserved(device) / 2**30 if device.type == "cuda" else None
    print(json.dumps({"images_per_s": n * a.batch / dt, "iters": n, "seconds": dt, "late_s": late, "peak_gib": peak,
                      "reserved_gib": reserved}), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=default_device())
    ap.add_argument("--procs", default="1,4", help="process counts to compare")
    ap.add_argument("--seconds", type=float, default=10.0, help="timed window per round")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--startup", type=float, default=40.0, help="seconds allowed for start-up and warm-up")
    ap.add_argument("--json")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(a)
        return 0


    res = {**environment(torch.device(a.device)), "command": command_line("benchmarks.share_gpu", argv),
           "batch": a.batch, "seconds": a.seconds, "rounds": {}}
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if a.device == "cpu":
        env.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="repro-share-") as tmp:
        store = Path(tmp) / "store"
        write_store(store, synthetic_images(2048, 64), np.arange(2048) % 20)
        for n in (int(p) for p in a.procs.split(",")):
            start_at = time.time() + a.startup
            cmd = [sys.executable, "-m", "benchmarks.share_gpu", "--child", "--device", a.device, "--store", str(store),
                   "--start-at", str(start_at), "--seconds", str(a.seconds), "--batch", str(a.batch)]
            procs = [subprocess.Popen(cmd + ["--seed", str(i + 1)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=env, cwd=REPO) for i in range(n)]
            outs = [p.communicate(timeout=a.startup + a.seconds * 4 + 120) for p in procs]
            rows = []
            for p, (o, e) in zip(procs, outs):
                if p.returncode != 0:
                    print(f"{n} processes: a child failed:\n{e[-2000:]}", flush=True)
                    rows = None
                    break
                rows.append(json.loads(o.strip().splitlines()[-1]))
            if rows is None:
                res["rounds"][n] = {"error": "a child failed"}
                continue
            late = [r for r in rows if r["late_s"] > 0.5]  # started after the common window opened
            total = sum(r["images_per_s"] for r in rows)
            res["rounds"][n] = {"per_process": rows, "total_images_per_s": total, "late": len(late)}
            if late:
                print(f"procs_{n}: {len(late)} process(es) started late; raise --startup", flush=True)
            each = ", ".join(f"{r['images_per_s']:.0f}" for r in rows)
            print(f"procs_{n}: total {total:.0f} images/s, per process {each}"
                  + (f", peak {max(r['peak_gib'] for r in rows):.2f} GiB each" if rows[0]["peak_gib"] else ""),
                  flush=True)
    one = res["rounds"].get(1, {}).get("total_images_per_s")
    for n, r in res["rounds"].items():
        if one and n != 1 and "total_images_per_s" in r:
            r["speedup_vs_1"] = r["total_images_per_s"] / one
            print(f"share_speedup_{n}: {r['speedup_vs_1']:.2f}", flush=True)
    if a.json:
        write_json(a.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
