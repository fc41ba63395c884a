"""Where images come from: Caffe list files and ILSVRC2012-style class folders, indexed with every problem found.

* A Caffe list file (what `convert_imageset` and ImageData take): one `relative/path label` per line; the
  path is everything before the *last* space (Caffe: `line.find_last_of(' ')`), so paths may hold spaces.
* An ILSVRC2012-style folder: `train/<wnid>/*.JPEG`, class ids = position in a synset list (default: the
  sorted folder names, which is ILSVRC12's `synsets.txt` order). The val set is a folder plus a list file.

Indexing checks what can be checked without decoding (missing files, empty files, malformed lines, labels
out of range, empty class folders) and reports every problem through `checks.apply_policy`. Decoding errors
(corrupt or truncated images) are found by `convert.py` when the images are read.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..atomic import atomic_write_text
from .checks import BadFile, apply_policy, check_policy

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp")

Entry = tuple[str, int]  # (path relative to the root folder, label)


def read_class_list(path: str | os.PathLike) -> list[str]:
    """Class names, one per line, first token (ILSVRC12 `synsets.txt` / `synset_words.txt`)."""
    names = []
    for line in Path(path).read_text().splitlines():
        tok = line.split()
        if tok:
            names.append(tok[0])
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: class names repeat")
    return names


def parse_list(path: str | os.PathLike, num_classes: int | None = None) -> tuple[list[Entry], list[BadFile]]:
    """Parse a Caffe list file; returns (entries, problems). Problems name `file:line`."""
    entries, bad = [], []
    text = Path(path).read_text(encoding="utf-8", errors="surrogateescape")
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not line.strip():
            continue
        where = f"{path}:{n}"
        pos = line.rfind(" ")
        if pos < 0:
            tab = line.rfind("\t")
            pos = tab
        if pos <= 0:
            bad.append(BadFile(where, f"expected 'relative/path label', got {line!r}"))
            continue
        name, lab = line[:pos].rstrip(), line[pos + 1:].strip()
        try:
            label = int(lab)
        except ValueError:
            bad.append(BadFile(where, f"label {lab!r} of {name!r} is not an integer"))
            continue
        if label < 0 or (num_classes is not None and label >= num_classes):
            rng = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
            bad.append(BadFile(where, f"label {label} of {name!r} is out of range (expected {rng})"))
            continue
        entries.append((name, label))
    return entries, bad


def check_files(root: str | os.PathLike, entries: Sequence[Entry]) -> list[BadFile]:
    """Cheap per-file checks (no decode): the file exists, is a file, and is not empty."""
    bad, root = [], Path(root)
    for name, _ in entries:
        p = root / name
        try:
            st = p.stat()
        except FileNotFoundError:
            bad.append(BadFile(str(p), "file not found"))
            continue
        except OSError as e:
            bad.append(BadFile(str(p), f"cannot stat file ({e.strerror or e})"))
            continue
        if not p.is_file():
            bad.append(BadFile(str(p), "not a regular file"))
        elif st.st_size == 0:
            bad.append(BadFile(str(p), "empty file (0 bytes)"))
    return bad


def index_list(path: str | os.PathLike, root: str | os.PathLike | None = None,
               num_classes: int | None = None) -> tuple[list[Entry], list[BadFile]]:
    """Parse a list file and check the files it names (when `root` is given); returns (good entries, problems)
    without raising."""
    entries, bad = parse_list(path, num_classes)
    if root is not None:
        file_bad = check_files(root, entries)
        if file_bad:
            gone = {b.path for b in file_bad}
            entries = [e for e in entries if str(Path(root) / e[0]) not in gone]
            bad += file_bad
    return entries, bad


def read_list(path: str | os.PathLike, root: str | os.PathLike | None = None, num_classes: int | None = None,
              on_error: str = "fail") -> list[Entry]:
    """Index a Caffe list file: parse it and (when `root` is given) check every named file exists.

    Under on_error="fail" one DataError lists every malformed line, bad label and missing/empty file; under
    "skip" those entries are dropped (with a warning) and the rest returned in list order.
    """
    check_policy(on_error)
    entries, bad = index_list(path, root, num_classes)
    apply_policy(f"indexing {path}", bad, on_error)
    return entries


def index_folder(root: str | os.PathLike, classes: Sequence[str] | None = None,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS, on_error: str = "fail") -> tuple[list[Entry], list[str]]:
    """Index `root/<class>/<image>` (ILSVRC2012 train layout). Returns (entries, class names).

    Class ids are positions in `classes` (default: sorted sub-folder names). Entries are sorted by class id,
    then file name, with paths relative to `root` (`n01440764/n01440764_10026.JPEG`). An empty class folder,
    a missing class folder (when `classes` is given) and empty files are problems.
    """
    check_policy(on_error)
    entries, classes, bad = scan_folder(root, classes, extensions)
    apply_policy(f"indexing {root}", bad, on_error)
    return entries, classes


def scan_folder(root: str | os.PathLike, classes: Sequence[str] | None = None,
                extensions: Sequence[str] = IMAGE_EXTENSIONS) -> tuple[list[Entry], list[str], list[BadFile]]:
    """``index_folder`` without the policy: (good entries, class names, problems), raising only when there is
    no class folder at all."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if classes is None:
        classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not classes:
            raise ValueError(f"{root} has no class sub-folders (expected {root}/<class>/<image>)")
    exts = tuple(e.lower() for e in extensions)
    entries, bad = [], []
    for label, cls in enumerate(classes):
        d = root / cls
        if not d.is_dir():
            bad.append(BadFile(str(d), "class folder missing"))
            continue
        names = sorted(f.name for f in os.scandir(d) if f.is_file() and f.name.lower().endswith(exts))
        if not names:
            bad.append(BadFile(str(d), f"empty class folder (no images with extensions {', '.join(exts)})"))
            continue
        entries += [(f"{cls}/{n}", label) for n in names]
    file_bad = check_files(root, entries)
    if file_bad:
        gone = {b.path for b in file_bad}
        entries = [e for e in entries if str(root / e[0]) not in gone]
    return entries, list(classes), bad + file_bad


def write_list(path: str | os.PathLike, entries: Sequence[Entry]):
    """Write a Caffe list file atomically."""
    atomic_write_text(Path(path), "".join(f"{n} {l}\n" for n, l in entries))
