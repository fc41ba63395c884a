"""The training engine behind ``repro.Solver.step``: a static run plan of a Net (frozen prefix without
backward, no host sync per step), the numerics modes it runs under, and data-parallel training on top of the
same step.

``plan`` (:class:`NetPlan`), ``modes`` (faithful / fp32 / tf32 / fast), ``ddp`` (torchrun +
DistributedDataParallel as the Solver's comm).
"""
from .modes import MODES, Numerics, apply_numerics, numerics
from .plan import NetPlan, feedable

__all__ = ["NetPlan", "feedable", "MODES", "Numerics", "numerics", "apply_numerics"]
