"""Prepare every dataset of the study from an ILSVRC-2012 copy, decoding each image once.

  python tools/prepare_imagenet.py --train ILSVRC2012/train --val ILSVRC2012/val --val-labels val.txt --out data

Writes DATA/train and DATA/val (one 256×256 store per image set) and, per dataset of the study (whole, half0A …
half3B, halfnatmanA/B, reduced0001 … reduced1000), a shuffled index list into them and its mean (see
repro/data/prepare.py and the README's ImageNet section). Resumable: rerun the same command after a kill.
"""
import argparse
import sys

from repro.cli import tool_main
from repro.data.checks import POLICIES


def main(argv=None) -> int:
    from repro.data.prepare import prepare

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", required=True, help="ILSVRC-2012 train folder: <synset>/*.JPEG")
    ap.add_argument("--val", required=True, help="ILSVRC-2012 val folder: *.JPEG")
    ap.add_argument("--val-labels", required=True, help="Caffe's val.txt: `name label` per line")
    ap.add_argument("--out", required=True, help="the data folder the study reads (DIR/data)")
    ap.add_argument("--synsets", help="class order (Caffe's synsets.txt); default: sorted train folder names")
    ap.add_argument("--seed", type=int, default=0, help="seed of the index lists' shuffles (recorded)")
    ap.add_argument("--shuffle", action=argparse.BooleanOptionalAction, default=True,
                    help="shuffle each dataset's index list (default); --no-shuffle keeps class order")
    ap.add_argument("--workers", type=int, default=None, help="decoding threads (default: every core)")
    ap.add_argument("--on-error", choices=POLICIES, default="fail",
                    help="fail (default): stop listing every bad image; skip: leave them out")
    a = ap.parse_args(argv)
    prepare(a.train, a.val, a.val_labels, a.out, synsets=a.synsets, seed=a.seed, shuffle=a.shuffle,
            workers=a.workers, on_error=a.on_error, log=lambda m: print(m, file=sys.stderr, flush=True))
    return 0


if __name__ == "__main__":
    tool_main("prepare_imagenet", main)
