"""Softmax, SoftmaxWithLoss and Accuracy with Caffe's numerics."""
from __future__ import annotations

import torch

from .base import CaffeLayer, LayerError, canonical_axis, count, register

FLT_MIN = 1.1754943508222875e-38  # numeric_limits<float>::min(); -log(FLT_MIN) = 87.3365


def normalizer(mode: str, outer: int, inner: int, valid_count: int | None) -> float:
    """Caffe's ``LossLayer::GetNormalizer``: FULL = outer*inner, VALID = the non-ignored count (FULL when no
    ignore_label), BATCH_SIZE = outer, NONE = 1; never below 1."""
    if mode == "FULL":
        n = outer * inner
    elif mode == "VALID":
        n = outer * inner if valid_count is None else valid_count
    elif mode == "BATCH_SIZE":
        n = outer
    elif mode == "NONE":
        n = 1
    else:
        raise ValueError(f"unknown normalization mode {mode!r}")
    return max(1.0, float(n))


def _labels(layer, label: torch.Tensor, outer: int, inner: int, classes: int, ignore_label):
    """Labels as Caffe reads them (``static_cast<int>`` of the float blob), the valid mask, and a range check
    Caffe only makes in debug builds (an out-of-range label would read another sample's score)."""
    if label.numel() != outer * inner:
        raise LayerError(layer, f"number of labels ({label.numel()}) must match the number of predictions "
                         f"({outer} x {inner}); e.g. a label of shape (N,) for scores of shape (N, C)")
    lab = label.reshape(outer, inner)
    lab = lab.to(torch.long) if lab.is_floating_point() else lab.long()  # float -> long truncates, as C++ does
    valid = torch.ones_like(lab, dtype=torch.bool) if ignore_label is None else lab != ignore_label
    bad = valid & ((lab < 0) | (lab >= classes))
    if bool(bad.any()):
        raise LayerError(layer, f"label {int(lab[bad][0])} out of range [0, {classes}) (the scores have "
                         f"{classes} classes)")
    return torch.where(valid, lab, torch.zeros_like(lab)), valid


class _SoftmaxLoss(torch.autograd.Function):
    """Forward: prob = softmax, loss = sum over valid -log(max(prob[label], FLT_MIN)) / normalizer.
    Backward (``SoftmaxWithLossLayer::Backward_cpu``): (prob - onehot) * top_diff / normalizer, zero at
    ignored positions; the FLT_MIN cap does not cut the gradient (autograd of the capped log would)."""

    @staticmethod
    def forward(ctx, scores, lab, valid, axis, norm):
        outer, classes, inner = count(scores.shape, 0, axis), scores.shape[axis], count(scores.shape, axis + 1)
        prob = torch.softmax(scores, dim=axis)
        p_true = prob.reshape(outer, classes, inner).gather(1, lab.unsqueeze(1)).squeeze(1)
        per = -torch.log(torch.clamp(p_true, min=FLT_MIN))
        loss = torch.where(valid, per, torch.zeros_like(per)).sum() / norm
        ctx.save_for_backward(prob, lab, valid)
        ctx.dims = (outer, classes, inner, norm)
        ctx.mark_non_differentiable(prob)
        return loss, prob

    @staticmethod
    def backward(ctx, grad_loss, grad_prob):
        prob, lab, valid = ctx.saved_tensors
        outer, classes, inner, norm = ctx.dims
        diff = prob.reshape(outer, classes, inner).clone()
        diff.scatter_add_(1, lab.unsqueeze(1), torch.full_like(lab, -1, dtype=diff.dtype).unsqueeze(1))
        diff = diff * valid.unsqueeze(1).to(diff.dtype)
        diff = diff * (grad_loss / norm)
        return diff.reshape(prob.shape), None, None, None, None


def softmax_loss(scores, label, axis: int = 1, ignore_label=None, normalization: str = "VALID",
                 layer="SoftmaxWithLoss"):
    """Caffe's SoftmaxWithLossLayer on plain tensors: returns (loss, prob)."""
    axis = canonical_axis(layer, axis, scores.dim())
    outer, classes, inner = count(scores.shape, 0, axis), scores.shape[axis], count(scores.shape, axis + 1)
    lab, valid = _labels(layer, label, outer, inner, classes, ignore_label)
    valid_count = int(valid.sum()) if ignore_label is not None else None
    norm = normalizer(normalization, outer, inner, valid_count)
    return _SoftmaxLoss.apply(scores, lab, valid, axis, norm)


