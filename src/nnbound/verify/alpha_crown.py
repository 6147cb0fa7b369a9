"""alpha-CROWN: CROWN with the lower slopes of unstable ReLUs optimised by gradient ascent.

CROWN relaxes an unstable ReLU (``l < 0 < u``) from below by the line ``alpha z`` with a fixed
``alpha`` (1 if ``u >= -l`` else 0). Any ``alpha`` in ``[0, 1]`` (``[a, 1]`` for a leaky ReLU of
slope ``a``) gives a sound lower line, so the bound is a function of the slopes that can be
maximised: every iterate is a certified bound, and the best one seen is kept. Slopes are free
per unstable neuron *and* per bounded quantity (each spec row, and each intermediate neuron
bound when intermediate layers are optimised too; Xu et al. 2021, "Fast and Complete").

The engine here is a batched, differentiable CROWN for networks of linear layers and
(leaky) ReLUs, with two extras that branch and bound needs:

* ``prior`` bounds (known to hold over the row's domain, e.g. the parent domain's) are
  intersected with every layer's bounds;
* ``splits`` fix neuron phases: ``+1`` restricts the domain to ``z >= 0`` (``l = max(l, 0)``),
  ``-1`` to ``z <= 0`` (``u = min(u, 0)``). The clamp is applied before the relaxation lines
  are built, so a split neuron is relaxed exactly (identity or zero) -- sound on the
  sub-domain where the phase holds. When optimising, the final bound also gets multipliers
  ``beta >= 0`` of the split constraints themselves (beta-CROWN, Wang et al. 2021): the
  constraint ``z >= 0`` lets ``f - beta z`` stand in for ``f`` on the sub-domain.

Shapes: ``N`` rows (input sets), ``S`` spec rows, layer shapes without the batch axis.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from nnbound.bounds.interval import interval_forward
from nnbound.bounds.linear import padded_indices, start_rows
from nnbound.bounds.methods import _first_block_bounds, _spec_tensor
from nnbound.bounds.result import Bounds, IntermediateBounds
from nnbound.errors import InputError, UnsupportedError
from nnbound.network.layers import Activation, MaxPool2d
from nnbound.network.network import Network
from nnbound.relax.relu import LeakyReluRelaxation, LowerSlope
from nnbound.sets.box import InputSet

Pre = dict[int, tuple[Tensor, Tensor]]
"""Pre-activation bounds per activation layer index: ``(lower, upper)``, each ``(N, *shape)``."""

DEFAULT_STEPS = 20
DEFAULT_LR = 0.1
# Slope tensors of intermediate layers hold N * (2 U_j) * width_k entries for every pair of
# layers k < j; above this many the intermediate layers keep CROWN's slopes (memory).
INTERMEDIATE_BUDGET = 2**24
# Lower minus upper beyond this (relative) gap proves a domain empty; anything smaller may be
# float rounding of a point interval and proves nothing.
_EMPTY_TOL = 1e-8


@dataclass(frozen=True, eq=False)
class LinearBoundResult:
    """What one engine run returns.

    Attributes:
        lower: ``(N, S)`` certified lower bounds of ``spec . y + const`` (best seen).
        pre: pre-activation bounds used (the tightest seen), ``{layer: (lower, upper)}``.
        a_input: ``(N, S, *input_shape)`` the last final bound's coefficients on the input
            (its minimiser over a box is a good counterexample candidate).
        relu_coef: ``{layer: (N, S, *shape)}`` coefficients on each activation's output in the
            last final backward pass (for branching heuristics), or ``{}``.
        empty: ``(N,)`` rows whose domain (with its splits) was proven empty.
        steps: optimisation steps taken.
        params: the last slopes (``"alpha"``) and split multipliers (``"beta"``),
            ``{layer: (N, S, W)}`` each, to warm-start a later run (``{}`` without steps).
    """

    lower: Tensor
    pre: Pre
    a_input: Tensor
    relu_coef: dict[int, Tensor]
    empty: Tensor
    steps: int
    params: dict[str, dict[int, Tensor]] = field(default_factory=dict)


def relu_slopes(net: Network) -> dict[int, float]:
    """The negative-side slope of every activation (0 for ReLU); raises for other activations."""
    out = {}
    for i, layer in enumerate(net.layers):
        if isinstance(layer, MaxPool2d):
            # The engine's backward pass is written for element-wise ReLU lines only; max pools
            # are bounded by crown / crown-general (nnbound.relax.maxpool) instead.
            raise UnsupportedError(
                f"alpha-CROWN (and the verifier's branch and bound) does not support max pooling "
                f"(layer {i}); use crown or crown-general"
            )
        if isinstance(layer, Activation):
            if layer.name == "relu":
                out[i] = 0.0
            elif layer.name == "leaky_relu" and 0.0 <= layer.alpha <= 1.0:
                out[i] = float(layer.alpha)
            else:
                raise UnsupportedError(
                    f"alpha-CROWN handles ReLU / leaky-ReLU networks; this one has {layer.name}"
                )
    return out


@dataclass(frozen=True, eq=False)
class _Lines:
    """One activation's relaxation, laid out for a cheap backward step.

    ``slope`` ``(N, W)`` is the exact slope of stable neurons and the upper (chord) slope of
    unstable ones, so ``a * slope`` is right everywhere except at unstable neurons with a
    positive coefficient. Those are few, so they are gathered: ``idx`` ``(N, K)`` their flat
    indices (padded by repeating one; ``valid`` is 0 on padding), with their upper slope and
    intercept and CROWN's lower slope. ``lower`` ``(N, W)`` is CROWN's lower slope of every
    neuron (slope parameters start from it); ``mask`` ``(N, W)`` marks unstable neurons.
    """

    slope: Tensor
    idx: Tensor
    valid: Tensor
    upper_slope: Tensor
    upper_bias: Tensor
    lower_slope: Tensor
    lower: Tensor
    mask: Tensor

    @staticmethod
    def make(relax: LeakyReluRelaxation, lo: Tensor, up: Tensor) -> _Lines:
        n = lo.shape[0]
        rl = relax.linear(lo, up)
        mask = ((lo < 0) & (up > 0)).reshape(n, -1)
        idx = padded_indices(mask)
        valid = (
            torch.arange(idx.shape[1], device=lo.device).unsqueeze(0) < mask.sum(1, keepdim=True)
        ).to(lo.dtype)

        def pick(t: Tensor) -> Tensor:
            return t.reshape(n, -1).gather(1, idx)

        return _Lines(
            rl.upper_slope.reshape(n, -1),
            idx,
            valid,
            pick(rl.upper_slope),
            pick(rl.upper_bias),
            pick(rl.lower_slope),
            rl.lower_slope.reshape(n, -1),
            mask,
        )

    def rows(self, rows: Tensor | None) -> _Lines:
        if rows is None:
            return self
        return _Lines(
            *(
                t[rows]
                for t in (
                    self.slope,
                    self.idx,
                    self.valid,
                    self.upper_slope,
                    self.upper_bias,
                    self.lower_slope,
                    self.lower,
                    self.mask,
                )
            )
        )


class _Engine:
    """A batched CROWN whose unstable lower slopes can be replaced by free parameters."""

    def __init__(
        self,
        net: Network,
        ball: InputSet,
        prior: Pre | None,
        splits: dict[int, Tensor] | None,
    ) -> None:
        self.layers, self.shapes = net.layers, net.shapes
        self.leak = relu_slopes(net)
        self.acts = sorted(self.leak)
        self.relax = {j: LeakyReluRelaxation(a, LowerSlope.ADAPTIVE) for j, a in self.leak.items()}
        self.ball = ball
        self.n = ball.center.shape[0]
        self.dtype, self.device = ball.center.dtype, ball.center.device
        self.prior = prior or {}
        self.splits = splits or {}
        self.first = _first_block_bounds(net, self.acts[0], ball) if self.acts else None
        # Neurons whose bounds get a backward pass, per layer (fixed after the first pass so
        # that slope parameters keep their shapes).
        self.idx: dict[int, Tensor] = {}

    def clamp(self, j: int, lo: Tensor, up: Tensor) -> tuple[Tensor, Tensor]:
        if j in self.prior:
            lo, up = lo.maximum(self.prior[j][0]), up.minimum(self.prior[j][1])
        if j in self.splits:
            s = self.splits[j]
            lo = torch.where(s > 0, lo.clamp_min(0), lo)
            up = torch.where(s < 0, up.clamp_max(0), up)
        return lo, up

    def backward(
        self,
        end: int,
        a: Tensor,
        const: Tensor,
        lines: dict[int, _Lines],
        slopes: dict[int, Tensor] | None,
        coef: dict[int, Tensor] | None = None,
        rows: Tensor | None = None,
        betas: dict[int, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Lower bound ``(R, S)`` of ``a . y_end + const`` and its input coefficients.

        ``a`` is ``(R, S, *shapes[end])`` for the ``R`` rows ``rows`` (all rows by default).
        ``slopes[k]`` (``(R, S, *shape_k)``) replaces the lower slope of unstable neurons of
        activation ``k``; ``coef`` (if given) receives the coefficient on each activation's
        output. ``betas[k]`` (``(R, S, W_k)``, >= 0) are multipliers of the split constraints
        of activation ``k`` (beta-CROWN): on a domain where ``z >= 0`` (split +1),
        ``f - beta z <= f``, and where ``z <= 0``, ``f + beta z <= f``, so adding
        ``-split * beta`` to the coefficient on ``z`` keeps a valid lower bound.
        """
        r, s = a.shape[:2]
        for i in range(end - 1, -1, -1):
            layer = self.layers[i]
            if isinstance(layer, Activation):
                lin = lines[i].rows(rows)
                shape = a.shape
                a = a.reshape(r, s, -1)
                if coef is not None:
                    coef[i] = a.detach().reshape(shape)
                new = a * lin.slope.unsqueeze(1)
                k = lin.idx.shape[1]
                if k:
                    # Unstable neurons: the lower line where the coefficient is >= 0 (through
                    # the origin: no constant), the upper line elsewhere (already applied).
                    gi = lin.idx.unsqueeze(1).expand(r, s, k)
                    ag = a.gather(2, gi)
                    if slopes is not None and i in slopes:
                        ls = slopes[i].reshape(r, s, -1).gather(2, gi)
                    else:
                        ls = lin.lower_slope.unsqueeze(1)
                    ag_pos = ag.clamp(min=0)
                    v = lin.valid.unsqueeze(1)
                    const = const + ((ag - ag_pos) * lin.upper_bias.unsqueeze(1) * v).sum(-1)
                    fix = ag_pos * (ls - lin.upper_slope.unsqueeze(1)) * v
                    new = new.scatter_add_(2, gi, fix)
                if betas is not None and i in betas:
                    sign = self.splits[i] if rows is None else self.splits[i][rows]
                    new = new - betas[i] * sign.reshape(r, 1, -1).to(new.dtype)
                a = new.reshape(shape)
            else:
                bias = layer.bias_map(self.shapes[i + 1])
                if bias is not None:
                    const = const + a.reshape(r, s, -1) @ bias.reshape(-1)
                a = layer.transpose(a, self.shapes[i])
        ball = self.ball if rows is None else self.ball.rows(rows)
        return ball.concretize(a, const)[0], a

    def hidden(
        self,
        slopes: dict[int, dict[int, Tensor]] | None,
        base: Pre | None,
    ) -> tuple[Pre, dict[int, _Lines], Tensor]:
        """Bounds of every activation's input, layer by layer: interval propagation from the
        previous layer intersected with ``base``, prior and splits, then a backward pass for
        the neurons still unstable. Returns ``(pre, lines, empty rows)``."""
        n = self.n
        pre: Pre = {}
        lines: dict[int, _Lines] = {}
        empty = torch.zeros(n, dtype=torch.bool, device=self.device)
        first_pass = slopes is None and base is None
        for pos, j in enumerate(self.acts):
            if pos == 0:
                assert self.first is not None
                lo, up = self.first
            else:
                prev = self.acts[pos - 1]
                lo, up = interval_forward(self.layers, prev, j, *pre[prev], self.relax)
            if base is not None:
                lo, up = lo.maximum(base[j][0]), up.minimum(base[j][1])
            lo, up = self.clamp(j, lo, up)
            if pos > 0 and (slopes is None or j in self.idx):
                lo, up = self._tighten(j, lo, up, lines, slopes)
            if pos > 0 and first_pass:
                # Later (optimised) passes start from these bounds, so only neurons still
                # unstable here can tighten: their slope parameters are laid out for them.
                mask = ((lo < 0) & (up > 0)).reshape(n, -1)
                if bool(mask.any()):
                    self.idx[j] = padded_indices(mask)
            gap = lo - up
            scale = 1.0 + torch.maximum(lo.abs(), up.abs())
            empty |= (gap > _EMPTY_TOL * scale).reshape(n, -1).any(1)
            up = torch.maximum(up, lo)  # rounding (or an empty domain) can cross them
            pre[j] = (lo, up)
            lines[j] = _Lines.make(self.relax[j], lo, up)
        return pre, lines, empty

    def _tighten(
        self,
        j: int,
        lo: Tensor,
        up: Tensor,
        lines: dict[int, _Lines],
        slopes: dict[int, dict[int, Tensor]] | None,
    ) -> tuple[Tensor, Tensor]:
        flat_lo, flat_up = lo.reshape(self.n, -1), up.reshape(self.n, -1)
        if slopes is not None:
            # Slope parameters are laid out for the padded index set of all rows.
            groups = [(None, self.idx[j])]
        else:
            groups = _row_groups((flat_lo < 0) & (flat_up > 0))
        for rows, idx in groups:
            u = idx.shape[1]
            a, c, end = start_rows(self.layers, self.shapes, j, idx, self.dtype, self.device)
            # Upper bounds are lower bounds of the negated rows: one pass serves both sides.
            lb, _ = self.backward(
                end,
                torch.cat([a, -a], 1),
                torch.cat([c, -c], 1),
                lines,
                slopes.get(j) if slopes is not None else None,
                rows=rows,
            )
            block_lo = flat_lo if rows is None else flat_lo[rows]
            block_up = flat_up if rows is None else flat_up[rows]
            new_lo = torch.maximum(block_lo.gather(1, idx), lb[:, :u])
            new_up = torch.minimum(block_up.gather(1, idx), -lb[:, u:])
            # Padding repeats a real index, so every written value is a bound of its own neuron.
            block_lo = block_lo.scatter(1, idx, new_lo)
            block_up = block_up.scatter(1, idx, new_up)
            if rows is None:
                flat_lo, flat_up = block_lo, block_up
            else:
                flat_lo = flat_lo.index_copy(0, rows, block_lo)
                flat_up = flat_up.index_copy(0, rows, block_up)
        return flat_lo.reshape(lo.shape), flat_up.reshape(up.shape)


