"""Shared pieces of the CPU = accelerator tests: which second device to compare the CPU with,
small seeded networks of every kind, and the comparison itself.

The second device is CUDA when torch sees one; ``NNBOUND_TEST_SECOND_DEVICE=cpu`` (or any
torch device name) forces it, so the comparison code itself can be exercised on a machine
without an accelerator (CPU against CPU: every check runs, none can be vacuous).
"""

from __future__ import annotations

import functools
import math
import os
import random

import pytest
import torch
from torch import Tensor

import graph_factory as gf
from helpers import random_network
from nnbound.catalogue import cifar_resnet_graph
from nnbound.network.graph import Graph
from nnbound.network.layers import Activation, Conv2d, Dense, Flatten
from nnbound.network.network import Network

ENV = "NNBOUND_TEST_SECOND_DEVICE"
NO_CUDA = f"needs CUDA (no GPU visible to torch); set {ENV}=cpu to run these tests CPU vs CPU"

# float64: the project measured CPU/GPU agreement of 4e-14 for IBP/Fast-Lin/CROWN.
RTOL64, ATOL64 = 1e-9, 1e-10
RTOL32, ATOL32 = 1e-4, 1e-4
SEARCH_TOL = 1e-5  # the binary searches' own stopping width (nnbound.tasks.search)
EPS = {math.inf: 0.05, 2.0: 0.2, 1.0: 0.5}  # radii that leave some neurons unstable
NORMS = (math.inf, 2.0, 1.0)
NORM_IDS = ("inf", "l2", "l1")


def second_device_params() -> list:
    """The device each test compares with the CPU, as pytest parameters."""
    forced = os.environ.get(ENV, "").strip()
    if forced:
        return [pytest.param(forced, id=forced)]
    skip = pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
    return [pytest.param("cuda", id="cuda", marks=skip)]


def on_device(t: Tensor, dev: torch.device) -> bool:
    """``t`` lives on ``dev`` (``cuda`` matches any ``cuda:N``)."""
    return t.device.type == dev.type and (dev.index is None or t.device.index == dev.index)


def agree(
    got: Tensor,
    want: Tensor,
    dev: torch.device,
    *,
    rtol: float = RTOL64,
    atol: float = ATOL64,
    what: str = "",
) -> None:
    """``got`` (computed on ``dev``) came back on ``dev`` and equals the CPU's ``want``."""
    assert on_device(got, dev), f"{what}: result on {got.device}, expected {dev}"
    assert got.dtype == want.dtype and got.shape == want.shape, what
    torch.testing.assert_close(
        got.cpu(), want, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{what}: {m}"
    )


def _cnn(act: str, seed: int = 3) -> Network:
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float) -> Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale

    layers = (
        Conv2d(rnd(3, 1, 3, 3, scale=0.5), rnd(3, scale=0.2), stride=2, padding=1),
        Activation(act),
        Conv2d(rnd(4, 3, 3, 3, scale=0.3), rnd(4, scale=0.2), stride=1, padding=1),
        Activation(act),
        Flatten(),
        Dense(rnd(4, 36, scale=1 / 6), rnd(4, scale=0.2)),
    )
    return Network(layers, (1, 6, 6), name=f"cnn-{act}")


def _graph(blocks: tuple[str, ...], act: str, seed: int) -> Graph:
    chooser = gf.RandomChooser(random.Random(seed))
    return gf.random_graph(chooser, (6,), 4, seed=seed, only=blocks, acts=(act,))


@functools.cache
def network(name: str) -> Network | Graph:
    """A float64 CPU network of kind ``name`` with 4 outputs (built once, never mutated)."""
    builders = {
        "mlp-relu": lambda: random_network("relu", [6, 12, 10, 4], seed=1),
        "mlp1-relu": lambda: random_network("relu", [6, 12, 4], seed=1),  # for quad
        "mlp-tanh": lambda: random_network("tanh", [6, 12, 10, 4], seed=1, weight_scale=2.0),
        "mlp-sigmoid": lambda: random_network("sigmoid", [6, 12, 4], seed=1, weight_scale=2.0),
        "cnn-relu": lambda: _cnn("relu"),
        "cnn-tanh": lambda: _cnn("tanh"),
        # the catalogue's ResNet (conv, batch-norm scale, residual add, average pool)
        "resnet": lambda: cifar_resnet_graph(
            (1,), width=4, image_size=8, num_classes=4, dtype=torch.float64
        ),
        "graph-tanh": lambda: _graph(("residual", "concat"), "tanh", 5),
        "graph-residual": lambda: _graph(("residual",), "relu", 5),
    }
    return builders[name]()


def inputs(name: str, batch: int = 2) -> Tensor:
    """Seeded float64 CPU inputs in [0, 1) for network ``name``."""
    shape = network(name).input_shape
    gen = torch.Generator().manual_seed(0)
    return torch.rand(batch, *shape, generator=gen, dtype=torch.float64)


def labels(name: str, x: Tensor) -> Tensor:
    """The network's own predictions (so every input is correctly classified)."""
    with torch.no_grad():
        return network(name).forward(x).argmax(1)
