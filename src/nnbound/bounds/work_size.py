"""How many elements one work tensor of a pass may hold, per device.

On a CPU the passes work in cache-sized chunks (each call site keeps the size measured best
there: a CNN's CROWN call ran 3x faster at 2^22 elements than at 2^26). A GPU wants the
opposite: few, large kernels, since each launch costs as much as a small chunk's arithmetic.
Its chunks are sized from the memory free on the device when the pass starts
(``torch.cuda.mem_get_info``), so a pass that has the card to itself runs in a few launches
and one that shares it with other work still fits.
"""

from __future__ import annotations

import torch

# Share of the device's free memory one work tensor may take: a pass holds a few of them at
# once (coefficients, their absolute value, the product's output), and the caching allocator
# keeps freed blocks beside them.
GPU_MEMORY_SHARE = 1 / 32
# Largest work tensor on a GPU whatever the free memory (2^28 float32 elements: 1 GiB).
GPU_MAX_ELEMENTS = 1 << 28
# How far a row's count may fall below its group's largest (as a fraction of the largest)
# before the row starts a new group. On a CPU a padded slot costs a whole backward pass of
# arithmetic and a new group only its Python and small operations; on a GPU a new group is
# another round of launches, which costs more than padded arithmetic (as in group_rows).
CPU_PADDING_SLACK = 0.1
GPU_PADDING_SLACK = 1.0
# A row padded by at most this many slots joins the group whatever the slack.
PADDING_FLOOR = 4


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


def padding_slack(device: torch.device) -> float:
    """:data:`CPU_PADDING_SLACK` off a GPU, :data:`GPU_PADDING_SLACK` on a CUDA device."""
    return GPU_PADDING_SLACK if device.type == "cuda" else CPU_PADDING_SLACK


def group_end(sorted_counts: list[int], start: int, cap: int, slack: float) -> int:
    """End (exclusive) of the group of rows that starts at ``start`` of ``sorted_counts`` (how
    many candidates each row bounds, largest first), whose rows are all padded to the count at
    ``start``: at most ``cap`` rows, ending before the first row without candidates and before
    the first whose padding would exceed ``slack`` times the largest count (and
    :data:`PADDING_FLOOR` slots)."""
    largest = sorted_counts[start]
    most_padding = max(slack * largest, PADDING_FLOOR)
    end = start + 1
    stop = min(start + cap, len(sorted_counts))
    while end < stop and sorted_counts[end] > 0 and largest - sorted_counts[end] <= most_padding:
        end += 1
    return end
