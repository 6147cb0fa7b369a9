"""Constant padding of per-sample axes (ONNX ``Pad`` in ``constant`` mode, torch ``pad`` /
``ZeroPad2d`` / ``ConstantPad*d``, Keras ``ZeroPadding*``). Negative pads crop, as in ONNX.

Affine: the linear part pads with zeros, the padding value is the bias (nonzero only on the
padded border), and the transpose is the opposite padding: it crops the coefficients where the
forward padded and zero-extends them where the forward cropped. ``reflect`` / ``edge`` /
``wrap`` modes are refused here (importers write them as ``gather`` nodes).
Node attrs: ``pads`` (``(before, after)`` per per-sample axis), ``value`` (float, default 0;
used rounded to float32, see :func:`_value`), ``mode`` (optional, ``"constant"`` only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from nnbound.errors import InputError
from nnbound.network.graph import Node, Shape
from nnbound.ops.base import Interval, Names, Op, OpKind, Traits


def _pads(node: Node, rank: int) -> tuple[tuple[int, int], ...]:
    raw = node.attrs.get("pads")
    if raw is None:
        raise InputError("pad needs attr 'pads'")
    try:
        pads = tuple((int(b), int(a)) for b, a in raw)
    except (TypeError, ValueError):
        raise InputError(f"pad pads must be (before, after) pairs, got {raw!r}") from None
    if len(pads) != rank:
        raise InputError(f"pad has {len(pads)} (before, after) pairs for an input of rank {rank}")
    return pads


def _value(node: Node) -> float:
    """The padding value, rounded to float32 once for the forward pass and the bias alike.

    The node holds no tensor to take a dtype or device from, so the bias is a float32 CPU
    tensor, which the engine casts to the coefficients' dtype (exactly, for float64); padding
    with the same float32 value keeps the forward pass and the bias consistent in every dtype.
    (The engine must also move it to the coefficients' device.)
    """
    return float(torch.tensor(float(node.attrs.get("value", 0.0)), dtype=torch.float32))


def _torch_pads(pads: tuple[tuple[int, int], ...], sign: int = 1) -> tuple[int, ...]:
    """``F.pad``'s order: last axis first."""
    return tuple(sign * v for pair in reversed(pads) for v in pair)


@dataclass(frozen=True)
class PadOp(Op):
    def _check_mode(self, node: Node) -> None:
        mode = str(node.attrs.get("mode", "constant"))
        if mode != "constant":
            raise self.unsupported(
                node, f"pad mode {mode!r} is not supported (only 'constant' padding)"
            )

    def out_shape(self, node: Node, in_shapes: list[Shape]) -> Shape:
        self._check_mode(node)
        if len(in_shapes) != 1:
            raise InputError(f"pad takes one input, got {len(in_shapes)}")
        shape = in_shapes[0]
        pads = _pads(node, len(shape))
        out = tuple(s + b + a for s, (b, a) in zip(shape, pads, strict=True))
        if min(out, default=1) <= 0:
            raise InputError(f"pads {pads} leave nothing of input shape {shape}")
        return out

    def _pad(self, node: Node, x: Tensor, value: float) -> Tensor:
        pads = _pads(node, x.dim() - 1)
        return F.pad(x, _torch_pads(pads), mode="constant", value=value)

    def forward(self, node: Node, *xs: Tensor) -> Tensor:
        return self._pad(node, xs[0], _value(node))

    def interval(self, node: Node, bounds: list[Interval]) -> Interval:
        value = _value(node)
        return self._pad(node, bounds[0][0], value), self._pad(node, bounds[0][1], value)

    def transpose(
        self, node: Node, a: Tensor, in_shapes: list[Shape], out_shape: Shape
    ) -> list[Tensor | None]:
        pads = _pads(node, len(in_shapes[0]))
        return [F.pad(a, _torch_pads(pads, -1), mode="constant", value=0.0)]

    def bias(self, node: Node, out_shape: Shape) -> Tensor | None:
        value = _value(node)
        if value == 0.0:
            return None
        pads = _pads(node, len(out_shape))
        in_shape = tuple(s - b - a for s, (b, a) in zip(out_shape, pads, strict=True))
        zeros = torch.zeros(1, *in_shape, dtype=torch.float32)
        return self._pad(node, zeros, value)[0]

    def summary(self, node: Node) -> str:
        return f"pad({node.attrs.get('pads')}, value {node.attrs.get('value', 0.0)})"


PAD = PadOp(
    "pad",
    OpKind.LINEAR,
    traits=Traits(monotone=True),
    names=Names(
        onnx=("Pad",),
        torch=(
            "pad",
            "constant_pad_nd",
            "ZeroPad1d",
            "ZeroPad2d",
            "ZeroPad3d",
            "ConstantPad1d",
            "ConstantPad2d",
            "ConstantPad3d",
        ),
        keras=("ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D"),
    ),
)

OPS = (PAD,)

__all__ = ["OPS", "PAD"]
