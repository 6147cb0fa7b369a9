"""Batch sizes that fit the machine: a batch of gradient samples that does not fit in memory
gets the process killed by the out-of-memory killer (no message, every result lost), so the
default is derived from the free memory and a request that cannot fit is refused up front.

The memory one row of a forward + backward pass needs is measured, not guessed: one pass on two
rows with autograd's saved-tensor hook counts the bytes kept for the backward pass (what grows
with the batch), plus the input, its gradient and the output."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from nnbound.errors import InputError

# Share of the free memory a batch may take: autograd's temporaries, the allocator's slack and
# whatever else runs on the machine need the rest.
MEMORY_FRACTION = 0.5
# Measured bytes are multiplied by this: saved tensors are not the whole peak (gradients of the
# activations live beside them during the backward pass).
PEAK_FACTOR = 2.0


def available_bytes(device: torch.device | str = "cpu") -> int | None:
    """Free memory of ``device`` in bytes; None when it cannot be read (then nothing is
    capped). CUDA: ``torch.cuda.mem_get_info``; CPU: psutil when installed, else
    ``MemAvailable`` of ``/proc/meminfo``."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import psutil  # optional: not a dependency

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def bytes_per_row(f: Callable[[Tensor], Tensor], x0: Tensor) -> int:
    """Peak bytes one row of ``x0``'s shape adds to a forward + backward pass of ``f``."""
    rows = 2
    x = x0.detach().unsqueeze(0).expand(rows, *x0.shape).clone().requires_grad_(True)
    saved = 0
    seen: set[tuple[int, int]] = set()

    def pack(t: Tensor) -> Tensor:
        nonlocal saved
        # Only per-row tensors grow with the batch (weights are saved too, once); a tensor
        # saved by two operations (a ReLU output read by the next conv) is counted once.
        key = (t.data_ptr(), t.numel())
        if t.dim() > 0 and t.shape[0] == rows and key not in seen:
            seen.add(key)
            saved += t.numel() * t.element_size()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = f(x)
        (grad,) = torch.autograd.grad(out.sum(), x)
    per_row = saved / rows + 2 * x0.numel() * x0.element_size() + out[0].numel() * 8
    del grad
    return math.ceil(per_row * PEAK_FACTOR)


@dataclass(frozen=True)
class BatchPlan:
    """The batch size to use and, when it is below the one asked for, why."""

    batch: int
    note: str | None


def fit_batch(
    requested: int | None,
    default: int,
    per_row: int,
    free: int | None,
    *,
    option: str = "--batch-size",
) -> BatchPlan:
    """The batch size for ``per_row`` bytes a row with ``free`` bytes free.

    ``requested`` (an explicit option) is kept when it fits and refused with advice when it
    does not; without it ``default`` is lowered to what fits. Refused when one row cannot fit.
    """
    if free is None:
        return BatchPlan(requested or default, None)
    budget = int(free * MEMORY_FRACTION)
    fits = budget // max(1, per_row)
    gib = lambda b: f"{b / 2**30:.1f} GiB"  # noqa: E731
    if fits < 1:
        raise InputError(
            f"one sample needs about {gib(per_row)} for its gradient pass but only "
            f"{gib(free)} is free: close other programs, use a smaller input or model, or "
            "another device (--device)"
        )
    if requested is not None:
        if requested > fits:
            raise InputError(
                f"{option} {requested} needs about {gib(requested * per_row)}; with "
                f"{gib(free)} free at most {fits} rows fit: use {option} {fits} or less"
            )
        return BatchPlan(requested, None)
    if default <= fits:
        return BatchPlan(default, None)
    return BatchPlan(
        fits,
        f"{option} {fits} (not {default}): about {gib(per_row)} per row, {gib(free)} free",
    )
