"""Jacobian bounds (Fast-Lip, RecurJac, crown-jacobian) and the local Lipschitz constants they
give.

* :func:`jacobian_bounds`: element-wise lower / upper bounds of ``d(C f)/dx`` over an Lp ball.
* :func:`local_lipschitz`: Lipschitz constants of each spec row over the ball (dual norm).
* :func:`opnorm_global_lipschitz`: the operator-norm-product baseline.
"""

from nnbound.jacobian.api import JACOBIAN_METHODS, jacobian_bounds
from nnbound.jacobian.lipschitz import (
    gradient_dual_norm,
    lipschitz_bounds,
    lipschitz_from_jacobian,
    local_lipschitz,
    opnorm_global_lipschitz,
)
from nnbound.jacobian.result import JacobianBounds, LipschitzBounds

__all__ = [
    "JACOBIAN_METHODS",
    "JacobianBounds",
    "LipschitzBounds",
    "gradient_dual_norm",
    "jacobian_bounds",
    "lipschitz_bounds",
    "lipschitz_from_jacobian",
    "local_lipschitz",
    "opnorm_global_lipschitz",
]
