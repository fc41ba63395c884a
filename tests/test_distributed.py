"""Data-parallel training (repro.engine.ddp, tools/train_ddp.py) on the CPU with gloo.

The promise: a global batch split over W processes trains the same net as one process reading the whole batch
(weights equal up to float32 summation order), and the run folder is the one repro.train.run writes,
resumable on another process count.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from google.protobuf import text_format

from repro.caffemodel import write_mean
from repro.data.device_feed import DeviceFeed, FeedError, write_store
from repro.data.store import compute_mean
from repro.data.transform import TransformSpec
from repro.prototxt import read_net

REPO = Path(__file__).resolve().parents[1]
SOLVER = """net: "train_val.prototxt"
test_iter: 4
test_interval: 3
base_lr: 0.001
lr_policy: "step"
gamma: 0.1
stepsize: 2
display: 1
max_iter: 6
momentum: 0.9
weight_decay: 0.0005
snapshot: 3
random_seed: 7
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A tiny store (96 train / 40 val images, 20 classes, 64x64) and the small net on it, dropout off (each
    rank draws its own dropout masks, so only a dropout-free net can match a single process exactly)."""
    root = tmp_path_factory.mktemp("ddp")
    rng = np.random.RandomState(0)
    for part, n in (("train", 96), ("val", 40)):
        st = write_store(root / part, rng.randint(0, 256, (n, 3, 64, 64)).astype(np.uint8), rng.randint(0, 20, n))
    write_mean(root / "mean.binaryproto", compute_mean(st))
    net = read_net(REPO / "prototxt" / "small" / "train_val.prototxt")
    for layer in net.layer:
        if layer.type == "Data":
            train = layer.include[0].phase == 0
            layer.data_param.source = "train" if train else "val"
            layer.transform_param.mean_file = "mean.binaryproto"
            layer.data_param.batch_size = 8 if train else 10
        if layer.type == "Dropout":
            layer.dropout_param.dropout_ratio = 0.0
    (root / "train_val.prototxt").write_text(text_format.MessageToString(net))
    (root / "solver.prototxt").write_text(SOLVER)
    return root


def _weights(run_dir):
    return torch.load(Path(run_dir) / "final.pt")["weights"]


def _rel(x, y):
    return float((x - y).abs().max() / x.abs().max().clamp(min=1e-12))


def _max_rel(a, b, skip=()):
    return max(_rel(x, y) for k in a for i, (x, y) in enumerate(zip(a[k], b[k])) if (k, i) not in skip)


# Same net, same global batch, summed in a different float32 order. conv1's weight gradient on the CPU
# (oneDNN) carries ~1e-5 relative rounding of its own (benchmarks/conv_wgrad.py, err_conv1_native) and its
# blocking changes with the per-process batch, so conv1's weights get a looser bound than every other tensor.
CONV1_W = ("conv1", 0)


def _assert_same_training(a, b):
    assert _max_rel(a, b, skip={CONV1_W}) < 1e-6
    assert _rel(a["conv1"][0], b["conv1"][0]) < 1e-5


def _torchrun(study, out, nproc, device="cpu"):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(REPO / "tools" / "train_ddp.py"), "--solver", "solver.prototxt", "--out", str(out),
           "--device", device, "--no-onnx"]
    res = subprocess.run(cmd, cwd=study, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout


@pytest.fixture(scope="module")
def single(study):
    from repro.train import run

    cwd = os.getcwd()
    os.chdir(study)
    try:
        run("solver.prototxt", study / "run1", onnx=False, log=lambda *a: None)
    finally:
        os.chdir(cwd)
    return study / "run1"


def test_feed_shards_partition_the_global_batch(study):
    spec = TransformSpec(crop_size=56, mirror=True, mean=np.full((3, 64, 64), 100, np.float32))
    whole = DeviceFeed(study / "train", 8, spec, seed=5, workers=1)
    parts = [DeviceFeed(study / "train", 8, spec, seed=5, shard=(r, 2), workers=1) for r in range(2)]
    for _ in range(14):  # past the end of the 96 images: the cursor wraps as Caffe's does
        w = next(whole)
        p = [next(f) for f in parts]
        assert torch.equal(torch.cat([b["data"] for b in p]), w["data"])
        assert torch.equal(torch.cat([b["label"] for b in p]), w["label"])
    # resume: a new feed loaded with the state continues with the same images and crops
    state = parts[1].state_dict()
    again = DeviceFeed(study / "train", 8, spec, seed=5, shard=(1, 2), workers=1)
    again.load_state_dict(state)
    assert torch.equal(next(again)["data"], next(parts[1])["data"])
    with pytest.raises(FeedError, match="does not split evenly"):
        DeviceFeed(study / "train", 9, spec, shard=(0, 2))
    for f in [whole, again, *parts]:
        f.close()


def test_one_process_group_is_bitwise_the_solver(study, tmp_path):
    """World size 1 through DDP (the Solver's own step loop with the DataParallel comm and a DeviceFeed shard):
    the very same arithmetic as Solver.step on the net's own Data layer."""
    from repro.engine.ddp import data_parallel
    from repro.solver import Solver

    cwd = os.getcwd()
    os.chdir(study)
    try:
        ref = Solver("solver.prototxt")
        ref.step(5)
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
        try:
            s = Solver("solver.prototxt")
            feed = data_parallel(s, rank=0, world=1, data_root=study)
            s.step(5)
            feed.close()
        finally:
            dist.destroy_process_group()
    finally:
        os.chdir(cwd)
    for layer, blobs in ref.net.params.items():
        for a, b in zip(blobs, s.net.params[layer]):
            assert torch.equal(a, b), layer


def test_two_processes_train_the_single_process_net(study, single):
    out = _torchrun(study, study / "run2", 2)
    assert "train_ddp: finished" in out
    _assert_same_training(_weights(single), _weights(study / "run2"))  # two half-batch gradients vs one
    # rank 0 alone writes the record: one train line per iteration, the same as the single-process run's
    import json

    lines = [json.loads(l) for l in (study / "run2" / "log.jsonl").read_text().splitlines()]
    ref = [json.loads(l) for l in (single / "log.jsonl").read_text().splitlines()]
    assert [(r["type"], r["iter"]) for r in lines] == [(r["type"], r["iter"]) for r in ref]
    for a, b in zip(lines, ref):
        if a["type"] == "train":
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    run = json.loads((study / "run2" / "run.json").read_text())
    assert run["distributed"] == {"world_size": 2, "backend": "gloo", "global_batch": 8, "per_rank_batch": 4}


def test_resume_on_another_process_count(study, single):
    """A run killed after the iteration-3 snapshot resumes on 1 process and ends where the 2-process run did."""
    src = study / "run2"
    if not (src / "final.pt").is_file():
        _torchrun(study, src, 2)
    cut = study / "run_cut"
    shutil.copytree(src, cut)
    for p in [cut / "final.pt", cut / "final.caffemodel", cut / "summary.json",
              *(cut / "snapshots").glob("*_iter_6.*")]:
        p.unlink()
    out = _torchrun(study, cut, 1)
    assert "resuming from snapshot_iter_3.state.pt" in out
    _assert_same_training(_weights(single), _weights(cut))


@pytest.mark.gpu
def test_nccl_on_one_gpu_trains_the_cpu_net(study, single):
    """The CUDA path of a distributed run (NCCL, side-stream feed, fused LRN) ends where the CPU run does."""
    out = _torchrun(study, study / "run_cuda", 1, device="cuda")
    assert "train_ddp: finished" in out
    err = _max_rel(_weights(single), _weights(study / "run_cuda"))
    print(f"\nCUDA (NCCL, world 1) vs CPU final weights: max relative difference {err:.2e}")
    # Not bit-equal and not 1e-6 like the CPU comparisons: different kernels (cuDNN/cuBLAS vs oneDNN/OpenBLAS)
    # sum in different orders. tests/test_golden_g1.py holds one forward+backward on either device to 1e-5 of
    # Caffe, and conv1's CPU weight gradient alone is ~1e-5 off (CONV1_W above); 6 momentum-SGD steps carry
    # those per-step differences into the weights. 1e-3 is 100x that per-step bound, for other GPU generations;
    # a wrong schedule, feed or gradient changes whole updates instead. (Not yet measured on a GPU draw: the
    # print above gives the number to tighten it with.)
    assert err < 1e-3
