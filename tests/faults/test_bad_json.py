"""A damaged JSON file we wrote (run.json, a conversion's progress.json) is an error naming the file."""
import pytest

from repro.train import RunError, run

SOLVER = """net: "net.prototxt"
base_lr: 0.01
lr_policy: "fixed"
max_iter: 2
display: 1
random_seed: 1
"""


@pytest.fixture(scope="module")
def builtin(tmp_path_factory):
    from repro.data.builtin import ensure_builtin

    return ensure_builtin(tmp_path_factory.mktemp("builtin") / "b", train_per_class=2, val_per_class=1)


def _solver(tmp_path, root):
    net = f"""name: "t"
layer {{ name: "data" type: "Data" top: "data" top: "label"
  transform_param {{ crop_size: 16 }} data_param {{ source: "{root}/train" batch_size: 4 }} }}
layer {{ name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
  inner_product_param {{ num_output: 20 weight_filler {{ type: "gaussian" std: 0.01 }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }}
"""
    (tmp_path / "net.prototxt").write_text(net)
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    return tmp_path / "solver.prototxt"


@pytest.mark.parametrize("garbage", [b"{not json", b"\xff\xfe\x00", b"[1, 2]"], ids=["syntax", "bytes", "array"])
def test_garbage_run_json_is_named(tmp_path, builtin, garbage):
    solver = _solver(tmp_path, builtin)
    out = tmp_path / "run"
    run(solver, out, onnx=False, log=lambda _: None)
    (out / "run.json").write_bytes(garbage)
    with pytest.raises(RunError, match=r"run\.json: (not valid JSON|expected a JSON object)"):
        run(solver, out, onnx=False, log=lambda _: None)


def test_garbage_progress_json_of_a_conversion_is_named(tmp_path):
    from repro.data.convert import _read_progress
    from repro.data.store import StoreError

    work = tmp_path / "store.partial"
    work.mkdir()
    (work / "progress.json").write_text("{truncated")
    with pytest.raises(StoreError, match=r"progress\.json: not valid JSON"):
        _read_progress(work)
