"""Certified-radius search, one image at a time, by the peers: the 2018 code's numpy/numba
core (``bound_base.compute_bounds`` with weight lists, its own ``utils.binary_search``) and
auto_LiRPA's CROWN inside the reference's binary search. Each returns the radii and the
seconds per image, or ``None`` when the peer does not import."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from peers_common import BenchNet, reference_binary_search, weight_lists

from nnbound.network.to_torch import to_torch

NORM_2018 = {"inf": np.inf, "1": 1, "2": 2}


def _timed(search: Callable[[int], float], count: int) -> tuple[list[float], float]:
    """Radii of images ``0..count-1`` and seconds per image, after one untimed image (numba
    compiles its functions at the first call, torch warms its allocator)."""
    search(0)
    t0 = time.perf_counter()
    radii = [search(i) for i in range(count)]
    return radii, (time.perf_counter() - t0) / max(count, 1)


def radius_2018(
    code: Path, bnet: BenchNet, norm: str, steps: int, eps0: float
) -> tuple[list[float], float] | None:
    """The 2018 code's robustness task without Keras: ``compute_bounds`` (CROWN-adaptive,
    untargeted) as the condition of its ``binary_search``, exactly as its
    ``task_robustness.run_single`` calls them. Its progress lines go to /dev/null."""
    if str(code) not in sys.path:
        sys.path.insert(0, str(code))
    try:
        compute_bounds = importlib.import_module("bound_base").compute_bounds
        binary_search = importlib.import_module("utils").binary_search
    except ImportError as exc:
        print(f"note: the 2018 code at {code} does not import ({exc}); column skipped")
        return None
    weights, biases = weight_lists(bnet.net)
    with torch.no_grad():
        logits = bnet.net(bnet.x).double().numpy()
    images = bnet.x.detach().float().numpy()
    p = NORM_2018[norm]

    def search(i: int) -> float:
        c = int(bnet.labels[i])

        def cond(eps: float) -> tuple[bool, float]:
            gap, *_ = compute_bounds(
                weights,
                biases,
                c,
                -1,
                images[i],
                logits[i],
                len(weights),
                p,
                eps,
                "crown-adaptive",
                "disable",
                untargeted=True,
            )
            return gap >= 0, gap

        return float(binary_search(cond, eps0, max_steps=steps))

    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        return _timed(search, bnet.x.shape[0])


def radius_auto_lirpa(
    bnet: BenchNet, norm: str, steps: int, eps0: float
) -> tuple[list[float], float] | None:
    """auto_LiRPA's CROWN (``compute_bounds(method="CROWN")``, untargeted margins as the spec)
    in the reference's binary search, one image at a time."""
    try:
        from auto_LiRPA import BoundedModule, BoundedTensor
        from auto_LiRPA.perturbations import PerturbationLpNorm
    except ImportError:
        print("note: auto_LiRPA does not import; column skipped")
        return None
    module = to_torch(bnet.net).eval()
    bounded = BoundedModule(module, torch.zeros(1, *bnet.net.input_shape), verbose=0)
    classes = bnet.net.num_outputs
    p = {"inf": np.inf, "1": 1.0, "2": 2.0}[norm]

    def search(i: int) -> float:
        x = bnet.x[i : i + 1].float()
        y = int(bnet.labels[i])
        others = [j for j in range(classes) if j != y]
        spec = torch.zeros(1, classes - 1, classes)
        spec[0, :, y] = 1.0
        spec[0, torch.arange(classes - 1), others] = -1.0

        def cond(eps: float) -> bool:
            ball = BoundedTensor(x, PerturbationLpNorm(norm=p, eps=eps))
            with torch.no_grad():
                lower, _ = bounded.compute_bounds(x=(ball,), C=spec, method="CROWN")
            return bool(lower.min() >= 0)

        return reference_binary_search(cond, eps0, steps)

    return _timed(search, bnet.x.shape[0])
