#!/usr/bin/env python
"""Caffe's ``caffe`` command on this reproduction: ``caffe.py train|test|time|device_query -flag value ...``
(see repro/caffe_cli.py). Run it in the folder the solver's relative paths start from, as caffe.bin is run."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from repro.caffe_cli import main  # noqa: E402
from repro.cli import tool_main  # noqa: E402

if __name__ == "__main__":
    tool_main("caffe.py", main)
