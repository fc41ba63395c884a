"""Built-in images with ImageNet's structure in miniature: shared low-level statistics, family parts, classes.

Design (numpy, vectorised, deterministic from a seed, no download):

* low level, shared by every class: a background with a natural-image-like 1/f amplitude spectrum, coloured
  from one palette, plus sensor noise; every part is an oriented grating (Gabor-like stroke) with a colour blob,
  so oriented edges and colour blobs appear in every class;
* mid level, shared within a family: each of FAMILIES families owns PARTS_PER_FAMILY part prototypes whose
  orientations fan out evenly around the family's own (+-SPREAD), over its frequency band, with colours
  scattered around its hue (COLOUR_SPREAD), so a family's parts are told apart from each other but resemble
  each other more than other families' parts; natural families (0..3) have soft sinusoidal parts
  under Gaussian envelopes, man-made families (4..7) sharp square-wave parts in boxes near cardinal angles,
  so the natural/man-made halves share less than two random halves;
* classes: a class is a family plus a combination of PARTS_PER_CLASS of its parts, placed at random positions
  and amplitudes in each image. CLASSES_PER_FAMILY classes per family, FAMILIES * CLASSES_PER_FAMILY in all,
  so a random half of the classes shares low- and mid-level structure with the other half but no class.

`generate(train_per_class, val_per_class, seed)` returns (x_train, y_train, x_val, y_val) as uint8 NCHW BGR
like repro.data.procedural.generate; `family_of(label)` and `NATURAL_IDS` / `MANMADE_IDS` give the structure.
"""
from __future__ import annotations

import itertools

import numpy as np

