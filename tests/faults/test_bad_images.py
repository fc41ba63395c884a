"""convert_imageset --on_error=skip accounts for every file it leaves out, 0-byte ones included."""
import json

import numpy as np
from PIL import Image

from .helpers import run_tool


def _images(root, names):
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(np.full((6, 6, 3), 40 * i, np.uint8)).save(root / name)


def test_zero_byte_image_is_reported_and_counted(tmp_path):
    root = tmp_path / "img"
    _images(root, ["a.png", "b.png"])
    (root / "empty.png").write_bytes(b"")
    (root / "garbage.png").write_bytes(b"not an image at all")
    listfile = tmp_path / "list.txt"
    listfile.write_text("a.png 0\nempty.png 1\nb.png 1\ngarbage.png 0\n")
    out = tmp_path / "store"
    r = run_tool("convert_imageset", root, listfile, out, "--on_error=skip")
    assert r.returncode == 0, r.stderr
    bad = dict(line.split("\t") for line in (out / "bad_files.txt").read_text().splitlines())
    assert set(bad) == {str(root / "empty.png"), str(root / "garbage.png")}
    assert "0 bytes" in bad[str(root / "empty.png")]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == 2 and manifest["bad"] == 2


def test_zero_byte_image_in_a_class_folder(tmp_path):
    root = tmp_path / "img"
    _images(root / "cat", ["1.png"])
    _images(root / "dog", ["1.png", "2.png"])
    (root / "dog" / "0.png").write_bytes(b"")
    out = tmp_path / "store"
    r = run_tool("convert_imageset", "--folder", root, out, "--on_error=skip")
    assert r.returncode == 0, r.stderr
    assert (out / "bad_files.txt").read_text().startswith(f"{root / 'dog' / '0.png'}\tempty file")
    assert json.loads((out / "manifest.json").read_text())["bad"] == 1
