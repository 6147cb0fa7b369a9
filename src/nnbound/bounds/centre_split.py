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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nnbound.bounds.linear import _rows_of, padded_indices
from nnbound.network.layers import Activation, Dense, Flatten, Layer, Reshape
from nnbound.network.network import Network
from nnbound.relax.base import LinearRelaxation, Relaxation, straddles
from nnbound.sets.box import InputSet
from nnbound.sets.lp_ball import LpBall
from nnbound.sets.norms import lp_norm

# Elements of the coefficient block one batched product writes (see methods._CHUNK_ELEMENTS).
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class TwoDenseBlocks:
    """The first two blocks of a network as matrices: ``z = W1 x + b1``, ``y = W2 a + b2``."""

    w1: Tensor
    b1: Tensor
    w2: Tensor
    b2: Tensor


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


class _Product:
    """One stored ``G`` and its row norms per dual norm (computed on first use)."""

    def __init__(self, g: Tensor) -> None:
        self.g = g
        self._norms: dict[float, Tensor] = {}

    def row_norms(self, q: float) -> Tensor:
        if q not in self._norms:
            self._norms[q] = lp_norm(self.g, q, 1)
        return self._norms[q]


class CentreProducts:
    """Cache of ``G = W2 diag(base) W1`` per first-activation slope pattern ``base`` at a centre.

    Keyed by the pattern's bytes (every centre with the same pattern shares one ``G``), for one
    network's two blocks, holding at most ``max_bytes`` (further patterns are computed on each
    use instead of stored).
    """

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        self.max_bytes = max_bytes
        self._stored: dict[bytes, _Product] = {}
        self._bytes = 0
        self._weights: tuple[Tensor, Tensor] | None = None
        self._columns = torch.empty(0)
        self._signed = (self._columns, self._columns)
        self._w1_norms: dict[float, Tensor] = {}

    def _check_network(self, blocks: TwoDenseBlocks) -> None:
        if self._weights is None or not (
            self._weights[0] is blocks.w1 and self._weights[1] is blocks.w2
        ):
            # Another network (or a copy in another dtype): nothing stored applies.
            self._stored.clear()
            self._bytes = 0
            self._weights = (blocks.w1, blocks.w2)
            self._columns = blocks.w2.T.contiguous()
            self._signed = (blocks.w2.clamp(min=0), blocks.w2.clamp(max=0))
            self._w1_norms = {}

    def first_row_norms(self, blocks: TwoDenseBlocks, q: float) -> Tensor:
        """``||W1[k]||_q`` for every first-layer neuron k."""
        self._check_network(blocks)
        if q not in self._w1_norms:
            self._w1_norms[q] = lp_norm(blocks.w1, q, 1)
        return self._w1_norms[q]

    def columns(self, blocks: TwoDenseBlocks) -> Tensor:
        """``W2`` transposed and contiguous: its columns as rows, for fast gathers."""
        self._check_network(blocks)
        return self._columns

    def signed_parts(self, blocks: TwoDenseBlocks) -> tuple[Tensor, Tensor]:
        """``max(W2, 0)`` and ``min(W2, 0)``."""
        self._check_network(blocks)
        return self._signed

    def products(self, blocks: TwoDenseBlocks, base: Tensor) -> list[_Product]:
        """``G`` (``(K2, n_in)``) for each row of ``base`` (``(N, K1)``)."""
        self._check_network(blocks)
        keys = [row.numpy().tobytes() for row in base.detach().cpu()]
        missing = sorted({k: i for i, k in enumerate(keys) if k not in self._stored}.values())
        fresh: dict[bytes, _Product] = {}
        # A few centres' products at a time (each is K2 x n_in).
        step = max(1, _CHUNK_ELEMENTS // (blocks.w2.shape[0] * blocks.w1.shape[1]))
        for start in range(0, len(missing), step):
            chunk = missing[start : start + step]
            for i, g in zip(chunk, _base_products(blocks, base[chunk]), strict=True):
                fresh[keys[i]] = _Product(g)
                size = g.numel() * g.element_size()
                if self._bytes + size <= self.max_bytes:
                    self._stored[keys[i]] = fresh[keys[i]]
                    self._bytes += size
        return [self._stored[k] if k in self._stored else fresh[k] for k in keys]


def _base_products(blocks: TwoDenseBlocks, base: Tensor) -> Tensor:
    """``W2 diag(base_n) W1`` for each row of ``base``, over its nonzero entries only."""
    nonzero = base != 0
    cols = padded_indices(nonzero)  # (N, S); a padded slot repeats a column with weight 0
    valid = torch.arange(cols.shape[1], device=cols.device) < nonzero.sum(1, keepdim=True)
    weight = torch.where(valid, base.gather(1, cols), 0.0)
    left = _rows_of(blocks.w2.T, cols).transpose(1, 2) * weight.unsqueeze(1)  # (N, K2, S)
    return torch.bmm(left, _rows_of(blocks.w1, cols))  # (N, K2, n_in)


def split_backward_bounds(
    blocks: TwoDenseBlocks,
    cache: CentreProducts,
    relax: Relaxation,
    lines: LinearRelaxation,
    ball: InputSet,
    rows: Tensor,
    kinks: tuple[float, ...] | None = None,
) -> tuple[Tensor, Tensor]:
    """Lower and upper bounds of the second-block neurons ``rows`` (``(N, R)`` flat indices)
    over ``ball`` (N rows), carried back through the first activation's ``lines``.

    Equal (up to rounding) to the plain backward pass of those neurons, except with ``kinks``
    (the second activation's kinks, for a Lp ball without a domain): a neuron that a cheaper
    bound already shows on one side of every kink gets that bound instead. It replaces the
    norm ``||A_j||_q`` by ``||G_j||_q + sum_{k in D} |X_jk| ||W1[k]||_q`` (the triangle
    inequality; ``A_j . x0`` is exact and cheap, ``W1 x0`` being known), so it is sound and
    looser, and it costs no product with ``W1``. Use it only where nothing reads such a
    neuron's bounds beyond which side of the kinks it is on (its lines do not depend on more).
    """
    w1, b1, b2 = blocks.w1, blocks.b1, blocks.b2
    centre = ball.center.reshape(ball.center.shape[0], -1)
    z0 = torch.nn.functional.linear(centre, w1)
    base = relax.linear(z0 + b1, z0 + b1).lower_slope  # the slopes at the centre (l = u = z)
    ls, lb, us, ub = lines.lower_slope, lines.lower_bias, lines.upper_slope, lines.upper_bias
    # Constants over every second-block neuron at once: the bias picks up each chosen line's
    # value at the first layer's bias plus its intercept.
    pos, neg = cache.signed_parts(blocks)
    up_line, lo_line = us * b1 + ub, ls * b1 + lb  # (N, K1)
    c_up = (pos @ up_line.T + neg @ lo_line.T + b2.unsqueeze(1)).T.gather(1, rows)
    c_lo = (pos @ lo_line.T + neg @ up_line.T + b2.unsqueeze(1)).T.gather(1, rows)
    products = cache.products(blocks, base)
    d_up, d_lo = us - base, ls - base
    differs = (d_up != 0) | (d_lo != 0)
    n, r = rows.shape
    cols = padded_indices(differs)  # (N, D); padded slots get zero differences below
    valid = torch.arange(cols.shape[1], device=cols.device) < differs.sum(1, keepdim=True)
    du = torch.where(valid, d_up.gather(1, cols), 0.0).unsqueeze(-1)  # (N, D, 1)
    dl = torch.where(valid, d_lo.gather(1, cols), 0.0).unsqueeze(-1)
    # W2[rows, cols] per ball row, laid out (N, D, R): columns of W2 first (D < R mostly).
    w = _rows_of(cache.columns(blocks), cols)  # (N, D, K2)
    w = w.gather(2, rows.unsqueeze(1).expand(-1, cols.shape[1], -1))
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    x_up, x_lo = wp * du + wn * dl, wp * dl + wn * du  # (N, D, R): A = G + X^T W1[D]
    cheap = kinks is not None and isinstance(ball, LpBall) and ball.domain is None
    if cheap:
        assert isinstance(ball, LpBall) and kinks is not None
        lower, upper = _cheap_bounds(cache, blocks, products, ball, rows, cols, z0, x_lo, x_up)
        lower, upper = lower + c_lo, upper + c_up
        full = straddles(lower, upper, kinks)
        if not bool(full.any()):
            return lower, upper
        # The rows left get the exact norm: A for those rows only (padded per ball row).
        keep = padded_indices(full)  # (N, R') positions along R
    else:
        keep = torch.arange(r, device=rows.device).expand(n, -1)
    r2 = keep.shape[1]
    pick = keep.unsqueeze(1).expand(-1, cols.shape[1], -1)
    left = torch.cat((x_up.gather(2, pick), x_lo.gather(2, pick)), dim=2)  # (N, D, 2R')
    both = torch.bmm(left.transpose(1, 2), _rows_of(w1, cols))  # (N, 2R', n_in)
    kept_rows = rows.gather(1, keep)
    g_rows = torch.stack([products[i].g.index_select(0, kept_rows[i]) for i in range(n)])
    a_up = both[:, :r2].add_(g_rows)
    a_lo = both[:, r2:].add_(g_rows)
    shape = (n, r2, *ball.center.shape[1:])
    exact_lo = ball.concretize(a_lo.reshape(shape), c_lo.gather(1, keep))[0]
    exact_up = ball.concretize(a_up.reshape(shape), c_up.gather(1, keep))[1]
    if not cheap:  # every row was kept, in order
        return exact_lo, exact_up
    # Padding repeats a row's first kept position, whose exact bound is written twice.
    return lower.scatter(1, keep, exact_lo), upper.scatter(1, keep, exact_up)


def _cheap_bounds(
    cache: CentreProducts,
    blocks: TwoDenseBlocks,
    products: list[_Product],
    ball: LpBall,
    rows: Tensor,
    cols: Tensor,
    z0: Tensor,
    x_lo: Tensor,
    x_up: Tensor,
) -> tuple[Tensor, Tensor]:
    """Sound bounds (without constants) of ``A . x`` over the ball with the norm of
    ``A = G + X^T W1[D]`` bounded by the triangle inequality (see
    :func:`split_backward_bounds`)."""
    q = ball.q
    n = rows.shape[0]
    centre = ball.center.reshape(n, -1)
    g_mid = torch.stack([products[i].g @ centre[i] for i in range(n)]).gather(1, rows)
    g_norm = torch.stack([products[i].row_norms(q) for i in range(n)]).gather(1, rows)
    z_d = z0.gather(1, cols).unsqueeze(-1)  # W1[D] x0: (N, D, 1)
    rn = cache.first_row_norms(blocks, q)[cols].unsqueeze(-1)  # (N, D, 1)
    eps = ball.eps.unsqueeze(1)
    mid_lo, mid_up = g_mid + (x_lo * z_d).sum(1), g_mid + (x_up * z_d).sum(1)
    dev_lo = g_norm + (x_lo.abs() * rn).sum(1)
    dev_up = g_norm + (x_up.abs() * rn).sum(1)
    return mid_lo - eps * dev_lo, mid_up + eps * dev_up
