"""Which sides of a hidden ReLU layer's backward-pass bounds are computed, and in what order.

A ReLU's relaxation depends on its bounds only when it is unstable; a neuron proved inactive
(upper bound below 0) is the zero function whatever its lower bound, so nothing downstream of
it (its lines, the next layer's interval, the final bounds) reads that lower bound. A neuron
proved active keeps its identity lines, but its upper bound enters the next layer's interval.
"""

from __future__ import annotations

import enum


class SideOrder(enum.Enum):
    """How :func:`~nnbound.bounds.methods.layerwise_bounds` bounds a hidden ReLU layer's
    candidates by backward passes (in layers with enough work for more calls of smaller
    products to pay, :data:`~nnbound.bounds.methods._SIDE_SPLIT_MIN_MACS`)."""

    BOTH = "both"
    """Both sides of every candidate in one pass."""
    INACTIVE_FIRST = "inactive-first"
    """Neurons negative at the centre first get their upper side; those it proves inactive
    skip the lower side, the others (and every neuron not negative at the centre) get what
    they lack; in the last relaxed layer, whose bounds only its lines read, ``SIGNS_FIRST``'s
    order. The final bounds and every bound a relaxation reads equal ``BOTH``'s; only the lower
    bounds of neurons proved inactive, and in the last relaxed layer the upper bounds of
    neurons proved active, are left at their interval bounds."""
    SIGNS_FIRST = "signs-first"
    """Every neuron first gets the side that can settle its state (the lower side when
    positive at the centre, the upper when negative), the other side only where it stays
    unstable. A neuron proved active keeps its interval upper bound, which can loosen the next
    layer's interval, hence the final bounds (``Bounds.sides_skipped``): for a caller that only
    asks whether the bounds certify, and falls back to full bounds where they do not."""
