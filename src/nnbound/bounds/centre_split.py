"""Backward passes to a network's second activation, split at the centre's activation pattern.

For a network whose first two blocks are one Dense layer each (``y = W2 act(W1 x + b1) + b2``,
an MLP), the backward pass of second-block neuron j has input coefficients

    A_j = sum_k W2[j, k] s_jk W1[k]

where ``s_jk`` is the slope of the first-activation line of neuron k the pass picks (the upper
line where ``W2[j, k] > 0`` for the upper bound, the lower line elsewhere; the other way round
for the lower bound). Write ``s_jk = base_k + (s_jk - base_k)`` with ``base_k`` the slope of
neuron k's lines at the centre (where ``l = u = z_k``: 1 for an active ReLU, 0 or the leak for
an inactive one). Then

    A = G + sum_{k in D} (W2[:, k] (s_:k - base_k)) W1[k],   G = W2 diag(base) W1,

where ``G`` does not depend on eps and ``D`` holds the neurons whose lines differ from
``base``: the unstable ones (for a stable neuron both lines have slope ``base``; CROWN-adaptive's
lower line of an unstable ReLU also has, for a ball, the slope ``base``). A certified-radius
search evaluates the same centre at many eps, so ``G`` is computed once per centre
(:class:`CentreProducts`) and each evaluation multiplies only the ``|D|`` unstable columns
instead of every live one. The sum is the same as the plain backward pass's
(:func:`nnbound.bounds.linear.backward_linear_bounds`) up to rounding; tests pin the two equal.

Where only the side of the kinks matters for a stable neuron (the second activation is the
last relaxed layer), :func:`prefilter_bounds` first bounds every neuron's norm ``||A_j||_q``
from the centre's :class:`~nnbound.bounds.centre_products.NormReferences` (the exact norms
of the previous evaluation of the same centre)
by the triangle inequality, one matrix-vector product; near the root of a radius search the
slopes barely move between evaluations, so only the truly unstable neurons are left for the
products. A float64 evaluation may start from the float32 search's references: they carry a
proven bound of their float32 rounding
(:meth:`~nnbound.bounds.centre_products.CentreProducts.store_references`). What is kept
between evaluations lives in :mod:`nnbound.bounds.centre_products`, in tables indexed by row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from nnbound.bounds.centre_products import (
    CentreProducts,
    NormReferences,
    TwoDenseBlocks,
)
from nnbound.bounds.linear import _rows_of, padded_indices
from nnbound.matvec import batched_matvec
from nnbound.network.layers import Activation, Dense, Flatten, Layer, Reshape
from nnbound.network.network import Network
from nnbound.relax.base import LinearRelaxation, Relaxation
from nnbound.sets.box import InputSet
from nnbound.sets.lp_ball import LpBall
from nnbound.sets.norms import lp_norm


def two_dense_blocks(net: Network, first: int, second: int) -> TwoDenseBlocks | None:
    """The Dense layers before activation ``first`` and between it and ``second``, when each
    block is exactly one Dense layer plus reshaping layers (Flatten/Reshape) on a flat input;
    None otherwise (the split does not apply)."""
    layers = net.layers
    if not isinstance(layers[first], Activation) or not isinstance(layers[second], Activation):
        return None
    one = _only_dense(layers[:first])
    two = _only_dense(layers[first + 1 : second])
    if one is None or two is None or len(net.shapes[first]) != 1:
        return None
    return TwoDenseBlocks(one.weight, one.bias, two.weight, two.bias)


def _only_dense(block: tuple[Layer, ...]) -> Dense | None:
    dense = [layer for layer in block if isinstance(layer, Dense)]
    others = [layer for layer in block if not isinstance(layer, (Dense, Flatten, Reshape))]
    return dense[0] if len(dense) == 1 and not others else None


@dataclass(frozen=True)
class CentreTerms:
    """What the bounds of every second-block neuron share at one evaluation: the first
    activation's slopes at the centres (``base``, ``(N, K1)``), the rows of their products
    ``G`` in the cache (``g_rows``, host ``(N,)``, -1 where not stored), each neuron's constant
    term in its upper and lower bound (``(N, K2)``) and, when known, the whole bound's value at
    the centre, ``A . x0 + const`` (``(N, K2)``)."""

    base: Tensor
    g_rows: np.ndarray
    const_up: Tensor
    const_lo: Tensor
    at_centre_up: Tensor | None = None
    at_centre_lo: Tensor | None = None

    def rows(self, index: Tensor, host_index: np.ndarray) -> CentreTerms:
        """The terms of rows ``index`` (``host_index``: the same on the host)."""

        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[index]

        return CentreTerms(
            self.base[index],
            self.g_rows[host_index],
            self.const_up[index],
            self.const_lo[index],
            pick(self.at_centre_up),
            pick(self.at_centre_lo),
        )


def _centre_slopes(
    blocks: TwoDenseBlocks, relax: Relaxation, centre: Tensor
) -> tuple[Tensor, Tensor]:
    """``W1 x0`` (without the bias) and the first activation's slopes at the centre
    (``l = u = z``: 1 for an active ReLU, 0 or the leak for an inactive one), ``(N, K1)`` each."""
    z0 = torch.nn.functional.linear(centre, blocks.w1)
    z = z0 + blocks.b1
    return z0, relax.linear(z, z).lower_slope


def prefilter_bounds(
    blocks: TwoDenseBlocks,
    cache: CentreProducts,
    relax: Relaxation,
    lines: LinearRelaxation,
    ball: LpBall,
) -> tuple[Tensor, Tensor, NormReferences, CentreTerms]:
    """Sound, cheaper bounds of every second-block neuron over ``ball`` (an Lp ball without a
    domain), ``(N, K2)`` each, the new references of its rows, and the terms
    :func:`split_backward_bounds` shares.

    The bound of neuron j is ``A_j . x0 + c_j -/+ eps ||A_j||_q``; ``A_j . x0`` and ``c_j`` are
    exact and cheap (``W1 x0`` is known), and the norm is bounded by the triangle inequality
    from the nearest reference R (slopes ``s^R``, norm bound ``n^R_j``):

        ||A_j||_q <= n^R_j + sum_k |W2[j, k]| |s_jk - s^R_jk| ||W1[k]||_q,

    one matrix-vector product per side instead of a product with ``W1``. A reference is the
    previous evaluation of the same centre (its norms: exact where it computed them, this bound
    elsewhere), or ``G`` itself (slopes ``base``, norms ``||G_j||_q``). Near the root of a
    radius search the slopes barely change between evaluations, so the bound is nearly exact
    and leaves unsettled only the neurons that are truly unstable.
    """
    n = ball.center.shape[0]
    centre = ball.center.reshape(n, -1)
    z0, base = _centre_slopes(blocks, relax, centre)
    us, ls = lines.upper_slope, lines.lower_slope
    q = ball.q
    slots = cache.slots(blocks, centre, q)
    g_rows, (ref_us, ref_ls, ref_up, ref_lo) = _nearest_references(
        blocks, cache, base, us, ls, centre, slots, q
    )
    rn = cache.first_row_norms(blocks, q)
    vectors = torch.cat(
        (
            us * blocks.b1 + lines.upper_bias,
            ls * blocks.b1 + lines.lower_bias,
            us * z0,
            ls * z0,
            (us - ref_us).abs() * rn,
            (ls - ref_ls).abs() * rn,
            2 * (2 * base.abs() + us.abs() + ls.abs()) * rn,
        )
    )  # (7N, K1): every sum over first-layer neurons below in two products
    pos, neg = cache.signed_parts(blocks)
    p_ = (vectors @ pos.T).split(n)
    n_ = (vectors @ neg.T).split(n)
    c_up = p_[0] + n_[1] + blocks.b2
    c_lo = p_[1] + n_[0] + blocks.b2
    mid_up, mid_lo = p_[2] + n_[3], p_[3] + n_[2]
    norm_up = ref_up + p_[4] - n_[5]
    norm_lo = ref_lo + p_[5] - n_[4]
    # sum_k |W2[j, k]| 2 (2 |base_k| + |s_up_k| + |s_lo_k|) ||W1[k]||_q: with gamma, bounds the
    # rounding of A_j as split_backward_bounds computes it (each product and G).
    rounding = p_[6] - n_[6]
    eps = ball.eps.unsqueeze(1)
    lower = mid_lo + c_lo - eps * norm_lo
    upper = mid_up + c_up + eps * norm_up
    refs = NormReferences(q, us, ls, norm_up, norm_lo, rounding, slots)
    terms = CentreTerms(base, g_rows, c_up, c_lo, mid_up + c_up, mid_lo + c_lo)
    return lower, upper, refs, terms


def _nearest_references(
    blocks: TwoDenseBlocks,
    cache: CentreProducts,
    base: Tensor,
    us: Tensor,
    ls: Tensor,
    centre: Tensor,
    slots: np.ndarray,
    q: float,
) -> tuple[np.ndarray, tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Per row, the reference whose slopes are nearest ``us``/``ls`` (in L1): the centre's own
    (``slots``), the lower-precision cache's, or ``G`` (computed and stored for a row that has
    no other, within the cache's budget; past it, the zero slopes, whose coefficients are 0).
    Returns the rows' ``G`` rows (host, -1 where not stored) and the reference's upper and
    lower slopes ``(N, K1)`` and norm bounds ``(N, K2)``."""
    held = [cache.own_references(slots, q), cache.linked_references(blocks, centre, q)]
    known = [h for h in held if h is not None]
    covered = np.zeros(len(slots), dtype=bool)
    for mask, _ in known:
        covered |= mask
    g_rows = cache.pattern_rows(blocks, base, store=~covered)
    if (g_rows >= 0).any():
        norms = cache.product_norms(q, g_rows)
        known.append((g_rows >= 0, (base, base, norms, norms)))
    zero_s = torch.zeros_like(us)
    zero_n = us.new_zeros(us.shape[0], blocks.w2.shape[0])
    # Zero slopes: A = 0 exactly, a valid reference anywhere, taken only where nothing else is.
    choices = [*known, (~(covered | (g_rows >= 0)), (zero_s, zero_s, zero_n, zero_n))]
    distances = []
    for mask, (c_us, c_ls, _, _) in choices:
        d = (c_us - us).abs().sum(1) + (c_ls - ls).abs().sum(1)
        distances.append(torch.where(torch.from_numpy(mask).to(d.device), d, torch.inf))
    best = torch.stack(distances).argmin(0)  # (N,)
    picked = []
    for t in range(4):
        stacked = torch.stack([c[1][t] for c in choices])  # (choices, N, width)
        picked.append(stacked.gather(0, best.view(1, -1, 1).expand(1, *stacked.shape[1:]))[0])
    return g_rows, (picked[0], picked[1], picked[2], picked[3])


