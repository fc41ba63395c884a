"""The lint config in pyproject.toml ([tool.ruff]) holds for the whole tree: pyflakes (undefined names, unused
imports), pycodestyle, import order and flake8-bugbear's bug-prone patterns."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", str(REPO)],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, f"ruff check failed (fix, or `ruff check --fix`):\n{r.stdout}{r.stderr}"
