"""The chunked final pass of ``nnbound bounds`` gives the numbers of one call on the whole batch
(issue 19 #7: that call's memory grew with the batch)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import random_network
from nnbound.bounds.api import bounds
from nnbound.errors import InputError
from nnbound.network.chain_graph import network_to_graph
from nnbound.sets.box import Box
from nnbound.sets.lp_ball import LpBall
from nnbound.sets.spec import all_margins_spec
from nnbound.tasks.batch_bounds import chunked_bounds


def _case(dtype: torch.dtype = torch.float32):
    net = random_network("relu", [5, 12, 12, 4], seed=7, dtype=dtype)
    x = torch.randn(11, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return net, x.to(dtype)


@pytest.mark.parametrize("method", ["crown", "ibp", "crown-general", "alpha-crown"])
def test_chunks_equal_one_call(method: str) -> None:
    net, x = _case()
    spec = all_margins_spec(net(x).argmax(1), 4, net.dtype)
    eps = torch.linspace(0.01, 0.3, 11)
    ball = LpBall.make(x, eps, "inf")
    whole = bounds(net, ball, method, spec)
    for rows in (1, 4, 11, 50):
        part = chunked_bounds(net, ball, method, spec, rows_per_chunk=rows)
        assert torch.equal(part.lower, whole.lower) and torch.equal(part.upper, whole.upper)


def test_several_radii_per_input_shared_spec_box_and_graph() -> None:
    net, x = _case(torch.float64)
    eps = torch.rand(11, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ball = LpBall.make(x, eps * 0.2, "2")
    shared = torch.eye(4, dtype=torch.float64)[:2]
    whole = bounds(net, ball, "crown", shared)
    part = chunked_bounds(net, ball, "crown", shared, rows_per_chunk=4)
    assert part.lower.shape == (11, 3, 2)
    torch.testing.assert_close(part.lower, whole.lower, rtol=0, atol=1e-12)
    box = Box.make(x - 0.1, x + 0.2)
    graph = network_to_graph(net)
    whole = bounds(graph, box, "crown-general")
    part = chunked_bounds(graph, box, "crown-general", rows_per_chunk=3, keep_intermediate=True)
    torch.testing.assert_close(part.upper, whole.upper, rtol=0, atol=1e-12)
    for key, (lo, up) in whole.intermediate.pre.items():
        torch.testing.assert_close(part.intermediate.pre[key][0], lo, rtol=0, atol=1e-12)
        torch.testing.assert_close(part.intermediate.pre[key][1], up, rtol=0, atol=1e-12)


def test_bad_chunk_sizes_and_empty_batches_are_refused() -> None:
    net, x = _case()
    ball = LpBall.make(x, 0.1, "inf")
    with pytest.raises(InputError, match="rows per chunk"):
        chunked_bounds(net, ball, rows_per_chunk=0)
    empty = LpBall(x[:0], ball.eps[:0], ball.p, None, (0,))
    with pytest.raises(InputError, match="empty"):
        chunked_bounds(net, empty)
