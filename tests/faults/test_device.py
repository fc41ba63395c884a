"""A device this machine lacks is one clear line, wherever a device is named."""
import pytest
import torch

from repro.errors import ReproError
from repro.numerics import DeviceError, resolve_device

from .helpers import TINY


def test_resolve_device_names_what_is_wrong(monkeypatch):
    assert resolve_device(None) == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="'cude': not a device name"):
        resolve_device("cude")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="'cuda': CUDA is not available on this machine.*use --device cpu"):
        resolve_device("cuda")
    assert issubclass(DeviceError, ReproError)


def test_solver_with_missing_cuda_says_so(tmp_path, monkeypatch):
    from repro.solver import Solver

    (tmp_path / "net.prototxt").write_text(TINY)
    (tmp_path / "solver.prototxt").write_text('net: "net.prototxt"\nbase_lr: 0.01\nmax_iter: 1\nlr_policy: "fixed"\n')
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="CUDA is not available"):
        Solver(str(tmp_path / "solver.prototxt"), device="cuda")


def test_run_plan_checks_devices_before_starting_workers(monkeypatch):
    from repro.study.scheduler import run_plan

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="cuda:0"):
        run_plan(None, [], ["cuda:0"])
