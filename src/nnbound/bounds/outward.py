"""Bounds reported in float32 that hold for the real network: computed in float64, then
rounded outward.

A float32 backward pass accumulates rounding in every product and sum: with every neuron
stable the network is affine on the ball and CROWN's bound is exact in real arithmetic, yet
the float32 result was found up to 2.2e-5 above the true minimum of a margin (a point of the
ball violated the "certified" lower bound). So :func:`nnbound.bounds.api.bounds` evaluates a
lower-precision network in float64 (its float32 weights and input set are exactly
representable there, so it is the same network and set) and converts the result back with
:func:`round_outward`: round to nearest, then one more float32 ulp away from the interval.
Round-to-nearest moves a value by at most half an ulp; the extra ulp leaves at least half an
ulp of margin, which covers the float64 pass's own rounding unless its terms cancel by a factor
above ~2^29 / n.

Not done in a radius search (``tasks/radius.py`` passes ``outward=False``): it re-certifies its
radius in float64 itself, and its float32 evaluations only steer it.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor

from nnbound.bounds.result import Bounds, IntermediateBounds
from nnbound.sets.box import Box, InputSet
from nnbound.sets.lp_ball import LpBall


def needs_float64_pass(dtype: torch.dtype) -> bool:
    """Whether bounds computed in ``dtype`` are recomputed in float64 (every floating dtype
    narrower than float64)."""
    return dtype.is_floating_point and torch.finfo(dtype).bits < 64


def set_in_float64(ball: InputSet) -> InputSet:
    """The same input set with float64 tensors (exact: every narrower float is a float64)."""
    if isinstance(ball, LpBall):
        return replace(ball, center=ball.center.double(), eps=ball.eps.double())
    if isinstance(ball, Box):
        return replace(ball, lower=ball.lower.double(), upper=ball.upper.double())
    raise TypeError(f"unknown input set {type(ball).__name__}")


def round_down(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x`` (float64) in ``dtype``, below ``x`` by at least half an ulp of ``dtype``;
    NaN (an overflowed bound) becomes ``-inf`` (the bound that always holds)."""
    y = x.to(dtype)
    y = torch.nextafter(y, torch.full_like(y, -math.inf))
    return torch.where(torch.isnan(y), torch.full_like(y, -math.inf), y)


def round_up(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x`` (float64) in ``dtype``, above ``x`` by at least half an ulp; NaN becomes ``inf``."""
    y = x.to(dtype)
    y = torch.nextafter(y, torch.full_like(y, math.inf))
    return torch.where(torch.isnan(y), torch.full_like(y, math.inf), y)


def round_outward(b: Bounds, dtype: torch.dtype) -> Bounds:
    """Float64 bounds as ``dtype`` bounds that contain them (intermediate bounds too: the
    Jacobian bounds read them as pre-activation ranges)."""
    pre = {
        k: (round_down(lo, dtype), round_up(up, dtype))
        for k, (lo, up) in b.intermediate.pre.items()
    }
    return Bounds(
        round_down(b.lower, dtype),
        round_up(b.upper, dtype),
        b.method,
        IntermediateBounds(pre),
        b.sides_skipped,
    )


def nan_to_trivial(b: Bounds) -> Bounds:
    """A NaN bound (an overflow, e.g. eps 1e18) is no bound: ``-inf`` / ``inf`` say so
    soundly, and the CLI refuses to report them."""
    if not (torch.isnan(b.lower).any() or torch.isnan(b.upper).any()):
        return b
    lower = torch.where(torch.isnan(b.lower), torch.full_like(b.lower, -math.inf), b.lower)
    upper = torch.where(torch.isnan(b.upper), torch.full_like(b.upper, math.inf), b.upper)
    return replace(b, lower=lower, upper=upper)


__all__ = [
    "nan_to_trivial",
    "needs_float64_pass",
    "round_down",
    "round_outward",
    "round_up",
    "set_in_float64",
]
