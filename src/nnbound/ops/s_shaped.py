"""S-shaped activations (tanh, sigmoid, arctan): convex for z < 0, concave for z > 0, with
tangent lines found by bisection to machine precision (see :mod:`nnbound.relax.s_shaped`)."""

import torch
from torch import nn

from nnbound.ops.activation import activation_op
from nnbound.ops.base import Names, Traits
from nnbound.relax.functions import ARCTAN, SIGMOID, TANH
from nnbound.relax.s_shaped import SShapedRelaxation


def _arctan_module(alpha: float) -> nn.Module:
    from nnbound.network.to_torch import Arctan  # torch has no module for it

    return Arctan()


TANH_OP = activation_op(
    "tanh",
    lambda alpha: torch.tanh,
    lambda alpha, opt: SShapedRelaxation(TANH, opt.tangent),
    Traits(monotone=True, lipschitz=1.0, smooth=True),
    Names(onnx=("Tanh",), torch=("Tanh", "tanh"), keras=("tanh",)),
)
SIGMOID_OP = activation_op(
    "sigmoid",
    lambda alpha: torch.sigmoid,
    lambda alpha, opt: SShapedRelaxation(SIGMOID, opt.tangent),
    Traits(monotone=True, lipschitz=0.25, smooth=True),
    Names(onnx=("Sigmoid",), torch=("Sigmoid", "sigmoid"), keras=("sigmoid",)),
)
ARCTAN_OP = activation_op(
    "arctan",
    lambda alpha: torch.atan,
    lambda alpha, opt: SShapedRelaxation(ARCTAN, opt.tangent),
    Traits(monotone=True, lipschitz=1.0, smooth=True),
    Names(onnx=("Atan",), torch=("atan", "arctan"), keras=("arctan",)),
    torch_module=_arctan_module,
)

OPS = (TANH_OP, SIGMOID_OP, ARCTAN_OP)
