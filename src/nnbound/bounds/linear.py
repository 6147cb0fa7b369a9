"""The one backward pass behind Fast-Lin, CROWN and CROWN-general.

A linear bound of spec rows ``A_out . y`` (y the output of layer ``end - 1``) is carried back
layer by layer to the input: through a linear layer by its transpose (plus its bias), through an
activation by the relaxation's lines, choosing per entry the upper line where the coefficient is
positive for the upper bound (the lower line where it is negative), and the other way round for
the lower bound. At the input the input set concretizes ``A . x + const`` (``||A||_q * eps``).
The methods differ only in the relaxations they pass in.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from nnbound.network.layers import Activation, Dense, Layer, Shape
from nnbound.relax.base import LinearRelaxation
from nnbound.sets.box import InputSet


def _contract(a: Tensor, b: Tensor) -> Tensor:
    """Sum of ``a * b`` over the trailing axes of ``b`` (``b`` broadcasts over ``a``'s leading
    axes): the constant a linear form picks up from a bias or an intercept."""
    prod = a * b
    return prod.reshape(*prod.shape[:2], -1).sum(-1)


def backward_linear_bounds(
    layers: tuple[Layer, ...],
    shapes: list[Shape],
    end: int,
    a: Tensor,
    const: Tensor,
    lines: dict[int, LinearRelaxation],
    ball: InputSet,
    *,
    lower: bool = True,
    upper: bool = True,
) -> tuple[Tensor | None, Tensor | None]:
    """Bounds of ``a . y_end + const`` where ``y_end`` is the output of ``layers[end - 1]``.

    Args:
        layers, shapes: the network's layers and ``shapes[i]`` = input shape of layer i.
        end: how many layers the spec sits on top of.
        a: ``(N, S, *shapes[end])`` spec coefficients (one row block per ball row).
        const: ``(N, S)`` constant added to the spec.
        lines: for each activation layer index below ``end``, its relaxation lines
            (tensors ``(N, *shape)``).
        ball: the input set (N rows).
        lower, upper: which side(s) to compute (the other is returned as None).

    Returns:
        ``(lower, upper)``, each ``(N, S)`` or None.
    """
    a_lo = a if lower else None
    a_up = a if upper else None
    c_lo = const if lower else None
    c_up = const if upper else None
    for i in range(end - 1, -1, -1):
        layer = layers[i]
        if isinstance(layer, Activation):
            rl = lines[i]
            same = a_lo is a_up
            ls, lb = rl.lower_slope.unsqueeze(1), rl.lower_bias.unsqueeze(1)
            us, ub = rl.upper_slope.unsqueeze(1), rl.upper_bias.unsqueeze(1)
            # Upper bound: upper line where the coefficient is positive, lower line elsewhere;
            # the lower bound the other way round. One mask serves both sides when they share A.
            if a_up is not None:
                positive = a_up > 0
                c_up = c_up + _contract(a_up, torch.where(positive, ub, lb))
                new_up = a_up * torch.where(positive, us, ls)
            if a_lo is not None:
                positive = positive if same else a_lo > 0
                c_lo = c_lo + _contract(a_lo, torch.where(positive, lb, ub))
                a_lo = a_lo * torch.where(positive, ls, us)
            if a_up is not None:
                a_up = new_up
        else:
            bias = layer.bias_map(shapes[i + 1])
            if bias is not None:
                if a_up is not None:
                    c_up = c_up + _contract(a_up, bias)
                if a_lo is not None:
                    c_lo = c_lo + _contract(a_lo, bias)
            if a_up is not None:
                a_up = layer.transpose(a_up, shapes[i])
            if a_lo is not None:
                a_lo = layer.transpose(a_lo, shapes[i])
    out_lo = ball.concretize(a_lo, c_lo)[0] if a_lo is not None else None
    out_up = ball.concretize(a_up, c_up)[1] if a_up is not None else None
    return out_lo, out_up


def start_rows(
    layers: tuple[Layer, ...], shapes: list[Shape], end: int, idx: Tensor, dtype, device
) -> tuple[Tensor, Tensor, int]:
    """Spec rows selecting neurons ``idx`` (``(N, U)`` flat indices) of the output of
    ``layers[end - 1]``, already carried through that layer when it is Dense (a row gather
    instead of a one-hot matrix product). Returns ``(a, const, new_end)``."""
    n, u = idx.shape
    last = layers[end - 1]
    if isinstance(last, Dense):
        a = last.weight[idx]  # (N, U, in)
        const = last.bias[idx]
        return a, const, end - 1
    size = math.prod(shapes[end])
    a = torch.zeros(n, u, size, dtype=dtype, device=device)
    a.scatter_(2, idx.unsqueeze(-1), 1.0)
    return a.reshape(n, u, *shapes[end]), torch.zeros(n, u, dtype=dtype, device=device), end
