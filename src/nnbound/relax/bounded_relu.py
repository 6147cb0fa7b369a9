"""The bounded ReLU ``f(z) = min(max(z, 0), c)`` (``c > 0``; the CLEVER reference's ``brelu``
models use ``c = 1``).

``f`` is piecewise linear with two kinks, at ``0`` and at ``c``: it is ``0`` left of 0, the
identity on ``[0, c]`` and ``c`` right of ``c``. On pre-activation bounds ``[l, u]``:

* **Inside one piece** (``u <= 0``, ``l >= c`` or ``0 <= l <= u <= c``) both lines are ``f``
  itself: exact.
* **Lower line.** If ``l >= 0`` the interval meets only the kink at ``c``, where ``f`` is
  concave (``f = min(z, c)``), so the chord from ``(l, l)`` to ``(u, c)`` lies below ``f``. If
  ``l < 0 < u``, any line ``s z`` through the origin with ``0 <= s <= s_max = min(1, c / u)``
  is below ``f`` on ``[l, u]``:

  - ``z <= 0``: ``s z <= 0 = f(z)`` because ``s >= 0``;
  - ``0 <= z <= c``: ``s z <= z = f(z)`` because ``s <= 1``;
  - ``c <= z <= u``: ``s z <= s u <= c = f(z)`` because ``s <= c / u``.

  (``s_max`` is the slope to ``(u, f(u))``: the line is the convex envelope's face.)
* **Upper line**, the mirror image. If ``u <= c`` the interval meets only the kink at 0, where
  ``f = max(z, 0)`` is convex, so the chord from ``(l, 0)`` to ``(u, u)`` lies above ``f`` (the
  ReLU's chord). If ``l < c < u``, any line ``c + t (z - c)`` through ``(c, c)`` with
  ``0 <= t <= t_max = c / (c - min(l, 0))`` (``= 1`` when ``l >= 0``) is above ``f``:

  - ``z >= c``: ``c + t (z - c) >= c = f(z)`` because ``t >= 0``;
  - ``0 <= z <= c``: ``c + t (z - c) - z = (1 - t)(c - z) >= 0`` because ``t <= 1``;
  - ``l <= z <= 0`` (only when ``l < 0``): ``c + t (z - c) >= c + t (l - c) = c - t (c - l)
    >= 0 = f(z)`` because ``t <= c / (c - l)``.

The free slopes ``s`` and ``t`` follow the ReLU's :class:`~nnbound.relax.relu.LowerSlope`
rule, read as "the line at a kink that is not a chord":

* ``ADAPTIVE`` (CROWN): the slope of the two admissible extremes whose line encloses the
  smaller area with ``f`` on ``[l, u]``. The area is linear in the slope, so an extreme is
  optimal: ``s = s_max`` iff ``l + u >= 0`` (ReLU's ``|u| >= |l|``), ``t = t_max`` iff
  ``l + u <= 2c`` (the mirror image); ties take the steeper line.
* ``ADAPTIVE_STRICT``: the same, ties take slope 0.
* ``PARALLEL`` (Fast-Lin): both lines get the slope ``(f(u) - f(l)) / (u - l)`` of the
  endpoints' chord. For one kink this is Fast-Lin's parallel ReLU pair; for two kinks it is
  ``c / (u - l)``, which is ``<= s_max`` (``u - l > u``) and ``<= t_max`` (``u > c``).
* ``ZERO``: both free slopes 0 (``f >= 0``, ``f <= c``).

The derivative is 1 on ``(0, c)`` and 0 outside ``[0, c]``; at a kink it may be anything in
``[0, 1]`` (Clarke's generalized derivative; autograd's ``clamp`` says 1, ``hardtanh`` 0), so
``derivative_interval`` is ``[1, 1]`` only when ``0 < l <= u < c``, ``[0, 0]`` only when
``u < 0`` or ``l > c``, else ``[0, 1]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from nnbound.errors import InputError
from nnbound.relax.base import LinearRelaxation, ParametricLines
from nnbound.relax.relu import LowerSlope


@dataclass(frozen=True)
class BoundedReluRelaxation:
    """Relaxation of ``min(max(z, 0), cap)`` (see the module docstring for the lines and why
    they are sound).

    Attributes:
        cap: the upper saturation value ``c > 0``.
        rule: how the non-chord line at a kink is chosen (a :class:`LowerSlope`).
    """

    cap: float = 1.0
    rule: LowerSlope = LowerSlope.ADAPTIVE

    def __post_init__(self) -> None:
        if not (math.isfinite(self.cap) and self.cap > 0.0):
            raise InputError(f"bounded ReLU cap must be finite and > 0, got {self.cap}")

    @property
    def is_piecewise_linear(self) -> bool:
        return True

    @property
    def kinks(self) -> tuple[float, ...]:
        """Where the slope changes; a neuron is unstable when a kink lies strictly inside."""
        return (0.0, float(self.cap))

    def _f(self, z: Tensor) -> Tensor:
        return torch.clamp(z, 0.0, self.cap)

    def linear(self, lower: Tensor, upper: Tensor) -> LinearRelaxation:
        c = self.cap
        lo, up = lower, upper
        zero = torch.zeros_like(lo)
        one = torch.ones_like(lo)
        cap = torch.full_like(lo, c)
        # Widths are only divided by where the interval is unstable (u > l); elsewhere 1.
        width = torch.where(up > lo, up - lo, one)
        # Slope of the endpoints' chord, (f(u) - f(l)) / (u - l): Fast-Lin's parallel slope.
        chord = (self._f(up) - self._f(lo)) / width

        # u <= 0 keeps the zero lines set first.
        identity = (lo >= 0) & (up <= c)
        saturated = lo >= c
        # Lower line ---------------------------------------------------------------------
        # exact pieces: 0 (u <= 0), c (l >= c), z (0 <= l, u <= c)
        lo_slope = torch.where(identity, one, zero)
        lo_bias = torch.where(saturated & ~identity, cap, zero)
        # 0 <= l < c < u: the chord (l, l) -> (u, c), below the concave min(z, c).
        cap_kink_only = (lo >= 0) & (lo < c) & (up > c)
        lo_slope = torch.where(cap_kink_only, chord, lo_slope)
        lo_bias = torch.where(cap_kink_only, lo - chord * lo, lo_bias)
        # l < 0 < u: s z with 0 <= s <= s_max = min(1, c / u).
        zero_kink = (lo < 0) & (up > 0)
        s_max = torch.clamp(c / torch.where(zero_kink, up, one), max=1.0)
        s = self._free_slope(s_max, chord, lo + up)
        lo_slope = torch.where(zero_kink, s, lo_slope)
        lo_bias = torch.where(zero_kink, zero, lo_bias)
        # Upper line ---------------------------------------------------------------------
        up_slope = torch.where(identity, one, zero)
        up_bias = torch.where(saturated & ~identity, cap, zero)
        # l < 0 < u <= c: the ReLU chord (l, 0) -> (u, u), above the convex max(z, 0).
        relu_kink_only = (lo < 0) & (up > 0) & (up <= c)
        up_slope = torch.where(relu_kink_only, chord, up_slope)
        up_bias = torch.where(relu_kink_only, -chord * lo, up_bias)
        # l < c < u: c + t (z - c) with 0 <= t <= t_max = c / (c - min(l, 0)).
        cap_kink = (lo < c) & (up > c)
        t_max = c / (c - torch.clamp(lo, max=0.0))
        t = self._free_slope(t_max, chord, 2.0 * c - (lo + up))
        up_slope = torch.where(cap_kink, t, up_slope)
        up_bias = torch.where(cap_kink, c * (1.0 - t), up_bias)
        return LinearRelaxation(lo_slope, lo_bias, up_slope, up_bias)

    def _free_slope(self, steepest: Tensor, chord: Tensor, score: Tensor) -> Tensor:
        """The free slope at a kink: ``steepest`` when ``score`` favours it (``score >= 0``,
        or ``> 0`` for the strict rule), else 0; Fast-Lin's ``chord``; or 0."""
        if self.rule is LowerSlope.PARALLEL:
            # The chord slope never exceeds the steepest admissible one (module docstring);
            # the min only guards rounding.
            return torch.minimum(chord, steepest)
        if self.rule is LowerSlope.ZERO:
            return torch.zeros_like(steepest)
        take = score >= 0 if self.rule is LowerSlope.ADAPTIVE else score > 0
        return torch.where(take, steepest, torch.zeros_like(steepest))

    def parametric(self, lower: Tensor, upper: Tensor) -> ParametricLines:
        """alpha-CROWN's family: the two free slopes of the module docstring as fractions of
        their largest admissible values, ``s = theta_lower s_max`` (lower line ``s z`` where
        ``l < 0 < u``) and ``t = theta_upper t_max`` (upper line ``c + t (z - c)`` where
        ``l < c < u``); every other line stays the relaxation's own."""
        c = self.cap
        base = self.linear(lower, upper)
        one = torch.ones_like(lower)
        zero_kink = (lower < 0) & (upper > 0)
        cap_kink = (lower < c) & (upper > c)
        s_max = torch.clamp(c / torch.where(zero_kink, upper, one), max=1.0)
        t_max = c / (c - torch.clamp(lower, max=0.0))
        zero = torch.zeros_like(lower)
        default_lower = torch.where(zero_kink, (base.lower_slope / s_max).clamp(0, 1), zero)
        default_upper = torch.where(cap_kink, (base.upper_slope / t_max).clamp(0, 1), zero)

        def make(theta_lower: Tensor | None, theta_upper: Tensor | None) -> LinearRelaxation:
            ls, lb, us, ub = (
                t.unsqueeze(1)
                for t in (base.lower_slope, base.lower_bias, base.upper_slope, base.upper_bias)
            )
            if theta_lower is not None:
                free = zero_kink.unsqueeze(1)
                ls = torch.where(free, theta_lower * s_max.unsqueeze(1), ls)
                lb = torch.where(free, torch.zeros_like(lb), lb)
            if theta_upper is not None:
                free = cap_kink.unsqueeze(1)
                t = theta_upper * t_max.unsqueeze(1)
                us = torch.where(free, t, us)
                ub = torch.where(free, c * (1.0 - t), ub)
            return LinearRelaxation(ls, lb, us, ub)

        return ParametricLines(default_lower, default_upper, zero_kink, cap_kink, make)

    def interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        # f is non-decreasing.
        return self._f(lower), self._f(upper)

    def derivative_interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        c = self.cap
        # Closed at the kinks (Clarke's generalized derivative there is [0, 1]), so the
        # interval holds whichever one-sided derivative autograd picks (clamp's is 1,
        # hardtanh's 0).
        lo = ((lower > 0) & (upper < c)).to(lower.dtype)
        hi = ((upper >= 0) & (lower <= c)).to(lower.dtype)
        return lo, hi
