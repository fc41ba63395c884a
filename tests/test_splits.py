"""The paper's datasets: byte-identical lists, the seeding quirk, reduced sets, generic class counts, errors."""
import hashlib
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, missing_reference

from repro import resources
from repro.study.splits import (
    SplitError,
    check_partition,
    list_image_folder,
    make_splits,
    random_half,
    read_file_list,
    study_datasets,
)

# md5 sums of the validation lists as published in yosinski/convnet_transfer ilsvrc12/make_reduced_datasets.sh
# (the comment block "md5sum *valid/files.txt"); whole_valid is the input list itself.
PAPER_VALID_MD5 = {
    "half0A": "2f10009e20d77eb7007cf70674958b94",
    "half0B": "cce39b383d681345c873faf2c0c28d33",
    "half1A": "9ab48b6420504e32ff4498e7d8569f8b",
    "half1B": "57522f5e2aa69547846089f5197c8a6b",
    "half2A": "03d05b6565ab9176baccdd05d746bfd1",
    "half2B": "18de8b37378e07e60dc602b6130eeeb2",
    "half3A": "46086440ddde128f169f23331998499d",
    "half3B": "e5f9f0895fd0d49a8ac0b804ec891282",
    "halfnatmanA": "4fb63c72229ba07106a558127192cb9f",
    "halfnatmanB": "f03be5732fb6bc7928ee53397b043613",
    "whole": "b6284a7c08fba47457c2c1f6049a156e",
}


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_validation_lists_are_byte_identical_to_the_paper(shared, tmp_path):
    src = shared / "reference" / "ilsvrc12" / "whole_valid_files.txt"
    if not src.is_file():
        missing_reference(f"{src} is absent")
    written = make_splits(src, tmp_path, per_class=())
    assert {k: _md5(p / "files.txt") for k, p in written.items()} == PAPER_VALID_MD5
    # 25,000 images per random half, 22,450 natural / 27,550 man-made (PROTOCOL.md section 2).
    sizes = {k: len((p / "files.txt").read_text().splitlines()) for k, p in written.items()}
    assert sizes["half2B"] == 25000 and sizes["halfnatmanA"] == 22450 and sizes["halfnatmanB"] == 27550
    idx = (written["half0B"] / "idxmap.txt").read_text().splitlines()
    assert idx[0] == "# Orig_idx new_idx" and idx[1:4] == ["3 0", "4 1", "6 2"] and len(idx) == 501


def test_seeding_rule_reproduces_the_shipped_class_splits():
    splits = resources.class_splits()
    for s in resources.SPLIT_SEEDS:
        a, b = random_half(1000, s)
        assert a == splits[f"half{s}A"] and b == splits[f"half{s}B"]
    assert splits["halfnatmanA"] == resources.natural_indices()
    # The quirk that matters: seeding with the integer s (not the list [s]) gives another split.
    rng = np.random.RandomState(0)
    assert tuple(sorted(rng.choice(np.arange(1000), 500, replace=False).tolist())) != splits["half0A"]


@pytest.mark.parametrize("n", [20, 21, 7])
def test_halves_are_generic_over_the_class_count(n):
    for s in range(4):
        a, b = random_half(n, s)
        assert len(a) == n // 2 and sorted(a + b) == list(range(n)) and list(a) == sorted(a)
        assert random_half(n, s) == (a, b)
    assert len({random_half(n, s) for s in range(4)}) > 1


