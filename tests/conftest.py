"""Shared fixtures and the two switches that keep a green run honest.

* Reference material (../shared or $REPRO_SHARED: golden Caffe data, the paper's files): tests that need it
  skip without it, except when ``REPRO_REQUIRE_GOLDEN=1`` (set by .ci/run), where its absence is a failure,
  so a green CI proves the golden parity. Tests ask for it through the ``shared`` / ``golden`` fixtures, or
  call :func:`missing_reference` for a file inside it.
* CUDA: tests that need it carry ``@pytest.mark.gpu`` and nothing else; the one hook below skips them
  without a CUDA device, or fails them when ``REPRO_REQUIRE_GPU=1`` (a GPU machine's CI).
"""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _required(name: str) -> bool:
    return os.environ.get(name, "").strip() not in ("", "0")


def missing_reference(what: str):
    """Skip the test for missing reference material, or fail it under REPRO_REQUIRE_GOLDEN=1."""
    if _required("REPRO_REQUIRE_GOLDEN"):
        pytest.fail(f"{what} (REPRO_REQUIRE_GOLDEN=1: the reference material must be there)", pytrace=False)
    pytest.skip(what)


def pytest_runtest_setup(item):
    if item.get_closest_marker("gpu") is None:
        return
    import torch

    if torch.cuda.is_available():
        return
    if _required("REPRO_REQUIRE_GPU"):
        pytest.fail("needs a CUDA device, and REPRO_REQUIRE_GPU=1 says this machine must have one", pytrace=False)
    pytest.skip("needs a CUDA device")


def shared_path() -> Path | None:
    """The read-only reference folder: $REPRO_SHARED, else ../shared beside the checkout."""
    env = os.environ.get("REPRO_SHARED")
    p = Path(env) if env else REPO.parent / "shared"
    return p if p.is_dir() else None


@pytest.fixture(scope="session")
def shared() -> Path:
    p = shared_path()
    if p is None:
        missing_reference("reference material (../shared or $REPRO_SHARED) is absent")
    return p


@pytest.fixture(scope="session")
def golden(shared) -> Path:
    p = shared / "golden"
    if not p.is_dir():
        missing_reference(f"golden Caffe data ({p}) is absent")
    return p


def load_tool(name: str):
    """Import tools/<name>.py as a module (the tools are scripts, not a package), to call its main()."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"tools_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
