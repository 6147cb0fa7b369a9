"""CROWN-general relaxations of S-shaped activations (tanh, sigmoid, arctan).

These functions are convex for z < 0 and concave for z > 0. The lines follow the reference
(``activation_functions.py``, spec §5):

* ``u <= 0`` (convex): upper = chord, lower = tangent at the midpoint;
* ``l >= 0`` (concave): upper = tangent at the midpoint, lower = chord;
* ``l < 0 < u``: upper = a tangent at ``d >= 0`` that passes above ``(l, f(l))``; lower = a
  tangent at ``d <= 0`` that passes below ``(u, f(u))``; when no such tangent point lies inside
  the interval, the chord is valid and used.

Where we differ from the reference (and why): the reference finds the tangent point with ten
bisection steps that stop as soon as the residual is below 0.01 and then shifts the line by
``0.01 * slope``. For wide intervals that stops far from the tangent point and the line cuts
through the function (spec §12.1: violations up to ~1.9 for tanh). We bisect to machine
precision in float64, keeping the end of the bracket on the valid side, and use the tangent at
that end, which is sound by construction. ``TangentRule.REFERENCE`` reproduces the reference's
lines, checks each exactly against the function (at the interval's ends and where the
function's slope equals the line's: see :func:`line_is_valid`), keeps the valid ones and uses
the sound line where the reference's cuts through the function.

All lines are computed in float64 and their intercepts moved outward by a few units of the
working precision, so rounding the coefficients to float32 cannot make them cut the function.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
from torch import Tensor

from nnbound.relax.base import LinearRelaxation, ParametricLines
from nnbound.relax.functions import SmoothFunction

_BISECTION_STEPS = 64


class TangentRule(enum.Enum):
    """How the tangent point of an unstable S-shaped neuron is found."""

    EXACT = "exact"
    """Bisection to machine precision; sound by construction (the default)."""
    REFERENCE = "reference"
    """The reference's 10-step, 0.01-tolerance search and 0.01-slope shift, kept wherever the
    line is valid (checked exactly, see :func:`line_is_valid`), the EXACT line elsewhere."""


def _outward_margin(dtype: torch.dtype, *magnitudes: Tensor) -> Tensor:
    """A few units in the last place of ``dtype`` at the scale of the line's terms."""
    scale = torch.ones_like(magnitudes[0])
    for m in magnitudes:
        scale = scale + m.abs()
    return 4.0 * torch.finfo(dtype).eps * scale


