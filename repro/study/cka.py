"""Linear centred kernel alignment (Kornblith et al. 2019) between two representations of the same images.

CKA(X, Y) = ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F), X (n x p) and Y (n x q) the activations of
n images, columns centred. It is invariant to orthogonal transforms and isotropic scaling of either
representation, so it compares what two nets compute at a layer, not how their units happen to be ordered.
Computed in float64, on whichever form is smaller: the feature form above (p x q products, cost O(n p q)) when
the layers are narrower than the number of images, else the equal Gram form <K_c, L_c>_F / (||K_c||_F ||L_c||_F)
with K_c = X_c X_c^T, L_c = Y_c Y_c^T (n x n, cost O(n^2 (p + q))): a conv layer's output is wide (the
miniature's conv1: 32 x 26 x 26 = 21,632 features), and its p x p product would need 3.7 GB.
"""
from __future__ import annotations

import numpy as np

from ..errors import ReproError


class CKAError(ReproError):
    pass


def _flat(x, name) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim < 2:
        raise CKAError(f"{name}: need (images, features...) activations, got shape {a.shape}")
    return a.reshape(a.shape[0], -1)


def linear_cka(x, y) -> float:
    """Linear CKA of activations x and y (first axis: the same images in the same order)."""
    x, y = _flat(x, "x"), _flat(y, "y")
    if x.shape[0] != y.shape[0]:
        raise CKAError(f"x has {x.shape[0]} images, y has {y.shape[0]}: CKA needs the same images")
    if x.shape[0] < 2:
        raise CKAError("CKA needs at least 2 images")
    x = x - x.mean(axis=0, keepdims=True)
    y = y - y.mean(axis=0, keepdims=True)
    n = x.shape[0]
    if x.shape[1] * y.shape[1] <= n * n:
        cross = np.linalg.norm(y.T @ x) ** 2
        nx, ny = np.linalg.norm(x.T @ x), np.linalg.norm(y.T @ y)
    else:   # ||Y^T X||_F^2 = <X X^T, Y Y^T>_F and ||X^T X||_F = ||X X^T||_F
        kx, ky = x @ x.T, y @ y.T
        cross = float(np.vdot(kx, ky))
        nx, ny = np.linalg.norm(kx), np.linalg.norm(ky)
    if nx == 0.0 or ny == 0.0:
        raise CKAError("a representation is constant over the images; CKA is undefined")
    return float(cross / (nx * ny))
