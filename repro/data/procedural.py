"""The procedural images of the built-in dataset (see builtin.py): 20 classes, rendered in numpy, vectorised.

Each class is a batch of images rendered from random per-image parameters (RandomState seeded by
[seed, class], so any class can be regenerated alone and the result does not depend on the other classes):

* natural classes 0-9 are full-frame textures made from smooth noise fields, random points and warped
  sinusoids, shown through a soft random region;
* man-made classes 10-19 are one antialiased geometric object (signed-distance masks in a randomly rotated,
  scaled and shifted frame);
* both get the same colouring: a foreground hue from the class's 3 preferred hues of 8 shared ones, a
  background hue with low-frequency clutter of another hue, an illumination gradient and sensor noise.
"""
from __future__ import annotations

import numpy as np

VERSION = 1
SIZE, CROP = 64, 56
TRAIN_PER_CLASS, VAL_PER_CLASS = 300, 50
SEED = 2014

NATURAL = ("spots", "stripes", "clouds", "cells", "veins", "ripples", "fur", "speckle", "marble", "foam")
MANMADE = ("square", "disk", "triangle", "cross", "ring", "star", "checker", "grid", "bars", "nested")
CLASSES = NATURAL + MANMADE
NATURAL_IDS = tuple(range(10))
MANMADE_IDS = tuple(range(10, 20))

# 8 hues (RGB) shared by all classes; class c prefers hues c, c+3, c+5 (mod 8) for its foreground
HUES = np.array([[200, 40, 40], [230, 140, 30], [220, 210, 50], [60, 170, 60],
                 [40, 170, 170], [50, 80, 210], [150, 60, 190], [130, 95, 60]], np.float32)


# ------------------------------------------------------------------------------------------------ fields
_C = (np.arange(SIZE, dtype=np.float32) + 0.5) / SIZE * 2 - 1
_Y, _X = np.meshgrid(_C, _C, indexing="ij")


def _upsample_matrix(g: int) -> np.ndarray:
    """SIZE×g matrix of bilinear weights (wrapping), so U @ grid @ U.T upsamples a g×g grid smoothly."""
    pos = (np.arange(SIZE) + 0.5) / SIZE * g - 0.5
    i0 = np.floor(pos).astype(int)
    f = (pos - i0).astype(np.float32)
    U = np.zeros((SIZE, g), np.float32)
    U[np.arange(SIZE), i0 % g] += 1 - f
    U[np.arange(SIZE), (i0 + 1) % g] += f
    return U


def _noise(rng, n: int, g: int) -> np.ndarray:
    """Smooth noise in [0, 1]: a random g×g grid upsampled bilinearly to SIZE×SIZE."""
    U = _upsample_matrix(g)
    return np.einsum("ij,njk,lk->nil", U, rng.random_sample((n, g, g)).astype(np.float32), U, optimize=True)


def _fractal(rng, n: int, grids=(3, 6, 12), weights=(1.0, 0.5, 0.25)) -> np.ndarray:
    f = sum(w * _noise(rng, n, g) for g, w in zip(grids, weights))
    f -= f.min(axis=(1, 2), keepdims=True)
    return f / np.maximum(f.max(axis=(1, 2), keepdims=True), 1e-6)


