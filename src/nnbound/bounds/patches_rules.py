"""How :class:`~nnbound.bounds.patches.Patches` coefficients pass the operators that keep them
patches: convolutions, constant scales (batch norm), sums of same-shaped tensors, and
element-wise relaxation lines shared by every row. Any other operator gets dense
coefficients (:func:`transpose` returns ``None``), so the engine's contract is unchanged."""

from __future__ import annotations

import torch
from torch import Tensor

from nnbound.bounds.linear import through_lines
from nnbound.bounds.patches import Patches
from nnbound.network.graph import Node, Shape
from nnbound.network.layers import Conv2d
from nnbound.ops.add import AddOp
from nnbound.ops.base import Op
from nnbound.ops.layer_backed import LayerOp
from nnbound.ops.scale import ScaleOp
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


__all__ = ["through_lines_patches", "transpose"]
