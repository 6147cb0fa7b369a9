"""ReLU branch and bound skips the backward passes of tensors a child's new split cannot
change: those bounds must be exactly what recomputing them gives."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import random_network
from nnbound.bounds.alpha_crown import linear_bounds
from nnbound.network.chain_graph import network_to_graph
from nnbound.sets.box import Box
from nnbound.verify.bab import _unaffected, relu_tensors

F64 = torch.float64


def test_unaffected_marks_what_is_not_downstream() -> None:
    graph = network_to_graph(random_network("relu", [3, 5, 5, 5, 2], seed=0).to(dtype=F64))
    acts = list(relu_tensors(graph))
    names = [n.output for n in graph.nodes]
    table = _unaffected(graph, acts, names)
    order = {name: i for i, name in enumerate(names)}
    for p, act in enumerate(acts):
        for j, name in enumerate(names):
            # A chain: tensors after the split one depend on it, the others do not.
            assert bool(table[p, j]) == (order.get(act, -1) >= order[name])


@pytest.mark.parametrize("seed", range(4))
def test_settled_rows_equal_recomputed_bounds(seed: int) -> None:
    """Children of a split at a random ReLU layer: their parent's bounds for the tensors
    ``_unaffected`` names, passed as settled, give the same bounds as full CROWN passes."""
    gen = torch.Generator().manual_seed(seed)
    net = random_network("relu", [4, 12, 12, 12, 3], seed=seed).to(dtype=F64)
    graph = network_to_graph(net)
    centre = torch.randn(1, 4, generator=gen, dtype=F64)
    box = Box(centre - 0.5, centre + 0.5, (1,))
    spec = torch.randn(1, 2, 3, generator=gen, dtype=F64)
    root = linear_bounds(graph, box, spec)
    acts = list(relu_tensors(graph))
    names = list(root.pre)
    table = _unaffected(graph, acts, names)
    layers = [
        q for q, t in enumerate(acts) if bool(((root.pre[t][0] < 0) & (root.pre[t][1] > 0)).any())
    ]
    assert layers, "no unstable neuron to split"
    p = layers[int(torch.randint(len(layers), (1,), generator=gen))]
    lo, up = root.pre[acts[p]]
    unstable = torch.nonzero(((lo < 0) & (up > 0)).reshape(-1)).squeeze(1)
    j = int(unstable[int(torch.randint(unstable.numel(), (1,), generator=gen))])
    splits = {t: torch.zeros(2, *root.pre[t][0].shape[1:], dtype=torch.int8) for t in acts}
    splits[acts[p]].view(2, -1)[0, j] = 1
    splits[acts[p]].view(2, -1)[1, j] = -1
    prior = {
        t: (a.expand(2, *a.shape[1:]), b.expand(2, *b.shape[1:])) for t, (a, b) in root.pre.items()
    }
    children = Box(box.lower.expand(2, -1), box.upper.expand(2, -1), (2,))
    rows = spec.expand(2, -1, -1)
    full = linear_bounds(graph, children, rows, prior=prior, splits=splits)
    settled = {name: table[p, k].expand(2).clone() for k, name in enumerate(names)}
    skipped = linear_bounds(graph, children, rows, prior=prior, splits=splits, settled=settled)
    torch.testing.assert_close(skipped.lower, full.lower, rtol=0, atol=1e-12)
    for name in names:
        torch.testing.assert_close(skipped.pre[name][0], full.pre[name][0], rtol=0, atol=1e-12)
        torch.testing.assert_close(skipped.pre[name][1], full.pre[name][1], rtol=0, atol=1e-12)
