"""CLEVER: estimated robustness by extreme value theory, on any differentiable PyTorch model.

``nnbound.clever(model, x, targets="untargeted")`` or the estimator :class:`Clever`; the
pieces are usable alone: :mod:`~nnbound.clever.sampling` (the samplers),
:mod:`~nnbound.clever.weibull` (the reverse-Weibull fit), :mod:`~nnbound.clever.transforms`
(BPDA input transformations), :mod:`~nnbound.clever.targets` (the reference's target rules)
and :mod:`~nnbound.clever.io` (the two-step flow's sample files).
"""

from __future__ import annotations

from nnbound.clever.estimator import (
    Clever,
    CleverResult,
    CleverSamples,
    TargetScore,
    clever,
    gradient_norms,
    second_order_bound,
)
from nnbound.clever.sampling import NORM_KEYS, Sampler
from nnbound.clever.weibull import WeibullFit, fit_reverse_weibull

__all__ = [
    "NORM_KEYS",
    "Clever",
    "CleverResult",
    "CleverSamples",
    "Sampler",
    "TargetScore",
    "WeibullFit",
    "clever",
    "fit_reverse_weibull",
    "gradient_norms",
    "second_order_bound",
]
