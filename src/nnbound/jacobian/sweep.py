"""Fast-Lip / RecurJac Lipschitz constants over a sweep of radii around the same centres.

The numbers of :func:`nnbound.jacobian.lipschitz.lipschitz_bounds` on the ``(B, K)`` ball
(never looser: measured the same on ReLU nets, tighter on smooth ones), with less work:

* pre-activation bounds skip the layers a smaller radius saturated, and take the bounds of
  a larger radius as prior (:func:`nnbound.jacobian.saturation.sweep_pre_bounds`);
* rows of one centre whose derivative intervals are identical (every radius past saturation,
  often the smallest radii too) share one recursion: its result depends on nothing else;
* for RecurJac on a large chain, each remaining row's chain drops the neurons whose
  derivative is exactly 0 over its ball (inactive ReLUs): their terms are 0 in every product,
  so the bounds are the same, but each matrix product of the recursion shrinks in two of its
  three dimensions (Fast-Lip's interval steps run batched over the rows instead).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nnbound.jacobian.api import chain_bounds, check_fastlip
from nnbound.jacobian.chain import JacobianChain, build_chain, is_global
from nnbound.jacobian.lipschitz import chain_lipschitz
from nnbound.jacobian.saturation import SWEEP_CHUNK, sweep_pre_bounds
from nnbound.network.network import Network
from nnbound.sets.norms import dual_norm

# Chains with at least this many weights get one compressed recursion per distinct row;
# smaller ones one batched recursion (mnist-fc-3layer, 1e5 weights: the per-row loop was 1.5x
# slower than the batch; 784-[1024]x6-10, 6e6: per row is faster).
PER_ROW_ELEMENTS = 1 << 21


@dataclass(frozen=True)
class SweepResult:
    """Per ball row ``b * K + k`` and spec row: ``values`` and ``unsure`` ``(B * K, S)``,
    ``global_bound`` ``(B * K,)``."""

    values: Tensor
    unsure: Tensor
    global_bound: Tensor


def _compressed(chain: JacobianChain, row: int) -> JacobianChain:
    """Row ``row`` of ``chain`` without the neurons whose derivative is exactly 0."""
    keep = [
        torch.nonzero((lo[row] != 0) | (hi[row] != 0)).squeeze(1)
        for lo, hi in zip(chain.dlo, chain.dhi, strict=True)
    ]
    if not all(idx.numel() for idx in keep):  # a dead layer: J = 0, keep the shapes
        return _select(chain, torch.tensor([row], device=chain.last.device))
    mats = []
    for k, w in enumerate(chain.weights):
        assert isinstance(w, Tensor)
        w = w.index_select(0, keep[k])
        mats.append(w if k == 0 else w.index_select(1, keep[k - 1]))
    return JacobianChain(
        tuple(mats),
        chain.last[row : row + 1].index_select(-1, keep[-1]),
        tuple(lo[row : row + 1].index_select(1, i) for lo, i in zip(chain.dlo, keep, strict=True)),
        tuple(hi[row : row + 1].index_select(1, i) for hi, i in zip(chain.dhi, keep, strict=True)),
        chain.piecewise_linear,
        chain.global_range,
    )


def _distinct_rows(chain: JacobianChain, group: Tensor) -> tuple[Tensor, Tensor]:
    """``(representatives, inverse)``: one row per distinct (group, spec, derivative
    intervals), and for each row the index of its representative in that list."""
    n = chain.last.shape[0]
    parts = [group.to(chain.last.dtype).reshape(n, 1), chain.last.reshape(n, -1)]
    parts += [t.reshape(n, -1) for t in (*chain.dlo, *chain.dhi)]
    _, inverse = torch.unique(torch.cat(parts, 1), dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), n, dtype=torch.long, device=inverse.device)
    first = first.scatter_reduce(0, inverse, torch.arange(n, device=inverse.device), "amin")
    return first, inverse


def lipschitz_sweep(
    net: Network,
    x: Tensor,
    eps: Tensor,
    spec: Tensor,
    p: float,
    method: str,
    layer_method: str,
    direction: int,
    shift: int,
    *,
    chunk: int | None = None,
) -> SweepResult:
    """Lipschitz constants of ``spec[b] f`` ``(B, S, outputs)`` over the p-balls of radius
    ``eps[b, k]`` ``(B, K)`` around ``x[b]`` (``method`` recurjac or fastlip, the options
    validated by the caller)."""
    if method == "fastlip":
        check_fastlip(net)
    b, k = eps.shape
    if chunk is None:
        # a small net: one batched layer-wise pass beats skipping its cheap deep layers
        # (mnist-fc-3layer, 21 radii: 10-20% faster than chunks of 4)
        chunk = SWEEP_CHUNK if net.num_parameters >= PER_ROW_ELEMENTS else k
    pre = sweep_pre_bounds(net, x, eps, p, layer_method, chunk=chunk)
    rows_spec = spec.to(net.dtype).repeat_interleave(k, dim=0)  # (B * K, S, outputs)
    chain = build_chain(net, pre, rows_spec)
    q = dual_norm(p)
    group = torch.arange(b, device=x.device).repeat_interleave(k)
    reps, inverse = _distinct_rows(chain, group)
    dense = chain.depth > 0 and all(isinstance(w, Tensor) for w in chain.weights)
    # One RecurJac recursion per row pays where its matrix products dominate the Python
    # overhead; Fast-Lip's interval steps are one product per level for all rows at once
    # (784-[1024]x6-10, 21 radii: 0.17 s per row, 0.03 s batched).
    big = dense and sum(w.numel() for w in chain.weights) >= PER_ROW_ELEMENTS
    per_row = method == "recurjac" and big
    values, unsure = [], []
    for r in reps.tolist() if per_row else [None]:
        sub = _compressed(chain, r) if r is not None else _select(chain, reps)
        lo, up, ch, rec, shifted = chain_bounds(sub, method, direction, shift)
        values.append(chain_lipschitz(ch, rec, shifted, lo, up, q, method, direction, shift))
        unsure.append(((lo < 0) & (up > 0)).sum(-1))
    return SweepResult(
        torch.cat(values)[inverse],
        torch.cat(unsure)[inverse],
        is_global(chain),
    )


def _select(chain: JacobianChain, rows: Tensor) -> JacobianChain:
    """Rows ``rows`` of ``chain`` (structural chains: batched, nothing dropped)."""
    return JacobianChain(
        chain.weights,
        chain.last[rows],
        tuple(t[rows] for t in chain.dlo),
        tuple(t[rows] for t in chain.dhi),
        chain.piecewise_linear,
        chain.global_range,
    )
