"""The bounded ReLU ``min(max(z, 0), cap)`` (ONNX ``Clip(0, cap)``, torch ``ReLU6`` /
``Hardtanh(0, cap)``, Keras ``relu(max_value=cap)``). Node attrs: ``alpha`` = the cap."""

import torch

from nnbound.errors import InputError
from nnbound.ops.activation import OnnxNode, Spelling, activation_op
from nnbound.ops.base import Names, Traits
from nnbound.relax.bounded_relu import BoundedReluRelaxation


def _check_cap(cap: float) -> None:
    # the chain IR reads a cap of 0 as the default 1 before this check
    if cap < 0.0:
        raise InputError(f"bounded ReLU cap must be > 0, got {cap}")


def _onnx_clip(cap: float, opset: int) -> OnnxNode:
    # Clip(min=0, max=cap): attributes before opset 11, scalar inputs from 11 on.
    if opset < 11:
        return OnnxNode("Clip", (("min", 0.0), ("max", float(cap))))
    return OnnxNode("Clip", constants=(0.0, float(cap)))


def _hardtanh(cap: float) -> torch.nn.Module:
    return torch.nn.Hardtanh(0.0, cap)  # nn.ReLU6 is Hardtanh(0, 6)


BOUNDED_RELU = activation_op(
    "brelu",
    lambda cap: lambda x: torch.clamp(x, 0.0, cap),
    lambda cap, opt: BoundedReluRelaxation(cap, opt.relu_lower),
    Traits(piecewise_linear=True, kinks=(0.0,), monotone=True, lipschitz=1.0),
    Names(
        onnx=("Clip",),
        torch=("Hardtanh", "hardtanh", "ReLU6", "relu6"),
        # the CLEVER reference's Activation(bounded_relu) = K.relu(x, max_value=1)
        keras=("brelu", "bounded_relu"),
    ),
    default_alpha=1.0,
    alpha_label="cap",
    zero_alpha_is_default=True,
    check_alpha=_check_cap,
    derivative_range=lambda cap: (0.0, 1.0),
    onnx_emit=_onnx_clip,
    torch_module=_hardtanh,
    # module attributes (a Hardtanh call's min_val defaults to -1: it must be given)
    torch_settings=Spelling(alpha="max_val", fixed=(("min_val", 0.0),), explicit=("min_val",)),
    keras_settings=Spelling(alpha="max_value", alpha_default=1.0),
)

OPS = (BOUNDED_RELU,)
