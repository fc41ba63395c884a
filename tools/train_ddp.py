"""Train one net on several GPUs (or CPU processes) with DistributedDataParallel, Caffe's update unchanged.

  torchrun --nproc_per_node 4 tools/train_ddp.py --solver prototxt/caffenet/solver.prototxt --out runs/caffenet
  torchrun --nproc_per_node 2 tools/train_ddp.py --solver S --out DIR --device cpu      # gloo, for testing

The global batch stays the prototxt's batch_size (the paper's 256), split evenly over the processes, so the
result does not depend on the GPU count (repro.engine.ddp). The run folder is the one tools/train_base.py
writes (repro.train.run); running the same command again resumes from the newest snapshot, on any process
count that divides the batch. Signals, divergence and exit codes are train_base's: 0 finished, 2 bad input,
3 stopped, 4 diverged.
"""
import argparse

import torch.distributed as dist

from repro.cli import tool_main
from repro.engine.modes import MODES
from repro.runlog import headline_line
from repro.train import EXIT_CODES, Retention, run


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--solver", required=True, help="solver prototxt (its net's Data layer reads a store)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--weights", help="a .caffemodel copied into the TRAIN net by layer name before training")
    p.add_argument("--data-root", help="folder the prototxt's relative data paths start from (default: here)")
    p.add_argument("--max-iter", type=int, help="override the solver's max_iter")
    p.add_argument("--device", help="cpu or cuda (default: cuda:LOCAL_RANK when CUDA is there)")
    p.add_argument("--backend", help="nccl or gloo (default: nccl on CUDA, gloo on CPU)")
    p.add_argument("--no-onnx", action="store_true", help="do not write final.onnx")
    p.add_argument("--numerics", choices=tuple(MODES), default="faithful",
                   help="faithful (default), fp32, tf32 or fast (repro.engine.modes); recorded in run.json")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step")
    p.add_argument("--keep", action="store_true", help="keep every snapshot, as Caffe does")
    p.add_argument("--force", action="store_true", help="move a folder holding a different run aside")
    a = p.parse_args(argv)
    try:
        result = run(a.solver, a.out, weights=a.weights, device=a.device, backend=a.backend,
                     data_root=a.data_root, max_iter=a.max_iter, onnx=not a.no_onnx, distributed=True,
                     numerics=a.numerics, compile=a.compile, retention=Retention(keep_all=a.keep), force=a.force,
                     record={"tool": "train_ddp"})
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    status = result.get("status", "finished")
    line = f"train_ddp: {status} in {a.out}"
    if status == "finished":
        line += f"; {headline_line(result)}" if "tests" in result else ""   # rank 0 holds the numbers
    else:
        line += f" at iteration {result.get('iter')}"
    print(line, flush=True)
    return EXIT_CODES.get(status, 1)


if __name__ == "__main__":
    tool_main("train_ddp", main)
