"""How many elements one work tensor of a pass may hold, per device.

On a CPU the passes work in cache-sized chunks (each call site keeps the size measured best
there: a CNN's CROWN call ran 3x faster at 2^22 elements than at 2^26). A GPU wants the
opposite: few, large kernels, since each launch costs as much as a small chunk's arithmetic.
Its chunks are sized from the memory free on the device when the pass starts
(``torch.cuda.mem_get_info``), so a pass that has the card to itself runs in a few launches
and one that shares it with other work still fits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

# Share of the device's free memory one work tensor may take: a pass holds a few of them at
# once (coefficients, their absolute value, the product's output), and the caching allocator
# keeps freed blocks beside them.
GPU_MEMORY_SHARE = 1 / 32
# Largest work tensor on a GPU whatever the free memory (2^28 float32 elements: 1 GiB).
GPU_MAX_ELEMENTS = 1 << 28
# A CPU starts a new row group where the padded arithmetic it saves exceeds this many
# multiply-adds: about what one more group costs in Python and small operations. A GPU never
# does (another group is another round of launches, which costs more than padded arithmetic,
# as in group_rows).
CPU_GROUP_OVERHEAD_MACS = 1 << 24
# ... plus this many candidate rows' arithmetic: each group reads every weight again, and a
# product with few rows is bound by that read, not by its multiply-adds.
CPU_GROUP_WEIGHT_SLOTS = 8


def work_elements(device: torch.device, dtype: torch.dtype, cpu_elements: int) -> int:
    """Elements of one work tensor of ``dtype`` on ``device``: ``cpu_elements`` off a GPU; on
    a CUDA device its share of the free memory, at least ``cpu_elements`` and at most
    :data:`GPU_MAX_ELEMENTS`."""
    if device.type != "cuda":
        return cpu_elements
    free = int(torch.cuda.mem_get_info(device)[0])
    size = int(free * GPU_MEMORY_SHARE) // torch.empty((), dtype=dtype).element_size()
    return max(cpu_elements, min(GPU_MAX_ELEMENTS, size))


def group_rows(device: torch.device, cpu_rows: int) -> int:
    """Input rows bounded together in one pass, at most: ``cpu_rows`` off a GPU, where rows
    are grouped by how many neurons each bounds so that padding them to the group's largest
    count wastes little; no cap on a CUDA device, where one more launch per group costs more
    than the padding (the elements per pass still cap the group)."""
    return cpu_rows if device.type != "cuda" else 1 << 62


def group_overhead(device: torch.device, row_work: float) -> float:
    """What starting another row group costs, in multiply-adds, for rows of ``row_work``
    each: off a GPU :data:`CPU_GROUP_OVERHEAD_MACS` plus :data:`CPU_GROUP_WEIGHT_SLOTS` rows'
    worth (another pass over the weights); unbounded on a CUDA device."""
    if device.type == "cuda":
        return math.inf
    return CPU_GROUP_OVERHEAD_MACS + CPU_GROUP_WEIGHT_SLOTS * row_work


def row_macs(layers: Iterable[tuple[Tensor | None, int]]) -> int:
    """Multiply-adds of carrying one coefficient row back through ``layers`` (per layer its
    weight or ``None``, and its output elements): a layer with a weight matrix or kernel
    (``weight.dim() >= 2``) costs its output elements times its fan-in
    (``weight[0].numel()``), any other layer its output elements."""
    total = 0
    for weight, out_elements in layers:
        fan = weight[0].numel() if weight is not None and weight.dim() >= 2 else 1
        total += out_elements * fan
    return total


def group_end(
    sorted_counts: list[int],
    start: int,
    cap: int,
    *,
    slack: float,
    row_work: float,
    overhead: float,
) -> int:
    """End (exclusive) of the group of rows that starts at ``start`` of ``sorted_counts`` (how
    many candidates each row bounds, largest first), whose rows are all padded to the count at
    ``start``: at most ``cap`` rows, ending before the first row without candidates and before
    the first whose padding is more than ``slack`` times the largest count and, multiplied by
    the rows left within the cap and by ``row_work`` (the arithmetic of one candidate), more
    than ``overhead`` (what another group costs): where a new group pays for itself."""
    largest = sorted_counts[start]
    stop = min(start + cap, len(sorted_counts))
    end = start + 1
    while end < stop and sorted_counts[end] > 0:
        padding = largest - sorted_counts[end]
        if padding > slack * largest and padding * (stop - end) * row_work > overhead:
            break
        end += 1
    return end
