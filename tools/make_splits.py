"""Write the paper's datasets (random halves, natural/man-made halves, reduced sets) from a file list.

  python tools/make_splits.py --list whole_train/files.txt --out data/train
  python tools/make_splits.py --list whole_valid/files.txt --out data/valid --no-reduced
  python tools/make_splits.py --folder ILSVRC2012/train --out data/train

Writes <out>/<name>/files.txt and idxmap.txt for half0A … half3B, halfnatmanA/B, reduced0001 … reduced1000 and
whole, byte-identical to yosinski/convnet_transfer's make_reduced_datasets.sh for the same input list.
"""
import argparse

from repro import resources
from repro.cli import tool_main
from repro.study.splits import make_splits, read_indices


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--list", help="file list: 'name label' lines, labels in synsets.txt order")
    src.add_argument("--folder", help="ILSVRC2012 train/ (or val/ sorted into class subfolders)")
    p.add_argument("--out", required=True, help="output folder; one subfolder per dataset")
    p.add_argument("--num-classes", type=int, default=resources.NUM_CLASSES)
    p.add_argument("--seeds", type=int, nargs="*", default=list(resources.SPLIT_SEEDS),
                   help="random-split seeds (default: 0 1 2 3)")
    p.add_argument("--half-files", nargs=2, metavar=("A_IDX", "B_IDX"),
                   help="partition files for halfnatmanA/B (default: the shipped natural/man-made partition)")
    p.add_argument("--no-natman", action="store_true", help="skip the partition halves")
    p.add_argument("--per-class", type=int, nargs="*", default=list(resources.REDUCED_PER_CLASS),
                   help="reduced sets: first k images per class (default: 1 2 5 … 1000)")
    p.add_argument("--no-reduced", action="store_true", help="skip the reduced sets (e.g. for validation lists)")
    a = p.parse_args(argv)

    if a.no_natman:
        partition = None
    elif a.half_files:
        partition = (read_indices(a.half_files[0]), read_indices(a.half_files[1]))
    else:
        partition = a.num_classes == resources.NUM_CLASSES or None
    written = make_splits(a.list or a.folder, a.out, num_classes=a.num_classes, seeds=a.seeds,
                          partition=partition, per_class=() if a.no_reduced else a.per_class)
    for name, folder in written.items():
        n = sum(1 for _ in open(folder / "files.txt"))
        print(f"{name:14s} {n:8d} images  {folder / 'files.txt'}")


if __name__ == "__main__":
    tool_main("make_splits", main)
