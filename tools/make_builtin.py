"""Generate a built-in dataset (64x64 images; seconds, no download). The study makes them on first use; this
tool is for looking at them.

  python tools/make_builtin.py                       # 20 procedural classes (prototxt/small) -> data/builtin
  python tools/make_builtin.py --kind hierarchical   # the miniature's 32 classes (prototxt/mini) -> data/mini
  python tools/make_builtin.py --export data/builtin_png   # also write the images as PNG files
"""
from repro.cli import tool_main
from repro.data.cli import make_builtin_main

if __name__ == "__main__":
    tool_main("make_builtin", make_builtin_main)
