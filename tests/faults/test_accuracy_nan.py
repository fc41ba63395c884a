"""A diverged net's NaN scores are wrong predictions, not correct ones (Caffe's >= is false against NaN)."""
import math

import torch

from repro.layers.loss import accuracy


def test_nan_rows_are_never_correct():
    scores = torch.tensor([[0.1, 0.9, 0.0], [math.nan, math.nan, math.nan], [0.2, math.nan, 0.1],
                           [0.7, 0.2, 0.1]])
    label = torch.tensor([1.0, 0.0, 0.0, 0.0])
    acc, per_class = accuracy(scores, label, top_k=1)
    assert acc.item() == 0.5  # rows 0 and 3 right; the all-NaN row and the partly-NaN row wrong
    assert per_class.tolist() == [torch.tensor(1 / 3).item(), 1.0, 0.0]  # 1 of 3 in float32
    acc5, _ = accuracy(torch.full((4, 3), math.nan), label, top_k=2)
    assert acc5.item() == 0.0


def test_inf_scores_are_wrong_too():
    acc, _ = accuracy(torch.tensor([[math.inf, 0.0], [1.0, 0.0]]), torch.tensor([0.0, 0.0]))
    assert acc.item() == 0.5
