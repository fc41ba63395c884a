"""benchmarks.cpu_step: the FLOP count behind the roofline line equals a hand count, and the benchmark runs and
reports its fraction on a tiny CPU run (no speed is asserted: targets live in the benchmark)."""
import json
import re

from benchmarks import cpu_step
from repro.net import Net

# data 2x3x8x8 -> conv1 (4 outputs, 3x3) 2x4x6x6 -> conv2 (4 outputs, 3x3, group 2) 2x4x4x4 -> ip (5) -> loss
TINY = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } shape { dim: 2 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" {conv1_param}
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
        convolution_param { num_output: 4 kernel_size: 3 group: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "conv2" top: "ip" inner_product_param { num_output: 5 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def _flops(conv1_param=""):
    return cpu_step.step_flops(Net(TINY.replace("{conv1_param}", conv1_param), "TRAIN"))


def test_step_flops_matches_a_hand_count():
    # multiply-adds of one pass: top elements x weights per output
    conv1 = 2 * 4 * 6 * 6 * (3 * 3 * 3)   # 7776
    conv2 = 2 * 4 * 4 * 4 * (2 * 3 * 3)   # 2304 (4 input channels in 2 groups: 2 per output)
    ip = 2 * 5 * (4 * 4 * 4)              # 640
    f = _flops()
    assert f["layers"] == {"conv1": {"forward": 2 * conv1, "data_grad": 0, "weight_grad": 2 * conv1},
                           "conv2": {"forward": 2 * conv2, "data_grad": 2 * conv2, "weight_grad": 2 * conv2},
                           "ip": {"forward": 2 * ip, "data_grad": 2 * ip, "weight_grad": 2 * ip}}
    assert f["total"] == 2 * (2 * conv1 + 3 * conv2 + 3 * ip) == 48768


def test_frozen_first_layer_has_no_gradients_below_it():
    """conv1 at lr_mult 0 (the paper's frozen prefix): no weight gradient for conv1 and, as its output then
    carries no gradient, no data gradient for conv2 either (Caffe's bottom_need_backward_)."""
    conv1 = 2 * 4 * 6 * 6 * 27
    conv2 = 2 * 4 * 4 * 4 * 18
    ip = 2 * 5 * 64
    f = _flops("param { lr_mult: 0 } param { lr_mult: 0 }")
    assert f["layers"]["conv1"] == {"forward": 2 * conv1, "data_grad": 0, "weight_grad": 0}
    assert f["layers"]["conv2"] == {"forward": 2 * conv2, "data_grad": 0, "weight_grad": 2 * conv2}
    assert f["total"] == 2 * (conv1 + 2 * conv2 + 3 * ip)


def test_caffenet_step_is_the_issues_count():
    """Full CaffeNet at batch 32: 2.07 GMAC per image forward + backward (conv1 has no data gradient)."""
    from repro.engine.plan import feedable

    net = Net(feedable(cpu_step.NETS["caffenet"][0], "TRAIN", batch_size=1)[0], "TRAIN")
    gmac = cpu_step.step_flops(net)["total"] / 2e9
    assert 2.0 < gmac < 2.1, gmac


def test_benchmark_reports_the_roofline_fraction(tmp_path, capsys):
    out = tmp_path / "cpu.json"
    assert cpu_step.main(["--batch", "2", "--iters", "1", "--warmup", "0", "--gemm", "128", "--fast",
                          "--json", str(out)]) == 0
    text = capsys.readouterr().out
    fraction = float(re.search(r"^roofline_fraction: ([0-9.]+)$", text, re.M).group(1))
    assert fraction > 0
    assert re.search(r"^fast_pays: (yes|no) ", text, re.M)
    rec = json.loads(out.read_text())
    assert rec["step_flops"]["total"] == cpu_step.step_flops(
        Net(cpu_step.NETS["small"][0], "TRAIN", input_shapes={"data": (2, 3, 56, 56)}))["total"]
    assert rec["numerics"]["faithful"] is True and rec["sgemm_gflops"] > 0
