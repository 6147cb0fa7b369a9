"""Nearest-neighbour upsampling of ``(C, H, W)`` by integer factors (ONNX ``Resize`` /
``Upsample`` in ``nearest`` mode with integer scales, torch ``Upsample`` /
``upsample_nearest2d``, Keras ``UpSampling2D``): every input pixel is copied into an
``sh x sw`` block. Linear and monotone; the transpose sums the coefficients of each block's
copies. Node attr: ``scales`` (``(sh, sw)`` positive integers, or one for both)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from nnbound.errors import InputError
from nnbound.network.graph import Node, Shape
from nnbound.ops.base import Interval, Names, Op, OpKind, Traits


def _scales(node: Node) -> tuple[int, int]:
    raw = node.attrs.get("scales")
    if raw is None:
        raise InputError("resize_nearest needs attr 'scales'")
    values = (raw, raw) if isinstance(raw, (int, float)) else tuple(raw)
    if len(values) == 1:
        values = (values[0], values[0])
    if len(values) != 2 or any(float(v) != int(v) or int(v) < 1 for v in values):
        raise InputError(f"resize_nearest scales must be two positive integers, got {raw!r}")
    return int(values[0]), int(values[1])


def _upsample(x: Tensor, sh: int, sw: int) -> Tensor:
    return x.repeat_interleave(sh, dim=-2).repeat_interleave(sw, dim=-1)


@dataclass(frozen=True)
class ResizeNearestOp(Op):
    def out_shape(self, node: Node, in_shapes: list[Shape]) -> Shape:
        if len(in_shapes) != 1 or len(in_shapes[0]) != 3:
            raise InputError(f"resize_nearest takes one (C, H, W) input, got {in_shapes}")
        sh, sw = _scales(node)
        c, h, w = in_shapes[0]
        return (c, h * sh, w * sw)

    def forward(self, node: Node, *xs: Tensor) -> Tensor:
        return _upsample(xs[0], *_scales(node))

    def interval(self, node: Node, bounds: list[Interval]) -> Interval:
        sh, sw = _scales(node)
        return _upsample(bounds[0][0], sh, sw), _upsample(bounds[0][1], sh, sw)

    def transpose(
        self, node: Node, a: Tensor, in_shapes: list[Shape], out_shape: Shape
    ) -> list[Tensor | None]:
        sh, sw = _scales(node)
        c, h, w = in_shapes[0]
        blocks = a.reshape(*a.shape[:2], c, h, sh, w, sw)
        return [blocks.sum(dim=(-3, -1))]

    def summary(self, node: Node) -> str:
        sh, sw = _scales(node)
        return f"resize_nearest(x{sh}, x{sw})"


RESIZE_NEAREST = ResizeNearestOp(
    "resize_nearest",
    OpKind.LINEAR,
    traits=Traits(monotone=True),
    names=Names(
        onnx=("Resize", "Upsample"),
        torch=("Upsample", "UpsamplingNearest2d", "upsample_nearest2d", "interpolate"),
        keras=("UpSampling2D",),
    ),
)

OPS = (RESIZE_NEAREST,)

__all__ = ["OPS", "RESIZE_NEAREST"]
