"""Per-layer linear CKA of trained nets against a base net on the same validation images, with a figure.

  python tools/analyze.py --base runs/mini/half0A --nets runs/mini/half0B runs/mini/transfer0A0B_1_3 --out report/cka

Each run folder's final.caffemodel is loaded into the deploy net (default prototxt/mini/deploy.prototxt, the
miniature's); the first --images images of a validation store (default data/mini/half0B_val: half B's 800
validation images, which tools/mini_study.py made) are centre-cropped and mean-subtracted (default
data/mini/half0A_mean.binaryproto, the mean the transfers from half A use). Linear CKA (repro/study/cka.py) of each
layer's output against the base net's is 1 for representations equal up to rotation and scale, ~0 for unrelated
ones. Writes cka.csv (net, layer, cka) and cka.png/.pdf (CKA against layer, one line per net).
"""
import argparse
from pathlib import Path

from repro.atomic import atomic_write_text
from repro.cli import tool_main
from repro.study.analysis import cka_by_layer, load_images, plot_cka, representations, run_weights


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="run folder of the reference net (its final.caffemodel)")
    p.add_argument("--nets", nargs="+", required=True, help="run folders to compare with the base")
    p.add_argument("--deploy", default="prototxt/mini/deploy.prototxt", help="deploy net (default: the miniature's)")
    p.add_argument("--val", default="data/mini/half0B_val", help="image store of the validation images")
    p.add_argument("--mean", default="data/mini/half0A_mean.binaryproto", help="mean image subtracted")
    p.add_argument("--images", type=int, default=800, help="how many of the store's first images (default 800)")
    p.add_argument("--crop", type=int, default=56)
    p.add_argument("--out", default="report/cka")
    a = p.parse_args(argv)
    weights = {d: run_weights(d) for d in [a.base, *a.nets]}   # every run named before any work
    images = load_images(a.val, a.mean, a.images, a.crop)
    base = representations(a.deploy, weights[a.base], images)
    rows = {}
    for d in a.nets:
        rows[Path(d).name] = cka_by_layer(base, representations(a.deploy, weights[d], images))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["net,layer,cka"] + [f"{n},{layer},{v:.6f}" for n, r in rows.items() for layer, v in r.items()]
    atomic_write_text(out / "cka.csv", "\n".join(lines) + "\n")
    plot_cka(rows, out / "cka")
    for n, r in rows.items():
        print(n + ": " + "  ".join(f"{layer} {v:.3f}" for layer, v in r.items()))


if __name__ == "__main__":
    tool_main("analyze", main)
