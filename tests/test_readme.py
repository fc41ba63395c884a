"""The README's first commands are what a new user types and what CI runs: keep them in step."""
import re

from conftest import REPO


def _readme_commands():
    text = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README.md must open with a bash block of the two commands"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_install_and_test_commands():
    install, test = _readme_commands()[:2]
    assert "pip install" in install and "tools/train_base.py" in install
    assert "pytest" in test


def test_ci_runs_the_readme_commands():
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    install, test = _readme_commands()[:2]
    # CI runs every install step of the README's first command (the training run itself is covered by tests).
    for step in install.split("&&"):
        step = step.strip()
        if step.startswith("pip install"):
            assert step in ci, f".ci/run does not run the README's install step: {step}"
    assert test in ci, ".ci/run does not run the README's test command"
