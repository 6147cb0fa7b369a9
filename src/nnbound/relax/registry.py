"""Which relaxation object each IR activation gets under a given bound method."""

from __future__ import annotations

from nnbound.errors import UnsupportedError
from nnbound.network.layers import Activation
from nnbound.relax.base import Relaxation
from nnbound.relax.bounded_relu import BoundedReluRelaxation
from nnbound.relax.convex import ConvexRelaxation
from nnbound.relax.functions import S_SHAPED, SOFTPLUS, elu_function
from nnbound.relax.relu import LeakyReluRelaxation, LowerSlope
from nnbound.relax.s_shaped import SShapedRelaxation, TangentRule


def relaxation_for(
    act: Activation,
    relu_lower: LowerSlope = LowerSlope.ADAPTIVE,
    tangent: TangentRule = TangentRule.EXACT,
) -> Relaxation:
    """The relaxation of ``act``; ``relu_lower`` picks the ReLU/leaky lower line (and the
    bounded ReLU's non-chord lines) and ``tangent`` the S-shaped tangent rule."""
    if act.name == "relu":
        return LeakyReluRelaxation(0.0, relu_lower)
    if act.name == "leaky_relu":
        return LeakyReluRelaxation(act.alpha, relu_lower)
    if act.name == "brelu":
        return BoundedReluRelaxation(act.alpha, relu_lower)
    if act.name in S_SHAPED:
        return SShapedRelaxation(S_SHAPED[act.name], tangent)
    if act.name == "softplus":
        return ConvexRelaxation(SOFTPLUS)
    if act.name == "elu":
        if act.alpha > 1.0:
            raise UnsupportedError(f"ELU with alpha={act.alpha} > 1 is not convex; no relaxation")
        return ConvexRelaxation(elu_function(act.alpha))
    raise UnsupportedError(f"no relaxation for activation {act.name!r}")
