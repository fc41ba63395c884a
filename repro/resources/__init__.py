"""ILSVRC-2012 constants and the small reference files the paper's study needs, shipped with the package.

This is the one place that knows about ImageNet: the split code (`repro.study.splits`), the grid
(`repro.study.grid`) and the figures (`repro.study.figures`) are generic over the number of classes and take
these values as defaults.

Files here (copied from the paper's own repository, yosinski/convnet_transfer @ 9838c27):
  synsets.txt, synset_words.txt   Caffe's ILSVRC12 class order (label i = line i)
  half_nat_idx.txt, half_man_idx.txt
                                  the natural (449) / man-made (551) partition, original class indices
  class_splits.json               the class indices of every half, regenerated from the paper's seeding rule
  paper_results.csv               one row per folder of the paper's results/ (its numbers per net, from its logs)
"""
from __future__ import annotations

import csv
import json
from functools import lru_cache
from importlib import resources as _res

# ---- ILSVRC-2012 and the paper's study (the paper's training protocol) --------------------------------------------
NUM_CLASSES = 1000                      # ILSVRC-2012 classification classes, in synsets.txt order
SPLIT_SEEDS = (0, 1, 2, 3)              # make_reduced_dataset.py --seed s for the four random A/B splits
REDUCED_PER_CLASS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 750, 1000)   # --perclass values of make_reduced_datasets.sh
WHOLE_PER_CLASS = 1300                  # "reduced-1300" is the whole training set (largest classes have 1300)
TRANSFER_LAYERS = 7                     # n = 1..7 (conv1..fc7); fc8 is never transferred
VAL_IMAGES_PER_CLASS = 50


def _text(name: str) -> str:
    return _res.files(__name__).joinpath(name).read_text()


def path(name: str):
    """A Traversable for a shipped resource file (use `.read_text()` or `importlib.resources.as_file`)."""
    return _res.files(__name__).joinpath(name)


@lru_cache(maxsize=None)
def synsets() -> tuple[str, ...]:
    """WordNet ids in Caffe's label order (label i = synsets()[i])."""
    return tuple(line.split()[0] for line in _text("synsets.txt").splitlines() if line.strip())


@lru_cache(maxsize=None)
def synset_words() -> tuple[str, ...]:
    """Human-readable class names in label order."""
    return tuple(line.split(" ", 1)[1] for line in _text("synset_words.txt").splitlines() if line.strip())


def _indices(name: str) -> tuple[int, ...]:
    return tuple(int(line) for line in _text(name).split())


@lru_cache(maxsize=None)
def natural_indices() -> tuple[int, ...]:
    """The 449 natural classes (halfnatmanA; the paper's text calls this half B)."""
    return _indices("half_nat_idx.txt")


@lru_cache(maxsize=None)
def manmade_indices() -> tuple[int, ...]:
    """The 551 man-made classes (halfnatmanB)."""
    return _indices("half_man_idx.txt")


@lru_cache(maxsize=None)
def class_splits() -> dict[str, tuple[int, ...]]:
    """Original class indices of every half: half0A … half3B, halfnatmanA, halfnatmanB."""
    raw = json.loads(_text("class_splits.json"))
    return {k: tuple(v) for k, v in raw.items() if not k.startswith("_")}


@lru_cache(maxsize=None)
def paper_results() -> tuple[dict, ...]:
    """Rows of paper_results.csv (strings, as written), one per folder of the paper's results/."""
    return tuple(csv.DictReader(_text("paper_results.csv").splitlines()))


def paper_scores() -> dict[str, float]:
    """The paper's per-net metric (mean of the 10 best test top-1 values) for every net that has logs."""
    return {r["name"]: float(r["nb_top10_mean_top1"]) for r in paper_results() if r["has_data"] == "True"}
