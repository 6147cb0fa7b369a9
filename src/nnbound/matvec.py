"""Batched matrix-vector products ``a[n] @ v[n]`` without ``torch.bmm``'s vector path on a CPU.

Concretising linear bounds at a ball's centre, a box's midpoint or a Jacobian chain's exact
end is a matrix-vector product per row. On a CPU ``torch.bmm`` with a one-column right side
runs several times slower than either BLAS's matrix-vector product per row or an element-wise
product and sum (``bench/bench_matvec.py`` prints the three side by side). Which of those two
is faster depends on the size of one row's matrix: a per-row call costs microseconds of
dispatch, a product and sum a temporary the size of its chunk. On other devices ``bmm`` is one
batched kernel and stays.

The sums are the same products in another order, so results may differ from ``bmm`` in the
last bits (rounding), never more. Soundness does not rest on the order: the float64 passes'
outward rounding (:mod:`nnbound.bounds.outward`) and the radius search's float64 confirmation
bound a sum's rounding error whatever order it is added in.
"""

from __future__ import annotations

import torch
from torch import Tensor

# A row matrix of at least this many elements gets its own BLAS matrix-vector call: its
# arithmetic then outweighs the call's dispatch (~10 us).
PER_ROW_CALL_ELEMENTS = 1 << 15
# Elements of the temporary product of one chunk of small row matrices (cache-sized).
PRODUCT_CHUNK_ELEMENTS = 1 << 20


def batched_matvec(a: Tensor, v: Tensor) -> Tensor:
    """``(N, S)``: ``a[n] @ v[n]`` for ``a`` ``(N, S, k)`` and ``v`` ``(N, k)`` (``torch.bmm``'s
    result up to rounding)."""
    n, s, k = a.shape
    if a.device.type != "cpu" or n <= 1 or s == 0:
        return torch.bmm(a, v.unsqueeze(-1)).squeeze(-1)
    if s * k >= PER_ROW_CALL_ELEMENTS:
        return torch.stack([torch.mv(a[i], v[i]) for i in range(n)])
    rows = v.unsqueeze(1)
    step = max(1, PRODUCT_CHUNK_ELEMENTS // max(1, s * k))
    if step >= n:
        return (a * rows).sum(-1)
    return torch.cat([(a[i : i + step] * rows[i : i + step]).sum(-1) for i in range(0, n, step)])