def _row_groups(mask: Tensor, max_rows: int = 256) -> list[tuple[Tensor, Tensor]]:
    """Rows of ``mask`` ``(N, M)`` with at least one candidate, grouped by candidate count
    (largest first, a group's counts within a factor 2) so that padding each group to its
    largest count wastes little work: ``[(rows, padded indices (R, U))]``."""
    counts = mask.sum(1)
    order = torch.argsort(counts, descending=True, stable=True)
    sorted_counts = counts[order].tolist()
    out = []
    start = 0
    n = len(sorted_counts)
    while start < n and sorted_counts[start] > 0:
        top = sorted_counts[start]
        stop = start + 1
        while stop < n and stop - start < max_rows and sorted_counts[stop] * 2 >= top:
            stop += 1
        rows = order[start:stop]
        out.append((rows, padded_indices(mask[rows])))
        start = stop
    return out


class _Adam:
    """Adam with an exponentially decaying step (x0.98 per step), written out because
    ``torch.optim`` imports the compiler stack (seconds of start-up on a small machine)."""

    def __init__(self, params: list[Tensor], lr: float) -> None:
        self.params, self.lr, self.t = params, lr, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self, grads: tuple[Tensor | None, ...]) -> None:
        b1, b2, eps = 0.9, 0.999, 1e-8
        self.t += 1
        lr = self.lr * 0.98 ** (self.t - 1)
        for p, g, m, v in zip(self.params, grads, self.m, self.v, strict=True):
            if g is None:
                continue
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v / (1 - b2**self.t)).sqrt_().add_(eps)
            p.addcdiv_(m, denom, value=-lr / (1 - b1**self.t))


