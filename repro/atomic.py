"""Atomic file writes, used by every writer in the project: a killed run never leaves a half-written file.

The data goes to a temporary file beside the target (same filesystem), is fsynced, and is renamed over the
target (``os.replace`` is atomic on POSIX and Windows). No torch import here: the text and protobuf tools use it.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Callable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file what open() would
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    # surrogateescape: file names read from a list with undecodable bytes are written back unchanged
    return atomic_write_bytes(path, text.encode("utf-8", errors="surrogateescape"))


_TEMP_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # what atomic_write's mkstemp names look like


def clean_stale_temps(folder: str | Path) -> list[Path]:
    """Remove the temporary files a killed writer left in ``folder`` (call it only while owning the folder:
    a live writer's temp file would go too). Returns what was removed."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for p in folder.iterdir():
            if _TEMP_RE.match(p.name) and p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed
