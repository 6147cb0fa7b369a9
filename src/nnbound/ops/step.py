"""Step functions: ``sign`` (ONNX ``Sign``: -1, 0, +1, with ``sign(0) = 0``) and the rounding
staircases ``trunc`` (ONNX ``Cast`` of a float to an integer type: towards zero), ``floor``,
``ceil`` and ``round`` (ONNX ``Round``: half to even, as ``torch.round``).

All are non-decreasing, so the interval rule ``[f(l), f(u)]`` is exact. They are
discontinuous, so they have no derivative bound on an interval that holds a jump (refused) and
no Lipschitz constant. ``sign`` is ``piecewise_linear`` with its kink (jump) at 0 in the sense
of the traits: an entry whose interval does not straddle 0 relaxes to constants whatever its
bounds, so bound methods tighten only the straddling entries' inputs (an interval ending at 0
exactly is relaxed soundly but counts as stable there: it is merely not tightened). The
staircases jump at every integer, which no finite kink list holds: they are not.

Lines of ``sign`` on ``[l, u]`` (exact where the interval holds no 0 or is ``{0}``):

* ``l < 0 = u``: ``-1`` below; above, the line through ``(l, -1)`` and ``(0, 0)``.
* ``l = 0 < u``: ``+1`` above; below, the line through ``(0, 0)`` and ``(u, 1)``.
* ``l < 0 < u``: one side gets the line through the jump, the other the constant: above, the
  line through ``(l, -1)`` and ``(0, 1)`` (it is ``>= 1`` on ``x > 0`` and ``>= -1`` from
  ``l`` on); below, the line through ``(0, -1)`` and ``(u, 1)``. The line is taken where it
  encloses the smaller area: above when ``u < -l`` (area ``-l + u^2 / -l`` against ``2 (-l)``
  for the constant 1), below otherwise.

Lines of a staircase ``f``: ``f(x) - x`` lies in ``[-1, 0]`` for ``floor``, ``[0, 1]`` for
``ceil``, ``[-1/2, 1/2]`` for ``round``, and for ``trunc`` in ``[-1, 0]`` on ``x >= 0``,
``[0, 1]`` on ``x <= 0``: the lines ``x + min`` and ``x + max`` sandwich ``f``. They are used
when the interval is wider than one step, the constants ``f(l)``, ``f(u)`` otherwise (exact
when ``f(l) = f(u)``). Intercepts move outward by a few ulps of the working precision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from nnbound.errors import UnsupportedError
from nnbound.ops.base import Names, OpKind, Traits
from nnbound.ops.pointwise import PointwiseOp, rounded
from nnbound.relax.base import LinearRelaxation


def _f64(lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    l = lower.to(torch.float64)
    return l, torch.maximum(upper.to(torch.float64), l)


def _no_jump(constant: Tensor, name: str) -> None:
    if not bool(constant.all()):
        raise UnsupportedError(f"{name} has no derivative bound on an interval holding a jump")


@dataclass(frozen=True)
class SignRelaxation:
    """``sign`` (see the module docstring)."""

    @property
    def is_piecewise_linear(self) -> bool:
        return True

    @property
    def kinks(self) -> tuple[float, ...]:
        return (0.0,)

    def linear(self, lower: Tensor, upper: Tensor) -> LinearRelaxation:
        l, u = _f64(lower, upper)
        zero = torch.zeros_like(l)
        one = torch.ones_like(l)
        neg_l = torch.where(l < 0, -l, one)  # |l| where l < 0 (1 elsewhere: unused)
        pos_u = torch.where(u > 0, u, one)
        # defaults: the constants sign(l) below and sign(u) above (exact when stable)
        ls, lb = zero, torch.sign(l)
        us, ub = zero, torch.sign(u)
        left = (l < 0) & (u == 0)
        right = (l == 0) & (u > 0)
        across = (l < 0) & (u > 0)
        above = across & (u < -l)  # the jump line above, -1 below
        below = across & ~above  # the jump line below, +1 above
        us = torch.where(left, 1.0 / neg_l, torch.where(above, 2.0 / neg_l, us))
        ub = torch.where(left, zero, torch.where(above, one, ub))
        ls = torch.where(right, 1.0 / pos_u, torch.where(below, 2.0 / pos_u, ls))
        lb = torch.where(right, zero, torch.where(below, -one, lb))
        return rounded(LinearRelaxation(ls, lb, us, ub), l, u, lower.dtype)

    def interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        return torch.sign(lower), torch.sign(torch.maximum(upper, lower))

    def derivative_interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        _no_jump((lower > 0) | (upper < 0) | ((lower == 0) & (upper == 0)), "sign")
        zero = torch.zeros_like(lower)
        return zero, zero


Gap = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
"""``(l, u) -> (g_lo, g_hi)`` with ``g_lo <= f(x) - x <= g_hi`` on ``[l, u]`` (float64)."""


def _constant_gap(lo: float, hi: float) -> Gap:
    def gap(l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        return torch.full_like(l, lo), torch.full_like(l, hi)

    return gap


def _trunc_gap(l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    # towards zero: floor on x >= 0 (f - x in [-1, 0]), ceil on x <= 0 (f - x in [0, 1])
    g_lo = torch.where(u <= 0, 0.0, -1.0).to(l.dtype)
    g_hi = torch.where(l >= 0, 0.0, 1.0).to(l.dtype)
    return g_lo, g_hi


@dataclass(frozen=True)
class StaircaseRelaxation:
    """A non-decreasing rounding staircase ``f`` (see the module docstring)."""

    name: str
    f: Callable[[Tensor], Tensor]
    gap: Gap

    @property
    def is_piecewise_linear(self) -> bool:
        return False

    @property
    def kinks(self) -> tuple[float, ...]:
        return ()

    def linear(self, lower: Tensor, upper: Tensor) -> LinearRelaxation:
        l, u = _f64(lower, upper)
        f_l, f_u = self.f(l), self.f(u)
        g_lo, g_hi = self.gap(l, u)
        sloped = (u - l > 1.0) & (f_l != f_u)
        one, zero = torch.ones_like(l), torch.zeros_like(l)
        lines = LinearRelaxation(
            torch.where(sloped, one, zero),
            torch.where(sloped, g_lo, f_l),
            torch.where(sloped, one, zero),
            torch.where(sloped, g_hi, f_u),
        )
        return rounded(lines, l, u, lower.dtype, f_l, f_u)

    def interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        return self.f(lower), self.f(torch.maximum(upper, lower))

    def derivative_interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        lo, up = self.interval(lower, upper)
        _no_jump(lo == up, self.name)
        zero = torch.zeros_like(lower)
        return zero, zero


def _staircase(name: str, f: Callable[[Tensor], Tensor], gap: Gap, names: Names) -> PointwiseOp:
    return PointwiseOp(
        name,
        OpKind.ELEMENTWISE,
        traits=Traits(monotone=True),
        names=names,
        function=f,
        make_relaxation=lambda: StaircaseRelaxation(name, f, gap),
    )


SIGN = PointwiseOp(
    "sign",
    OpKind.ELEMENTWISE,
    traits=Traits(piecewise_linear=True, kinks=(0.0,), monotone=True),
    names=Names(onnx=("Sign",), torch=("sign", "sgn")),
    function=torch.sign,
    make_relaxation=SignRelaxation,
)
TRUNC = _staircase("trunc", torch.trunc, _trunc_gap, Names(torch=("trunc", "fix")))
FLOOR = _staircase(
    "floor", torch.floor, _constant_gap(-1.0, 0.0), Names(onnx=("Floor",), torch=("floor",))
)
CEIL = _staircase(
    "ceil", torch.ceil, _constant_gap(0.0, 1.0), Names(onnx=("Ceil",), torch=("ceil",))
)
ROUND = _staircase(
    "round", torch.round, _constant_gap(-0.5, 0.5), Names(onnx=("Round",), torch=("round",))
)

OPS = (SIGN, TRUNC, FLOOR, CEIL, ROUND)

__all__ = [
    "CEIL",
    "FLOOR",
    "OPS",
    "ROUND",
    "SIGN",
    "TRUNC",
    "SignRelaxation",
    "StaircaseRelaxation",
]
