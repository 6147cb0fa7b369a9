"""Bounds of a whole batch, computed a chunk of inputs at a time.

One :func:`nnbound.bounds` call holds every row's backward-pass coefficients and intermediate
bounds at once, so its memory grows with the batch (3 GB at 5,000 images on mnist-cnn-small,
issue 19). Rows are independent (a row's bounds never depend on another row's; tests pin
this), so bounding chunks of rows and concatenating gives the same numbers with memory set by
the chunk.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from nnbound.bounds.api import bounds
from nnbound.bounds.result import Bounds, IntermediateBounds
from nnbound.errors import InputError
from nnbound.network.graph import Graph
from nnbound.network.network import Network
from nnbound.sets.box import InputSet

# Inputs per call: large enough that per-call overhead is small next to the work (a CROWN
# call on mnist-cnn-small takes tens of ms per image on a CPU), small enough that the largest
# built-in CNNs stay within a few hundred MB per chunk (measured in bench/bench_outward.py).
DEFAULT_ROWS_PER_CHUNK = 64


def chunked_bounds(
    net: Network | Graph,
    ball: InputSet,
    method: str = "crown",
    C: Tensor | None = None,
    *,
    rows_per_chunk: int = DEFAULT_ROWS_PER_CHUNK,
    reference: bool = False,
    keep_intermediate: bool = False,
) -> Bounds:
    """:func:`nnbound.bounds` of ``ball``, ``rows_per_chunk`` inputs per call.

    Args:
        net, ball, method, C, reference: as :func:`nnbound.bounds` (``C`` shared ``(S, out)``
            or per input ``(B, S, out)``; ``ball.batch_shape`` ``(B,)`` or ``(B, K)``).
        rows_per_chunk: inputs (first batch axis) bounded per call, ``>= 1``.
        keep_intermediate: also return every chunk's intermediate bounds, concatenated (they
            grow with the batch; off by default).

    Returns:
        The same :class:`Bounds` as one call on the whole batch.
    """
    if rows_per_chunk < 1:
        raise InputError(f"rows per chunk must be >= 1, got {rows_per_chunk}")
    n = int(ball.center.shape[0])
    batch = ball.batch_shape[0] if ball.batch_shape else n
    if batch == 0:
        raise InputError("no inputs to bound (the batch is empty)")
    per_input = n // batch  # K radii per input
    if batch <= rows_per_chunk:
        b = bounds(net, ball, method, C, reference=reference)
        return b if keep_intermediate else replace(b, intermediate=IntermediateBounds())
    lowers, uppers, pres = [], [], []
    for start in range(0, batch, rows_per_chunk):
        stop = min(batch, start + rows_per_chunk)
        idx = torch.arange(start * per_input, stop * per_input, device=ball.center.device)
        part = ball.rows(idx)
        if ball.batch_shape:
            part = replace(part, batch_shape=(stop - start, *ball.batch_shape[1:]))
        b = bounds(
            net, part, method, _spec_rows(C, batch, n, start, stop, per_input), reference=reference
        )
        lowers.append(b.lower)
        uppers.append(b.upper)
        if keep_intermediate:
            pres.append(b.intermediate.pre)
    pre = {}
    if keep_intermediate:
        for key in pres[0]:
            pre[key] = (
                torch.cat([p[key][0] for p in pres]),
                torch.cat([p[key][1] for p in pres]),
            )
    return Bounds(torch.cat(lowers), torch.cat(uppers), b.method, IntermediateBounds(pre))


def _spec_rows(
    C: Tensor | None, batch: int, n: int, start: int, stop: int, per_input: int
) -> Tensor | None:
    """The part of ``C`` for inputs ``start:stop`` (a shared spec is passed whole)."""
    if C is None or C.dim() != 3 or C.shape[0] == 1:
        return C
    if C.shape[0] == batch:
        return C[start:stop]
    if C.shape[0] == n:
        return C[start * per_input : stop * per_input]
    return C  # a shape bounds() refuses with its own message


__all__ = ["DEFAULT_ROWS_PER_CHUNK", "chunked_bounds"]
