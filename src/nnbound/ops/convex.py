"""Convex increasing activations: softplus and ELU (scale ``0 <= alpha <= 1``): the chord
above, a tangent below (see :mod:`nnbound.relax.convex`).

ELU is convex only for ``0 <= alpha <= 1``; for a negative scale it is not even monotone, so
any other ``alpha`` is refused rather than relaxed as if it were convex.
"""

import torch.nn.functional as F

from nnbound.errors import UnsupportedError
from nnbound.ops.activation import activation_op
from nnbound.ops.base import Names, RelaxOptions, Traits
from nnbound.relax.convex import ConvexRelaxation
from nnbound.relax.functions import SOFTPLUS, elu_function


def _elu_relaxation(alpha: float, options: RelaxOptions) -> ConvexRelaxation:
    if not 0.0 <= alpha <= 1.0:
        raise UnsupportedError(
            f"ELU with alpha={alpha} is not convex and increasing (needs 0 <= alpha <= 1); "
            "no relaxation"
        )
    return ConvexRelaxation(elu_function(alpha))


SOFTPLUS_OP = activation_op(
    "softplus",
    lambda alpha: F.softplus,
    lambda alpha, opt: ConvexRelaxation(SOFTPLUS),
    Traits(monotone=True, lipschitz=1.0, smooth=True),
    Names(onnx=("Softplus",), torch=("Softplus", "softplus"), keras=("softplus",)),
)
ELU_OP = activation_op(
    "elu",
    lambda alpha: lambda x: F.elu(x, alpha),
    _elu_relaxation,
    Traits(monotone=True, lipschitz=1.0, smooth=True),
    Names(onnx=("Elu",), torch=("ELU", "elu", "elu_"), keras=("elu", "ELU")),
    default_alpha=1.0,
)

OPS = (SOFTPLUS_OP, ELU_OP)
