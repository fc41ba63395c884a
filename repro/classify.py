"""Caffe's python/classify.py: a trained net's top-5 classes for image files, with Caffe's TEST preprocessing.

Each image is read as training read it (`image.read_image`: BGR, squashed to 256×256 with INTER_LINEAR, as
convert_imageset stores it), centre-cropped to the net's input and the mean subtracted at the crop's position
(`repro.data.transformer.Transformer`, pycaffe's caffe.io.Transformer). Output index i of a net trained on a
dataset (half0A, ...) is that dataset's i-th class, so predictions name the *global* ILSVRC class: the class list
comes from the dataset's index list (prepare_imagenet records its classes), from the split
(`repro.study.splits`), or from an ONNX file's metadata.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from . import resources
from .data.image import read_image
from .data.transformer import Transformer
from .errors import ReproError

SQUASH = 256


class ClassifyError(ReproError):
    """Inputs classify cannot use."""


def dataset_classes(dataset: str) -> list[str]:
    """The global synsets (wnids) of a dataset's outputs: an index list file, or a dataset name of the paper's
    1000-class study (half0A, halfnatmanB, whole, reduced0010)."""
    p = Path(dataset)
    if p.is_file():
        from .data.store import open_index

        classes = open_index(p).classes
        if not classes:
            raise ClassifyError(f"{p}: the index list records no classes")
        return list(classes)
    from .study.splits import study_datasets

    wnids = resources.synsets()
    for ds in study_datasets(resources.NUM_CLASSES):
        if ds.name == dataset:
            return [wnids[c] for c in ds.classes]
    raise ClassifyError(f"{dataset!r} is neither an index list file nor a dataset of the study (half0A, "
                        "halfnatmanB, whole, ...)")


def words(wnids) -> list[str]:
    """'n01440764 tench, Tinca tinca' for ILSVRC synsets, the wnid alone for others."""
    table = dict(zip(resources.synsets(), resources.synset_words()))
    return [f"{w} {table[w]}" if w in table else w for w in wnids]


def preprocessor(shape, mean=None, crop: int | None = None) -> Transformer:
    """Caffe's TEST preprocessing for an input of `shape` (N, C, H, W) from a 256×256 BGR H×W×C image."""
    t = Transformer({"data": tuple(shape)})
    t.set_transpose("data", (2, 0, 1))
    t.set_crop("data", crop or shape[-1])
    if mean is not None:
        t.set_mean("data", mean)
    return t


def load_images(paths, t: Transformer) -> np.ndarray:
    return np.stack([t.preprocess("data", read_image(p, SQUASH, SQUASH)) for p in paths])


def mean_from_meta(text: str) -> np.ndarray:
    """An ONNX export's `mean` metadata (repro.onnx.io.preprocess_meta): a mean image or per-channel values."""
    import base64

    m = json.loads(text)
    if isinstance(m, dict):
        return np.frombuffer(base64.b64decode(m["float32_base64"]), np.float32).reshape(m["shape"])
    return np.asarray(m, np.float32)


class Model:
    """Scores for a batch, from a prototxt + .caffemodel/.pt, or an .onnx file (onnxruntime)."""

    def __init__(self, model, weights=None):
        self.meta: dict = {}
        w = Path(weights) if weights else Path(model)
        if w.suffix == ".onnx":
            import onnx
            import onnxruntime as ort

            m = onnx.load(os.fspath(w), load_external_data=False)
            self.meta = {p.key: p.value for p in m.metadata_props}
            self.sess = ort.InferenceSession(os.fspath(w), providers=["CPUExecutionProvider"])
            inp = self.sess.get_inputs()[0]
            self.input = inp.name
            self.shape = (1, *[int(d) for d in inp.shape[1:]])
            self.net = None
        else:
            from .onnx.io import source_net

            self.net, _, self.meta = source_net(model, weights)
            if not self.net.inputs:
                raise ClassifyError(f"{model}: the net has no input blob (use a deploy prototxt)")
            self.input = self.net.inputs[0]
            dims = [list(lp.input_param.shape[0].dim) for lp in self.net.net_param.layer
                    if lp.type == "Input" and self.input in lp.top and lp.input_param.shape]
            if not dims or len(dims[0]) != 4:
                raise ClassifyError(f"{model}: input {self.input!r} has no N×C×H×W shape in its Input layer")
            self.shape = (1, *(int(d) for d in dims[0][1:]))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.net is None:
            out = self.sess.run(None, {self.input: batch.astype(np.float32)})[-1]
        else:
            import torch

            with torch.no_grad():
                res = self.net(**{self.input: torch.from_numpy(batch)})
            out = list(res.values())[-1].numpy() if isinstance(res, dict) else res.numpy()
        return out.reshape(len(batch), -1)


def classify(model, images, *, weights=None, mean=None, dataset=None, top: int = 5):
    """[(image, [(probability-or-score, 'wnid words'), ...top])] for each image path."""
    m = Model(model, weights)
    meta = m.meta
    if mean is None and "mean" in meta:
        mean = mean_from_meta(meta["mean"])
    elif isinstance(mean, (str, os.PathLike)):
        from .caffemodel import read_mean

        mean = read_mean(mean).reshape(-1, SQUASH, SQUASH)
    if dataset is not None:
        classes = dataset_classes(dataset)
    elif "labels" in meta:
        classes = json.loads(meta["labels"])
    else:
        classes = None
    crop = int(meta["crop"]) if "crop" in meta else None
    t = preprocessor(m.shape, mean, crop)
    scores = m(load_images(images, t))
    if classes is not None and len(classes) > scores.shape[1]:
        raise ClassifyError(f"the net has {scores.shape[1]} outputs, fewer than its {len(classes)} classes")
    if classes is not None:
        # the paper's prototxts keep fc8 at 1000 outputs for a 500-class half: labels 0..k-1 were the only
        # targets, so only those outputs name classes
        scores = scores[:, :len(classes)]
    names = words(classes) if classes is not None else [f"class {i}" for i in range(scores.shape[1])]
    out = []
    for path, s in zip(images, scores):
        order = np.argsort(-s, kind="stable")[:top]
        out.append((str(path), [(float(s[i]), names[i]) for i in order]))
    return out