def test_reduced_sets_keep_the_first_k_lines_of_each_class_with_original_labels(tmp_path):
    lines = [("img%03d.jpg" % i, lab) for i, lab in enumerate([2, 0, 2, 1, 2, 0, 3, 2, 1, 0])]
    out = make_splits(lines, tmp_path, num_classes=4, seeds=(0,), partition=([0, 3], [1, 2]), per_class=(1, 2))
    assert (out["reduced0001"] / "files.txt").read_text() == "img000.jpg 2\nimg001.jpg 0\nimg003.jpg 1\nimg006.jpg 3\n"
    assert (out["reduced0002"] / "files.txt").read_text().splitlines() == [
        "img000.jpg 2", "img001.jpg 0", "img002.jpg 2", "img003.jpg 1", "img005.jpg 0", "img006.jpg 3",
        "img008.jpg 1"]
    # The partition halves relabel by rank, keeping input order.
    assert (out["halfnatmanB"] / "files.txt").read_text().splitlines() == [
        "img000.jpg 1", "img002.jpg 1", "img003.jpg 0", "img004.jpg 1", "img007.jpg 1", "img008.jpg 0"]
    assert (out["halfnatmanA"] / "idxmap.txt").read_text() == "# Orig_idx new_idx\n0 0\n3 1\n"
    assert (out["reduced0002"] / "idxmap.txt").read_text().splitlines()[1:] == ["0 0", "1 1", "2 2", "3 3"]
    assert sorted(out) == ["half0A", "half0B", "halfnatmanA", "halfnatmanB", "reduced0001", "reduced0002", "whole"]


def test_study_datasets_names_match_the_paper():
    names = [d.name for d in study_datasets()]
    assert names[:3] == ["whole", "half0A", "half0B"] and "half3B" in names and "halfnatmanB" in names
    assert names[-11:] == [f"reduced{k:04d}" for k in (1, 2, 5, 10, 25, 50, 100, 250, 500, 750, 1000)]
    with pytest.raises(SplitError, match="give a partition"):
        study_datasets(num_classes=20)
    assert [d.name for d in study_datasets(20, partition=None, per_class=())][-1] == "half3B"


def test_bad_inputs_get_specific_errors(tmp_path):
    bad = tmp_path / "list.txt"
    bad.write_text("a.jpg 1\nb.jpg\n")
    with pytest.raises(SplitError, match=r"list.txt:2: expected 'relative/path label'"):
        read_file_list(bad)
    bad.write_text("a.jpg 1\nb.jpg 1000\n")
    with pytest.raises(SplitError, match=r"list.txt:2: label 1000 of 'b.jpg' is out of range \(expected 0..999\)"):
        read_file_list(bad)
    bad.write_text("a.jpg x\n")
    with pytest.raises(SplitError, match=r"list.txt:1: label 'x' of 'a.jpg' is not an integer"):
        read_file_list(bad)
    with pytest.raises(SplitError, match=r"in both halves: \[1\], missing: \[3\]"):
        check_partition([0, 1], [1, 2], 4)


def test_image_folder_is_listed_in_synset_order(tmp_path):
    for wnid, files in {"n01443537": ["b.JPEG", "a.JPEG"], "n01440764": ["z.JPEG", "notes.txt"]}.items():
        (tmp_path / wnid).mkdir()
        for fn in files:
            (tmp_path / wnid / fn).write_bytes(b"\xff\xd8")  # not empty: an empty image file is a DataError
    assert list_image_folder(tmp_path) == [("n01440764/z.JPEG", 0), ("n01443537/a.JPEG", 1),
                                           ("n01443537/b.JPEG", 1)]
    (tmp_path / "train").mkdir()
    with pytest.raises(SplitError, match="unknown: \\['train'\\]"):
        list_image_folder(tmp_path)


def test_tool_writes_the_datasets(tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"i{i}.jpg {i % 6}\n" for i in range(30)))
    r = subprocess.run([sys.executable, str(REPO / "tools" / "make_splits.py"), "--list", str(lst), "--out",
                        str(tmp_path / "out"), "--num-classes", "6", "--half-files", "/dev/null", "/dev/null"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode != 0 and "exactly once" in r.stderr
    r = subprocess.run([sys.executable, str(REPO / "tools" / "make_splits.py"), "--list", str(lst), "--out",
                        str(tmp_path / "out"), "--num-classes", "6", "--per-class", "2"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "reduced0002" / "files.txt").read_text().count("\n") == 12
    assert len((tmp_path / "out" / "half1A" / "files.txt").read_text().splitlines()) == 15
    assert not (tmp_path / "out" / "halfnatmanA").exists()
