"""Which relaxation object each IR activation gets under a given bound method: the one its
registered operator makes (:mod:`nnbound.ops`; this module keeps no table of its own)."""

from __future__ import annotations

from nnbound.network.layers import Activation
from nnbound.relax.base import Relaxation
from nnbound.relax.relu import LowerSlope
from nnbound.relax.s_shaped import TangentRule


def relaxation_for(
    act: Activation,
    relu_lower: LowerSlope = LowerSlope.ADAPTIVE,
    tangent: TangentRule = TangentRule.EXACT,
) -> Relaxation:
    """The relaxation of ``act``; ``relu_lower`` picks the ReLU/leaky lower line (and the
    bounded ReLU's non-chord lines) and ``tangent`` the S-shaped tangent rule.

    Raises:
        UnsupportedError: a parameter without a sound relaxation (an ELU scale outside
            ``[0, 1]``, a leaky slope outside ``[0, 1]``).
    """
    from nnbound.ops.base import RelaxOptions  # the operators import this package

    return act.op.relaxation_at(act.alpha, RelaxOptions(relu_lower, tangent))