def _chord(fn: SmoothFunction, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Slope and intercept of the line through (lo, f(lo)) and (hi, f(hi))."""
    flo, fhi = fn.f(lo), fn.f(hi)
    same = hi == lo
    width = torch.where(same, torch.ones_like(hi), hi - lo)
    slope = torch.where(same, fn.df(lo), (fhi - flo) / width)
    return slope, flo - slope * lo


def _tangent(fn: SmoothFunction, d: Tensor) -> tuple[Tensor, Tensor]:
    slope = fn.df(d)
    return slope, fn.f(d) - slope * d


def _bisect(valid_at: Tensor, lo: Tensor, hi: Tensor, residual, keep_hi: bool) -> Tensor:
    """Bisect ``[lo, hi]`` for the sign change of ``residual`` (valid where ``residual >= 0``).

    ``keep_hi`` says which end of the bracket is valid; that end is returned, so the tangent
    built on it is on the valid side of the true tangent point.
    """
    del valid_at
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        ok = residual(mid) >= 0
        if keep_hi:
            hi = torch.where(ok, mid, hi)
            lo = torch.where(ok, lo, mid)
        else:
            lo = torch.where(ok, mid, lo)
            hi = torch.where(ok, hi, mid)
    return hi if keep_hi else lo


def _mixed_upper_point(fn: SmoothFunction, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """For l < 0 < u: the smallest valid upper tangent point ``d*`` (a tangent at any ``d`` in
    ``[d*, u]`` passes above ``(l, f(l))``, hence above ``f`` on ``[l, u]``), and where no
    such point lies inside (then the chord is the upper line)."""
    fl = fn.f(l)

    def residual(d: Tensor) -> Tensor:  # tangent at d, evaluated at l, minus f(l)
        return fn.f(d) - fn.df(d) * (d - l) - fl

    use_chord = residual(u) < 0  # the tangent point lies beyond u: the chord is valid
    return _bisect(None, torch.zeros_like(u), u.clone(), residual, keep_hi=True), use_chord


def _exact_mixed_upper(fn: SmoothFunction, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Upper line for l < 0 < u: tangent at d >= d* (where it passes above (l, f(l)))."""
    d, use_chord = _mixed_upper_point(fn, l, u)
    ts, tb = _tangent(fn, d)
    cs, cb = _chord(fn, l, u)
    return torch.where(use_chord, cs, ts), torch.where(use_chord, cb, tb)


def _mixed_lower_point(fn: SmoothFunction, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """For l < 0 < u: the largest valid lower tangent point ``d*`` (a tangent at any ``d`` in
    ``[l, d*]`` passes below ``(u, f(u))``, hence below ``f`` on ``[l, u]``), and where no
    such point lies inside (then the chord is the lower line)."""
    fu = fn.f(u)

    def residual(d: Tensor) -> Tensor:  # f(u) minus the tangent at d evaluated at u
        return fu - fn.f(d) - fn.df(d) * (u - d)

    use_chord = residual(l) < 0  # the tangent point lies before l: the chord is valid
    return _bisect(None, l.clone(), torch.zeros_like(l), residual, keep_hi=False), use_chord


def _exact_mixed_lower(fn: SmoothFunction, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Lower line for l < 0 < u: tangent at d <= d* (where it passes below (u, f(u)))."""
    d, use_chord = _mixed_lower_point(fn, l, u)
    ts, tb = _tangent(fn, d)
    cs, cb = _chord(fn, l, u)
    return torch.where(use_chord, cs, ts), torch.where(use_chord, cb, tb)


def reference_mixed_upper(fn: SmoothFunction, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """The reference's ``find_d_UB`` line (spec §5), unverified: may be unsound."""
    lb, ub = torch.zeros_like(u), u.clone()
    d = u / 2
    done = torch.zeros_like(u, dtype=torch.bool)
    fl = fn.f(l)
    for _ in range(10):
        t = (fn.f(d) - fl) / (d - l) - fn.df(d)
        done = done | ((t > 0) & (t.abs() < 0.01))
        go_left = (t > 0) & ~done
        go_right = (t <= 0) & ~done
        ub = torch.where(go_left, d, ub)
        lb = torch.where(go_right, d, lb)
        d = torch.where(done, d, 0.5 * (lb + ub))
    slope = (fn.f(d) - fl) / (d - l)
    return slope, fl - (l - 0.01) * slope


def reference_mixed_lower(fn: SmoothFunction, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """The reference's ``find_d_LB`` line (spec §5), unverified: may be unsound."""
    lb, ub = l.clone(), torch.zeros_like(l)
    d = l / 2
    done = torch.zeros_like(l, dtype=torch.bool)
    fu = fn.f(u)
    for _ in range(10):
        t = (fu - fn.f(d)) / (u - d) - fn.df(d)
        done = done | ((t > 0) & (t.abs() < 0.01))
        go_right = (t > 0) & ~done
        go_left = (t <= 0) & ~done
        lb = torch.where(go_right, d, lb)
        ub = torch.where(go_left, d, ub)
        d = torch.where(done, d, 0.5 * (lb + ub))
    slope = (fu - fn.f(d)) / (u - d)
    return slope, fu - (u + 0.01) * slope


def line_is_valid(
    fn: SmoothFunction, slope: Tensor, bias: Tensor, l: Tensor, u: Tensor, *, above: bool
) -> Tensor:
    """Whether ``slope * z + bias`` lies above (``above``) or below ``f`` on all of ``[l, u]``.

    ``f(z) - line(z)`` is smooth, so its extremes on the interval are at the ends or where
    ``f'(z) = slope``; an S-shaped ``f`` has an even, unimodal derivative, hence at most the two
    points ``+-z*``. Checking those (in float64) decides validity exactly up to rounding.
    """
    assert fn.slope_point is not None
    z_star = fn.slope_point(slope.clamp(min=1e-300))
    candidates = [l, u]
    for z in (z_star, -z_star):
        inside = torch.isfinite(z) & (z > l) & (z < u)
        candidates.append(torch.where(inside, z, l))
    ok = torch.isfinite(slope) & torch.isfinite(bias)
    for z in candidates:
        gap = slope * z + bias - fn.f(z)
        ok &= (gap >= 0) if above else (gap <= 0)
    return ok


@dataclass(frozen=True)
class SShapedRelaxation:
    """Relaxation of tanh / sigmoid / arctan (``function`` from ``relax.functions.S_SHAPED``)."""

    function: SmoothFunction
    tangent: TangentRule = TangentRule.EXACT

    @property
    def is_piecewise_linear(self) -> bool:
        return False

    @property
    def kinks(self) -> tuple[float, ...]:
        return ()

    def linear(self, lower: Tensor, upper: Tensor) -> LinearRelaxation:
        fn = self.function
        dtype = lower.dtype
        l = lower.to(torch.float64)
        u = torch.maximum(upper.to(torch.float64), l)
        mid = 0.5 * (l + u)
        convex = u <= 0
        concave = l >= 0
        mixed = ~(convex | concave)
        # Clamp the endpoints into the region each formula assumes, so that no NaN from an
        # unused branch can leak through torch.where.
        chord_s, chord_b = _chord(fn, l, u)
        tan_s, tan_b = _tangent(fn, mid)
        lm = torch.where(mixed, l, -torch.ones_like(l))
        um = torch.where(mixed, u, torch.ones_like(u))
        mu_s, mu_b = _exact_mixed_upper(fn, lm, um)
        ml_s, ml_b = _exact_mixed_lower(fn, lm, um)
        if self.tangent is TangentRule.REFERENCE:
            ru_s, ru_b = reference_mixed_upper(fn, lm, um)
            rl_s, rl_b = reference_mixed_lower(fn, lm, um)
            up_ok = line_is_valid(fn, ru_s, ru_b, lm, um, above=True)
            lo_ok = line_is_valid(fn, rl_s, rl_b, lm, um, above=False)
            mu_s, mu_b = torch.where(up_ok, ru_s, mu_s), torch.where(up_ok, ru_b, mu_b)
            ml_s, ml_b = torch.where(lo_ok, rl_s, ml_s), torch.where(lo_ok, rl_b, ml_b)
        upper_s = torch.where(convex, chord_s, torch.where(concave, tan_s, mu_s))
        upper_b = torch.where(convex, chord_b, torch.where(concave, tan_b, mu_b))
        lower_s = torch.where(convex, tan_s, torch.where(concave, chord_s, ml_s))
        lower_b = torch.where(convex, tan_b, torch.where(concave, chord_b, ml_b))
        reach = torch.maximum(l.abs(), u.abs())
        margin_u = _outward_margin(dtype, upper_b, upper_s * reach, fn.f(u))
        margin_l = _outward_margin(dtype, lower_b, lower_s * reach, fn.f(l))
        return LinearRelaxation(
            lower_s.to(dtype),
            (lower_b - margin_l).to(dtype),
            upper_s.to(dtype),
            (upper_b + margin_u).to(dtype),
        )

    def parametric(self, lower: Tensor, upper: Tensor) -> ParametricLines:
        """alpha-CROWN's family: tangent points chosen freely where a tangent is the line.

        A tangent at any point of a convex piece lies below ``f`` on that piece (above on a
        concave one), so: below on ``u <= 0`` at ``d`` in ``[l, u]``; above on ``l >= 0`` at
        ``d`` in ``[l, u]``; for ``l < 0 < u`` below at ``d`` in ``[l, d*]`` and above at ``d``
        in ``[d*, u]`` (the bisected limits of :func:`_mixed_lower_point` /
        :func:`_mixed_upper_point`; where they fall outside, the chord stays). ``theta`` is
        the position of ``d`` in its range; the defaults give the :attr:`TangentRule.EXACT`
        lines (midpoint tangents, the limit tangents). Chords stay fixed (on a convex piece
        the chord is the tightest upper line). Lines are built in float64 and moved outward
        as in :meth:`linear`.
        """
        fn = self.function
        dtype = lower.dtype
        l = lower.to(torch.float64)
        u = torch.maximum(upper.to(torch.float64), l)
        convex = u <= 0
        concave = l >= 0
        mixed = ~(convex | concave)
        lm = torch.where(mixed, l, -torch.ones_like(l))
        um = torch.where(mixed, u, torch.ones_like(u))
        with torch.no_grad():
            d_lo, lo_chord = _mixed_lower_point(fn, lm.detach(), um.detach())
            d_up, up_chord = _mixed_upper_point(fn, lm.detach(), um.detach())
        free_lower = convex | (mixed & ~lo_chord)
        free_upper = concave | (mixed & ~up_chord)
        # The range of each tangent point: [a, b] with d = a + theta (b - a).
        lo_a, lo_b = l, torch.where(mixed, d_lo, u)
        up_a, up_b = torch.where(mixed, d_up, l), u
        half = torch.full_like(l, 0.5)
        default_lower = torch.where(mixed, torch.ones_like(l), half)
        default_upper = torch.where(mixed, torch.zeros_like(l), half)
        base = self.linear(lower, upper)
        reach = torch.maximum(l.abs(), u.abs()).unsqueeze(1)
        f_l, f_u = fn.f(l).unsqueeze(1), fn.f(u).unsqueeze(1)

        def tangent(theta: Tensor, a: Tensor, b: Tensor, above: bool) -> tuple[Tensor, Tensor]:
            a, b = a.unsqueeze(1), b.unsqueeze(1)
            d = torch.minimum(torch.maximum(a + theta.to(torch.float64) * (b - a), a), b)
            slope, bias = _tangent(fn, d)
            margin = _outward_margin(dtype, bias, slope * reach, f_u if above else f_l)
            return slope.to(dtype), (bias + margin if above else bias - margin).to(dtype)

        def make(theta_lower: Tensor | None, theta_upper: Tensor | None) -> LinearRelaxation:
            ls, lb, us, ub = (
                t.unsqueeze(1)
                for t in (base.lower_slope, base.lower_bias, base.upper_slope, base.upper_bias)
            )
            if theta_lower is not None:
                free = free_lower.unsqueeze(1)
                s, b = tangent(theta_lower, lo_a, lo_b, above=False)
                ls, lb = torch.where(free, s, ls), torch.where(free, b, lb)
            if theta_upper is not None:
                free = free_upper.unsqueeze(1)
                s, b = tangent(theta_upper, up_a, up_b, above=True)
                us, ub = torch.where(free, s, us), torch.where(free, b, ub)
            return LinearRelaxation(ls, lb, us, ub)

        return ParametricLines(
            default_lower.to(dtype), default_upper.to(dtype), free_lower, free_upper, make
        )

    def interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        return self.function.f(lower), self.function.f(upper)

    def derivative_interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        df = self.function.df
        # The derivative is even and decreasing in |z| (reference sigmoid_grad_bounds).
        lo = torch.where(
            lower >= 0,
            df(upper),
            torch.where(upper <= 0, df(lower), df(torch.maximum(-lower, upper))),
        )
        hi = torch.where(
            lower >= 0, df(lower), torch.where(upper <= 0, df(upper), df(torch.zeros_like(lower)))
        )
        return lo, hi
