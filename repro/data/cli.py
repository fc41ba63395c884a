"""Command lines of tools/convert_imageset.py, tools/compute_image_mean.py and tools/make_builtin.py.

They take Caffe's flags (`--resize_height=256 --shuffle --backend=lmdb ROOT/ LIST DB`) so old scripts keep
working; the default backend is our store. Bad input ends with one message listing every bad file (exit 1).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .checks import POLICIES, DataError, apply_policy


def _log(msg: str):
    print(msg, file=sys.stderr, flush=True)


def convert_imageset_main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="convert_imageset",
        description="Decode and squash a set of images once, into our store (default) or a Caffe LMDB/LevelDB "
                    "of Datum records, as Caffe's convert_imageset does.")
    ap.add_argument("root", help="ROOTFOLDER: list entries are relative to it (with --folder: ROOT/<class>/<image>)")
    ap.add_argument("listfile", nargs="?", help="LISTFILE of `relative/path label` lines (omit with --folder)")
    ap.add_argument("out", help="the store / database folder to create")
    ap.add_argument("--folder", action="store_true",
                    help="index ROOT/<class>/* (ILSVRC2012 train layout) instead of reading a list file")
    ap.add_argument("--synsets", help="with --folder: class order file (e.g. synsets.txt); default sorted names")
    ap.add_argument("--backend", choices=("store", "lmdb", "leveldb"), default="store")
    ap.add_argument("--resize_height", type=int, default=0)
    ap.add_argument("--resize_width", type=int, default=0)
    # Shuffled by default: a class-sorted store (what --folder lists give) would feed one class per batch for
    # thousands of iterations. Caffe's --shuffle is still accepted; --no-shuffle keeps the list order.
    ap.add_argument("--shuffle", action=argparse.BooleanOptionalAction, default=True,
                    help="shuffle the list once with --seed, recorded in the store's manifest (default); "
                         "--no-shuffle keeps the list order")
    ap.add_argument("--seed", type=int, default=0, help="seed of the shuffle (default 0)")
    ap.add_argument("--gray", action="store_true", help="decode as grayscale (one channel)")
    ap.add_argument("--check_size", action="store_true", help="LMDB/LevelDB: every image the size of the first")
    ap.add_argument("--num_classes", type=int, default=None, help="labels must lie in 0..num_classes-1")
    ap.add_argument("--on_error", choices=POLICIES, default="fail",
                    help="fail (default): stop with a list of every bad file; skip: leave them out")
    ap.add_argument("--workers", type=int, default=None, help="decoding threads")
    args = ap.parse_args(argv)
    if args.folder == (args.listfile is not None):
        ap.error("give either LISTFILE or --folder")
    if (args.resize_height > 0) != (args.resize_width > 0):
        ap.error("give both --resize_height and --resize_width, or neither")

    from . import convert, sources

    try:
        classes = None
        # Index without dropping: under --on_error=skip the files left out here (missing, 0 bytes) are listed
        # in the store's bad_files.txt and counted in its manifest with the ones that fail to decode.
        if args.folder:
            synsets = sources.read_class_list(args.synsets) if args.synsets else None
            entries, classes, indexed_bad = sources.scan_folder(args.root, synsets)
        else:
            entries, indexed_bad = sources.index_list(args.listfile, args.root, args.num_classes)
        apply_policy(f"indexing {args.listfile or args.root}", indexed_bad, args.on_error)
        _log(f"A total of {len(entries)} images.")
        kw = dict(height=args.resize_height, width=args.resize_width, gray=args.gray, shuffle=args.shuffle,
                  seed=args.seed, on_error=args.on_error, num_workers=args.workers, log=_log)
        if args.backend == "store":
            out = convert.convert_to_store(entries, args.root, args.out, classes=classes,
                                           source=args.listfile or args.root, known_bad=indexed_bad, **kw)
        else:
            out = convert.convert_to_db(entries, args.root, args.out, backend=args.backend,
                                        check_size=args.check_size, **kw)
    except DataError as e:
        _log(str(e))
        return 1
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        _log(f"convert_imageset: {e}")
        return 1
    _log(f"Done: {out}")
    return 0


def compute_image_mean_main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="compute_image_mean",
                                 description="Mean image of a store or a Caffe LMDB/LevelDB, written as a Caffe "
                                             "binaryproto (1×C×H×W), as Caffe's compute_image_mean.")
    ap.add_argument("input", help="store folder or LMDB/LevelDB folder")
    ap.add_argument("output", nargs="?", help="mean .binaryproto to write")
    ap.add_argument("--backend", default=None, help="ignored (the folder's content decides); kept for Caffe scripts")
    args = ap.parse_args(argv)
    from .convert import compute_image_mean

    try:
        mean = compute_image_mean(args.input, args.output, log=_log)
    except (ValueError, FileNotFoundError) as e:
        _log(f"compute_image_mean: {e}")
        return 1
    if args.output:
        _log(f"Write to {args.output}")
    _log(f"Number of channels: {mean.shape[0]}")
    for c in range(mean.shape[0]):
        # Caffe sums the channel in a float, one pixel after another, then divides (as its log shows)
        total = np.cumsum(mean[c].ravel(), dtype=np.float32)[-1]
        _log(f"mean_value channel [{c}]: {float(total / np.float32(mean[c].size)):.6g}")
    return 0


def make_builtin_main(argv=None) -> int:
    from .builtin import KINDS, ensure_builtin, export_images

    ap = argparse.ArgumentParser(prog="make_builtin", description="Generate the built-in dataset (seconds).")
    ap.add_argument("--kind", choices=KINDS, default="procedural",
                    help="procedural: the 20 classes of prototxt/small (default); hierarchical: the miniature's "
                         "32 classes in 8 families (prototxt/mini)")
    ap.add_argument("--root", help="where (default data/builtin, or data/mini for --kind hierarchical)")
    ap.add_argument("--export", default=None, help="also write every image as PNG under this folder")
    args = ap.parse_args(argv)
    root = args.root or ("data/mini" if args.kind == "hierarchical" else "data/builtin")
    try:
        root = ensure_builtin(root, kind=args.kind)
        if args.export:
            export_images(root, args.export)
    except FileExistsError as e:
        _log(f"make_builtin: {e}")
        return 1
    print(Path(root))
    return 0
