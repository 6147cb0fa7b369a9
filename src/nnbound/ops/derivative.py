"""The derivative of an activation, ``d = act'(z)``, as an element-wise operator of ``z``.

Jacobian bounds by bound propagation (:mod:`nnbound.jacobian.propagation`) build the gradient
graph of a network, in which each activation contributes the product of its derivative with
the upstream gradient. This operator is that derivative, relaxed like any activation: an
interval of ``act'`` over ``[l, u]`` and two lines sandwiching it there. Node: attrs ``of``
(the activation's registry name), ``alpha`` (its parameter) and optionally ``step_lines``.

* ReLU / leaky ReLU: ``act'(z) = alpha + (1 - alpha) H(z)`` with the Heaviside step ``H``.
  At ``z = 0`` it is the whole Clarke interval ``[alpha, 1]`` (torch's gradient there is
  ``alpha``; the one-sided limit is 1), so an interval that touches 0 is "unstable" and its
  lines hold for every value in ``[alpha, 1]`` at 0. Of the two valid upper lines (the
  constant 1, the line from ``(l, alpha)`` to ``(0, 1)``) and the two lower ones (the constant
  ``alpha``, the line from ``(0, alpha)`` to ``(u, 1)``) the constants are the default; attr
  ``step_lines`` takes the line where the interval is lopsided (see
  ``StepDerivativeRelaxation.linear``).
* tanh, sigmoid, arctan, softplus, GELU: ``act'`` is smooth with known inflection points.
  Inside one convex piece the chord lies above and the tangent at the midpoint below (the
  other way round in a concave piece), both exact. An interval across an inflection point
  takes, per side, the best of a few candidate lines (chord, tangents at the ends and the
  midpoint, the constant interval bound), each moved until valid: by its largest violation
  on a grid of ``G`` points plus ``K h^2 / 8`` (``h`` the grid step, ``K >= max |act'''|``:
  between two grid points a smooth function exceeds the chord of its grid values by at most
  that), as :mod:`nnbound.ops.gelu` does for GELU itself.
* Any other activation with a derivative interval (bounded ReLU, ELU, hardswish): the
  constant lines at the interval's ends (sound, and exact once the interval is a point).

Lines and intervals are computed in float64 and moved outward by a few ulps of the working
precision. Softplus keeps an extra ``2.1e-9`` above: torch returns ``z`` itself beyond
``z = 20``, whose slope 1 exceeds ``sigmoid(z)`` by up to ``e^-20``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from nnbound.errors import InputError, UnsupportedError
from nnbound.network.graph import Node, Shape
from nnbound.ops.base import Interval, Names, Op, OpKind, RelaxOptions, Traits
from nnbound.ops.relaxed_lines import best_valid_line, ulp_margin, widen
from nnbound.relax.base import LinearRelaxation, ParametricLines, Relaxation

_GRID = 65
_CHUNK = 1 << 14
"""Entries across an inflection point relaxed at once (each holds a grid of candidate lines)."""

_SQRT2 = math.sqrt(2.0)
_PHI0 = 1.0 / math.sqrt(2.0 * math.pi)
_SOFTPLUS_GAP = 2.1e-9


# -- smooth derivatives: value, slope, pieces ---------------------------------------------------
@dataclass(frozen=True)
class SmoothDerivative:
    """``g = act'`` with its slope ``g' = act''`` (float64), the points where ``g`` changes
    convexity (sorted), whether the first piece is convex, a bound ``K >= max |g''|``, the
    points where ``g`` has its interior extrema, and an extra upward margin."""

    g: Callable[[Tensor], Tensor]
    dg: Callable[[Tensor], Tensor]
    inflections: tuple[float, ...]
    first_convex: bool
    curvature: float
    extrema: tuple[float, ...]
    upper_gap: float = 0.0


def _tanh_g(z: Tensor) -> Tensor:
    t = torch.tanh(z)
    return 1.0 - t * t


def _tanh_dg(z: Tensor) -> Tensor:
    t = torch.tanh(z)
    return -2.0 * t * (1.0 - t * t)


def _sig_g(z: Tensor) -> Tensor:
    s = torch.sigmoid(z)
    return s * (1.0 - s)


def _sig_dg(z: Tensor) -> Tensor:
    s = torch.sigmoid(z)
    return s * (1.0 - s) * (1.0 - 2.0 * s)


def _atan_g(z: Tensor) -> Tensor:
    return 1.0 / (1.0 + z * z)


def _atan_dg(z: Tensor) -> Tensor:
    return -2.0 * z / (1.0 + z * z).square()


def _softplus_dg(z: Tensor) -> Tensor:
    s = torch.sigmoid(z)
    return s * (1.0 - s)


def _gelu_g(z: Tensor) -> Tensor:
    return 0.5 * torch.erfc(-z / _SQRT2) + z * _PHI0 * torch.exp(-0.5 * z * z)


def _gelu_dg(z: Tensor) -> Tensor:
    return _PHI0 * torch.exp(-0.5 * z * z) * (2.0 - z * z)


_TANH_INFLECTION = math.atanh(1.0 / math.sqrt(3.0))  # tanh''' = -2 (1 - t^2)(1 - 3 t^2)
_SIG_INFLECTION = math.log(2.0 + math.sqrt(3.0))  # sigmoid''' = 0 at s = (3 +- sqrt 3) / 6
_ATAN_INFLECTION = 1.0 / math.sqrt(3.0)  # (1 / (1 + z^2))'' = (6 z^2 - 2) / (1 + z^2)^3

# K bounds: |tanh'''| <= 2, |sigmoid'''| <= 1/8, |arctan'''| <= 2 (all at 0), |sigmoid''| <=
# 1 / (6 sqrt 3) ~ 0.0962, |gelu'''| = phi(z) |z^3 - 4 z| <= 0.779; rounded up.
SMOOTH_DERIVATIVES: dict[str, SmoothDerivative] = {
    "tanh": SmoothDerivative(
        _tanh_g, _tanh_dg, (-_TANH_INFLECTION, _TANH_INFLECTION), True, 2.001, (0.0,)
    ),
    "sigmoid": SmoothDerivative(
        _sig_g, _sig_dg, (-_SIG_INFLECTION, _SIG_INFLECTION), True, 0.126, (0.0,)
    ),
    "arctan": SmoothDerivative(
        _atan_g, _atan_dg, (-_ATAN_INFLECTION, _ATAN_INFLECTION), True, 2.001, (0.0,)
    ),
    "softplus": SmoothDerivative(
        torch.sigmoid, _softplus_dg, (0.0,), True, 0.1, (), upper_gap=_SOFTPLUS_GAP
    ),
    # gelu' = phi (2 - z^2) rises on [-sqrt 2, sqrt 2]; gelu''' = phi (z^3 - 4 z): concave
    # below -2, convex on (-2, 0), concave on (0, 2), convex beyond
    "gelu": SmoothDerivative(_gelu_g, _gelu_dg, (-2.0, 0.0, 2.0), False, 0.8, (-_SQRT2, _SQRT2)),
}

STEP_DERIVATIVES = ("relu", "leaky_relu")
"""Activations whose derivative is ``alpha + (1 - alpha) H(z)``."""


def _chord(fn: SmoothDerivative, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    width = u - l
    same = width == 0
    s = torch.where(same, fn.dg(l), (fn.g(u) - fn.g(l)) / torch.where(same, 1.0, width))
    return s, fn.g(l) - s * l


def _tangent(fn: SmoothDerivative, d: Tensor) -> tuple[Tensor, Tensor]:
    s = fn.dg(d)
    return s, fn.g(d) - s * d


def smooth_interval64(fn: SmoothDerivative, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """The exact range of ``g`` on ``[l, u]`` (float64): the ends and interior extrema."""
    g_l, g_u = fn.g(l), fn.g(u)
    lo, hi = torch.minimum(g_l, g_u), torch.maximum(g_l, g_u)
    for p in fn.extrema:
        inside = (l <= p) & (u >= p)
        g_p = fn.g(torch.full_like(l, p))
        lo = torch.where(inside, torch.minimum(lo, g_p), lo)
        hi = torch.where(inside, torch.maximum(hi, g_p), hi)
    return lo, hi + fn.upper_gap


def _best_valid(
    fn: SmoothDerivative,
    candidates: list[tuple[Tensor, Tensor]],
    l: Tensor,
    u: Tensor,
    upper: bool,
) -> tuple[Tensor, Tensor]:
    """Each candidate moved until valid on a grid plus ``K h^2 / 8``; the one nearest ``g``
    at the midpoint kept, per entry."""
    t = torch.linspace(0.0, 1.0, _GRID, dtype=torch.float64, device=l.device)
    grid = l.unsqueeze(-1) + (u - l).unsqueeze(-1) * t
    slack = fn.curvature * ((u - l) / (_GRID - 1)).square() / 8.0
    return best_valid_line(candidates, grid, fn.g(grid), slack, 0.5 * (l + u), upper)


def _mixed_lines(fn: SmoothDerivative, l: Tensor, u: Tensor) -> tuple[Tensor, ...]:
    """(upper slope, upper bias, lower slope, lower bias) on intervals across an inflection."""
    outs: list[list[Tensor]] = [[], [], [], []]
    for k in range(0, l.numel(), _CHUNK):
        lc, uc = l[k : k + _CHUNK], u[k : k + _CHUNK]
        i_lo, i_up = smooth_interval64(fn, lc, uc)
        zero = torch.zeros_like(lc)
        cands = [_chord(fn, lc, uc), _tangent(fn, 0.5 * (lc + uc)), _tangent(fn, lc)]
        cands.append(_tangent(fn, uc))
        up = _best_valid(fn, [*cands, (zero, i_up)], lc, uc, upper=True)
        lo = _best_valid(fn, [*cands, (zero, i_lo)], lc, uc, upper=False)
        for out, t in zip(outs, (*up, *lo), strict=True):
            out.append(t)
    return tuple(torch.cat(o) for o in outs)


def _piece(fn: SmoothDerivative, z: Tensor) -> Tensor:
    """Index of the convexity piece of ``z`` (the number of inflection points below it)."""
    idx = torch.zeros_like(z, dtype=torch.long)
    for p in fn.inflections:
        idx = idx + (z > p).long()
    return idx


@dataclass(frozen=True)
class SmoothDerivativeRelaxation:
    """Lines and interval of a smooth activation's derivative (see the module docstring)."""

    fn: SmoothDerivative

    @property
    def is_piecewise_linear(self) -> bool:
        return False

    @property
    def kinks(self) -> tuple[float, ...]:
        return ()

    def linear(self, lower: Tensor, upper: Tensor) -> LinearRelaxation:
        fn, dtype = self.fn, lower.dtype
        l = lower.to(torch.float64)
        u = torch.maximum(upper.to(torch.float64), l)
        one_piece, convex = _pieces(fn, l, u)
        mid = 0.5 * (l + u)
        chord, tan_mid = _chord(fn, l, u), _tangent(fn, mid)
        up_s = torch.where(convex, chord[0], tan_mid[0])
        up_b = torch.where(convex, chord[1], tan_mid[1])
        lo_s = torch.where(convex, tan_mid[0], chord[0])
        lo_b = torch.where(convex, tan_mid[1], chord[1])
        mixed = ~one_piece
        if bool(mixed.any()):
            s_u, b_u, s_l, b_l = _mixed_lines(fn, l[mixed], u[mixed])
            up_s, up_b = up_s.masked_scatter(mixed, s_u), up_b.masked_scatter(mixed, b_u)
            lo_s, lo_b = lo_s.masked_scatter(mixed, s_l), lo_b.masked_scatter(mixed, b_l)
        up_b = up_b + fn.upper_gap
        i_lo, i_up = smooth_interval64(fn, l, u)
        reach = torch.maximum(l.abs(), u.abs())
        m_up = ulp_margin(dtype, up_b, up_s * reach, i_up)
        m_lo = ulp_margin(dtype, lo_b, lo_s * reach, i_lo)
        return LinearRelaxation(
            lo_s.to(dtype), (lo_b - m_lo).to(dtype), up_s.to(dtype), (up_b + m_up).to(dtype)
        )

    def parametric(self, lower: Tensor, upper: Tensor) -> ParametricLines:
        """Tangent points as free parameters (:func:`nnbound.ops.derivative_families.
        smooth_family`)."""
        from nnbound.ops.derivative_families import smooth_family

        l = lower.to(torch.float64)
        u = torch.maximum(upper.to(torch.float64), l)
        one_piece, convex = _pieces(self.fn, l, u)
        base = self.linear(lower, upper)
        return smooth_family(self.fn, lower, upper, base, one_piece, convex)

    def interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        l = lower.to(torch.float64)
        u = torch.maximum(upper.to(torch.float64), l)
        return widen(*smooth_interval64(self.fn, l, u), lower.dtype)

    def derivative_interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        raise UnsupportedError("second derivatives of activations are not bounded")