def linear_bounds(
    net: Network,
    ball: InputSet,
    spec: Tensor,
    const: Tensor | None = None,
    *,
    prior: Pre | None = None,
    splits: dict[int, Tensor] | None = None,
    steps: int = 0,
    lr: float = DEFAULT_LR,
    optimize_intermediate: bool | None = None,
    stop: Callable[[Tensor, Tensor], bool] | None = None,
    keep_coefficients: bool = False,
    warm: dict[str, dict[int, Tensor]] | None = None,
) -> LinearBoundResult:
    """CROWN (``steps = 0``) or alpha-CROWN lower bounds of ``spec @ net(x) + const``.

    Args:
        net: a network of linear layers and ReLU / leaky-ReLU activations.
        ball: the input sets (``N`` rows; an :class:`~nnbound.sets.LpBall` or a
            :class:`~nnbound.sets.box.Box`), matching ``net``'s dtype.
        spec: ``(N, S, *output_shape)`` rows to bound from below.
        const: ``(N, S)`` added to each row (default 0).
        prior: bounds known to hold on each row's domain, intersected in at every layer.
        splits: ``{layer: (N, *shape)}`` int tensors of fixed phases (+1 active, -1 inactive,
            0 free), restricting each row's domain.
        steps: Adam steps on the slopes, and with ``splits`` on the beta multipliers of the
            split constraints (0: plain CROWN).
        lr: Adam learning rate.
        optimize_intermediate: also optimise the slopes used for intermediate bounds (each
            neuron bound gets its own); default: when they fit :data:`INTERMEDIATE_BUDGET`.
        stop: ``stop(lower, empty)`` -> True ends the optimisation early (e.g. once every
            row is proven); called with the best ``(N, S)`` bounds and the ``(N,)`` empty rows.
        keep_coefficients: return the coefficients on activation outputs (for branching).
        warm: starting slopes / multipliers (``LinearBoundResult.params`` of an earlier run
            on the same rows or their parents; any values are sound, they are projected).

    Returns:
        :class:`LinearBoundResult`; ``lower`` is never below CROWN's (the first iterate is
        CROWN and the best value seen per entry is kept).
    """
    n = ball.center.shape[0]
    if const is None:
        const = torch.zeros(n, spec.shape[1], dtype=spec.dtype, device=spec.device)
    engine = _Engine(net, ball, prior, splits)
    end = len(net.layers)
    with torch.no_grad():
        pre0, lines0, empty = engine.hidden(None, None)
        coef: dict[int, Tensor] = {}
        lower0, a_in = engine.backward(
            end, spec, const, lines0, None, coef if keep_coefficients else None
        )
    best, best_pre = lower0, pre0

    def proven(values: Tensor) -> bool:
        return stop is not None and stop(values, empty)

    if steps <= 0 or not engine.acts or proven(best):
        return LinearBoundResult(best, best_pre, a_in, coef, empty, 0)
    s = spec.shape[1]
    widths = {k: math.prod(engine.shapes[k]) for k in engine.acts}
    if optimize_intermediate is None:
        size = sum(
            n * 2 * idx.shape[1] * sum(widths[k] for k in engine.acts if k < j)
            for j, idx in engine.idx.items()
        )
        optimize_intermediate = size <= INTERMEDIATE_BUDGET
    if not any(bool(lin.mask.any()) for lin in lines0.values()):
        return LinearBoundResult(best, best_pre, a_in, coef, empty, 0)

    def init(k: int, rows: int) -> Tensor:
        start = lines0[k].lower.reshape(n, 1, *engine.shapes[k])
        return start.expand(n, rows, *start.shape[2:]).clone().requires_grad_(True)

    warm = warm or {}

    def warm_start(kind: str, k: int, default: Tensor, low: float, high: float) -> Tensor:
        given = warm.get(kind, {}).get(k)
        if given is None:
            return default
        t = given.to(dtype=spec.dtype).reshape(default.shape).clamp(low, high)
        # NaN entries mean "no value yet": they start from the default.
        t = torch.where(torch.isnan(t), default.detach(), t)
        return t.clone().requires_grad_(True)

    final_slopes = {k: warm_start("alpha", k, init(k, s), engine.leak[k], 1.0) for k in engine.acts}
    # beta-CROWN multipliers of the split constraints, from 0 (= no constraint used).
    betas = {
        k: warm_start(
            "beta",
            k,
            torch.zeros(n, s, widths[k], dtype=spec.dtype, device=spec.device, requires_grad=True),
            0.0,
            math.inf,
        )
        for k in engine.acts
        if k in engine.splits and bool((engine.splits[k] != 0).any())
    }
    hidden_slopes: dict[int, dict[int, Tensor]] = {}
    if optimize_intermediate:
        hidden_slopes = {
            j: {k: init(k, 2 * idx.shape[1]) for k in engine.acts if k < j}
            for j, idx in engine.idx.items()
        }
    params = list(final_slopes.values()) + [t for d in hidden_slopes.values() for t in d.values()]
    limits: dict[int, tuple[float, float]] = {
        id(t): (engine.leak[k], 1.0) for k, t in final_slopes.items()
    }
    limits.update(
        {id(t): (engine.leak[k], 1.0) for d in hidden_slopes.values() for k, t in d.items()}
    )
    params += list(betas.values())
    limits.update({id(t): (0.0, math.inf) for t in betas.values()})
    adam = _Adam(params, lr)
    taken = 0
    with torch.enable_grad():
        for _ in range(steps):
            taken += 1
            if optimize_intermediate:
                pre, lines, emp = engine.hidden(hidden_slopes, pre0)
                empty = empty | emp
            else:
                pre, lines = pre0, lines0
            coef_t: dict[int, Tensor] | None = {} if keep_coefficients else None
            lower, a_t = engine.backward(end, spec, const, lines, final_slopes, coef_t, betas=betas)
            with torch.no_grad():
                best = torch.maximum(best, lower)
                a_in = a_t.detach()
                if coef_t is not None:
                    coef = coef_t
                if optimize_intermediate:
                    best_pre = {
                        j: (best_pre[j][0].maximum(lo), best_pre[j][1].minimum(up))
                        for j, (lo, up) in pre.items()
                    }
            if proven(best):
                break
            grads = torch.autograd.grad(-lower.sum(), params, allow_unused=True)
            adam.step(grads)
            with torch.no_grad():
                for t in params:
                    t.clamp_(*limits[id(t)])  # projection: every iterate stays sound
    best_pre = {j: (lo.detach(), up.detach()) for j, (lo, up) in best_pre.items()}
    params = {
        "alpha": {k: t.detach().reshape(n, s, -1) for k, t in final_slopes.items()},
        "beta": {k: t.detach() for k, t in betas.items()},
    }
    return LinearBoundResult(best.detach(), best_pre, a_in, coef, empty, taken, params)


