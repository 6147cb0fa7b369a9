"""Batch-size options whose default is what fits in free memory (see
:mod:`nnbound.tasks.memory_budget`): the option's default is None, resolved here once the
model and an input are known."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch import Tensor

from nnbound.cli.common import note
from nnbound.tasks.memory_budget import available_bytes, bytes_per_row, fit_batch


def gradient_batch(
    args: argparse.Namespace,
    f: Callable[[Tensor], Tensor],
    x0: Tensor,
    *,
    requested: int | None,
    default: int,
    option: str,
    factor: float = 1.0,
    per_row: int | None = None,
) -> int:
    """Rows per forward + backward pass of ``f`` on inputs like ``x0``: ``requested`` if it
    fits (else refused with advice), otherwise ``default`` lowered to what fits. ``factor``
    scales the measured bytes (e.g. second-order passes keep the graph of the gradient);
    ``per_row`` skips the measurement (see :func:`measured_row_bytes`)."""
    if requested is not None and requested < 1:
        return requested  # the option's own validation names the problem
    free = available_bytes(x0.device)
    if free is None:
        return requested or default
    if per_row is None:
        per_row = measured_row_bytes(f, x0)
        if per_row is None:
            return requested or default
    per_row = int(per_row * factor)
    plan = fit_batch(requested, default, per_row, free, option=option)
    if plan.note:
        note(args, f"note: memory: {plan.note}")
    return plan.batch


def measured_row_bytes(f: Callable[[Tensor], Tensor], x0: Tensor) -> int | None:
    """:func:`bytes_per_row`, or None where a pass cannot be measured (a model without
    gradients through some operator: then the defaults stand, as before)."""
    try:
        return bytes_per_row(f, x0)
    except RuntimeError:
        return None


def first_input(x: Tensor) -> Tensor:
    """One input (no batch axis) to measure a pass with; zeros when there is none."""
    return x[0] if x.shape[0] else torch.zeros(x.shape[1:], dtype=x.dtype, device=x.device)
