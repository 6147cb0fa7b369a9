"""Interval arithmetic helpers (IBP) in centre/radius form."""

from __future__ import annotations

from torch import Tensor

from nnbound.matvec import batched_matvec
from nnbound.network.layers import Activation, Layer, MaxPool2d
from nnbound.relax.base import Relaxation


def interval_forward(
    layers: tuple[Layer, ...],
    start: int,
    end: int,
    lower: Tensor,
    upper: Tensor,
    relax: dict[int, Relaxation],
    pre: dict[int, tuple[Tensor, Tensor]] | None = None,
) -> tuple[Tensor, Tensor]:
    """Propagate the box ``[lower, upper]`` (input of ``layers[start]``) to the input of
    ``layers[end]``. Activations use ``relax[i].interval``, max pools their exact monotone range
    ``[pool(lower), pool(upper)]``; if ``pre`` holds (tighter) bounds for an activation's or a
    max pool's input they are intersected with the propagated box first."""
    for i in range(start, end):
        layer = layers[i]
        if isinstance(layer, (Activation, MaxPool2d)):
            if pre is not None and i in pre:
                lower = lower.maximum(pre[i][0])
                upper = upper.minimum(pre[i][1])
            if isinstance(layer, MaxPool2d):
                # max is non-decreasing in every input: the box's corners give its range
                lower, upper = layer.forward(lower), layer.forward(upper)
            else:
                lower, upper = relax[i].interval(lower, upper)
        else:
            mid = layer.forward((upper + lower) / 2)
            rad = layer.forward_abs((upper - lower) / 2)
            lower, upper = mid - rad, mid + rad
    return lower, upper


def box_concretize(a: Tensor, const: Tensor, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """Min/max of ``a . y + const`` over the box ``[lower, upper]`` (``a`` ``(N, S, *shape)``)."""
    flat = a.reshape(*a.shape[:2], -1)
    mid = ((upper + lower) / 2).reshape(lower.shape[0], -1)
    rad = ((upper - lower) / 2).reshape(lower.shape[0], -1)
    m = batched_matvec(flat, mid)
    r = batched_matvec(flat.abs(), rad)
    return m - r + const, m + r + const