def alpha_crown_bounds(
    net: Network,
    ball: InputSet,
    C: Tensor | None = None,
    *,
    prior: Pre | None = None,
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    optimize_intermediate: bool | None = None,
) -> Bounds:
    """alpha-CROWN bounds of ``C @ net(x)`` over ``ball`` (the ``alpha-crown`` method of
    :func:`nnbound.bounds.bounds`).

    Lower and upper bounds get slopes of their own (the upper bound is the lower bound of
    ``-C``). The result is intersected with CROWN's, so it is never looser.

    Args:
        net: a ReLU / leaky-ReLU network.
        ball: input sets (``N`` rows).
        C: spec ``(S, outputs)`` or ``(B, S, outputs)``; ``None`` bounds the outputs.
        prior: pre-activation bounds known to hold over the ball.
        steps, lr, optimize_intermediate: see :func:`linear_bounds`.

    Returns:
        :class:`Bounds` with ``lower``/``upper`` of shape ``(*ball.batch_shape, S)``.
    """
    from nnbound.bounds.methods import layerwise_bounds

    relu_slopes(net)
    if tuple(ball.center.shape[1:]) != net.input_shape:
        raise InputError(
            f"input set has shape {tuple(ball.center.shape[1:])}, network expects {net.input_shape}"
        )
    if ball.center.dtype != net.dtype:
        raise InputError(f"input dtype {ball.center.dtype} differs from the network's {net.dtype}")
    base = layerwise_bounds(net, ball, "crown-adaptive", C, prior=prior)
    n = ball.center.shape[0]
    spec = _spec_tensor(C, n, ball.batch_shape, net)
    s = spec.shape[1]
    known: Pre = dict(base.intermediate.pre)
    for j, (lo, up) in (prior or {}).items():
        if j in known:
            known[j] = (known[j][0].maximum(lo), known[j][1].minimum(up))
    res = linear_bounds(
        net,
        ball,
        torch.cat([spec, -spec], 1),
        prior=known,
        steps=steps,
        lr=lr,
        optimize_intermediate=optimize_intermediate,
    )
    lower = torch.maximum(base.lower.reshape(n, s), res.lower[:, :s])
    upper = torch.minimum(base.upper.reshape(n, s), -res.lower[:, s:])
    upper = torch.maximum(upper, lower)  # both sound; rounding at a point interval can cross
    shape = tuple(base.lower.shape)
    return Bounds(
        lower.reshape(shape), upper.reshape(shape), "alpha-crown", IntermediateBounds(res.pre)
    )


__all__ = ["LinearBoundResult", "alpha_crown_bounds", "linear_bounds", "relu_slopes"]
