"""Helpers of the driver's fault tests: the tools run as a user runs them (a subprocess, its exit code and its
output), on a tiny copy of the built-in data."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [e.get("PYTHONPATH")] if p])
    e.setdefault("OMP_NUM_THREADS", "1")
    return e


def tool_cmd(name: str, *args) -> list[str]:
    return [sys.executable, str(REPO / "tools" / f"{name}.py"), *map(str, args)]


def tool(name: str, *args, cwd, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run(tool_cmd(name, *args), cwd=cwd, env=env(), capture_output=True, text=True,
                          timeout=timeout)


def start(name: str, *args, cwd, **kw) -> subprocess.Popen:
    return subprocess.Popen(tool_cmd(name, *args), cwd=cwd, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def make_data(root: Path) -> Path:
    """data/builtin under root, small: 8 training and 5 validation images per class."""
    from repro.data.builtin import ensure_builtin

    ensure_builtin(root / "data" / "builtin", train_per_class=8, val_per_class=5)
    return root


def solver(path: Path, **fields) -> Path:
    """prototxt/small's solver with `fields` changed, written to `path`."""
    from google.protobuf import text_format

    from repro.prototxt import read_solver
    from repro.study.cells import SMALL_SOLVER

    s = read_solver(SMALL_SOLVER)
    for k, v in fields.items():
        setattr(s, k, v)
    path.write_text(text_format.MessageToString(s))
    return path


def strict_json(path: Path):
    def no(c):
        raise ValueError(f"{path}: {c} is not JSON")
    return json.loads(Path(path).read_text(), parse_constant=no)


def train_iters(run_dir: Path) -> dict[int, float]:
    p = Path(run_dir) / "log.jsonl"
    if not p.is_file():
        return {}
    out = {}
    for line in p.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written
        if r.get("type") == "train":
            out[r["iter"]] = r["loss"]
    return out


def wait_for(cond, timeout=120, what="a condition"):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def no_traceback(*texts) -> bool:
    return not any("Traceback" in t for t in texts)
