"""The study as data: the 170 cells, their names, and realise() against the paper's own prototxt files."""
import pytest

from repro import resources
from repro.proto import caffe_pb2
from repro.study.grid import (
    Cell,
    GridError,
    all_cells,
    cell_from_name,
    copied_layers,
    dependencies,
    frozen_layers,
    mean_source,
    realise,
    renamed_layers,
)


def _paper_kind(c: Cell) -> str:
    """paper_results.csv's `kind` column for a cell."""
    if c.kind == "base":
        return {"whole": "netbase", "natman": "natman_base"}.get(c.split, "base")
    if c.kind == "transfer":
        if c.split == "natman":
            return "natman_transfer"
        return ("selffer" if c.source == c.target else "transfer") + ("+ft" if c.fine_tune else "")
    return c.kind


def test_all_cells_are_the_papers_170_folders_with_their_attributes():
    rows = {r["name"]: r for r in resources.paper_results()}
    cells = all_cells()
    assert len(cells) == 170 and {c.name for c in cells} == set(rows)
    for c in cells:
        r = rows[c.name]
        assert (_paper_kind(c), str(c.n), str(c.fine_tune)) == (r["kind"], r["n"], r["fine_tuned"]), c.name
        assert str(c.per_class or "") == r["per_class"] and (c.split == r["split"]), c.name
    # Base nets come before every transfer that needs them.
    order = {c: i for i, c in enumerate(cells)}
    assert all(order[d] < order[c] for c in cells for d in dependencies(c))


@pytest.mark.parametrize("name, condition", [
    ("half0A", "base"), ("halfnatmanB", "base"), ("netbase", "base"), ("transfer0A0A_1_4", "BnB"),
    ("transfer-ft1A1A_1_3", "BnB+"), ("transfer2B2A_1_7", "AnB"), ("transfer-ft0A0B_1_1", "AnB+"),
    ("transfernatmanAB_1_5", "AnB"), ("nolearn_1_3", "nolearn"), ("reduced-0010", "reduced")])
def test_names_round_trip_and_name_their_condition(name, condition):
    c = cell_from_name(name)
    assert c.name == name == str(c) and c.condition == condition
    assert cell_from_name(name) == c and hash(c) == hash(cell_from_name(name))


def test_transfer_cell_details():
    c = cell_from_name("transfer-ft0A0B_1_3")
    assert c == Cell("transfer", "A", "B", 3, True, "0")
    assert dependencies(c) == (cell_from_name("half0A"),)
    assert (c.dataset, c.val_dataset, mean_source(c)) == ("half0B", "half0B", "half0A")
    assert copied_layers(c) == ("conv1", "conv2", "conv3") and frozen_layers(c) == ()
    assert renamed_layers(c) == {k: k + "-new" for k in ("conv4", "conv5", "fc6", "fc7", "fc8")}
    frozen = cell_from_name("transfernatmanBA_1_7")
    assert frozen_layers(frozen)[-1] == "fc7" and renamed_layers(frozen) == {"fc8": "fc8-new"}
    assert mean_source(frozen) == "halfnatmanB" and frozen.dataset == "halfnatmanA"
    nolearn = cell_from_name("nolearn_1_2")
    assert frozen_layers(nolearn) == ("conv1", "conv2") and renamed_layers(nolearn) == {}
    assert dependencies(nolearn) == () and copied_layers(nolearn) == ()
    assert [cell_from_name(n).dataset for n in ("reduced-0010", "reduced-1300", "netbase")] == [
        "reduced0010", "whole", "whole"]
    assert cell_from_name("reduced-0010").val_dataset == "whole"


@pytest.mark.parametrize("name", ["half0", "transfer0A1B_1_3", "reduced-10", "transfer0A0B_1_03", "nolearn_3",
                                  "transferAB_1_1", "netbase_1_1"])
def test_bad_names_are_rejected(name):
    with pytest.raises(GridError, match="cell name"):
        cell_from_name(name)


@pytest.mark.parametrize("kwargs, why", [
    (dict(kind="transfer", source="A", target="B", n=0, split="0"), "n >= 1"),
    (dict(kind="base", target="A", split="whole"), "target must be"),
    (dict(kind="nolearn", n=2, split="1", target="A"), "whole ImageNet"),
    (dict(kind="base", fine_tune=True), "only transfers"),
    (dict(kind="reduced"), "per_class"),
    (dict(kind="selffer"), "kind must be")])
