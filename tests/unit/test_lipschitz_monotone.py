"""The reported Lipschitz curve: monotone in eps (a constant for a larger ball holds on a
smaller one), capped by the global operator-norm bound, and still an upper bound on the
gradient norm at points sampled in each ball."""

from __future__ import annotations

import math

import torch

from nnbound.data.registry import load_dataset
from nnbound.jacobian.lipschitz import gradient_dual_norm
from nnbound.network.load import load_model
from nnbound.tasks.lipschitz import LipschitzCurve, class_spec, lipschitz_curve


def _curve(eps: list[float], values: list[float], opnorm: float) -> LipschitzCurve:
    k = len(eps)
    return LipschitzCurve(
        torch.tensor([eps], dtype=torch.float64),
        torch.tensor([values], dtype=torch.float64),
        torch.zeros(1, k, dtype=torch.long),
        torch.zeros(1, k, dtype=torch.bool),
        torch.tensor([values[0]], dtype=torch.float64),
        torch.tensor([opnorm], dtype=torch.float64),
    )


def test_a_dip_is_replaced_by_the_smaller_bound_of_a_larger_ball() -> None:
    shown = _curve([0.0, 0.1, 0.2, 0.3], [1.0, 5.0, 3.0, 4.0], math.inf).monotone()
    assert shown[0].tolist() == [1.0, 3.0, 3.0, 4.0]


def test_the_global_bound_caps_the_curve_and_unsorted_grids_work() -> None:
    # a log grid from --liplogstart 0 --liplogend -2 runs downwards after eps = 0
    shown = _curve([0.0, 1.0, 0.1, 0.01], [1.0, 9.0, 2.0, 6.0], 5.0).monotone()
    assert shown[0].tolist() == [1.0, 5.0, 2.0, 2.0]


def test_reported_curve_is_monotone_and_bounds_sampled_gradients() -> None:
    net = load_model("mnist-fc-3layer")
    ds = load_dataset("mnist100", input_range=net.input_range)
    x, classes = ds.images[:2], ds.labels[:2].long()
    grid = torch.tensor([0.0, 0.002, 0.004, 0.01, 0.03], dtype=torch.float64)
    c = lipschitz_curve(net, x, classes, grid, norm="inf", method="recurjac")
    shown = c.monotone()
    assert bool((shown[:, 1:] >= shown[:, :-1]).all())
    assert bool((shown <= c.values + 1e-12).all())
    assert bool((shown <= c.opnorm.unsqueeze(1) + 1e-12).all())
    gen = torch.Generator().manual_seed(0)
    spec = class_spec(classes, net.num_outputs, net.dtype)
    for k, eps in enumerate(grid.tolist()):
        for _ in range(4):
            # corners of the Linf ball: where unstable ReLUs flip most
            delta = eps * (torch.randint(0, 2, x.shape, generator=gen).to(x.dtype) * 2 - 1)
            g = gradient_dual_norm(net, x + delta, spec, "inf")[:, 0].to(torch.float64)
            assert bool((g <= shown[:, k] * (1 + 1e-5)).all()), (eps, g, shown[:, k])


def test_evaluate_offers_jacobian_radii_on_every_sequential_network() -> None:
    from nnbound.tasks.evaluate import jacobian_available

    # `lipschitz` and `robustness --jacbndalg` run on CNNs; evaluate must not claim otherwise
    assert jacobian_available(load_model("mnist-cnn-small")) is None
