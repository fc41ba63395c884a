"""An independent oracle: OpenCV's dnn module runs the paper's own CaffeNet prototxt with weights we wrote.

OpenCV has its own Caffe parser (V0 upgrade included), its own .caffemodel reader and its own convolution,
LRN and ceil-mode pooling. It reads the paper's V0 ``half0A/imagenet_val.prototxt`` with the Data layer
replaced by a net-level ``input`` (OpenCV cannot build Data layers) and the label-hungry Accuracy layer
dropped, and fc6/fc7 narrowed from 4096 to 256 outputs (as in the golden G1 net; 16x less weight I/O keeps
the test fast). We read the same text, fill random He-scaled weights, save a .caffemodel and load it into a
fresh Net. fc8 and prob must agree. A second case feeds OpenCV the V2 text our upgrader writes.
"""
import re

import numpy as np
import pytest
import torch

from repro.net import Net
from repro.prototxt import read_net, write_text

cv2 = pytest.importorskip("cv2")

BATCH = 2
# Max |difference| / max |value| of fc8 and prob. Measured 1.85e-6 (fc8) and 4.11e-6 (prob), both syntaxes, OpenCV
# 4.14.0 on a 2-vCPU AMD EPYC (python -m pytest -s tests/test_opencv_oracle.py prints them). Two float32
# implementations sum in different orders; the deepest sums (fc6: 9216 terms, conv2: 1200 per group) give
# about sqrt(K) * 2**-24 ~ 6e-6 relative per layer for random-signed terms. 2e-5 is 5x the measured worst:
# room for another CPU's SIMD width while still failing on a wrong LRN, pooling or upgrade rule, which changes
# what is computed rather than the order of its last-bit roundings.
RTOL = 2e-5


def _blocks(text):
    """Top-level `layers { ... }` blocks of a V0/V1 prototxt as (start, end) spans."""
    spans, depth, start = [], 0, None
    for m in re.finditer(r"\blayers\s*\{|\{|\}", text):
        tok = m.group(0)
        if tok.startswith("layers") and depth == 0:
            start, depth = m.start(), 1
        elif tok.endswith("{"):
            depth += 1 if depth else 0
        elif depth:
            depth -= 1
            if depth == 0:
                spans.append((start, m.end()))
    return spans


def v0_with_input(text):
    """The paper's val prototxt, V0 syntax kept: Data layer -> net-level input, Accuracy dropped."""
    keep, last = [], 0
    for a, b in _blocks(text):
        keep.append(text[last:a])
        block = text[a:b]
        if not re.search(r'type:\s*"(data|accuracy)"', block):
            keep.append(block)
        last = b
    keep.append(text[last:])
    body = "".join(keep).replace("num_output: 4096", "num_output: 256")
    header = f'input: "data"\ninput_dim: {BATCH}\ninput_dim: 3\ninput_dim: 227\ninput_dim: 227\n'
    return re.sub(r'^(name:\s*"[^"]*"\n)', r"\1" + header, body, count=1)


@pytest.fixture(scope="module")
def paper_net(shared, tmp_path_factory):
    """(prototxt text, caffemodel path, input, our fc8, our prob)."""
    text = v0_with_input((shared / "reference/original_prototxt/half0A/imagenet_val.prototxt").read_text())
    rng = np.random.RandomState(1234)
    net = Net(text, "TEST")
    state = {}
    for name, (w, b) in net.params.items():
        fan_in = int(np.prod(w.shape[1:]))
        state[f"{name}/0"] = torch.from_numpy((rng.standard_normal(tuple(w.shape)) * np.sqrt(2.0 / fan_in))
                                              .astype(np.float32))
        state[f"{name}/1"] = torch.from_numpy((rng.standard_normal(tuple(b.shape)) * 0.1).astype(np.float32))
    net.load_state_dict_caffe(state)
    x = rng.uniform(-100, 100, (BATCH, 3, 227, 227)).astype(np.float32)
    with torch.no_grad():
        # Rescale fc8 so the logits have std 2: a softmax neither saturated nor flat, so prob is a sensitive check.
        net(data=x)
        factor = 2.0 / net.blobs["fc8"].std().item()
        for blob in net.params["fc8"]:
            blob.mul_(factor)
    weights = tmp_path_factory.mktemp("oracle") / "random.caffemodel"
    net.save(weights)
    fresh = Net(text, "TEST", weights=weights)  # our loader reads back what our writer wrote
    with torch.no_grad():
        out = fresh(data=x)
    assert list(out) == ["prob"]
    return text, weights, x, fresh.blobs["fc8"].numpy(), out["prob"].numpy()


def _opencv_forward(prototxt_path, weights, x):
    cv2.setNumThreads(1)
    cvnet = cv2.dnn.readNetFromCaffe(str(prototxt_path), str(weights))
    cvnet.setInput(x, "data")
    return cvnet.forward(["fc8", "prob"])


@pytest.mark.parametrize("syntax", ["V0", "V2"])
def test_opencv_agrees(paper_net, tmp_path, syntax):
    text, weights, x, fc8, prob = paper_net
    path = tmp_path / "net.prototxt"
    if syntax == "V0":
        path.write_text(text)
    else:
        write_text(read_net(text), path)  # our upgrader's V2 output, read by an independent parser
        assert "layers {" not in path.read_text()
    cv_fc8, cv_prob = _opencv_forward(path, weights, x)
    assert cv_fc8.shape == fc8.shape == (BATCH, 1000)
    err_fc8 = np.abs(fc8 - cv_fc8).max() / np.abs(cv_fc8).max()
    err_prob = np.abs(prob - cv_prob).max() / np.abs(cv_prob).max()
    print(f"\nOpenCV {cv2.__version__} vs repro ({syntax}): fc8 {err_fc8:.2e}, prob {err_prob:.2e}")
    assert err_fc8 <= RTOL and err_prob <= RTOL
    assert (fc8.argmax(1) == cv_fc8.argmax(1)).all()
    assert 0.01 < prob.max() < 0.99  # neither saturated nor flat