def split_backward_bounds(
    blocks: TwoDenseBlocks,
    cache: CentreProducts,
    relax: Relaxation,
    lines: LinearRelaxation,
    ball: InputSet,
    rows: Tensor,
    references: tuple[NormReferences, Tensor] | None = None,
    terms: CentreTerms | None = None,
) -> tuple[Tensor, Tensor]:
    """Lower and upper bounds of the second-block neurons ``rows`` (``(N, R)`` flat indices)
    over ``ball`` (N rows), carried back through the first activation's ``lines``: equal (up to
    rounding) to the plain backward pass of those neurons.

    With ``references`` (the evaluation's references and which of their rows the ball's rows
    are) and ``terms`` (per ball row, from :func:`prefilter_bounds`; the ball is then an Lp
    ball without a domain) each row's exact norms are written into its reference, and a row
    whose ``G`` is not stored is computed directly (``base = 0``: every live column multiplied
    once, cheaper than building ``G`` for one evaluation); without, ``G`` is computed and
    stored where missing (within the cache's budget).
    """
    w1, b1, b2 = blocks.w1, blocks.b1, blocks.b2
    n, r = rows.shape
    centre = ball.center.reshape(n, -1)
    ls, lb, us, ub = lines.lower_slope, lines.lower_bias, lines.upper_slope, lines.upper_bias
    if terms is None:
        _, base = _centre_slopes(blocks, relax, centre)
        # Constants over every second-block neuron at once: the bias picks up each chosen
        # line's value at the first layer's bias plus its intercept.
        pos, neg = cache.signed_parts(blocks)
        up_line, lo_line = us * b1 + ub, ls * b1 + lb  # (N, K1)
        terms = CentreTerms(
            base,
            cache.pattern_rows(blocks, base, store=True),
            (pos @ up_line.T + neg @ lo_line.T + b2.unsqueeze(1)).T,
            (pos @ lo_line.T + neg @ up_line.T + b2.unsqueeze(1)).T,
        )
    has_g = terms.g_rows >= 0
    base = terms.base
    if not has_g.all():
        base = torch.where(torch.from_numpy(has_g).to(base.device).unsqueeze(1), base, 0.0)
    c_up, c_lo = terms.const_up.gather(1, rows), terms.const_lo.gather(1, rows)
    w2_rows = _rows_of(blocks.w2, rows)  # (N, R, K1)
    both = _side_products(w2_rows, us - base, ls - base, w1)  # (N, 2R, n_in): [up; lo]
    if has_g.all():
        g = cache.product_rows(terms.g_rows, rows)
        both[:, :r].add_(g)
        both[:, r:].add_(g)
    elif has_g.any():
        with_g = np.flatnonzero(has_g)
        index = torch.from_numpy(with_g).to(rows.device)
        g = cache.product_rows(terms.g_rows[with_g], rows.index_select(0, index))
        both.index_add_(0, index, torch.cat((g, g), 1))
    a_up, a_lo = both[:, :r], both[:, r:]
    if references is None:
        shape = (n, r, *ball.center.shape[1:])
        lower = ball.concretize(a_lo.reshape(shape), c_lo)[0]
        upper = ball.concretize(a_up.reshape(shape), c_up)[1]
        return lower, upper
    assert isinstance(ball, LpBall)
    if terms.at_centre_up is None or terms.at_centre_lo is None:
        mid = batched_matvec(both, centre)
        at_up, at_lo = mid[:, :r] + c_up, mid[:, r:] + c_lo
    else:
        at_up, at_lo = terms.at_centre_up.gather(1, rows), terms.at_centre_lo.gather(1, rows)
    norms = lp_norm(both, ball.q, 1)
    eps = ball.eps.unsqueeze(1)
    refs, ref_rows = references
    refs.write_exact(ref_rows, rows, norms[:, :r], norms[:, r:])
    return at_lo - eps * norms[:, r:], at_up + eps * norms[:, :r]


