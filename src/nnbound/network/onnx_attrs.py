"""ONNX node attributes and what they imply: the attribute dictionary, float attributes read
back as the decimals they were written as, the padding of ``auto_pad``, axis normalisation,
and the label that names a node in messages.

Shared by the chain importer's handlers and the graph converters
(:mod:`nnbound.network.onnx_convert_math`, :mod:`nnbound.network.onnx_convert_spatial`), so
both read attributes identically.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx

from nnbound.errors import ModelFormatError


def _node_label(node: onnx.NodeProto, index: int) -> str:
    if node.name:
        return f"node {node.name!r}"
    out = node.output[0] if node.output else "?"
    return f"node #{index} -> {out!r}"


def _resolve_pads(
    attrs: dict,
    op: str,
    label: str,
    spatial: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
) -> tuple[str, list[int]]:
    """``(auto_pad, [top, left, bottom, right])`` of a Conv or pooling node: explicit ``pads``,
    or the padding ``SAME_UPPER`` / ``SAME_LOWER`` imply (the odd extra pixel goes at the end
    for UPPER, at the start for LOWER), or none for ``VALID``."""
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0, 0, 0, 0]
        for i in range(2):
            span = dilations[i] * (int(kernel[i]) - 1) + 1
            size = int(spatial[i])
            total = max((math.ceil(size / strides[i]) - 1) * strides[i] + span - size, 0)
            small, large = total // 2, total - total // 2
            upper = auto_pad == "SAME_UPPER"
            pads[i], pads[i + 2] = (small, large) if upper else (large, small)
    elif auto_pad == "VALID":
        pads = [0, 0, 0, 0]
    elif auto_pad == "NOTSET":
        pads = [int(v) for v in attrs.get("pads", (0, 0, 0, 0))]
    else:
        raise ModelFormatError(f"{op} {label}: unknown auto_pad {auto_pad!r}")
    return auto_pad, pads


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _attr_float(attrs: dict[str, Any], key: str, default: float) -> float:
    """A float attribute, read back as the shortest decimal that the stored float32 rounds
    from: ONNX keeps float attributes in float32, so ``alpha=0.1`` comes back as 0.1 rather than
    0.10000000149 (exact round trips of float64 networks; onnxruntime uses the float32 value)."""
    if key not in attrs:
        return default
    return float(np.format_float_positional(np.float32(attrs[key]), unique=True, trim="-"))


def _normalize_axis(axis: int, rank: int, label: str, op: str) -> int:
    if not -rank <= axis < rank:
        raise ModelFormatError(f"{op} {label}: axis {axis} is out of range for rank {rank}")
    return axis % rank
