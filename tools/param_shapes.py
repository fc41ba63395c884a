"""Write prototxt/param_shapes.json: per net, every layer's parameter shapes and counts, and the total.

    python tools/param_shapes.py            # (re)write the file (needs `pip install -e .` or PYTHONPATH=.)
    python tools/param_shapes.py --check    # exit 1 if the file differs from the nets built from prototxt/

tests/test_prototxt_files.py checks the committed file against the nets, so a change to a net's shape must
come with an explicit regeneration (pycls' model_complexity.json idea).
"""
import argparse
import json
import os
import tempfile

from repro.cli import tool_main
from repro.prototxt_files import PARAM_SHAPES_FILE, param_shape_table, prototxt_dir


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    args = ap.parse_args(argv)
    path = prototxt_dir() / PARAM_SHAPES_FILE
    text = json.dumps(param_shape_table(), indent=1) + "\n"
    if args.check:
        same = path.is_file() and path.read_text() == text
        print(f"{path}: {'up to date' if same else 'OUT OF DATE: run python tools/param_shapes.py'}")
        return 0 if same else 1
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    tool_main("param_shapes", main)