def _sample(grid: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear lookup of per-image grids (n, gh, gw) at continuous, wrapping coordinates (u: columns)."""
    n, gh, gw = grid.shape
    x, y = u * gw, v * gh
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = x - x0, y - y0
    idx = np.arange(n)[:, None, None]

    def at(yy, xx):
        return grid[idx, yy % gh, xx % gw]

    return ((at(y0, x0) * (1 - fx) + at(y0, x0 + 1) * fx) * (1 - fy)
            + (at(y0 + 1, x0) * (1 - fx) + at(y0 + 1, x0 + 1) * fx) * fy)


def _frame(rng, n: int, scale=(0.5, 0.9), shift=0.3):
    """Per-image local coordinates (u, v) after a random rotation, scale and shift; and the pixel size."""
    th = rng.uniform(0, 2 * np.pi, n).astype(np.float32)[:, None, None]
    s = rng.uniform(*scale, n).astype(np.float32)[:, None, None]
    tx, ty = (rng.uniform(-shift, shift, (2, n)).astype(np.float32)[..., None, None])
    x, y = _X - tx, _Y - ty
    c, si = np.cos(th), np.sin(th)
    u, v = (c * x + si * y) / s, (-si * x + c * y) / s
    return u, v, (2.0 / SIZE) / s


def _dist2(p: np.ndarray) -> np.ndarray:
    """Squared distances (n, m, SIZE, SIZE) from every pixel to m points per image, p (n, m, 2) = (x, y)."""
    dx2 = (_C - p[..., 0, None]) ** 2
    dy2 = (_C - p[..., 1, None]) ** 2
    return dy2[..., :, None] + dx2[..., None, :]


def _soft(d: np.ndarray, px) -> np.ndarray:
    """Antialiased inside-mask from a signed distance (negative inside), edge one pixel wide."""
    return np.clip(0.5 - d / px, 0, 1)


# ------------------------------------------------------------------------------------------------ natural
def _spots(rng, n):
    m = 14
    p = rng.uniform(-1.1, 1.1, (n, m, 2)).astype(np.float32)
    r = rng.uniform(0.07, 0.18, (n, m)).astype(np.float32)
    d2 = _dist2(p)
    d2 *= (-0.5 / r ** 2)[..., None, None]
    f = np.exp(d2.max(axis=1))  # max of Gaussians: exp is monotone
    return np.clip((f - 0.45) * 6, 0, 1)


def _stripes(rng, n):
    u, v, _ = _frame(rng, n, (0.8, 1.2), 0.5)
    freq = rng.uniform(2.5, 4.5, n).astype(np.float32)[:, None, None]
    warp = _fractal(rng, n, (3, 5), (1.0, 0.4)) * rng.uniform(0.8, 1.6, n).astype(np.float32)[:, None, None]
    return np.clip(np.sin(2 * np.pi * freq * (u * 0.5 + warp * 0.5)) * 3, -1, 1) * 0.5 + 0.5


def _clouds(rng, n):
    f = _fractal(rng, n, (4, 8, 16), (1.0, 0.6, 0.3))
    t = np.median(f.reshape(n, -1), axis=1)[:, None, None]
    return np.clip((f - t) * 8 + 0.5, 0, 1)


def _cells(rng, n):
    m = 16
    p = rng.uniform(-1.2, 1.2, (n, m, 2)).astype(np.float32)
    d2 = _dist2(p)
    near = np.sqrt(np.partition(d2, 1, axis=1)[:, :2])  # nearest and second-nearest site
    border = near[:, 1] - near[:, 0]
    return np.clip(1.5 - border / 0.06, 0, 1)


def _veins(rng, n):
    f = _fractal(rng, n, (3, 6), (1.0, 0.5))
    k = rng.uniform(3, 5, n).astype(np.float32)[:, None, None]
    return np.clip(2.0 - np.abs(np.sin(np.pi * k * f)) * 4, 0, 1)


def _ripples(rng, n):
    c = rng.uniform(-0.8, 0.8, (2, n)).astype(np.float32)[..., None, None]
    r = np.sqrt((_X - c[0]) ** 2 + (_Y - c[1]) ** 2)
    freq = rng.uniform(3, 5.5, n).astype(np.float32)[:, None, None]
    wob = _noise(rng, n, 4) * 0.6
    return np.clip(np.sin(2 * np.pi * freq * (r + wob * 0.25)) * 2.5, -1, 1) * 0.5 + 0.5


def _fur(rng, n):
    u, v, _ = _frame(rng, n, (1.0, 1.0), 0.0)
    g = rng.random_sample((n, 6, 40)).astype(np.float32)  # stretched: long strokes along u
    f = _sample(g, u * 0.5, v * 0.5)
    return np.clip((f - 0.5) * 4 + 0.5, 0, 1)


def _speckle(rng, n):
    g = rng.random_sample((n, 28, 28)).astype(np.float32)
    f = _sample(g, _X[None] * 0.5 + 0.5, _Y[None] * 0.5 + 0.5)
    patch = _noise(rng, n, 3)
    return np.clip((f - 0.72 + 0.15 * (patch - 0.5)) * 8, 0, 1)


def _marble(rng, n):
    u, v, _ = _frame(rng, n, (0.9, 1.1), 0.5)
    turb = _fractal(rng, n, (4, 8, 16), (1.0, 0.5, 0.25))
    return np.sin(2 * np.pi * (u * 1.2 + turb * 2.0)) * 0.5 + 0.5


def _foam(rng, n):
    m = 10
    p = rng.uniform(-1.1, 1.1, (n, m, 2)).astype(np.float32)
    rad = rng.uniform(0.12, 0.3, (n, m)).astype(np.float32)
    d = np.sqrt(_dist2(p))
    d -= rad[..., None, None]
    ring = np.abs(d).min(axis=1)
    return np.clip(1.5 - ring / 0.05, 0, 1)


# ------------------------------------------------------------------------------------------------ man-made
def _square(u, v, px):
    return _soft(np.maximum(np.abs(u), np.abs(v)) - 0.8, px)


def _disk(u, v, px):
    return _soft(np.sqrt(u * u + v * v) - 0.9, px)


def _triangle(u, v, px):
    s3 = np.float32(np.sqrt(3) / 2)
    d = np.maximum(np.maximum(-v - 0.5, s3 * u + 0.5 * v - 0.5), -s3 * u + 0.5 * v - 0.5)
    return _soft(d * 1.6, px)


def _cross(u, v, px):
    a, b = np.abs(u), np.abs(v)
    return _soft(np.minimum(np.maximum(a - 1.0, b - 0.3), np.maximum(a - 0.3, b - 1.0)), px)


def _ring(u, v, px):
    return _soft(np.abs(np.sqrt(u * u + v * v) - 0.75) - 0.2, px)


def _star(u, v, px):
    r, phi = np.sqrt(u * u + v * v), np.arctan2(v, u)
    tri = np.abs(((phi * 5 / (2 * np.pi)) % 1) - 0.5) * 2  # 1 at the points, 0 between
    return _soft(r - (0.45 + 0.6 * tri), px)


def _checker(u, v, px):
    inside = _soft(np.maximum(np.abs(u), np.abs(v)) - 0.9, px)
    return inside * (np.sin(np.pi * 2 * u) * np.sin(np.pi * 2 * v) > 0)


def _grid(u, v, px):
    inside = _soft(np.maximum(np.abs(u), np.abs(v)) - 1.0, px)
    lu = np.abs(((u * 1.5 + 0.5) % 1) - 0.5)
    lv = np.abs(((v * 1.5 + 0.5) % 1) - 0.5)
    return inside * _soft(np.minimum(lu, lv) - 0.08, px * 1.5)


def _bars(u, v, px):
    inside = _soft(np.maximum(np.abs(u), np.abs(v)) - 0.9, px)
    return inside * _soft(np.abs(((u * 1.4) % 1) - 0.5) - 0.22, px * 1.4)


def _nested(u, v, px):
    m = np.maximum(np.abs(u), np.abs(v))
    return _soft(m - 1.0, px) * _soft(np.abs(((m * 2.2) % 1) - 0.5) - 0.25, px * 2.2)


_TEXTURES = (_spots, _stripes, _clouds, _cells, _veins, _ripples, _fur, _speckle, _marble, _foam)
_SHAPES = (_square, _disk, _triangle, _cross, _ring, _star, _checker, _grid, _bars, _nested)


# ------------------------------------------------------------------------------------------------ render
def _colours(rng, n, cls):
    pref = np.array([cls % 8, (cls + 3) % 8, (cls + 5) % 8])
    fg = HUES[pref[rng.randint(0, 3, n)]]
    bg = HUES[rng.randint(0, 8, n)]
    same = (np.abs(fg - bg).sum(axis=1) < 1)
    bg[same] = 255 - bg[same]
    jit = rng.uniform(0.75, 1.2, (2, n, 1)).astype(np.float32)
    return np.clip(fg * jit[0], 0, 255), np.clip(bg * jit[1] * 0.8, 0, 255)


def render_class(cls: int, n: int, seed: int) -> np.ndarray:
    """n images of class `cls`: uint8 n×3×SIZE×SIZE, BGR (as Caffe stores images)."""
    rng = np.random.RandomState([seed, cls])
    if cls < 10:
        mask = _TEXTURES[cls](rng, n)
        # a soft random region of plain background keeps the texture from always filling the frame
        region = np.clip((_fractal(rng, n, (2, 4), (1.0, 0.5)) - 0.25) * 5, 0, 1)
        mask = mask * region
    else:
        u, v, px = _frame(rng, n, (0.45, 0.8), 0.28)
        mask = _SHAPES[cls - 10](u, v, px).astype(np.float32)
    fg, bg = _colours(rng, n, cls)
    fg, bg = fg[:, ::-1, None, None], bg[:, ::-1, None, None]  # RGB -> BGR, as (n, 3, 1, 1)
    # background: its colour with a low-frequency clutter field of a second random hue
    clutter = _fractal(rng, n, (3, 7), (1.0, 0.5)) * rng.uniform(0.15, 0.45, n).astype(np.float32)[:, None, None]
    hue2 = HUES[rng.randint(0, 8, n)][:, ::-1, None, None]
    # img = back * (1 - mask) + fg * mask, with back = bg * (1 - clutter) + hue2 * clutter (channel-first)
    img = bg + (hue2 - bg) * clutter[:, None]
    img += (fg - img) * mask[:, None]
    # illumination gradient and sensor noise (uniform with std sigma: much cheaper to draw than Gaussian)
    gdir = rng.uniform(-0.25, 0.25, (2, n)).astype(np.float32)[..., None, None]
    img *= (1 + gdir[0] * _X + gdir[1] * _Y)[:, None]
    sigma = rng.uniform(4, 12, n).astype(np.float32)[:, None, None, None] * np.float32(np.sqrt(12))
    noise = rng.random_sample(img.shape).astype(np.float32)
    noise -= 0.5
    noise *= sigma
    img += noise
    np.rint(img, out=img)
    return np.clip(img, 0, 255).astype(np.uint8)  # BGR CHW, as Caffe stores images


def generate(train_per_class: int = TRAIN_PER_CLASS, val_per_class: int = VAL_PER_CLASS, seed: int = SEED):
    """All images: (train uint8, train labels, val uint8, val labels), class-major order."""
    per = train_per_class + val_per_class
    tr, va = [], []
    for c in range(len(CLASSES)):
        imgs = render_class(c, per, seed)
        tr.append(imgs[:train_per_class])
        va.append(imgs[train_per_class:])
    lab = lambda k: np.repeat(np.arange(len(CLASSES), dtype=np.int32), k)
    return np.concatenate(tr), lab(train_per_class), np.concatenate(va), lab(val_per_class)
