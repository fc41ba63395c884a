"""A transfer net as the paper built it: the realised prototxts against the paper's own files, and the weight
copy proven on a short run (frozen layers bit-identical to the base, fine-tuned ones copied then moved,
re-initialised ones fresh)."""
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_tool

import repro.study.cells as study_mod
from repro.caffemodel import read_caffemodel, write_caffemodel
from repro.errors import ReproError
from repro.prototxt import read_net, read_solver
from repro.study.cells import StudyError, builtin_study, run_cell, scale_solver
from repro.study.grid import cell_from_name

_tool = load_tool


transfer_tool = _tool("transfer")

HEADS = ("Data", "SoftmaxWithLoss", "Softmax", "Accuracy")   # data and output layers: written differently
quiet = lambda *_: None


def tiny_study(root: Path, **kw):
    """The built-in study on a tiny copy of the built-in data: a few iterations, one test batch."""
    from repro.data.builtin import ensure_builtin

    ensure_builtin(root / "data" / "builtin", train_per_class=8, val_per_class=5)
    return builtin_study(runs=root / "runs", root=root, max_iter=kw.get("max_iter", 3), test_iter=1)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny study with its half0A base net trained."""
    st = tiny_study(tmp_path_factory.mktemp("transfer"))
    r = run_cell(st, cell_from_name("half0A"), log=quiet)
    assert r["status"] == "finished" and Path(r["weights"]).name == "final.caffemodel"
    return st


# ---- the realised prototxts against the paper's files --------------------------------------------------------

def _trunk(net):
    return [layer for layer in net.layer if layer.type not in HEADS]


def _without_learning(layer):
    """A layer without its ParamSpecs and fillers: the paper's val prototxts carry neither."""
    out = type(layer)()
    out.CopyFrom(layer)
    out.ClearField("param")
    for f in ("convolution_param", "inner_product_param"):
        if out.HasField(f):
            getattr(out, f).ClearField("weight_filler")
            getattr(out, f).ClearField("bias_filler")
    return out