VERSION = 2
SIZE, CROP = 64, 56
FAMILIES, PARTS_PER_FAMILY, PARTS_PER_CLASS, CLASSES_PER_FAMILY = 8, 6, 3, 4
NATURAL_FAMILIES = tuple(range(FAMILIES // 2))
N_CLASSES = FAMILIES * CLASSES_PER_FAMILY
NATURAL_IDS = tuple(c for c in range(N_CLASSES) if c // CLASSES_PER_FAMILY in NATURAL_FAMILIES)
MANMADE_IDS = tuple(c for c in range(N_CLASSES) if c // CLASSES_PER_FAMILY not in NATURAL_FAMILIES)
PATCH = 20
SPREAD = 0.7          # half-width (radians) of the fan of a family's part orientations
COLOUR_SPREAD = 0.2  # standard deviation of a part's colour around its family's hue
PART_AMP = 0.5       # a class part's amplitude (the distractor part of another family: 0.12)
SEED = 2014
TRAIN_PER_CLASS, VAL_PER_CLASS = 300, 50
CLASSES = tuple(f"{'nat' if c in NATURAL_IDS else 'man'}{c // CLASSES_PER_FAMILY}_{c % CLASSES_PER_FAMILY}"
                for c in range(N_CLASSES))


def family_of(label: int) -> int:
    return int(label) // CLASSES_PER_FAMILY


def _structure(seed: int):
    """Part prototypes (FAMILIES, PARTS, 3, PATCH, PATCH) in [-1, 1] and each class's part indices."""
    rng = np.random.RandomState([seed, 0])
    yy, xx = np.mgrid[0:PATCH, 0:PATCH].astype(np.float64)
    yy, xx = (yy - (PATCH - 1) / 2) / PATCH, (xx - (PATCH - 1) / 2) / PATCH
    parts = np.zeros((FAMILIES, PARTS_PER_FAMILY, 3, PATCH, PATCH), np.float32)
    combos = []
    for f in range(FAMILIES):
        natural = f in NATURAL_FAMILIES
        # family orientation and hue; man-made families sit near cardinal angles (architecture, objects)
        theta_f = rng.uniform(0, np.pi) if natural else rng.choice([0, np.pi / 2]) + rng.uniform(-0.15, 0.15)
        hue_f = rng.uniform(0.2, 1.0, 3) * (np.array([1.0, 0.9, 0.5]) if natural else np.array([0.6, 0.7, 1.0]))
        # a family's parts fan out evenly around its orientation and over its frequency band (each part shuffled
        # to a slot), so parts of one family are told apart by orientation, frequency and colour together
        slots = rng.permutation(PARTS_PER_FAMILY)
        fan = np.linspace(-SPREAD, SPREAD, PARTS_PER_FAMILY)
        for p in range(PARTS_PER_FAMILY):
            theta = theta_f + fan[slots[p]] + rng.uniform(-0.08, 0.08)
            lo, hi = (2.0, 4.5) if natural else (2.5, 5.0)
            freq = lo + (hi - lo) * ((slots[p] * 7) % PARTS_PER_FAMILY + rng.uniform(0.2, 0.8)) / PARTS_PER_FAMILY
            u = xx * np.cos(theta) + yy * np.sin(theta)
            wave = np.cos(2 * np.pi * freq * u + rng.uniform(0, 2 * np.pi))
            if natural:
                env = np.exp(-(xx ** 2 + yy ** 2) / (2 * 0.22 ** 2))
            else:
                wave = np.sign(wave)
                env = ((np.abs(xx) < 0.4) & (np.abs(yy) < 0.4)).astype(np.float64)
            colour = np.clip(hue_f + rng.normal(0, COLOUR_SPREAD, 3), 0.05, 1.0)
            parts[f, p] = (colour[:, None, None] * (wave * env)[None]).astype(np.float32)
        all_combos = list(itertools.combinations(range(PARTS_PER_FAMILY), PARTS_PER_CLASS))
        pick = rng.choice(len(all_combos), CLASSES_PER_FAMILY, replace=False)
        combos += [all_combos[i] for i in sorted(pick)]
    return parts, np.array(combos)


def _pink_noise(rng, n: int) -> np.ndarray:
    """n SIZE×SIZE fields with a 1/f amplitude spectrum, scaled to unit standard deviation."""
    fy = np.fft.fftfreq(SIZE)[:, None]
    fx = np.fft.rfftfreq(SIZE)[None, :]
    f = np.sqrt(fx ** 2 + fy ** 2)
    f[0, 0] = 1.0
    spec = (rng.standard_normal((n, SIZE, SIZE // 2 + 1)) + 1j * rng.standard_normal((n, SIZE, SIZE // 2 + 1))) / f
    spec[:, 0, 0] = 0
    field = np.fft.irfft2(spec, s=(SIZE, SIZE)).astype(np.float32)
    return field / field.std(axis=(1, 2), keepdims=True)


def render_class(label: int, count: int, seed: int, part: int = 0, structure=None) -> np.ndarray:
    """`count` images of class `label` as float32 RGB (count, 3, SIZE, SIZE) in [0, 255]; `part` 0 = train, 1 = val
    (separate streams, so val images are never train images)."""
    parts, combos = structure if structure is not None else _structure(seed)
    rng = np.random.RandomState([seed, 1 + part, label])
    f = family_of(label)
    # background: 1/f luminance texture tinted by a random palette colour (shared by all classes)
    tint = rng.uniform(0.3, 0.8, (count, 3, 1, 1)).astype(np.float32)
    img = 0.5 + 0.12 * _pink_noise(rng, count)[:, None] * tint + 0.15 * (tint - 0.55)
    # the class's parts, each at a random position and amplitude (plus one distractor part of another family)
    for p in combos[label]:
        _paste(img, parts[f, p], rng, PART_AMP)
    other = (f + rng.randint(1, FAMILIES, count)) % FAMILIES
    distract = rng.randint(0, PARTS_PER_FAMILY, count)
    for i in range(count):
        _paste(img[i:i + 1], parts[other[i], distract[i]], rng, 0.12)
    img += rng.normal(0, 0.03, img.shape).astype(np.float32)
    return np.clip(img * 255.0, 0, 255)


def _paste(img: np.ndarray, patch: np.ndarray, rng, amp: float) -> None:
    n = img.shape[0]
    ys = rng.randint(0, SIZE - PATCH + 1, n)
    xs = rng.randint(0, SIZE - PATCH + 1, n)
    a = (amp * rng.uniform(0.7, 1.3, n)).astype(np.float32)
    for i in range(n):
        img[i, :, ys[i]:ys[i] + PATCH, xs[i]:xs[i] + PATCH] += a[i] * patch


def generate(train_per_class: int, val_per_class: int, seed: int = SEED):
    """(x_train, y_train, x_val, y_val): uint8 NCHW BGR images and int labels, classes in label order."""
    structure = _structure(seed)
    out = []
    for part, per in ((0, train_per_class), (1, val_per_class)):
        xs = [render_class(c, per, seed, part, structure) for c in range(N_CLASSES)]
        x = np.concatenate(xs)[:, ::-1].round().astype(np.uint8)   # RGB -> BGR, as Caffe stores it
        out += [np.ascontiguousarray(x), np.repeat(np.arange(N_CLASSES), per)]
    return tuple(out)
