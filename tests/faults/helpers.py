"""Helpers of the fault-injection tests: run a tool as a user does, and check how it fails."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

TINY = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""

# The same shapes under other layer names: a file of "another net" that matches no layer of TINY.
OTHER = TINY.replace('"conv1"', '"c1"').replace('"fc"', '"ip"').replace('name: "tiny"', 'name: "other"')


def run_tool(name: str, *args, cwd=None, env=None, timeout=300) -> subprocess.CompletedProcess:
    """Run tools/<name>.py as a user does (a fresh interpreter, this checkout on the path)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, str(REPO / "tools" / f"{name}.py"), *map(str, args)], cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, must_contain=(), rc=None) -> str:
    """The tool failed (non-zero, or exactly ``rc``) with one line on stderr, no traceback, holding every
    string of ``must_contain``. Returns the line."""
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.returncode != 0, f"exit 0; stdout={result.stdout!r} stderr={result.stderr!r}"
    if rc is not None:
        assert result.returncode == rc, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{result.stderr}"
    for s in [must_contain] if isinstance(must_contain, str) else must_contain:
        assert s in lines[0], f"{s!r} not in {lines[0]!r}"
    return lines[0]