def test_impossible_cells_are_rejected(kwargs, why):
    with pytest.raises(GridError, match=why):
        Cell(**kwargs)


# ---- realise() against the paper's files ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def paper(shared):
    from repro.prototxt import read_net, read_solver
    root = shared / "reference" / "original_prototxt"

    def load(name):
        d = root / name
        return (read_net(d / "imagenet_train.prototxt"), read_net(d / "imagenet_val.prototxt"),
                read_solver(d / "imagenet_solver.prototxt"))
    return load


def _params(net):
    return {layer.name: [(p.lr_mult, p.decay_mult) for p in layer.param] for layer in net.layer if layer.param}


@pytest.mark.parametrize("name", ["transfer0A0B_1_3", "transfer-ft0A0B_1_3", "nolearn_1_3", "reduced-0010",
                                  "halfnatmanA", "netbase"])
def test_realise_reproduces_the_papers_prototxt(paper, name):
    base_train, base_val, base_solver = paper("half0A")
    train, val, solver = realise(cell_from_name(name), base_train, base_solver, val_net=base_val)
    want_train, want_val, want_solver = paper(name)
    # Layer by layer first, for a readable failure; then the whole messages.
    assert [lay.name for lay in train.layer] == [lay.name for lay in want_train.layer]
    assert [list(lay.top) for lay in val.layer] == [list(lay.top) for lay in want_val.layer]
    assert _params(train) == _params(want_train)
    assert train == want_train and val == want_val and solver == want_solver
    assert base_train == paper("half0A")[0], "realise must not modify its inputs"


def test_realised_messages_hold_the_protocol(paper):
    base_train, base_val, base_solver = paper("half0A")
    train, val, _ = realise(cell_from_name("transfer0A0B_1_3"), base_train, base_solver, val_net=base_val)
    frozen = [lay.name for lay in train.layer if lay.param and all(p.lr_mult == 0 == p.decay_mult
                                                                     for p in lay.param)]
    assert frozen == ["conv1", "conv2", "conv3"]
    fc8 = next(lay for lay in train.layer if lay.name == "fc8-new")
    assert fc8.inner_product_param.num_output == 1000            # fc8 keeps 1000 outputs on a 500-class task
    assert next(lay for lay in val.layer if lay.type == "Softmax").bottom[:] == ["fc8-new"]
    _, _, solver = realise(cell_from_name("reduced-1300"), base_train, base_solver, val_net=base_val)
    assert (solver.base_lr, solver.stepsize, solver.max_iter) == (pytest.approx(0.0125), 64000, 200000)


TRAIN_VAL = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" top: "label" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 }
        shape { dim: 2 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc2" type: "InnerProduct" bottom: "conv1" top: "fc2" param { lr_mult: 1 } param { lr_mult: 2 }
        inner_product_param { num_output: 5 } }
layer { name: "fc3" type: "InnerProduct" bottom: "fc2" top: "fc3" inner_product_param { num_output: 10 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc3" bottom: "label" top: "loss" include { phase: TRAIN } }
layer { name: "acc" type: "Accuracy" bottom: "fc3" bottom: "label" top: "acc" include { phase: TEST } }
"""


def test_realise_a_train_val_net_with_phase_rules():
    from google.protobuf import text_format
    net = text_format.Parse(TRAIN_VAL, caffe_pb2.NetParameter())
    solver = caffe_pb2.SolverParameter(base_lr=0.02, stepsize=1000, max_iter=4500)
    train, val, _ = realise(cell_from_name("transfer1A1B_1_1"), net, solver)
    assert [lay.name for lay in train.layer] == ["data", "conv1", "relu1", "fc2-new", "fc3-new", "loss"]
    assert [list(lay.bottom) for lay in val.layer][-1] == ["fc3-new", "label"]
    assert [(p.lr_mult, p.decay_mult) for p in train.layer[1].param] == [(0, 0), (0, 0)]  # two ParamSpecs added
    assert [p.lr_mult for p in train.layer[3].param] == [1, 2]
    with pytest.raises(GridError, match="n = 3 needs at least 4 learnable layers"):
        realise(cell_from_name("transfer1A1B_1_3"), net, solver)
    _, _, s = realise(cell_from_name("reduced-0100"), net, solver)
    assert (s.base_lr, s.stepsize, s.max_iter) == (pytest.approx(0.025), 640, 2000)
