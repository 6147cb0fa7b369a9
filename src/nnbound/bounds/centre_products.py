"""What a certified-radius search keeps between evaluations of the same centres for
:mod:`nnbound.bounds.centre_split`: the products ``G = W2 diag(base) W1`` per first-activation
slope pattern, and the latest norm references per centre.

Everything is held in batched tables indexed by row (slot), so that an evaluation of N centres
costs the same number of tensor operations whatever N is: one transfer of the keys to the host
(the bytes of each centre and of each pattern, looked up in dictionaries there), then gathers
and scatters over whole tables. On a GPU a per-centre operation is a kernel launch each, and
a search of a thousand images would spend its time launching them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from nnbound.bounds.linear import _rows_of, padded_indices
from nnbound.bounds.work_size import work_elements
from nnbound.sets.norms import lp_norm

# Elements of the coefficient block one batched product writes (see methods._CHUNK_ELEMENTS).
CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class TwoDenseBlocks:
    """The first two blocks of a network as matrices: ``z = W1 x + b1``, ``y = W2 a + b2``."""

    w1: Tensor
    b1: Tensor
    w2: Tensor
    b2: Tensor


@dataclass
class NormReferences:
    """For N centres and one choice of first-activation slopes each (``upper_slope`` and
    ``lower_slope``, ``(N, K1)``), upper bounds of ``||A_up_j||_q`` and ``||A_lo_j||_q`` in
    exact arithmetic for every second-block neuron j (``norm_up``, ``norm_lo``, ``(N, K2)``).

    :func:`~nnbound.bounds.centre_split.prefilter_bounds` bounds the norms at other slopes from
    them by the triangle inequality. ``rounding`` (``(N, K2)``) bounds
    ``||A_j - fl(A_j)||_q / gamma`` for these slopes (``fl``: as computed); it is folded into
    the norms when they are stored. ``slots`` (host, ``(N,)``) are the centres' rows in the
    cache that made them.
    """

    q: float
    upper_slope: Tensor
    lower_slope: Tensor
    norm_up: Tensor
    norm_lo: Tensor
    rounding: Tensor
    slots: np.ndarray

    def write_exact(self, rows: Tensor, idx: Tensor, up: Tensor, lo: Tensor) -> None:
        """Exact norms ``up``/``lo`` (``(R, U)``) of neurons ``idx`` (``(R, U)``) of rows
        ``rows`` (``(R,)``) replace the bounds there (padded slots repeat a neuron: the same
        neuron's norm is written twice)."""
        where = (rows.unsqueeze(1).expand_as(idx), idx)
        self.norm_up.index_put_(where, up)
        self.norm_lo.index_put_(where, lo)


@dataclass
class _ReferenceTable:
    """Stored references of one dual norm, one row per slot; ``has`` (host) marks the filled
    rows."""

    us: Tensor
    ls: Tensor
    norm_up: Tensor
    norm_lo: Tensor
    has: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    @staticmethod
    def empty(k1: int, k2: int, like: Tensor) -> _ReferenceTable:
        def zeros(width: int) -> Tensor:
            return torch.zeros(0, width, dtype=like.dtype, device=like.device)

        return _ReferenceTable(zeros(k1), zeros(k1), zeros(k2), zeros(k2))

    def reserve(self, slots: int) -> None:
        """Room for ``slots`` rows (capacity doubles, old rows copied)."""
        cap = self.us.shape[0]
        if slots <= cap:
            return
        new_cap = max(slots, 2 * cap, 8)

        def grown(t: Tensor) -> Tensor:
            out = t.new_zeros(new_cap, t.shape[1])
            out[:cap] = t
            return out

        self.us, self.ls = grown(self.us), grown(self.ls)
        self.norm_up, self.norm_lo = grown(self.norm_up), grown(self.norm_lo)
        self.has = np.concatenate((self.has, np.zeros(new_cap - cap, dtype=bool)))

    def gather(self, slots: np.ndarray) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(us, ls, norm_up, norm_lo)`` of ``slots`` (``(N,)``, all within the table)."""
        index = torch.from_numpy(slots).to(self.us.device)
        us, ls = self.us.index_select(0, index), self.ls.index_select(0, index)
        return us, ls, self.norm_up.index_select(0, index), self.norm_lo.index_select(0, index)

    def row_bytes(self) -> int:
        return sum(t.shape[1] * t.element_size() for t in (self.us, self.ls, self.norm_up))


class CentreProducts:
    """Cache of ``G = W2 diag(base) W1`` per first-activation slope pattern ``base`` at a
    centre, and of the latest :class:`NormReferences` row per centre and dual norm.

    Products are keyed by the pattern's bytes (every centre with the same pattern shares one
    ``G``), for one network's two blocks, holding at most ``max_bytes`` (a pattern past that
    is not stored: its evaluations multiply every live column instead). References are keyed
    by the centre's bytes; past ``max_reference_bytes`` the references start over.

    ``lower_precision`` may name the cache of the same network in a lower precision (float32
    for a float64 one, as the radius search's float64 confirmation has): its references are
    then used too, their rounding accounted for, after checking that the weights and the
    centre are the same numbers.
    """

    def __init__(self, max_bytes: int = 1 << 30, max_reference_bytes: int = 1 << 28) -> None:
        self.max_bytes = max_bytes
        self.max_reference_bytes = max_reference_bytes
        self.lower_precision: CentreProducts | None = None
        self._weights: tuple[Tensor, Tensor] | None = None
        self._linked: tuple[Tensor, Tensor, bool] | None = None
        self._reset(None)

    def _reset(self, blocks: TwoDenseBlocks | None) -> None:
        """Forget everything; ``blocks`` (when given) is the network from now on."""
        self._pattern_rows: dict[bytes, int] = {}
        self._g = torch.empty(0)
        self._g_norms: dict[float, Tensor] = {}
        self._slots: dict[bytes, int] = {}
        self._tables: dict[float, _ReferenceTable] = {}
        self._w1_norms: dict[float, Tensor] = {}
        if blocks is not None:
            self._weights = (blocks.w1, blocks.w2)
            self._columns = blocks.w2.T.contiguous()
            self._signed = (blocks.w2.clamp(min=0), blocks.w2.clamp(max=0))
            k2, n_in = blocks.w2.shape[0], blocks.w1.shape[1]
            self._g = blocks.w1.new_zeros(0, k2, n_in)

    def _check_network(self, blocks: TwoDenseBlocks) -> None:
        if self._weights is None or not (
            self._weights[0] is blocks.w1 and self._weights[1] is blocks.w2
        ):
            # Another network (or a copy in another dtype): nothing stored applies.
            self._reset(blocks)

    @property
    def stored_patterns(self) -> int:
        """How many products ``G`` are stored."""
        return len(self._pattern_rows)

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

    # -- products --------------------------------------------------------------------------

    def pattern_rows(
        self, blocks: TwoDenseBlocks, base: Tensor, *, store: bool | np.ndarray
    ) -> np.ndarray:
        """Per row of ``base`` (``(N, K1)``), the row of its ``G`` in the table, -1 where it is
        not stored; the missing ones of the rows ``store`` marks (all for True, a host bool
        ``(N,)``) are computed and stored first (within ``max_bytes``)."""
        self._check_network(blocks)
        keys = _row_keys(base)
        rows = np.array([self._pattern_rows.get(k, -1) for k in keys], dtype=np.int64)
        wanted = (rows < 0) & store
        if not wanted.any():
            return rows
        k2, n_in = self._g.shape[1:]
        room = self.max_bytes // max(1, k2 * n_in * self._g.element_size()) - len(self._g)
        first: dict[bytes, int] = {}
        for i in np.flatnonzero(wanted).tolist():
            if keys[i] not in first and len(first) < room:
                first[keys[i]] = i
        if first:
            picked = torch.tensor(list(first.values()), device=base.device)
            fresh = base_products(blocks, self._columns, base.index_select(0, picked))
            start = len(self._g)
            self._g = torch.cat((self._g, fresh))
            for offset, key in enumerate(first):
                self._pattern_rows[key] = start + offset
            for q, norms in self._g_norms.items():
                self._g_norms[q] = torch.cat((norms, lp_norm(fresh, q, 1)))
            rows = np.array([self._pattern_rows.get(k, -1) for k in keys], dtype=np.int64)
        return rows

    def product_rows(self, g_rows: np.ndarray, idx: Tensor) -> Tensor:
        """``G[idx]`` of the stored products ``g_rows`` (``(N,)``, all stored): ``(N, U, n_in)``
        for neuron indices ``idx`` (``(N, U)``)."""
        k2, n_in = self._g.shape[1:]
        table = torch.from_numpy(g_rows).to(idx.device)
        flat = (table.unsqueeze(1) * k2 + idx).reshape(-1)
        return self._g.reshape(-1, n_in).index_select(0, flat).reshape(*idx.shape, n_in)

    def product_norms(self, q: float, g_rows: np.ndarray) -> Tensor:
        """``||G_j||_q`` of the stored products ``g_rows`` (``(N,)``, -1 gives any row)."""
        if q not in self._g_norms:
            self._g_norms[q] = lp_norm(self._g, q, 1)
        rows = torch.from_numpy(np.maximum(g_rows, 0)).to(self._g.device)
        return self._g_norms[q].index_select(0, rows)

    # -- references ------------------------------------------------------------------------

    def slots(self, blocks: TwoDenseBlocks, centre: Tensor, q: float) -> np.ndarray:
        """Slots of the rows of ``centre`` (``(N, n_in)``), new ones made for new centres, -1
        for a centre that does not fit in ``max_reference_bytes`` (its references are not
        kept). When the new centres do not fit, the references start over first."""
        self._check_network(blocks)
        keys = _row_keys(centre)
        self._table(blocks, q)
        limit = self.max_reference_bytes // sum(t.row_bytes() for t in self._tables.values())
        new = [k for k in dict.fromkeys(keys) if k not in self._slots]
        if len(self._slots) + len(new) > limit:
            self._slots.clear()
            for t in self._tables.values():
                t.has[:] = False
            new = list(dict.fromkeys(keys))
        for k in new[: max(0, limit - len(self._slots))]:
            self._slots[k] = len(self._slots)
        for t in self._tables.values():
            t.reserve(len(self._slots))
        return np.array([self._slots.get(k, -1) for k in keys], dtype=np.int64)

    def _table(self, blocks: TwoDenseBlocks, q: float) -> _ReferenceTable:
        if q not in self._tables:
            k2, k1 = blocks.w2.shape
            self._tables[q] = _ReferenceTable.empty(k1, k2, blocks.w1)
            self._tables[q].reserve(len(self._slots))
        return self._tables[q]

    def own_references(
        self, slots: np.ndarray, q: float
    ) -> tuple[np.ndarray, tuple[Tensor, Tensor, Tensor, Tensor]] | None:
        """Which of ``slots`` hold a reference of norm ``q`` (host bool), and the stored
        ``(us, ls, norm_up, norm_lo)`` rows of every slot (meaningless where not held)."""
        table = self._tables.get(q)
        if table is None:
            return None
        held = np.zeros(len(slots), dtype=bool)
        held[slots >= 0] = table.has[slots[slots >= 0]]
        if not held.any():
            return None
        return held, table.gather(np.maximum(slots, 0))

    def linked_references(
        self, blocks: TwoDenseBlocks, centre: Tensor, q: float
    ) -> tuple[np.ndarray, tuple[Tensor, Tensor, Tensor, Tensor]] | None:
        """:meth:`own_references` of the ``lower_precision`` cache for the rows of ``centre``
        it can hold exactly, cast to this cache's dtype; None without such a cache."""
        lower = self.lower_precision
        if lower is None or not self._same_weights(lower, blocks):
            return None
        assert lower._weights is not None
        low = centre.to(lower._weights[0].dtype)
        exact = (low.to(centre.dtype) == centre).all(1).cpu().numpy()
        keys = _row_keys(low)
        slots = np.array([lower._slots.get(k, -1) for k in keys], dtype=np.int64)
        table = lower._tables.get(q)
        if table is None:
            return None
        held = exact & (slots >= 0)
        held[held] &= table.has[slots[held]]
        if not held.any():
            return None
        like = blocks.w1
        us, ls, up, lo = (
            t.to(dtype=like.dtype, device=like.device) for t in table.gather(np.maximum(slots, 0))
        )
        return held, (us, ls, up, lo)

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

    def store_references(self, blocks: TwoDenseBlocks, refs: NormReferences) -> None:
        """Keep ``refs`` (the latest per centre), with their rounding folded into the norms."""
        self._check_network(blocks)
        k1, n_in = blocks.w1.shape
        gamma = rounding_gamma(blocks.w1, k1 + n_in + 8)
        tiny = torch.finfo(blocks.w1.dtype).tiny * (k1 + 8) * n_in
        table = self._table(blocks, refs.q)
        kept = np.flatnonzero(refs.slots >= 0)
        if kept.size == 0:
            return
        rows = torch.from_numpy(kept).to(table.us.device)
        index = torch.from_numpy(refs.slots[kept]).to(table.us.device)

        def pick(t: Tensor) -> Tensor:
            return t if kept.size == len(refs.slots) else t.index_select(0, rows)

        slack = 2 * gamma * pick(refs.rounding) + tiny
        table.us.index_copy_(0, index, pick(refs.upper_slope))
        table.ls.index_copy_(0, index, pick(refs.lower_slope))
        table.norm_up.index_copy_(0, index, pick(refs.norm_up) * (1 + gamma) + slack)
        table.norm_lo.index_copy_(0, index, pick(refs.norm_lo) * (1 + gamma) + slack)
        table.has[refs.slots[kept]] = True


def _row_keys(t: Tensor) -> list[bytes]:
    """The bytes of each row of ``t`` (one transfer to the host for all of them)."""
    host = t.detach().cpu().contiguous().numpy()
    return [row.tobytes() for row in host]


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


def base_products(blocks: TwoDenseBlocks, columns: Tensor, base: Tensor) -> Tensor:
    """``W2 diag(base_n) W1`` (``(N, K2, n_in)``) for each row of ``base``, over its nonzero
    entries only, a few rows at a time; ``columns`` is ``W2.T`` contiguous."""
    k2, n_in = blocks.w2.shape[0], blocks.w1.shape[1]
    budget = work_elements(base.device, blocks.w1.dtype, CHUNK_ELEMENTS)
    step = max(1, budget // (k2 * n_in))
    out = blocks.w1.new_empty(base.shape[0], k2, n_in)
    for start in range(0, base.shape[0], step):
        chunk = base[start : start + step]
        nonzero = chunk != 0
        cols = padded_indices(nonzero)  # (n, S); a padded slot repeats a column with weight 0
        valid = torch.arange(cols.shape[1], device=cols.device) < nonzero.sum(1, keepdim=True)
        weight = torch.where(valid, chunk.gather(1, cols), 0.0)
        # Columns of W2 gathered as rows of its contiguous transpose (a gather from W2.T itself
        # is ~30% slower); the product takes the transposed operand as is.
        left = _rows_of(columns, cols) * weight.unsqueeze(-1)  # (n, S, K2)
        torch.bmm(left.transpose(1, 2), _rows_of(blocks.w1, cols), out=out[start : start + step])
    return out
