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
from a :class:`NormReference` (the exact norms of the previous evaluation of the same centre)
by the triangle inequality, one matrix-vector product; near the root of a radius search the
slopes barely move between evaluations, so only the truly unstable neurons are left for the
products. A float64 evaluation may start from the float32 search's references: they carry a
proven bound of their float32 rounding (:meth:`CentreProducts.store_references`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nnbound.bounds.linear import _rows_of, padded_indices
from nnbound.network.layers import Activation, Dense, Flatten, Layer, Reshape
from nnbound.network.network import Network
from nnbound.relax.base import LinearRelaxation, Relaxation
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


@dataclass
class NormReference:
    """For one centre and one choice of first-activation slopes (``upper_slope`` and
    ``lower_slope``, ``(K1,)``), upper bounds of ``||A_up_j||_q`` and ``||A_lo_j||_q`` in exact
    arithmetic for every second-block neuron j (``norm_up``, ``norm_lo``, ``(K2,)``).

    :func:`prefilter_bounds` bounds the norms at other slopes from it by the triangle
    inequality. ``rounding`` (``(K2,)``) bounds ``||A_j - fl(A_j)||_q / gamma`` for the
    stored slopes (``fl``: as computed); it is folded into the norms when the reference is
    stored.
    """

    centre: Tensor
    q: float
    upper_slope: Tensor
    lower_slope: Tensor
    norm_up: Tensor
    norm_lo: Tensor
    rounding: Tensor


class CentreProducts:
    """Cache of ``G = W2 diag(base) W1`` per first-activation slope pattern ``base`` at a centre,
    and of the latest :class:`NormReference` per centre.

    Products are keyed by the pattern's bytes (every centre with the same pattern shares one
    ``G``), for one network's two blocks, holding at most ``max_bytes`` (further patterns are
    computed on each use instead of stored). References are keyed by the centre's bytes and
    the dual norm, at most ``max_reference_bytes`` (the oldest go first).

    ``lower_precision`` may name the cache of the same network in a lower precision (float32
    for a float64 one, as the radius search's float64 confirmation has): its references are
    then used too, their rounding accounted for, after checking that the weights and the
    centre are the same numbers.
    """

    def __init__(self, max_bytes: int = 1 << 30, max_reference_bytes: int = 1 << 28) -> None:
        self.max_bytes = max_bytes
        self.max_reference_bytes = max_reference_bytes
        self.lower_precision: CentreProducts | None = None
        self._stored: dict[bytes, _Product] = {}
        self._bytes = 0
        self._references: dict[tuple[float, bytes], NormReference] = {}
        self._reference_bytes = 0
        self._weights: tuple[Tensor, Tensor] | None = None
        self._columns = torch.empty(0)
        self._signed = (self._columns, self._columns)
        self._w1_norms: dict[float, Tensor] = {}
        self._linked: tuple[Tensor, Tensor, bool] | None = None

    def _check_network(self, blocks: TwoDenseBlocks) -> None:
        if self._weights is None or not (
            self._weights[0] is blocks.w1 and self._weights[1] is blocks.w2
        ):
            # Another network (or a copy in another dtype): nothing stored applies.
            self._stored.clear()
            self._bytes = 0
            self._references.clear()
            self._reference_bytes = 0
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
            for i, g in zip(chunk, _base_products(blocks, self._columns, base[chunk]), strict=True):
                fresh[keys[i]] = _Product(g)
                size = g.numel() * g.element_size()
                if self._bytes + size <= self.max_bytes:
                    self._stored[keys[i]] = fresh[keys[i]]
                    self._bytes += size
        return [self._stored[k] if k in self._stored else fresh[k] for k in keys]

    def stored_products(self, blocks: TwoDenseBlocks, base: Tensor) -> list[_Product | None]:
        """The stored ``G`` of each row of ``base``, None where it is not stored."""
        self._check_network(blocks)
        return [self._stored.get(row.numpy().tobytes()) for row in base.detach().cpu()]

    def references(
        self, blocks: TwoDenseBlocks, centre: Tensor, q: float
    ) -> list[list[NormReference]]:
        """Per row of ``centre`` (``(N, n_in)``), the references known for it: this cache's and
        the ``lower_precision`` cache's (cast to this dtype)."""
        self._check_network(blocks)
        rows = centre.detach().cpu()
        found: list[list[NormReference]] = [[] for _ in range(rows.shape[0])]
        for i, row in enumerate(rows):
            own = self._references.get((q, row.numpy().tobytes()))
            if own is not None:
                found[i].append(own)
        lower = self.lower_precision
        if lower is None or not self._same_weights(lower, blocks):
            return found
        assert lower._weights is not None
        low_rows = rows.to(lower._weights[0].dtype)
        same = (low_rows.to(rows.dtype) == rows).all(1)  # the centre is exactly representable
        for i, row in enumerate(low_rows):
            ref = lower._references.get((q, row.numpy().tobytes())) if same[i] else None
            if ref is not None:
                found[i].append(_cast_reference(ref, blocks.w1))
        return found

    def _same_weights(self, lower: CentreProducts, blocks: TwoDenseBlocks) -> bool:
        """Whether ``lower`` holds the same network's weights (rounded to its dtype, and equal
        to these once cast back), checked once per pair of weight tensors."""
        if lower._weights is None:
            return False
        w1, w2 = lower._weights
        if self._linked is None or not (self._linked[0] is w1 and self._linked[1] is w2):
            same = w1.shape == blocks.w1.shape and w2.shape == blocks.w2.shape
            if same:
                same = bool(
                    (w1.to(blocks.w1) == blocks.w1).all() and (w2.to(blocks.w2) == blocks.w2).all()
                )
            self._linked = (w1, w2, same)
        return self._linked[2]

    def store_references(self, blocks: TwoDenseBlocks, refs: list[NormReference]) -> None:
        """Keep ``refs`` (the latest per centre), with their rounding folded into the norms."""
        self._check_network(blocks)
        k1, n_in = blocks.w1.shape
        gamma = rounding_gamma(blocks.w1, k1 + n_in + 8)
        tiny = torch.finfo(blocks.w1.dtype).tiny * (k1 + 8) * n_in
        if not refs:
            return
        # Keys from one transfer of every centre (not one per reference).
        centres = torch.stack([ref.centre for ref in refs]).detach().cpu()
        for ref, centre in zip(refs, centres, strict=True):
            slack = 2 * gamma * ref.rounding + tiny
            kept = NormReference(
                ref.centre.clone(),
                ref.q,
                ref.upper_slope.clone(),
                ref.lower_slope.clone(),
                ref.norm_up * (1 + gamma) + slack,
                ref.norm_lo * (1 + gamma) + slack,
                ref.rounding[:0],
            )
            key = (ref.q, centre.numpy().tobytes())
            old = self._references.pop(key, None)
            if old is not None:
                self._reference_bytes -= _reference_size(old)
            size = _reference_size(kept)
            while self._references and self._reference_bytes + size > self.max_reference_bytes:
                evicted = self._references.pop(next(iter(self._references)))
                self._reference_bytes -= _reference_size(evicted)
            if size <= self.max_reference_bytes:
                self._references[key] = kept
                self._reference_bytes += size


def rounding_gamma(like: Tensor, n: int) -> float:
    """``gamma_n = n u / (1 - n u)``: the relative error bound of a length-n dot product of
    ``like``'s dtype (u: its unit roundoff; 2^-8 for float32 when matrix products may run in
    a reduced precision, TF32 or bfloat16)."""
    u = torch.finfo(like.dtype).eps / 2
    if like.dtype == torch.float32:
        reduced = torch.get_float32_matmul_precision() != "highest"
        if like.is_cuda:
            reduced |= torch.backends.cuda.matmul.allow_tf32
        if reduced:
            u = 2.0**-8
    return n * u / (1 - n * u)


def _reference_size(ref: NormReference) -> int:
    tensors = (ref.centre, ref.upper_slope, ref.lower_slope, ref.norm_up, ref.norm_lo)
    return sum(t.numel() * t.element_size() for t in tensors)


def _cast_reference(ref: NormReference, like: Tensor) -> NormReference:
    def cast(t: Tensor) -> Tensor:
        return t.to(dtype=like.dtype, device=like.device)

    return NormReference(
        cast(ref.centre),
        ref.q,
        cast(ref.upper_slope),
        cast(ref.lower_slope),
        cast(ref.norm_up),
        cast(ref.norm_lo),
        cast(ref.rounding),
    )


def _base_products(blocks: TwoDenseBlocks, columns: Tensor, base: Tensor) -> Tensor:
    """``W2 diag(base_n) W1`` for each row of ``base``, over its nonzero entries only."""
    nonzero = base != 0
    cols = padded_indices(nonzero)  # (N, S); a padded slot repeats a column with weight 0
    valid = torch.arange(cols.shape[1], device=cols.device) < nonzero.sum(1, keepdim=True)
    weight = torch.where(valid, base.gather(1, cols), 0.0)
    # Columns of W2 gathered as rows of its contiguous transpose (a gather from W2.T itself is
    # ~30% slower); the product takes the transposed operand as is.
    left = _rows_of(columns, cols) * weight.unsqueeze(-1)  # (N, S, K2)
    return torch.bmm(left.transpose(1, 2), _rows_of(blocks.w1, cols))  # (N, K2, n_in)


@dataclass(frozen=True)
class CentreTerms:
    """What the bounds of every second-block neuron share at one evaluation: the first
    activation's slopes at the centres (``base``, ``(N, K1)``), each neuron's constant term in
    its upper and lower bound (``(N, K2)``) and, when known, the whole bound's value at the
    centre, ``A . x0 + const`` (``(N, K2)``)."""

    base: Tensor
    const_up: Tensor
    const_lo: Tensor
    at_centre_up: Tensor | None = None
    at_centre_lo: Tensor | None = None

    def rows(self, index: Tensor) -> CentreTerms:
        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[index]

        return CentreTerms(
            self.base[index],
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
) -> tuple[Tensor, Tensor, list[NormReference], CentreTerms]:
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
    ref_us, ref_ls, ref_up, ref_lo = _nearest_references(blocks, cache, base, us, ls, centre, q)
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
    refs = [
        NormReference(centre[i], q, us[i], ls[i], norm_up[i], norm_lo[i], rounding[i])
        for i in range(n)
    ]
    terms = CentreTerms(base, c_up, c_lo, mid_up + c_up, mid_lo + c_lo)
    return lower, upper, refs, terms


def _nearest_references(
    blocks: TwoDenseBlocks,
    cache: CentreProducts,
    base: Tensor,
    us: Tensor,
    ls: Tensor,
    centre: Tensor,
    q: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per row, the reference whose slopes are nearest ``us``/``ls`` (in L1): a stored one, or
    ``G`` (computed and stored when the row has no other). Returns its upper and lower slopes
    ``(N, K1)`` and norm bounds ``(N, K2)``."""
    known = cache.references(blocks, centre, q)
    stored = cache.stored_products(blocks, base)
    need = [i for i in range(base.shape[0]) if not known[i] and stored[i] is None]
    if need:
        for i, prod in zip(need, cache.products(blocks, base[need]), strict=True):
            stored[i] = prod
    options: list[list[tuple[Tensor, Tensor, Tensor, Tensor]]] = []
    for i, refs in enumerate(known):
        choices = [(r.upper_slope, r.lower_slope, r.norm_up, r.norm_lo) for r in refs]
        prod = stored[i]
        if prod is not None:
            norms = prod.row_norms(q)
            choices.append((base[i], base[i], norms, norms))
        options.append(choices)
    # Padded to the most choices by repeating a row's last one, compared all at once.
    width = max(len(c) for c in options)
    padded = [c + c[-1:] * (width - len(c)) for c in options]
    ups, los, norm_up, norm_lo = (
        torch.stack([torch.stack([choice[t] for choice in c]) for c in padded]) for t in range(4)
    )  # (N, width, K1) slopes, (N, width, K2) norms
    distance = (ups - us.unsqueeze(1)).abs().sum(-1) + (los - ls.unsqueeze(1)).abs().sum(-1)
    best = distance.argmin(1)
    rows = torch.arange(base.shape[0], device=best.device)
    return ups[rows, best], los[rows, best], norm_up[rows, best], norm_lo[rows, best]


def split_backward_bounds(
    blocks: TwoDenseBlocks,
    cache: CentreProducts,
    relax: Relaxation,
    lines: LinearRelaxation,
    ball: InputSet,
    rows: Tensor,
    references: list[NormReference] | None = None,
    terms: CentreTerms | None = None,
) -> tuple[Tensor, Tensor]:
    """Lower and upper bounds of the second-block neurons ``rows`` (``(N, R)`` flat indices)
    over ``ball`` (N rows), carried back through the first activation's ``lines``: equal (up to
    rounding) to the plain backward pass of those neurons.

    With ``references`` and ``terms`` (per ball row, from :func:`prefilter_bounds`; the ball is
    then an Lp ball without a domain) each row's exact norms are written into its reference,
    and a row whose ``G`` is not stored is computed directly (``base = 0``: every live column
    multiplied once, cheaper than building ``G`` for one evaluation); without, ``G`` is
    computed and stored where missing.
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
            (pos @ up_line.T + neg @ lo_line.T + b2.unsqueeze(1)).T,
            (pos @ lo_line.T + neg @ up_line.T + b2.unsqueeze(1)).T,
        )
    base = terms.base
    c_up, c_lo = terms.const_up.gather(1, rows), terms.const_lo.gather(1, rows)
    if references is None:
        products: list[_Product | None] = list(cache.products(blocks, base))
    else:
        products = cache.stored_products(blocks, base)
    has_g = torch.tensor([prod is not None for prod in products], device=base.device)
    base = torch.where(has_g.unsqueeze(1), base, 0.0)
    # A_up + A_lo = 2 G + W2 diag(s_up + s_lo - 2 base) W1 and A_up - A_lo = |W2| diag(s_up -
    # s_lo) W1: two products over the columns where each weight is nonzero (the unstable
    # neurons; every live one for the first without G; none for the second with parallel
    # lines, Fast-Lin), fewer than one product of both sides over the union.
    w2_rows = _rows_of(blocks.w2, rows)  # (N, R, K1)
    total = _weighted_product(w2_rows, us + ls - 2 * base, w1, absolute=False)
    spread = _weighted_product(w2_rows, us - ls, w1, absolute=True)
    for i, prod in enumerate(products):
        if prod is not None:
            total[i] += 2 * prod.g.index_select(0, rows[i])
    both = torch.empty(n, 2 * r, w1.shape[1], dtype=w1.dtype, device=w1.device)  # [up; lo]
    torch.add(total, spread, out=both[:, :r])
    torch.sub(total, spread, out=both[:, r:])
    both.mul_(0.5)
    a_up, a_lo = both[:, :r], both[:, r:]
    if references is None:
        shape = (n, r, *ball.center.shape[1:])
        lower = ball.concretize(a_lo.reshape(shape), c_lo)[0]
        upper = ball.concretize(a_up.reshape(shape), c_up)[1]
        return lower, upper
    assert isinstance(ball, LpBall)
    if terms.at_centre_up is None or terms.at_centre_lo is None:
        mid = torch.bmm(both, centre.unsqueeze(-1)).squeeze(-1)
        at_up, at_lo = mid[:, :r] + c_up, mid[:, r:] + c_lo
    else:
        at_up, at_lo = terms.at_centre_up.gather(1, rows), terms.at_centre_lo.gather(1, rows)
    norms = lp_norm(both, ball.q, 1)
    eps = ball.eps.unsqueeze(1)
    for i, ref in enumerate(references):
        ref.norm_up[rows[i]] = norms[i, :r]
        ref.norm_lo[rows[i]] = norms[i, r:]
    return at_lo - eps * norms[:, r:], at_up + eps * norms[:, :r]


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
