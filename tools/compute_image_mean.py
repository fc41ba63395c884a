"""Caffe's compute_image_mean: the per-pixel mean of a store or a Caffe LMDB/LevelDB, as a binaryproto.

  python tools/compute_image_mean.py data/half0A_train data/half0A_mean.binaryproto
"""
from repro.cli import tool_main
from repro.data.cli import compute_image_mean_main

if __name__ == "__main__":
    tool_main("compute_image_mean", compute_image_mean_main)
