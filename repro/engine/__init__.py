"""The training engine: a static run plan of a Net (frozen prefix without backward, no host sync per step),
the numerics modes it runs under, and data-parallel training on top of the same step.

``plan`` (:class:`NetPlan`, :class:`TrainStep`), ``modes`` (faithful / fast numerics), ``ddp`` (torchrun +
DistributedDataParallel).
"""
from .plan import NetPlan, TrainStep, feedable

__all__ = ["NetPlan", "TrainStep", "feedable"]
