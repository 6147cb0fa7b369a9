"""Convex increasing activations: softplus and ELU (scale ``0 <= alpha <= 1``): the chord
above, a tangent below (see :mod:`nnbound.relax.convex`).

ELU is convex only for ``0 <= alpha <= 1``; for a negative scale it is not even monotone, so
any other ``alpha`` is refused rather than relaxed as if it were convex. Such a network can
still be held, evaluated and exported; every bound method that relaxes it (IBP, CROWN, the
Jacobian bounds, on chains and graphs) refuses it here.
"""

import torch.nn.functional as F

from nnbound.errors import UnsupportedError
from nnbound.ops.activation import Spelling, activation_op
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
    # torch's defaults: the IR's softplus is F.softplus as called without settings
    torch_settings=Spelling(fixed=(("beta", 1.0), ("threshold", 20.0))),
)
ELU_OP = activation_op(
    "elu",
    lambda alpha: lambda x: F.elu(x, alpha),
    _elu_relaxation,
    Traits(monotone=True, lipschitz=1.0, smooth=True),
    Names(onnx=("Elu",), torch=("ELU", "elu", "elu_"), keras=("elu", "ELU")),
    default_alpha=1.0,
    alpha_label="alpha",
    zero_alpha_is_default=True,
    # slopes 1 (z > 0) and alpha e^z (z < 0): the derivative's magnitude is below max(1, |alpha|)
    lipschitz_of=lambda alpha: max(1.0, abs(alpha)),
    onnx_settings=Spelling(alpha="alpha", alpha_default=1.0),
    # aten::elu's scale / input_scale make SELU
    torch_settings=Spelling(
        alpha="alpha", alpha_default=1.0, fixed=(("scale", 1.0), ("input_scale", 1.0))
    ),
    keras_settings=Spelling(alpha="alpha", alpha_default=1.0),
)

OPS = (SOFTPLUS_OP, ELU_OP)
