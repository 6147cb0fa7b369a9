"""Shared pieces of the side-by-side benches against the peers (the 2018 RecurJac-and-CROWN
code, auto_LiRPA): the benchmark networks as nnbound networks and the 2018 code's weight
lists (torch modules come from ``nnbound.network.to_torch``), the images, the thread
setting, and the reference's binary search.

Nothing here imports a peer: each bench imports what it compares with optionally.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from nnbound.data.registry import load_dataset
from nnbound.network.layers import Activation, Dense, Flatten
from nnbound.network.load import load_model
from nnbound.network.network import Network
from nnbound.tasks.search import batched_binary_search

# Random MLPs live in the references' MNIST convention: pixels in [-0.5, 0.5].
RANDOM_RANGE = (-0.5, 0.5)
INPUT_SHAPE = (1, 28, 28)


def limit_threads(threads: int) -> None:
    """One thread count for every library in the run: torch, and (set before numpy/numba do
    any work) OpenBLAS / MKL / OpenMP / numba, which the 2018 code's numpy products use.
    Without it numpy's BLAS took every core and the 2018 code ran 20x slower on a loaded
    machine."""
    for var in (
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "NUMBA_NUM_THREADS",
    ):
        os.environ[var] = str(threads)
    torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except ImportError:  # the variables above then have to do (set before numpy loads BLAS)
        pass


@dataclass(frozen=True)
class BenchNet:
    """A benchmark network: nnbound's form, images it classifies as labelled, and labels."""

    name: str
    net: Network
    x: Tensor
    labels: Tensor


def random_mlp(hidden: tuple[int, ...], seed: int = 0) -> Network:
    """784-hidden-10 ReLU MLP with torch's default (seeded) initialisation."""
    gen = torch.Generator().manual_seed(seed)
    layers: list[object] = [Flatten()]
    widths = (784, *hidden, 10)
    for k, (n_in, n_out) in enumerate(itertools.pairwise(widths)):
        bound = 1 / math.sqrt(n_in)
        w = (torch.rand(n_out, n_in, generator=gen) * 2 - 1) * bound
        b = (torch.rand(n_out, generator=gen) * 2 - 1) * bound
        layers.append(Dense(w, b))
        if k < len(hidden):
            layers.append(Activation("relu"))
    name = _mlp_name(hidden)
    return Network(tuple(layers), INPUT_SHAPE, RANDOM_RANGE, name=name)  # type: ignore[arg-type]


def bench_network(name: str, count: int) -> BenchNet:
    """``mnist-fc-3layer`` (built-in, trained) or ``random:H1-H2-...`` (hidden widths), with
    the first ``count`` built-in MNIST test images it classifies as labelled (a random
    network's own predictions are its labels)."""
    if name.startswith("random:"):
        hidden = tuple(int(v) for v in name.split(":", 1)[1].split("-"))
        net = random_mlp(hidden)
        label = net.name
    else:
        loaded = load_model(name)
        assert isinstance(loaded, Network)
        net, label = loaded, name
    assert net.input_range is not None
    ds = load_dataset("mnist100", input_range=net.input_range)
    x = net.check_input(ds.images)
    with torch.no_grad():
        pred = net(x).argmax(1)
    labels = pred if name.startswith("random:") else ds.labels
    keep = torch.nonzero(pred == labels).squeeze(1)[:count]
    return BenchNet(label, net, x[keep], labels[keep])


def weight_lists(net: Network) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The 2018 code's weights: per Dense layer ``(out, in)`` float32 and ``(out,)`` bias,
    C-contiguous (what its ``get_weights_list`` makes of a Keras model)."""
    dense = [la for la in net.layers if isinstance(la, Dense)]
    weights = [np.ascontiguousarray(la.weight.detach().float().numpy()) for la in dense]
    biases = [np.ascontiguousarray(la.bias.detach().float().numpy()) for la in dense]
    return weights, biases


def reference_binary_search(cond: Callable[[float], bool], current: float, max_steps: int) -> float:
    """The reference's ``utils.binary_search`` (spec §9.1) for one scalar condition, by
    nnbound's batched transcription of it (tested equal row by row), for peers that have
    none."""
    found = batched_binary_search(
        lambda rows, eps: torch.tensor([cond(float(eps[0]))]), 1, current, max_steps=max_steps
    )
    return float(found[0])


def best_with_range(times: list[float], digits: int) -> str:
    """``best [min, max]`` of several timings of one column."""
    return f"{min(times):.{digits}f} [{min(times):.{digits}f}, {max(times):.{digits}f}]"


def _mlp_name(hidden: tuple[int, ...]) -> str:
    """``784-1024-1024-10``; repeated widths as ``784-[1024]x6-10``."""
    if len(hidden) > 2 and len(set(hidden)) == 1:
        return f"784-[{hidden[0]}]x{len(hidden)}-10"
    return "784-" + "-".join(str(h) for h in hidden) + "-10"
