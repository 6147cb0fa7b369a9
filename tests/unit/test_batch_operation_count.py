"""A radius search's evaluations make the same torch calls for 4 images as for 32.

On a GPU every torch call is a kernel launch or more, and every host read of a tensor a
synchronisation; a per-image loop inside an evaluation (the centre split's references were
per-image objects) makes a search of a thousand images launch-bound. These tests count the
calls (``helpers.TorchCalls``) on the CPU, where the same calls are made, with rows grouped
as on a GPU (a CPU starts a new group for rows with far fewer candidates, trading calls for
padding).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from graph_factory import resnet_graph
from helpers import TorchCalls, random_network
from nnbound.bounds import methods
from nnbound.bounds import work_size as ws
from nnbound.bounds.centre_products import CentreProducts
from nnbound.bounds.methods import layerwise_bounds
from nnbound.bounds.patches import Patches
from nnbound.sets.lp_ball import LpBall
from nnbound.tasks import radius as radius_task

F64 = torch.float64
# A batch 8x larger may add this fraction of calls (branches taken by some rows only).
SLACK = 0.1


@pytest.fixture(autouse=True)
def _gpu_padding(monkeypatch) -> None:
    gpu = ws.group_overhead(torch.device("cuda", 0), 1)
    monkeypatch.setattr(methods, "group_overhead", lambda device, row_work: gpu)


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


def _per_evaluation(monkeypatch, net, x: torch.Tensor, method: str) -> tuple[float, float]:
    """Torch calls and host reads per evaluation of a whole radius search (float32
    evaluations and the float64 confirmation) of the images ``x``."""
    evaluations = [0]
    margin = radius_task._Certifier.margin

    def counted(self, rows, eps):  # type: ignore[no-untyped-def]
        evaluations[0] += 1
        return margin(self, rows, eps)

    monkeypatch.setattr(radius_task._Certifier, "margin", counted)
    n = x.shape[0]
    with torch.no_grad():
        labels = net(x).argmax(1)
    with TorchCalls() as calls:
        radius_task.certified_radius(net, x, labels, torch.full((n,), -1), method=method)
    return calls.total / evaluations[0], calls.host_reads / evaluations[0]


def test_radius_search_calls_per_evaluation_do_not_grow_with_the_batch(monkeypatch) -> None:
    """An MLP (the centre split) at 4 and 32 images."""
    net = random_network("relu", [30, 48, 40, 6], seed=2, dtype=torch.float32)
    few = _per_evaluation(monkeypatch, net, _centres(4), "crown-adaptive")
    many = _per_evaluation(monkeypatch, net, _centres(32), "crown-adaptive")
    for a, b in zip(few, many, strict=True):
        assert b <= a * (1 + SLACK), (few, many)


def test_residual_graph_search_reads_per_evaluation_do_not_grow_with_the_batch(
    monkeypatch,
) -> None:
    """A residual CNN (rows as patches) at 2 and 16 images, grouped as on a GPU: a window's
    padding comes from the rows' grid, not from reading their positions (that read was four
    synchronisations per patch operation)."""
    # A GPU's grouping: every row in one pass per layer (a CPU groups 8 rows at a time).
    monkeypatch.setattr(methods, "group_rows", lambda device, cpu_rows: 1 << 62)
    graph = resnet_graph((4, 8), 1, input_shape=(1, 8, 8), classes=5, seed=1)
    graph = graph.to(dtype=torch.float32)
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    few = _per_evaluation(monkeypatch, graph, x[:2], "crown")
    many = _per_evaluation(monkeypatch, graph, x, "crown")
    assert many[1] <= few[1] * (1 + SLACK), (few, many)


def test_patch_operations_read_nothing_on_the_host() -> None:
    """Gathering, scattering and carrying rows as patches through a strided, padded
    convolution: no host read (each was a synchronisation per operation on a GPU)."""
    idx = torch.tensor([[0, 5, 23, 40], [7, 7, 11, 63]])
    rows = Patches.identity(idx, (1, 8, 8), torch.float64)
    weight = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    image = torch.rand(2, 2, 16, 16, dtype=F64)
    with TorchCalls() as calls:
        back = rows.conv_transpose(weight, (2, 2), (1, 1), (1, 1), 1, (2, 16, 16))
        back.gather(image)
        back.to_dense()
        back.box_bounds(image, image + 1)
    assert calls.total > 0 and calls.host_reads == 0
