"""A radius search's evaluations make the same torch calls for 4 images as for 32.

On a GPU every torch call is a kernel launch or more, and every host read of a tensor a
synchronisation; a per-image loop inside an evaluation (the centre split's references were
per-image objects) makes a search of a thousand images launch-bound. These tests count the
calls (``helpers.TorchCalls``) on the CPU, where the same calls are made.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import TorchCalls, random_network
from nnbound.bounds.centre_products import CentreProducts
from nnbound.bounds.methods import layerwise_bounds
from nnbound.sets.lp_ball import LpBall
from nnbound.tasks import radius as radius_task

# A batch 8x larger may add this fraction of calls (branches taken by some rows only).
SLACK = 0.1


def _centres(n: int) -> torch.Tensor:
    return torch.rand(n, 30, generator=torch.Generator().manual_seed(0)) - 0.5


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_split_evaluation_calls_do_not_grow_with_the_batch(p: float) -> None:
    """A second evaluation of the same centres (products and references stored) and a first
    float64 evaluation from float32 references, at 4 and at 32 centres."""
    net = random_network("relu", [30, 48, 40, 6], seed=1, dtype=torch.float32)
    net64 = net.to(dtype=torch.float64)
    eps = {1.0: 0.5, 2.0: 0.15, math.inf: 0.02}[p]
    counts = {}
    for n in (4, 32):
        x = _centres(n)
        cache = CentreProducts()
        layerwise_bounds(net, LpBall.make(x, eps, p), "crown-adaptive", centre_cache=cache)
        high = CentreProducts()
        high.lower_precision = cache
        with TorchCalls() as again:
            ball = LpBall.make(x, 0.9 * eps, p)
            layerwise_bounds(net, ball, "crown-adaptive", centre_cache=cache)
        with TorchCalls() as confirm:
            ball = LpBall.make(x.double(), 0.8 * eps, p)
            layerwise_bounds(net64, ball, "crown-adaptive", centre_cache=high)
        counts[n] = (again.total, again.host_reads, confirm.total, confirm.host_reads)
    for few, many in zip(counts[4], counts[32], strict=True):
        assert many <= few * (1 + SLACK), counts


def test_radius_search_calls_per_evaluation_do_not_grow_with_the_batch(monkeypatch) -> None:
    """Whole searches (float32 evaluations and the float64 confirmation): calls per
    evaluation at 4 and 32 images."""
    net = random_network("relu", [30, 48, 40, 6], seed=2, dtype=torch.float32)
    evaluations = [0]
    margin = radius_task._Certifier.margin

    def counted(self, rows, eps):  # type: ignore[no-untyped-def]
        evaluations[0] += 1
        return margin(self, rows, eps)

    monkeypatch.setattr(radius_task._Certifier, "margin", counted)
    per_evaluation = {}
    for n in (4, 32):
        x = _centres(n)
        with torch.no_grad():
            labels = net(x).argmax(1)
        evaluations[0] = 0
        with TorchCalls() as calls:
            radius_task.certified_radius(net, x, labels, torch.full((n,), -1), norm="inf")
        per_evaluation[n] = (calls.total / evaluations[0], calls.host_reads / evaluations[0])
    for few, many in zip(per_evaluation[4], per_evaluation[32], strict=True):
        assert many <= few * (1 + SLACK), per_evaluation