def _pieces(fn: SmoothDerivative, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Per entry: whether ``[l, u]`` lies in one convexity piece, and whether that piece is
    convex. An inflection point belongs to both pieces: ``_piece`` counts it with the one
    below, so an interval starting on it lies in the piece of its upper end."""
    p_l, p_u = _piece(fn, l), _piece(fn, u)
    one_piece = (p_l == p_u) | ((p_u == p_l + 1) & _at_inflection(fn, l))
    return one_piece, (p_u % 2 == 0) == fn.first_convex


def _at_inflection(fn: SmoothDerivative, z: Tensor) -> Tensor:
    hit = torch.zeros_like(z, dtype=torch.bool)
    for p in fn.inflections:
        hit |= z == p
    return hit


# -- ReLU family: a step -------------------------------------------------------------------------
@dataclass(frozen=True)
class StepDerivativeRelaxation:
    """``alpha + (1 - alpha) H(z)`` (ReLU, leaky ReLU), ``[alpha, 1]`` at 0; ``lines``: lines
    in ``z`` on lopsided unstable intervals, else the interval's constants."""

    alpha: float
    lines: bool = False

    @property
    def is_piecewise_linear(self) -> bool:
        return False

    @property
    def kinks(self) -> tuple[float, ...]:
        return (0.0,)

    def interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        a = self.alpha
        l, u = lower.to(torch.float64), upper.to(torch.float64)
        lo = torch.where(l > 0, torch.ones_like(l), torch.full_like(l, a))
        hi = torch.where(u < 0, torch.full_like(u, a), torch.ones_like(u))
        if torch.tensor(a, dtype=lower.dtype).item() == a:
            # 1 and alpha are exact in the dtype: a stable neuron's derivative stays a point,
            # which the gradient product then relaxes exactly (no margin)
            return lo.to(lower.dtype), hi.to(lower.dtype)
        # alpha rounded to float32 may exceed it: a few ulps outward
        return widen(lo, hi, lower.dtype)

    def linear(self, lower: Tensor, upper: Tensor) -> LinearRelaxation:
        dtype, a = lower.dtype, self.alpha
        l = lower.to(torch.float64)
        u = torch.maximum(upper.to(torch.float64), l)
        i_lo, i_up = (t.to(torch.float64) for t in self.interval(l, u))
        unstable = (l <= 0) & (u >= 0)
        jump = 1.0 - a
        # upper: the line from (l, alpha) to (0, 1) has less area than the constant 1 when
        # u < -l, lower: the line from (0, alpha) to (u, 1) less than alpha when u > -l. The
        # constants are the interval itself, which a backward pass concretizes exactly, while
        # a line's excess over the step on the far side adds up over neurons. Measured on the
        # gradient graphs of crown-jacobian: constants give RecurJac's element-wise bounds on
        # ReLU MLPs (lines up to 3% wider) and the tighter Lipschitz bound on mnist-fc-3layer;
        # lines on 2:1 lopsided intervals gain up to 15% on wide random ReLU MLPs at Linf eps
        # 0.002-0.005. Hence constants by default, lines on request.
        use_up = unstable & (2.0 * u < -l) & self.lines
        use_lo = unstable & (u > -2.0 * l) & self.lines
        up_s = torch.where(use_up, jump / torch.where(use_up, -l, 1.0), 0.0)
        up_b = torch.where(use_up, torch.ones_like(l), i_up)
        lo_s = torch.where(use_lo, jump / torch.where(use_lo, u, 1.0), 0.0)
        lo_b = torch.where(use_lo, torch.full_like(l, a), i_lo)
        reach = torch.maximum(l.abs(), u.abs())
        m_up = ulp_margin(dtype, up_b, up_s * reach)
        m_lo = ulp_margin(dtype, lo_b, lo_s * reach)
        return LinearRelaxation(
            lo_s.to(dtype), (lo_b - m_lo).to(dtype), up_s.to(dtype), (up_b + m_up).to(dtype)
        )

    def parametric(self, lower: Tensor, upper: Tensor) -> ParametricLines:
        """Corner-line slopes as free parameters (:func:`nnbound.ops.derivative_families.
        step_family`)."""
        from nnbound.ops.derivative_families import step_family

        return step_family(self.alpha, lower, upper, self.linear(lower, upper))

    def derivative_interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        raise UnsupportedError("second derivatives of activations are not bounded")


# -- anything else: the derivative interval as constant lines ------------------------------------
@dataclass(frozen=True)
class IntervalDerivativeRelaxation:
    """Constant lines at the ends of an activation relaxation's derivative interval."""

    of: Relaxation

    @property
    def is_piecewise_linear(self) -> bool:
        return False

    @property
    def kinks(self) -> tuple[float, ...]:
        return ()

    def interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        lo, hi = self.of.derivative_interval(lower, torch.maximum(upper, lower))
        # the activation's rule runs in the working dtype: widen it by a few ulps
        return widen(lo.to(torch.float64), hi.to(torch.float64), lower.dtype)

    def linear(self, lower: Tensor, upper: Tensor) -> LinearRelaxation:
        lo, hi = self.interval(lower, upper)
        zero = torch.zeros_like(lo)
        return LinearRelaxation(zero, lo, zero, hi)

    def derivative_interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        raise UnsupportedError("second derivatives of activations are not bounded")


# -- the operator --------------------------------------------------------------------------------
def derivative_relaxation(
    of: str, alpha: float, options: RelaxOptions, *, step_lines: bool = False
) -> Relaxation:
    """The relaxation of ``act'`` for activation ``of`` with parameter ``alpha``
    (``step_lines``: see :class:`StepDerivativeRelaxation`)."""
    from nnbound.ops.activation import ActivationOp
    from nnbound.ops.registry import get_op

    if of in STEP_DERIVATIVES:
        if not 0.0 <= alpha <= 1.0:
            raise UnsupportedError(f"{of} with slope {alpha} outside [0, 1] has no relaxation")
        return StepDerivativeRelaxation(alpha, step_lines)
    if of in SMOOTH_DERIVATIVES:
        return SmoothDerivativeRelaxation(SMOOTH_DERIVATIVES[of])
    op = get_op(of)
    if not isinstance(op, ActivationOp):
        raise InputError(f"derivative of {of!r}: not an element-wise activation")
    return IntervalDerivativeRelaxation(op.relaxation_at(alpha, options))


@dataclass(frozen=True)
class DerivativeOp(Op):
    """``act'(z)`` of the activation named by attr ``of`` (parameter attr ``alpha``)."""

    def _of(self, node: Node) -> tuple[str, float]:
        of = node.attrs.get("of")
        if not isinstance(of, str):
            raise InputError("derivative needs attr 'of', the activation's name")
        return of, float(node.attrs.get("alpha", 0.0))

    def out_shape(self, node: Node, in_shapes: list[Shape]) -> Shape:
        from nnbound.ops.activation import ActivationOp
        from nnbound.ops.registry import get_op

        if len(in_shapes) != 1:
            raise InputError(f"derivative takes one input, got {len(in_shapes)}")
        if node.params:
            raise InputError("derivative takes no params")
        of, _ = self._of(node)
        if not isinstance(get_op(of, node), ActivationOp):
            raise InputError(f"derivative of {of!r}: not an element-wise activation")
        return in_shapes[0]

    def forward(self, node: Node, *xs: Tensor) -> Tensor:
        from nnbound.ops.activation import ActivationOp
        from nnbound.ops.registry import get_op

        of, alpha = self._of(node)
        act = get_op(of, node)
        assert isinstance(act, ActivationOp) and act.function is not None
        f = act.function(alpha)
        # torch's own derivative of the forward function (at ReLU's kink: its choice, alpha)
        return torch.func.vmap(torch.func.grad(lambda t: f(t)))(xs[0].reshape(-1)).reshape(
            xs[0].shape
        )

    def relaxation(self, node: Node, options: RelaxOptions) -> Relaxation:
        of, alpha = self._of(node)
        try:
            lines = bool(node.attrs.get("step_lines", False))
            return derivative_relaxation(of, alpha, options, step_lines=lines)
        except (InputError, UnsupportedError) as exc:
            raise type(exc)(f"{node.where}: {exc}") from None

    def interval(self, node: Node, bounds: list[Interval]) -> Interval:
        from nnbound.ops.registry import DEFAULT_OPTIONS

        return self.relaxation(node, DEFAULT_OPTIONS).interval(*bounds[0])

    def summary(self, node: Node) -> str:
        return f"derivative({self._of(node)[0]})"


DERIVATIVE = DerivativeOp("derivative", OpKind.ELEMENTWISE, traits=Traits(), names=Names())

OPS = (DERIVATIVE,)

__all__ = [
    "DERIVATIVE",
    "OPS",
    "SMOOTH_DERIVATIVES",
    "STEP_DERIVATIVES",
    "DerivativeOp",
    "IntervalDerivativeRelaxation",
    "SmoothDerivative",
    "SmoothDerivativeRelaxation",
    "StepDerivativeRelaxation",
    "derivative_relaxation",
]
