"""A green test run means what it says: missing reference data or a missing GPU fail when they are required."""
import os
import subprocess
import sys

import pytest

from .helpers import REPO

GOLDEN_TEST = "tests/test_golden_g1.py::test_im2col_weight_gradient_from_caffes_blobs[conv1]"
GPU_TEST = "tests/test_data_transform.py::test_cuda_transform_equals_cpu_bitwise"


def _pytest(test, **env):
    full = {**os.environ, "PYTHONPATH": str(REPO), **env}
    for k in ("REPRO_REQUIRE_GOLDEN", "REPRO_REQUIRE_GPU"):
        if k not in env:
            full.pop(k, None)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rsf", test],
                          cwd=REPO, env=full, capture_output=True, text=True, timeout=300)


def test_missing_golden_skips_by_default_and_fails_when_required(tmp_path):
    absent = str(tmp_path / "no_shared")
    skipped = _pytest(GOLDEN_TEST, REPRO_SHARED=absent)
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout, skipped.stdout
    failed = _pytest(GOLDEN_TEST, REPRO_SHARED=absent, REPRO_REQUIRE_GOLDEN="1")
    # failed in the fixture: pytest counts it as an error; either way the run is red
    assert failed.returncode == 1 and "1 error" in failed.stdout and "REPRO_REQUIRE_GOLDEN=1" in failed.stdout


def test_gpu_marker_fails_without_cuda_when_required():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the gpu tests run")  # the check is about machines without one
    skipped = _pytest(GPU_TEST)
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout, skipped.stdout
    failed = _pytest(GPU_TEST, REPRO_REQUIRE_GPU="1")
    assert failed.returncode == 1 and "REPRO_REQUIRE_GPU=1" in failed.stdout


def test_ci_requires_the_golden_data():
    lines = (REPO / ".ci" / "run").read_text().splitlines()
    assert "export REPRO_REQUIRE_GOLDEN=1" in lines
    assert lines.index("export REPRO_REQUIRE_GOLDEN=1") < lines.index("python -m pytest -q")
