"""docs/ARCHITECTURE.md lists every module of the package, in the section of its subpackage, so the map of
the code cannot silently fall behind the code."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "ARCHITECTURE.md"


def sections() -> dict[str, set[str]]:
    """{package folder ("" for the core): the names in backticks of its section's table rows}."""
    out, current = {}, None
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            m = re.search(r"\(`repro/(\w+)/`\)", line)
            current = m.group(1) if m else ("" if line.startswith("## Core") else None)
            if current is not None:
                out[current] = set()
        elif current is not None and line.startswith("| `"):
            first_cell = line.split("|")[1]
            out[current] |= set(re.findall(r"`([^`]+)`", first_cell))
    return out


def test_every_module_is_listed_in_its_section():
    listed = sections()
    missing = []
    for path in sorted((REPO / "repro").rglob("*.py")):
        rel = path.relative_to(REPO / "repro")
        if rel.parts[0] == "proto":
            pkg, name = "", "/".join(rel.parts)
            if rel.name == "__init__.py":
                continue
        elif len(rel.parts) == 1:
            pkg, name = "", rel.name
        else:
            pkg, name = rel.parts[0], "/".join(rel.parts[1:])
            if name == "__init__.py":
                continue  # a subpackage's face is its section
        if name not in listed.get(pkg, set()):
            missing.append(str(rel))
    assert not missing, f"docs/ARCHITECTURE.md does not list: {missing}"
