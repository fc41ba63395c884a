"""Tool misuse ends with one line naming what is wrong, exit non-zero, no traceback."""
import pytest

from .helpers import assert_one_line_error, run_tool


@pytest.mark.parametrize("batch", ["0", "-3"])
def test_export_onnx_rejects_batch_below_one(tiny_files, tmp_path, batch):
    out = tmp_path / "x.onnx"
    r = run_tool("export_onnx", "--model", tiny_files["tiny"], "--weights", tiny_files["tiny_weights"],
                 "--out", out, "--batch", batch)
    assert r.returncode == 2 and "--batch must be at least 1" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_check_onnx_rejects_batch_zero(tiny_files, tmp_path):
    from repro.errors import ReproError
    from repro.onnx.io import check_onnx, export_onnx

    path = tmp_path / "t.onnx"
    export_onnx(tiny_files["tiny"], path, weights=tiny_files["tiny_weights"], verify=False)
    with pytest.raises(ReproError, match="batch_size must be at least 1"):
        check_onnx(path, batch_size=0)


@pytest.mark.parametrize("content", [b"", b"\x00garbage\xff" * 50], ids=["empty", "garbage"])
def test_inspect_onnx_on_a_non_onnx_file(tmp_path, content):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    r = run_tool("inspect_onnx", bad)
    assert_one_line_error(r, must_contain=("inspect_onnx:", "bad.onnx"), rc=2)


@pytest.mark.parametrize("tool,args", [
    ("make_splits", ["--list", "{missing}", "--out", "{tmp}/splits"]),
    ("plot_results", ["--runs", "{missing}", "--out", "{tmp}/plots"]),
    ("compute_image_mean", ["{missing}", "{tmp}/mean.binaryproto"]),
    ("export_onnx", ["--model", "{missing}", "--out", "{tmp}/x.onnx"]),
])
def test_tools_end_with_one_line(tmp_path, tool, args):
    missing = tmp_path / "no_such_thing"
    r = run_tool(tool, *[a.format(missing=missing, tmp=tmp_path) for a in args])
    assert_one_line_error(r, must_contain=(f"{tool}:", "no_such_thing"))


def test_every_tool_ends_with_tool_main():
    """Every command line ends the same way (repro.cli.tool_main: one line and exit 2 for a user's mistake, one
    line and exit 130 for Ctrl-C), so no tool can answer a wrong input with a traceback; a new tool is covered
    the day it is added."""
    from .helpers import REPO

    tools = sorted((REPO / "tools").glob("*.py"))
    assert len(tools) >= 18
    for path in tools:
        name = "caffe.py" if path.stem == "caffe" else path.stem  # Caffe's binary names itself caffe.py in logs
        tail = path.read_text().split('if __name__ == "__main__":')[-1]
        assert f'tool_main("{name}", ' in tail, path.name
