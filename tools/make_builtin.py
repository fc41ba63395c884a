"""Generate the built-in dataset (20 procedural classes, 64x64; seconds, no download).

  python tools/make_builtin.py                       # -> data/builtin
  python tools/make_builtin.py --export data/builtin_png   # also write the images as PNG files
"""
from repro.cli import tool_main
from repro.data.cli import make_builtin_main

if __name__ == "__main__":
    tool_main("make_builtin", make_builtin_main)
