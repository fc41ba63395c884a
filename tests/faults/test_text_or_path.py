"""repro.Net's text-vs-path rule: a str is a path unless it parses as prototxt and names no existing file."""
import pytest

from repro.net import Net
from repro.prototxt import PrototxtError, is_path

from .helpers import TINY


def test_a_path_containing_a_brace_is_a_path(tmp_path):
    d = tmp_path / "runs{0}"
    d.mkdir()
    path = d / "net {A}.prototxt"
    path.write_text(TINY)
    net = Net(str(path), "TEST")
    assert net.source == str(path) and net.name == "tiny"


def test_text_is_text_and_a_missing_path_is_named(tmp_path):
    assert Net(TINY, "TEST").source is None
    assert Net('name: "one" layer { name: "d" type: "Input" top: "d" input_param { shape { dim: 1 } } }',
               "TEST").source is None  # one line of text, no newline: parsed, so text
    missing = str(tmp_path / "nope.prototxt")
    with pytest.raises(PrototxtError, match=r"nope\.prototxt.*cannot read"):
        Net(missing, "TEST")
    assert is_path(missing) and not is_path(TINY)


def test_broken_text_reports_its_line():
    with pytest.raises(PrototxtError, match=r"<text>:3"):
        Net('name: "x"\nlayer { name: "d" type: "Input" top: "d" }\nlayer { nme: "e" }\n', "TEST")


def test_explicit_text_argument(tmp_path):
    (tmp_path / "name_only").write_text(TINY)
    net = Net(text=TINY, phase="TEST")
    assert net.source is None and net.name == "tiny"
    with pytest.raises(TypeError, match="exactly one"):
        Net(TINY, "TEST", text=TINY)
