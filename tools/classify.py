"""Caffe's python/classify.py: top-5 classes of image files from a trained net.

  python tools/classify.py --model prototxt/caffenet/deploy.prototxt --weights runs/half0A/final.caffemodel \\
      --mean DIR/data/half0A_mean.binaryproto --dataset half0A img.jpg ...
  python tools/classify.py --weights runs/half0A/final.onnx img.jpg      # mean, crop, classes from its metadata

Caffe's TEST preprocessing: squash to 256×256 (BGR), centre crop to the net's input, minus the mean. With
--dataset, output i names the dataset's i-th class (a half-A net's outputs are global ILSVRC classes).
"""
import argparse

from repro.cli import tool_main


def main(argv=None) -> int:
    from repro.classify import classify

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+", help="image files")
    ap.add_argument("--model", help="deploy prototxt (omit for an .onnx --weights)")
    ap.add_argument("--weights", required=True, help=".caffemodel, .pt or .onnx")
    ap.add_argument("--mean", help="mean .binaryproto (256×256, the training set's)")
    ap.add_argument("--mean-value", help="per-channel mean B,G,R instead (e.g. 104,117,123)")
    ap.add_argument("--dataset", help="the net's training dataset: a name (half0A, whole, ...) or its index list "
                                      "(DIR/data/half0A_train_lmdb), to name the global classes")
    ap.add_argument("--top", type=int, default=5)
    a = ap.parse_args(argv)
    mean = a.mean or ([float(x) for x in a.mean_value.split(",")] if a.mean_value else None)
    for path, best in classify(a.model or a.weights, a.images, weights=a.weights, mean=mean, dataset=a.dataset,
                               top=a.top):
        print(path)
        for score, name in best:
            print(f"  {score:.4f}  {name}")
    return 0


if __name__ == "__main__":
    tool_main("classify", main)
