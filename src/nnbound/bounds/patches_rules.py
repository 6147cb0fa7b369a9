"""How :class:`~nnbound.bounds.patches.Patches` coefficients pass the operators that keep them
patches: convolutions, constant scales (batch norm), sums of same-shaped tensors, and
element-wise relaxation lines shared by every row. Any other operator gets dense
coefficients (:func:`transpose` returns ``None``), so the engine's contract is unchanged."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from nnbound.bounds.linear import through_lines
from nnbound.bounds.patches import Patches
from nnbound.network.graph import Graph, Node, Shape
from nnbound.network.layers import Conv2d
from nnbound.ops.add import AddOp
from nnbound.ops.base import Op, OpKind
from nnbound.ops.layer_backed import LayerOp
from nnbound.ops.registry import get_op
from nnbound.ops.scale import ScaleOp
from nnbound.ops.slice import SliceOp, plan
from nnbound.relax.base import LinearRelaxation


def _kept(p: Patches) -> Patches | Tensor:
    return p if p.worth_keeping() else p.to_dense()


def transpose(
    op: Op, node: Node, a: Patches, in_shapes: list[Shape], out_shape: Shape
) -> list[Patches | Tensor | None] | None:
    """``a`` carried back through linear ``op`` to its inputs, or ``None`` when ``op`` has no
    patches rule (the caller densifies)."""
    if isinstance(op, LayerOp):
        layer = op.layer(node)
        if not isinstance(layer, Conv2d) or len(in_shapes[0]) != 3:
            return None
        moved = a.conv_transpose(
            layer.weight, layer.stride, layer.padding, layer.dilation, layer.groups, in_shapes[0]
        )
        return [_kept(moved)]
    if isinstance(op, SliceOp):
        channels = _channel_slice(node, in_shapes[0])
        if channels is None:
            return None
        return [a.with_channels(channels, in_shapes[0][0])]
    if any(tuple(s) != tuple(out_shape) for s in in_shapes):
        return None  # a broadcast input: its adjoint sums over axes, done densely
    if isinstance(op, ScaleOp):
        scale = node.params.get("scale")
        if scale is not None and scale.dim() > len(out_shape):
            return None
        return [a.scale(scale) if scale is not None else a]
    if isinstance(op, AddOp):
        return [a if sign > 0 else -a for sign in op._signs(len(in_shapes))]
    return None


def _channel_slice(node: Node, in_shape: Shape) -> slice | None:
    """The channels a slice of an image tensor keeps when it keeps every row and column in
    order (patches pass it by padding channels), else None."""
    if len(in_shape) != 3:
        return None
    p = plan(node, in_shape)
    whole = all(
        sl.indices(size) == (0, size, 1)
        for sl, size in zip(p.slices[1:], in_shape[1:], strict=True)
    )
    if p.flips or not whole:
        return None
    return p.slices[0]


def through_lines_patches(
    a_lo: Patches | None,
    c_lo: Tensor | None,
    a_up: Patches | None,
    c_up: Tensor | None,
    rl: LinearRelaxation,
) -> tuple[Patches | None, Tensor | None, Patches | None, Tensor | None]:
    """:func:`~nnbound.bounds.linear.through_lines` on patches: the lines (``(N, *shape)``,
    shared by every row) read at each row's window, which makes them per-row lines on the
    window values; they are zero past the image, which keeps the values zero there."""
    ref = a_lo if a_lo is not None else a_up
    assert ref is not None
    c = ref.shape[0]
    stacked = ref.gather(
        torch.cat([rl.lower_slope, rl.lower_bias, rl.upper_slope, rl.upper_bias], 1)
    )
    ls, lb, us, ub = stacked.split(c, 2)
    window = LinearRelaxation(ls, lb, us, ub)
    same = a_lo is a_up
    v_lo = a_lo.values if a_lo is not None else None
    v_up = v_lo if same else (a_up.values if a_up is not None else None)
    n_lo, c_lo, n_up, c_up = through_lines(v_lo, c_lo, v_up, c_up, window)
    p_up = ref.with_values(n_up) if n_up is not None else None
    if n_lo is None:
        p_lo = None
    elif n_lo is n_up:
        p_lo = p_up
    else:
        p_lo = ref.with_values(n_lo)
    return p_lo, c_lo, p_up, c_up


def row_elements(graph: Graph, name: str) -> int:
    """The most coefficients one row of a patches pass started on image tensor ``name`` holds
    on any tensor it reaches: its window there (grown through each convolution), or the whole
    tensor from where the rules above stop keeping patches. What sizes a pass's slice of rows:
    the widest tensor overstates a patches row by up to the image area (a U-Net's CROWN pass
    went from thousands of small slices to a few)."""
    # The window per tensor, (rows, cols); None: dense from here back to the input.
    windows: dict[str, tuple[int, int] | None] = {name: (1, 1)}
    most = 1
    for node in reversed(graph.ancestors(name)):
        if node.output not in windows:
            continue
        window = windows.pop(node.output)
        most = max(most, _elements(graph.shapes[node.output], window))
        for inp, grown in zip(node.inputs, _through(graph, node, window), strict=True):
            if inp in windows and (windows[inp] is None or grown is None):
                windows[inp] = None
            elif inp in windows:
                # Two paths meet (a residual block): patches add on the union of the
                # windows, here the larger of each side (residual windows are centred
                # alike). A size for slicing passes, never a matter of soundness.
                old = windows[inp]
                assert old is not None and grown is not None
                windows[inp] = (max(old[0], grown[0]), max(old[1], grown[1]))
            else:
                windows[inp] = grown
    for tensor, window in windows.items():
        most = max(most, _elements(graph.shapes[tensor], window))
    return most


def _elements(shape: Shape, window: tuple[int, int] | None) -> int:
    if window is None or len(shape) != 3:
        return math.prod(shape)
    c, h, w = shape
    return c * min(h, window[0]) * min(w, window[1])


def _through(
    graph: Graph, node: Node, window: tuple[int, int] | None
) -> list[tuple[int, int] | None]:
    """The window a row has on each input of ``node`` given its window on the output, as
    :func:`transpose` and :func:`through_lines_patches` carry it (None: dense)."""
    dense: list[tuple[int, int] | None] = [None] * len(node.inputs)
    if window is None:
        return dense
    op = get_op(node.op, node)
    in_shapes = [graph.shapes[i] for i in node.inputs]
    out_shape = graph.shapes[node.output]
    if op.kind is OpKind.ELEMENTWISE:
        return [window]
    if op.kind is not OpKind.LINEAR:
        return dense
    if isinstance(op, LayerOp):
        layer = op.layer(node)
        if not isinstance(layer, Conv2d) or len(in_shapes[0]) != 3:
            return dense
        (kh, kw), (sy, sx), (dy, dx) = layer.weight.shape[-2:], layer.stride, layer.dilation
        grown = ((window[0] - 1) * sy + dy * (kh - 1) + 1, (window[1] - 1) * sx + dx * (kw - 1) + 1)
        _, h, w = in_shapes[0]
        return [grown if grown[0] * grown[1] < h * w else None]
    if isinstance(op, SliceOp):
        return [window if _channel_slice(node, in_shapes[0]) is not None else None]
    if any(tuple(s) != tuple(out_shape) for s in in_shapes):
        return dense
    if isinstance(op, (ScaleOp, AddOp)):
        return [window] * len(node.inputs)
    return dense


__all__ = ["row_elements", "through_lines_patches", "transpose"]
