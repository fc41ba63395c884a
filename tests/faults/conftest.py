"""Fixtures of the fault-injection tests (helpers.py has run_tool and assert_one_line_error)."""
import pytest

from .helpers import OTHER, TINY


@pytest.fixture
def tiny_files(tmp_path):
    """TINY and OTHER as prototxt files, each with its .caffemodel (seeded fillers)."""
    from repro.net import Net

    out = {}
    for key, text in (("tiny", TINY), ("other", OTHER)):
        proto = tmp_path / f"{key}.prototxt"
        proto.write_text(text)
        weights = tmp_path / f"{key}.caffemodel"
        Net(text, "TEST", seed=1).save(weights)
        out[key], out[f"{key}_weights"] = proto, weights
    return out