def _side_products(w2_rows: Tensor, d_up: Tensor, d_lo: Tensor, w1: Tensor) -> Tensor:
    """``[sum_k W2[j, k] (s_up_jk - base_k) W1[k]; the same for the lower side]`` for the rows
    j of ``w2_rows`` (``(N, R, K1)``, per ball row), where the upper side's slope is the upper
    line's where ``W2[j, k] > 0`` and the lower line's elsewhere (``d_up = us - base``,
    ``d_lo = ls - base``, ``(N, K1)``): ``(N, 2R, n_in)``.

    In one product of both sides' rows over the columns where either slope differs from
    ``base``, when that is no more arithmetic than the two products of the sum and the spread
    of the sides (``A_up + A_lo`` over the columns where ``d_up + d_lo`` is nonzero, ``A_up -
    A_lo`` where ``us - ls`` is): with CROWN's lower line at ``base`` both sets are the unstable
    neurons, and one product saves the second gather of ``W1``'s rows and three passes over the
    result; with Fast-Lin's equal slopes the spread is empty, and without ``G`` (``base = 0``)
    the sum covers every live neuron but the spread only the unstable ones, so two products
    stay cheaper there.
    """
    n, r, _ = w2_rows.shape
    differs = (d_up != 0) | (d_lo != 0)
    total_w, spread_w = d_up + d_lo, d_up - d_lo
    stacked = 2 * int(differs.sum(1).max())
    split = int((total_w != 0).sum(1).max()) + int((spread_w != 0).sum(1).max())
    if stacked > split:
        total = _weighted_product(w2_rows, total_w, w1, absolute=False)
        spread = _weighted_product(w2_rows, spread_w, w1, absolute=True)
        both = torch.empty(n, 2 * r, w1.shape[1], dtype=w1.dtype, device=w1.device)
        torch.add(total, spread, out=both[:, :r])
        torch.sub(total, spread, out=both[:, r:])
        return both.mul_(0.5)
    if not bool(differs.any()):
        return torch.zeros(n, 2 * r, w1.shape[1], dtype=w1.dtype, device=w1.device)
    cols = padded_indices(differs)  # (N, D); padded slots get weight 0 below
    valid = torch.arange(cols.shape[1], device=cols.device) < differs.sum(1, keepdim=True)
    du = torch.where(valid, d_up.gather(1, cols), 0.0).unsqueeze(1)
    dl = torch.where(valid, d_lo.gather(1, cols), 0.0).unsqueeze(1)
    left = w2_rows.gather(2, cols.unsqueeze(1).expand(-1, r, -1))  # (N, R, D)
    pos, neg = left.clamp(min=0), left.clamp(max=0)
    # W2+ d_up + W2- d_lo (upper side), W2+ d_lo + W2- d_up (lower side)
    sides = torch.cat((torch.addcmul(pos * du, neg, dl), torch.addcmul(pos * dl, neg, du)), 1)
    return torch.bmm(sides, _rows_of(w1, cols))


def _weighted_product(w2_rows: Tensor, weight: Tensor, w1: Tensor, *, absolute: bool) -> Tensor:
    """``sum_k f(W2[j, k]) weight_k W1[k]`` for the rows j of ``w2_rows`` (``(N, R, K1)``, per
    ball row), ``f`` the absolute value or the identity, over the columns where ``weight``
    (``(N, K1)``) is nonzero: ``(N, R, n_in)``."""
    nonzero = weight != 0
    n, r, _ = w2_rows.shape
    if not bool(nonzero.any()):
        return torch.zeros(n, r, w1.shape[1], dtype=w1.dtype, device=w1.device)
    cols = padded_indices(nonzero)  # (N, D); padded slots get weight 0 below
    valid = torch.arange(cols.shape[1], device=cols.device) < nonzero.sum(1, keepdim=True)
    coef = torch.where(valid, weight.gather(1, cols), 0.0)
    left = w2_rows.gather(2, cols.unsqueeze(1).expand(-1, r, -1))  # (N, R, D)
    if absolute:
        left.abs_()
    left.mul_(coef.unsqueeze(1))
    return torch.bmm(left, _rows_of(w1, cols))
