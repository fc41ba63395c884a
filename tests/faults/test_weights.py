"""Loading weights reports what it copied; weights that match nothing are an error, not filler weights."""
import pytest
import torch

from repro.net import Net, NetError
from repro.weights import CopyReport, WeightsError, copy_file, read_weights

from .helpers import OTHER, TINY, assert_one_line_error, run_tool


def test_net_with_weights_of_another_net_raises(tiny_files):
    with pytest.raises(NetError, match=r"other\.caffemodel.* matches no layer of the net.*c1, ip.*conv1, fc"):
        Net(TINY, "TEST", weights=tiny_files["other_weights"])


def test_net_with_onnx_of_another_net_raises(tiny_files, tmp_path):
    from repro.onnx.io import export_onnx

    other_onnx = tmp_path / "other.onnx"
    export_onnx(tiny_files["other"], other_onnx, weights=tiny_files["other_weights"], verify=False)
    with pytest.raises(NetError, match="matches no layer"):
        Net(TINY, "TEST", weights=other_onnx)


def test_export_onnx_with_weights_of_another_net_fails(tiny_files, tmp_path):
    out = tmp_path / "x.onnx"
    r = run_tool("export_onnx", "--model", tiny_files["tiny"], "--weights", tiny_files["other_weights"],
                 "--out", out)
    assert_one_line_error(r, must_contain=("export_onnx:", "other.caffemodel", "matches no layer"), rc=2)
    assert not out.exists()


def test_copy_report_lists_copied_skipped_missing(tiny_files):
    partial = TINY.replace('"fc"', '"fc-new"')  # fc renamed: Caffe re-initialises it
    net = Net(partial, "TEST", seed=3)
    report = net.copy_from(tiny_files["tiny_weights"])
    assert isinstance(report, CopyReport)
    assert report == report.copied == ["conv1"]
    assert report.skipped == ["fc"] and report.missing == ["fc-new"]
    assert "copied 1 layers" in str(report)
    with pytest.raises(NetError, match="no weights for layer.*fc-new"):
        net.copy_from(tiny_files["tiny_weights"], require="all")
    assert Net(OTHER, "TEST").copy_from(tiny_files["tiny_weights"], require=None) == []  # the caller said so


def test_legacy_and_shape_rules_are_one_implementation(tiny_files):
    # .caffemodel, .pt and a run folder go through the same reader and the same copy
    src = Net(TINY, "TEST", seed=1)
    torch.save(src.state_dict_caffe(), tiny_files["tiny"].parent / "final.pt")
    for path in (tiny_files["tiny_weights"], tiny_files["tiny"].parent / "final.pt", tiny_files["tiny"].parent):
        net = Net(TINY, "TEST", seed=7)
        assert copy_file(net, path) == ["conv1", "fc"]
        assert torch.equal(net.params["fc"][0], src.params["fc"][0])  # a copy, the same bits
    wider = Net(TINY.replace("num_output: 4", "num_output: 5"), "TEST")
    with pytest.raises(WeightsError, match=r"layer 'conv1'.*\(4, 3, 3, 3\).*\(5, 3, 3, 3\)"):
        copy_file(wider, tiny_files["tiny_weights"])


def test_empty_weights_file_named(tmp_path):
    (tmp_path / "w.caffemodel").write_bytes(b"")
    with pytest.raises(WeightsError, match=r"w\.caffemodel: empty weights file"):
        read_weights(tmp_path / "w.caffemodel")


def test_net_does_not_import_onnx():
    import subprocess
    import sys

    code = "import sys, repro.net; print('repro.onnx.importer' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