@pytest.mark.parametrize("name,flags", [("transfer0A0B_1_3", []), ("transfer-ft0A0B_1_3", ["--finetune"])])
def test_emitted_prototxts_are_the_papers(shared, tmp_path, name, flags):
    out = tmp_path / "emit"
    transfer_tool.main(["--from", "A", "--to", "B", "--n", "3", *flags, "--study", "imagenet",
                        "--root", str(tmp_path), "--emit", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["solver.prototxt", "train.prototxt", "val.prototxt"]
    ref = shared / "reference" / "original_prototxt" / name
    paper_train, paper_val = read_net(ref / "imagenet_train.prototxt"), read_net(ref / "imagenet_val.prototxt")
    train, val = read_net(out / "train.prototxt"), read_net(out / "val.prototxt")
    # Same layers, wiring and renames (conv4-new ... fc8-new); in the train net also the same frozen set
    # (lr_mult / decay_mult) and fillers: every learnable and in-between layer is identical.
    assert [lay.name for lay in _trunk(train)] == [lay.name for lay in _trunk(paper_train)]
    assert _trunk(train) == _trunk(paper_train)
    assert [_without_learning(lay) for lay in _trunk(val)] == [_without_learning(lay) for lay in _trunk(paper_val)]
    frozen = [lay.name for lay in train.layer if lay.param and all(p.lr_mult == 0 == p.decay_mult for p in lay.param)]
    assert frozen == ([] if flags else ["conv1", "conv2", "conv3"])
    # The loss and the val net's accuracy read the renamed fc8, as in the paper's files.
    assert [list(lay.bottom) for lay in train.layer if lay.type == "SoftmaxWithLoss"] == [["fc8-new", "label"]]
    assert all(lay.bottom[0] == "fc8-new" for lay in val.layer if lay.type in ("Accuracy", "Softmax"))
    # Data: train and test on half B, subtract half A's mean (the paper's symlinks); batch/crop/mirror as theirs.
    (td,), (vd,) = [[lay for lay in n.layer if lay.type == "Data"] for n in (train, val)]
    assert "half0B_train" in td.data_param.source and "half0B_val" in vd.data_param.source
    assert "half0A_mean" in td.transform_param.mean_file == vd.transform_param.mean_file
    for ours, theirs in ((td, paper_train.layer[0]), (vd, paper_val.layer[0])):
        assert ours.data_param.batch_size == theirs.data_param.batch_size
        assert (ours.transform_param.crop_size, ours.transform_param.mirror) == \
            (theirs.transform_param.crop_size, theirs.transform_param.mirror)
    # Same solver, but for the file names it points at.
    ours, theirs = read_solver(out / "solver.prototxt"), read_solver(ref / "imagenet_solver.prototxt")
    assert (ours.train_net, list(ours.test_net)) == ("train.prototxt", ["val.prototxt"])
    for s in (ours, theirs):
        for f in ("train_net", "test_net", "snapshot_prefix"):
            s.ClearField(f)
    assert ours == theirs


def test_bad_cells_are_refused_with_a_message(tmp_path, capsys):
    with pytest.raises(ReproError, match=r"n = 8 needs at least 9 learnable layers"):
        transfer_tool.main(["--from", "A", "--to", "B", "--n", "8", "--emit", str(tmp_path)])
    with pytest.raises(SystemExit):
        transfer_tool.main(["--from", "C", "--to", "B", "--n", "1"])
    assert "invalid choice: 'C'" in capsys.readouterr().err


def test_scaled_schedule():
    solver = scale_solver(read_solver(study_mod.SMALL_SOLVER), 100)
    orig = read_solver(study_mod.SMALL_SOLVER)
    assert solver.max_iter == 100 and solver.test_iter == orig.test_iter and solver.base_lr == orig.base_lr
    f = 100 / orig.max_iter
    assert orig.stepsize > 0  # the paper's schedule steps: a 0 here would make the next line check nothing
    assert solver.stepsize == max(1, round(orig.stepsize * f))
    assert solver.test_interval == max(1, round(orig.test_interval * f))
    with pytest.raises(StudyError, match="max_iter must be >= 1"):
        scale_solver(orig, 0)


# ---- the copy ---------------------------------------------------------------------------------------------------

def _start_spy(monkeypatch):
    """Record the net's learnable blobs right after the base weights were copied in: the run's start."""
    start = {}
    original = study_mod.load_base

    def spy(net, path):
        copied = original(net, path)
        start.update({name: [b.detach().clone().numpy() for b in blobs] for name, blobs in net.params.items()})
        return copied
    monkeypatch.setattr(study_mod, "load_base", spy)
    return start


@pytest.mark.parametrize("name", ["transfer0A0B_1_3", "transfer-ft0A0B_1_3"])
def test_transfer_copies_freezes_and_reinitialises(base, monkeypatch, name):
    start = _start_spy(monkeypatch)
    r = run_cell(base, cell_from_name(name), log=quiet)
    assert r["status"] == "finished"
    base_w = read_caffemodel(base.run_dir(cell_from_name("half0A")) / "final.caffemodel")
    final = read_caffemodel(Path(r["run_dir"]) / "final.caffemodel")
    for layer in ("conv1", "conv2", "conv3"):
        assert all(np.array_equal(a, b) for a, b in zip(start[layer], base_w[layer])), f"{layer}: not the base's"
        same = [np.array_equal(a, b) for a, b in zip(final[layer], base_w[layer])]
        if "-ft" in name:   # fine-tuned: copied, then trained away from the base (a bias of 1 may not move in
            assert not same[0], f"{layer} did not train"    # 3 steps: its update is below float32's ulp of 1)
        else:               # frozen: bit-identical after training
            assert all(same), f"{layer} changed while frozen"
    for layer in ("conv4", "conv5", "fc6", "fc7", "fc8"):
        assert layer not in final and layer + "-new" in final
        w0, b0 = start[layer + "-new"]
        # Fresh fillers, not the base: the bias is the filler's constant, the weights differ from the base's.
        assert not np.allclose(w0, base_w[layer][0]) and np.all(b0 == b0.flat[0])
        assert not np.array_equal(b0, base_w[layer][1])
        assert not np.array_equal(final[layer + "-new"][0], w0), f"{layer}-new did not train"


def test_base_weights_load_alike_from_caffemodel_pt_and_onnx(base):
    from repro.net import Net

    d = base.run_dir(cell_from_name("half0A"))
    files = [d / "final.caffemodel", d / "final.pt", d / "final.onnx"]
    assert all(f.is_file() for f in files)
    train = d.parent / "transfer0A0B_1_3" / "train.prototxt"   # written by the test above, or make it here
    if not train.is_file():
        study_mod.emit(base, cell_from_name("transfer0A0B_1_3"), train.parent)
    loaded = []
    for f in files:
        torch.manual_seed(0)
        net = Net(train, "TRAIN", seed=5)
        copied = study_mod.load_base(net, f)
        assert sorted(copied) == ["conv1", "conv2", "conv3"], f
        loaded.append({k: [b.detach().numpy().copy() for b in v] for k, v in net.params.items()})
    for other in loaded[1:]:
        for k in loaded[0]:
            assert all(np.array_equal(a, b) for a, b in zip(loaded[0][k], other[k])), k


def test_transfer_needs_its_base_and_a_matching_one(base, tmp_path):
    other = builtin_study(runs=tmp_path / "runs", root=base.root, max_iter=3, test_iter=1)
    with pytest.raises(StudyError, match=r"copies half0A, which has no final weights .*run_grid"):
        run_cell(other, cell_from_name("transfer0A0B_1_2"), log=quiet)
    # Weights of a net whose layers are named otherwise: nothing (or too little) would be copied; refused.
    w = read_caffemodel(base.run_dir(cell_from_name("half0A")) / "final.caffemodel")
    write_caffemodel(tmp_path / "other.caffemodel", "other",
                     [("conv1", "Convolution", [], [], w["conv1"])])
    with pytest.raises(StudyError, match=r"set layers \['conv1'\], but the cell copies \['conv1', 'conv2'\]"):
        run_cell(other, cell_from_name("transfer0A0B_1_2"), weights=tmp_path / "other.caffemodel", log=quiet)
    with pytest.raises(StudyError, match="trained from scratch and takes no base weights"):
        run_cell(other, cell_from_name("half0B"), weights=tmp_path / "other.caffemodel", log=quiet)


def test_sources_without_a_dataset_name_are_refused(tmp_path):
    net = tmp_path / "net.prototxt"
    net.write_text(study_mod.SMALL_NET.read_text().replace("half0A_train", "my_train"))
    st = builtin_study(runs=tmp_path, root=tmp_path, net=net)
    with pytest.raises(StudyError, match=r"layer 'data' source: 'data/builtin/my_train' names no dataset"):
        study_mod.emit(st, cell_from_name("transfer0A0B_1_1"), tmp_path / "out")
