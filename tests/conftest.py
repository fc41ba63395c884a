"""Shared fixtures. Tests that need the reference material in ../shared skip cleanly without it."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_path() -> Path | None:
    """The read-only reference folder: $REPRO_SHARED, else ../shared beside the checkout."""
    env = os.environ.get("REPRO_SHARED")
    p = Path(env) if env else REPO.parent / "shared"
    return p if p.is_dir() else None


@pytest.fixture(scope="session")
def shared() -> Path:
    p = shared_path()
    if p is None:
        pytest.skip("reference material (../shared) is absent")
    return p


@pytest.fixture(scope="session")
def golden(shared) -> Path:
    p = shared / "golden"
    if not p.is_dir():
        pytest.skip("golden Caffe data (../shared/golden) is absent")
    return p


def load_tool(name: str):
    """Import tools/<name>.py as a module (the tools are scripts, not a package), to call its main()."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"tools_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
