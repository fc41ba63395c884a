"""Running tools/caffe.py as a user does: a subprocess in a Caffe folder (its working directory)."""
import os
import subprocess
import sys

from conftest import REPO


def caffe(cwd, *args):
    """``python tools/caffe.py ARGS`` in ``cwd``; asserts exit 0 and returns stderr (Caffe logs there)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, str(REPO / "tools" / "caffe.py"), *args], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"caffe.py {' '.join(args)} exited {r.returncode}:\n{r.stderr[-3000:]}"
    return r.stderr
