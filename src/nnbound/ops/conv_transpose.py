"""2-D transposed convolutions (ONNX ``ConvTranspose``, torch ``ConvTranspose2d``, Keras
``Conv2DTranspose``): linear, and its backward transpose is the plain ``conv2d`` with the same
weight, stride, padding, dilation and groups (the mirror of :class:`~nnbound.network.layers.
Conv2d`, whose transpose is a ``conv_transpose2d``). Its interval is centre / radius with
``|weight|``.

Node: params ``weight (in_c, out_c/groups, kh, kw)``, ``bias (out_c,)``; attrs ``stride``,
``padding`` (symmetric per spatial axis: importers fold ONNX's asymmetric pads / auto_pad /
output_shape into ``padding`` and ``output_padding`` or refuse), ``output_padding``,
``dilation``, ``groups``. Output size per spatial axis:
``(H - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from nnbound.errors import InputError
from nnbound.network.graph import Node, Shape
from nnbound.network.layers import _pair
from nnbound.ops.base import Interval, Names, Op, OpKind


@dataclass(frozen=True)
class _Attrs:
    stride: tuple[int, int]
    padding: tuple[int, int]
    output_padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int


def _attrs(node: Node) -> _Attrs:
    a = node.attrs
    return _Attrs(
        _pair(a.get("stride", 1)),
        _pair(a.get("padding", 0)),
        _pair(a.get("output_padding", 0)),
        _pair(a.get("dilation", 1)),
        int(a.get("groups", 1)),
    )


def _weight(node: Node) -> Tensor:
    w = node.params.get("weight")
    if w is None or w.dim() != 4:
        raise InputError("conv_transpose2d needs a 4-D weight (in_c, out_c/groups, kh, kw)")
    return w


def _bias(node: Node) -> Tensor | None:
    return node.params.get("bias")


@dataclass(frozen=True)
class ConvTransposeOp(Op):
    def out_shape(self, node: Node, in_shapes: list[Shape]) -> Shape:
        if len(in_shapes) != 1 or len(in_shapes[0]) != 3:
            raise InputError(f"conv_transpose2d takes one (C, H, W) input, got {in_shapes}")
        w = _weight(node)
        at = _attrs(node)
        c, h, wd = in_shapes[0]
        in_c, per_group, kh, kw = (int(s) for s in w.shape)
        if at.groups < 1 or in_c % at.groups:
            raise InputError(f"conv_transpose2d groups {at.groups} do not divide {in_c} channels")
        if c != in_c:
            raise InputError(f"conv_transpose2d expects {in_c} input channels, got {c}")
        out_c = per_group * at.groups
        bias = _bias(node)
        if bias is not None and tuple(bias.shape) != (out_c,):
            raise InputError(
                f"conv_transpose2d bias shape {tuple(bias.shape)} does not match {out_c} "
                "output channels"
            )
        for i in range(2):
            if at.stride[i] < 1 or at.dilation[i] < 1 or at.padding[i] < 0:
                raise InputError(f"conv_transpose2d attrs {at} are invalid")
            if not 0 <= at.output_padding[i] < max(at.stride[i], at.dilation[i]):
                raise InputError(
                    f"conv_transpose2d output_padding {at.output_padding} must be smaller than "
                    "the stride or the dilation"
                )
        size = [
            (n - 1) * at.stride[i]
            - 2 * at.padding[i]
            + at.dilation[i] * (k - 1)
            + at.output_padding[i]
            + 1
            for i, (n, k) in enumerate(((h, kh), (wd, kw)))
        ]
        if min(size) <= 0:
            raise InputError(f"conv_transpose2d padding {at.padding} leaves an empty output")
        return (out_c, size[0], size[1])

    def _apply(self, node: Node, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        at = _attrs(node)
        return F.conv_transpose2d(
            x, weight, bias, at.stride, at.padding, at.output_padding, at.groups, at.dilation
        )

    def forward(self, node: Node, *xs: Tensor) -> Tensor:
        return self._apply(node, xs[0], _weight(node), _bias(node))

    def interval(self, node: Node, bounds: list[Interval]) -> Interval:
        lo, up = bounds[0]
        w = _weight(node)
        mid = self._apply(node, (up + lo) / 2, w, _bias(node))
        rad = self._apply(node, (up - lo) / 2, w.abs(), None)
        return mid - rad, mid + rad

    def transpose(
        self, node: Node, a: Tensor, in_shapes: list[Shape], out_shape: Shape
    ) -> list[Tensor | None]:
        at = _attrs(node)
        c, h, w = in_shapes[0]
        lead = a.shape[:-3]
        flat = a.reshape(-1, *a.shape[-3:])
        res = F.conv2d(flat, _weight(node), None, at.stride, at.padding, at.dilation, at.groups)
        # an output_padding of a stride or more (possible with a larger dilation) leaves the
        # conv extra rows / columns that map to no input entry
        res = res[..., :h, :w]
        return [res.reshape(*lead, c, h, w)]

    def bias(self, node: Node, out_shape: Shape) -> Tensor | None:
        b = _bias(node)
        return None if b is None else b.view(-1, 1, 1).expand(out_shape)

    def summary(self, node: Node) -> str:
        w = _weight(node)
        at = _attrs(node)
        return (
            f"conv_transpose2d({int(w.shape[0])} -> {int(w.shape[1]) * at.groups}, "
            f"k={tuple(w.shape[2:])}, s={at.stride}, p={at.padding})"
        )


CONV_TRANSPOSE2D = ConvTransposeOp(
    "conv_transpose2d",
    OpKind.LINEAR,
    names=Names(
        onnx=("ConvTranspose",),
        torch=("ConvTranspose2d", "conv_transpose2d"),
        keras=("Conv2DTranspose",),
    ),
)

OPS = (CONV_TRANSPOSE2D,)

__all__ = ["CONV_TRANSPOSE2D", "OPS"]
