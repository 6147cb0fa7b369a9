"""ONNX -> chain handlers for nodes that leave the data as it is: ``Identity``, inference-mode
``Dropout``, and the reshape-like ``Flatten``, ``Reshape``, ``Squeeze``, ``Unsqueeze`` and a
``Transpose`` of size-1 axes, which only change the tracked ONNX shape.
"""

from __future__ import annotations

import math

import onnx

from nnbound.errors import ModelFormatError, UnsupportedError
from nnbound.network.onnx_attrs import _attrs, _normalize_axis
from nnbound.network.onnx_chain_builder import _Builder
from nnbound.network.onnx_chain_state import _ImporterState


class _LayoutOps(_ImporterState):
    """Identity, dropout and reshape-like handlers; every handler takes ``(builder, node,
    position of the network input, label)``."""

    def _op_Identity(self, b: _Builder, node: onnx.NodeProto, pos: int, label: str) -> None:
        pass

    def _op_Dropout(self, b: _Builder, node: onnx.NodeProto, pos: int, label: str) -> None:
        # inference-mode dropout is the identity; refuse an explicit training_mode=True
        has_mode = len(node.input) > 2 and bool(node.input[2])
        if has_mode and bool(self._const(node.input[2], label, "Dropout").reshape(-1)[0]):
            raise UnsupportedError(f"unsupported ONNX op 'Dropout' ({label}) in training mode")

    # reshape-like ops: only the ONNX shape changes, the data order does not
    def _op_Flatten(self, b: _Builder, node: onnx.NodeProto, pos: int, label: str) -> None:
        rank = len(b.shape)
        axis = int(_attrs(node).get("axis", 1))
        if not -rank <= axis <= rank:  # Flatten accepts [-r, r]
            raise ModelFormatError(f"Flatten {label}: axis {axis} is out of range for rank {rank}")
        axis = axis + rank if axis < 0 else axis
        b.shape = (math.prod(b.shape[:axis]), math.prod(b.shape[axis:]))

    def _op_Reshape(self, b: _Builder, node: onnx.NodeProto, pos: int, label: str) -> None:
        attrs = _attrs(node)
        if len(node.input) > 1 and node.input[1]:
            target = self._int_list(self._const(node.input[1], label, "Reshape"))
        elif "shape" in attrs:  # opset < 5
            target = [int(v) for v in attrs["shape"]]
        else:
            raise ModelFormatError(f"{self.where}: Reshape {label} has no target shape")
        allowzero = int(attrs.get("allowzero", 0))
        out: list[int] = []
        for i, d in enumerate(target):
            if d == 0 and not allowzero:
                if i >= len(b.shape):
                    raise ModelFormatError(
                        f"Reshape {label}: target {target} copies axis {i} of shape {b.shape}"
                    )
                d = b.shape[i]
            out.append(d)
        numel = math.prod(b.shape)
        if out.count(-1) > 1 or any(d < -1 for d in out):
            raise ModelFormatError(f"Reshape {label}: invalid target shape {target}")
        if -1 in out:
            known = math.prod(d for d in out if d != -1)
            if known == 0 or numel % known:
                raise ModelFormatError(f"Reshape {label}: cannot reshape {b.shape} to {target}")
            out[out.index(-1)] = numel // known
        if math.prod(out) != numel:
            raise ModelFormatError(f"Reshape {label}: cannot reshape {b.shape} to {target}")
        b.shape = tuple(out)

    def _axes(self, node: onnx.NodeProto, label: str) -> list[int] | None:
        attrs = _attrs(node)
        if "axes" in attrs:  # opset < 13
            return [int(a) for a in attrs["axes"]]
        if len(node.input) > 1 and node.input[1]:
            return self._int_list(self._const(node.input[1], label, node.op_type))
        return None

    def _op_Squeeze(self, b: _Builder, node: onnx.NodeProto, pos: int, label: str) -> None:
        axes = self._axes(node, label)
        rank = len(b.shape)
        if axes is None:
            drop = {i for i, d in enumerate(b.shape) if d == 1}
        else:
            drop = {_normalize_axis(a, rank, label, "Squeeze") for a in axes}
            bad = [a for a in sorted(drop) if b.shape[a] != 1]
            if bad:
                raise UnsupportedError(
                    f"unsupported ONNX op 'Squeeze' ({label}): axes {bad} of shape {b.shape} "
                    "are not of size 1"
                )
        b.shape = tuple(d for i, d in enumerate(b.shape) if i not in drop)

    def _op_Unsqueeze(self, b: _Builder, node: onnx.NodeProto, pos: int, label: str) -> None:
        axes = self._axes(node, label)
        if axes is None:
            raise ModelFormatError(f"Unsqueeze {label} has no axes")
        rank = len(b.shape) + len(axes)
        ins = sorted(_normalize_axis(a, rank, label, "Unsqueeze") for a in axes)
        shape = list(b.shape)
        for a in ins:
            shape.insert(a, 1)
        b.shape = tuple(shape)

    def _op_Transpose(self, b: _Builder, node: onnx.NodeProto, pos: int, label: str) -> None:
        rank = len(b.shape)
        perm = [int(p) for p in _attrs(node).get("perm", list(range(rank))[::-1])]
        if sorted(perm) != list(range(rank)):
            raise ModelFormatError(f"Transpose {label}: perm {perm} does not fit rank {rank}")
        moved = [p for p in perm if b.shape[p] != 1]
        # a transpose is a no-op on the data when the axes larger than 1 keep their order
        if moved != sorted(moved):
            raise UnsupportedError(
                f"unsupported ONNX op 'Transpose' ({label}): perm {perm} on shape {b.shape} "
                "reorders the data (only transposes of size-1 axes are supported)"
            )
        b.shape = tuple(b.shape[p] for p in perm)
