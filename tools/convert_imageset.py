"""Caffe's convert_imageset: decode + squash images once, into our store (default) or a Caffe LMDB/LevelDB.

  python tools/convert_imageset.py --resize_height=256 --resize_width=256 --shuffle ILSVRC2012/train/ \
      data/train/half0A/files.txt data/half0A_train
  python tools/convert_imageset.py --folder --resize_height=256 --resize_width=256 ILSVRC2012/train data/whole_train
  python tools/convert_imageset.py --backend=lmdb --resize_height=256 --resize_width=256 images/ files.txt lmdb

Resumable (store backend): rerun the same command after an interruption. Every corrupt/truncated/missing file
is reported at once; --on_error=skip leaves them out (listed in <out>/bad_files.txt).
"""
from repro.cli import tool_main
from repro.data.cli import convert_imageset_main

if __name__ == "__main__":
    tool_main("convert_imageset", convert_imageset_main)
