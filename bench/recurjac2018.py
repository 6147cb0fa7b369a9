"""Drive the 2018 reference code (huanzhang12/RecurJac-and-CROWN) from a checkout, without Keras.

Its bound core (``bound_base.compute_bounds`` and the numba kernels behind it) takes plain
weight lists: ``weights[k]`` ``(out, in)`` float32 and ``biases[k]`` ``(out,)``, one per Dense
layer, as ``get_weights_list`` builds them from a Keras model. This module builds those lists
from an nnbound MLP and calls the core the way the reference's ``task_lipschitz`` does (one
``compute_bounds`` call per eps, class logit only: ``target_label = -1``, targeted).

The checkout is never a dependency: :func:`load_reference` returns ``None`` when the path is
missing or its imports (numba) fail, and the benches then skip the column.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import math
import sys
import time
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from nnbound.network.layers import Activation, Dense, Flatten
from nnbound.network.network import Network


def load_reference(path: Path | None, threads: int) -> ModuleType | None:
    """``bound_base`` of the checkout at ``path`` (numba limited to ``threads``), or ``None``."""
    if path is None or not (Path(path) / "bound_base.py").is_file():
        return None
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    try:
        import numba

        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
        # its kernels ask for parallel=True where numba finds nothing to parallelise
        warnings.filterwarnings("ignore", category=numba.NumbaPerformanceWarning)
        return importlib.import_module("bound_base")
    except Exception as exc:  # numba missing or the checkout does not import: skip the column
        print(f"the 2018 code at {path} does not import here ({exc}): column skipped")
        return None


def weight_lists(net: Network) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """``(weights, biases, activation)`` of an MLP (Flatten, Dense, one activation kind)."""
    weights, biases, acts = [], [], set()
    for layer in net.layers:
        if isinstance(layer, Dense):
            weights.append(np.ascontiguousarray(layer.weight.detach().cpu().numpy(), np.float32))
            biases.append(np.ascontiguousarray(layer.bias.detach().cpu().numpy(), np.float32))
        elif isinstance(layer, Activation):
            acts.add(layer.name)
        elif not isinstance(layer, Flatten):
            raise ValueError(f"the 2018 code takes MLPs only, not {type(layer).__name__}")
    if acts != {"relu"}:
        raise ValueError(f"the 2018 sweep here is for ReLU MLPs, got {sorted(acts)}")
    return weights, biases, "relu"


def reference_sweep(
    core: ModuleType,
    net: Network,
    x: torch.Tensor,
    label: int,
    grid: list[float],
    *,
    jacbndalg: str,
    layerbndalg: str = "crown-general",
    norm: float = math.inf,
    warm_sweep: bool = False,
) -> tuple[np.ndarray, float]:
    """The 2018 Lipschitz sweep of logit ``label`` at one input ``x``: constants ``(K,)`` and
    seconds, after a warm-up call that compiles the numba kernels (as ``--warmup`` does) or,
    with ``warm_sweep``, a whole untimed sweep: its first sweep still compiles kernels of
    paths the warm-up did not take (measured on mnist-fc-3layer, 21 radii: 0.7-0.8 s for the
    first sweeps, 0.09 s once every path is compiled)."""
    weights, biases, activation = weight_lists(net)
    x0 = x.detach().cpu().numpy().reshape(-1).astype(np.float32)
    with torch.no_grad():
        preds = net(x.reshape(1, *net.input_shape)).reshape(-1).cpu().numpy()

    def one(eps: float) -> float:
        _, _, lip, _ = core.compute_bounds(
            weights,
            biases,
            label,
            -1,
            x0,
            preds,
            len(weights),
            norm,
            eps,
            layerbndalg,
            jacbndalg,
            untargeted=False,
            activation=activation,
            activation_param=0.3,
            lipsdir=-1,
            lipsshift=1,
        )
        return float(lip[0])

    # its kernels print per layer and per eps: keep that off the bench's table
    with contextlib.redirect_stdout(io.StringIO()):
        for e in grid if warm_sweep else [0.01]:
            one(float(e))
        t0 = time.perf_counter()
        values = np.array([one(float(e)) for e in grid])
        seconds = time.perf_counter() - t0
    return values, seconds
