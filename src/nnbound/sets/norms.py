"""Norm names and dual norms (1/p + 1/q = 1)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from nnbound.errors import InputError

NORM_CHOICES = ("1", "2", "inf")


def parse_norm(p: float | int | str) -> float:
    """``1``, ``2``, ``inf`` (also the reference's ``i`` and ``"linf"``) -> 1.0, 2.0 or inf."""
    if isinstance(p, str):
        key = p.strip().lower()
        table = {
            "1": 1.0,
            "l1": 1.0,
            "2": 2.0,
            "l2": 2.0,
            "i": math.inf,
            "inf": math.inf,
            "linf": math.inf,
            "li": math.inf,
        }
        if key not in table:
            raise InputError(f"unknown norm {p!r}; use 1, 2 or inf (i)")
        return table[key]
    value = float(p)
    if value not in (1.0, 2.0, math.inf):
        raise InputError(f"unknown norm {p!r}; use 1, 2 or inf (i)")
    return value


def dual_norm(p: float) -> float:
    """q with 1/p + 1/q = 1 for p in {1, 2, inf}."""
    return {1.0: math.inf, 2.0: 2.0, math.inf: 1.0}[parse_norm(p)]


def norm_name(p: float) -> str:
    return {1.0: "1", 2.0: "2", math.inf: "inf"}[parse_norm(p)]


def lp_norm(x: Tensor, p: float, dims: int) -> Tensor:
    """The p-norm over the last ``dims`` axes of ``x``."""
    flat = x.reshape(*x.shape[: x.dim() - dims], -1)
    if p == math.inf:
        return flat.abs().amax(-1)
    if p == 1.0:
        return flat.abs().sum(-1)
    return torch.linalg.vector_norm(flat, 2, dim=-1)
