"""Smooth activations and their derivatives, as torch functions (shared by relaxations)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class SmoothFunction:
    """An activation ``f`` with derivative ``df`` (both element-wise torch functions)."""

    name: str
    f: Callable[[Tensor], Tensor]
    df: Callable[[Tensor], Tensor]


def _dtanh(x: Tensor) -> Tensor:
    return 1.0 / torch.cosh(x).square()


def _dsigmoid(x: Tensor) -> Tensor:
    s = torch.sigmoid(x)
    return s * (1.0 - s)


def _darctan(x: Tensor) -> Tensor:
    return 1.0 / (1.0 + x.square())


TANH = SmoothFunction("tanh", torch.tanh, _dtanh)
SIGMOID = SmoothFunction("sigmoid", torch.sigmoid, _dsigmoid)
ARCTAN = SmoothFunction("arctan", torch.atan, _darctan)
SOFTPLUS = SmoothFunction("softplus", F.softplus, torch.sigmoid)


def elu_function(alpha: float) -> SmoothFunction:
    def f(x: Tensor) -> Tensor:
        return F.elu(x, alpha)

    def df(x: Tensor) -> Tensor:
        return torch.where(x > 0, torch.ones_like(x), alpha * torch.exp(torch.clamp(x, max=0.0)))

    return SmoothFunction("elu", f, df)


S_SHAPED = {"tanh": TANH, "sigmoid": SIGMOID, "arctan": ARCTAN}
"""Functions convex on z < 0 and concave on z > 0 with an even, unimodal derivative."""