def accuracy(scores, label, top_k: int = 1, axis: int = 1, ignore_label=None, layer="Accuracy"):
    """Caffe's ``AccuracyLayer::Forward_cpu``: a prediction is correct when fewer than top_k classes score
    >= the true class's score (the true class counts itself), so ties count against it; a position with a
    NaN/inf score is wrong. Returns (accuracy, per-class accuracy); positions with ignore_label are skipped;
    no valid position gives 0."""
    axis = canonical_axis(layer, axis, scores.dim())
    outer, classes, inner = count(scores.shape, 0, axis), scores.shape[axis], count(scores.shape, axis + 1)
    if top_k > classes:
        raise LayerError(layer, f"top_k ({top_k}) must be <= the number of classes ({classes})")
    lab, valid = _labels(layer, label, outer, inner, classes, ignore_label)
    s3 = scores.detach().reshape(outer, classes, inner)
    true_score = s3.gather(1, lab.unsqueeze(1))
    better = (s3 >= true_score).sum(dim=1)  # includes the true class itself
    # A departure from Caffe, whose ``>=`` is false against NaN, so a NaN score vector counted as correct
    # (a diverged net then "scored" top-1 = 1.0): a position with any non-finite score is never correct.
    finite = torch.isfinite(s3).all(dim=1)
    correct = (better <= top_k) & valid & finite
    n_valid = int(valid.sum())
    acc = correct.sum().to(scores.dtype) / n_valid if n_valid else scores.new_zeros(())
    onehot = torch.zeros(outer * inner, classes, dtype=scores.dtype, device=scores.device)
    flat_lab, flat_valid = lab.reshape(-1), valid.reshape(-1)
    onehot[torch.arange(outer * inner, device=scores.device), flat_lab] = flat_valid.to(scores.dtype)
    per_class_n = onehot.sum(0)
    per_class_ok = (onehot * correct.reshape(-1, 1).to(scores.dtype)).sum(0)
    per_class = torch.where(per_class_n > 0, per_class_ok / per_class_n.clamp(min=1), torch.zeros_like(per_class_n))
    return acc, per_class


@register("Softmax")
class Softmax(CaffeLayer):
    """Caffe's SoftmaxLayer over ``axis`` (default 1)."""

    def setup(self, bottom_shapes):
        self.axis = canonical_axis(self.param, self.param.softmax_param.axis, len(bottom_shapes[0]))

    def out_shapes(self, bottom_shapes):
        return [bottom_shapes[0]]

    def forward(self, x):
        return (torch.softmax(x, dim=self.axis),)


def _loss_settings(layer):
    lp = layer.param.loss_param
    ignore = int(lp.ignore_label) if lp.HasField("ignore_label") else None
    if lp.HasField("normalize"):
        # Caffe: the deprecated `normalize` wins over `normalization` when given.
        mode = "VALID" if lp.normalize else "BATCH_SIZE"
    else:
        mode = lp.DESCRIPTOR.fields_by_name["normalization"].enum_type.values_by_number[lp.normalization].name
    return ignore, mode


@register("SoftmaxWithLoss")
class SoftmaxWithLoss(CaffeLayer):
    """Caffe's SoftmaxWithLossLayer: bottoms (scores, label), tops (loss[, prob])."""

    min_bottoms, max_bottoms = 2, 2
    min_tops, max_tops = 1, 2
    is_loss = True  # Caffe: LossLayer sets loss_weight 1 on top 0 by default

    def setup(self, bottom_shapes):
        self.axis = canonical_axis(self.param, self.param.softmax_param.axis, len(bottom_shapes[0]))
        self.ignore_label, self.normalization = _loss_settings(self)
        scores, label = bottom_shapes
        outer, inner = count(scores, 0, self.axis), count(scores, self.axis + 1)
        if count(label) != outer * inner:
            raise self.error(f"number of labels {count(label)} (label shape {label}) must match the number of "
                             f"predictions {outer * inner} (scores shape {scores}, axis {self.axis})")

    def out_shapes(self, bottom_shapes):
        return [()] + ([bottom_shapes[0]] if len(self.param.top) > 1 else [])

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1

    def forward(self, scores, label):
        loss, prob = softmax_loss(scores, label, self.axis, self.ignore_label, self.normalization, self.param)
        return (loss, prob) if len(self.param.top) > 1 else (loss,)


@register("Accuracy")
class Accuracy(CaffeLayer):
    """Caffe's AccuracyLayer: bottoms (scores, label), tops (accuracy[, per-class accuracy]). No gradient."""

    min_bottoms, max_bottoms = 2, 2
    min_tops, max_tops = 1, 2

    def setup(self, bottom_shapes):
        ap = self.param.accuracy_param
        self.top_k = int(ap.top_k)
        self.axis = canonical_axis(self.param, ap.axis, len(bottom_shapes[0]))
        self.ignore_label = int(ap.ignore_label) if ap.HasField("ignore_label") else None
        scores, label = bottom_shapes
        if self.top_k > scores[self.axis]:
            raise self.error(f"top_k ({self.top_k}) must be <= the number of classes ({scores[self.axis]})")
        outer, inner = count(scores, 0, self.axis), count(scores, self.axis + 1)
        if count(label) != outer * inner:
            raise self.error(f"number of labels {count(label)} (label shape {label}) must match the number of "
                             f"predictions {outer * inner} (scores shape {scores}, axis {self.axis})")

    def out_shapes(self, bottom_shapes):
        return [()] + ([(bottom_shapes[0][self.axis],)] if len(self.param.top) > 1 else [])

    def allow_force_backward(self, bottom_index):
        return False

    def forward(self, scores, label):
        acc, per_class = accuracy(scores, label, self.top_k, self.axis, self.ignore_label, self.param)
        return (acc, per_class) if len(self.param.top) > 1 else (acc,)
