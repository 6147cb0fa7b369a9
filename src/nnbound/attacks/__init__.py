"""Attacks: adversarial examples whose distances are upper bounds on the minimal distortion.

Every attack is an :class:`Attack` (settings in ``__init__``, the work in a final ``__call__``
that validates the inputs, projects the candidates onto the ball and domain and re-checks each
example on the model, in its dtype and in float64), returning an :class:`AttackResult`:

* :class:`PGD` -- fixed-budget projected gradient descent, Linf / L2 / L1 (SLIDE steps);
* :class:`MinimalPGD` -- the smallest eps PGD breaks, batched search over eps;
* :class:`CarliniWagnerL2` -- Carlini-Wagner L2 (binary search over c, Adam);
* :class:`EAD` -- elastic-net attack, L1.

Example::

    from nnbound.attacks import MinimalPGD
    res = MinimalPGD(norm="inf", steps=50)(net, x, labels)   # untargeted
    res.distance          # (B,) float64, inf where no example was found
"""

from nnbound.attacks.base import (
    UNTARGETED,
    Attack,
    AttackResult,
    adversarial_margin,
    is_adversarial,
)
from nnbound.attacks.cw import CarliniWagnerL2
from nnbound.attacks.ead import EAD
from nnbound.attacks.pgd import PGD, MinimalPGD

ATTACKS: dict[str, type[Attack]] = {"pgd": MinimalPGD, "cw": CarliniWagnerL2, "ead": EAD}
"""The minimal-distortion attack behind each ``evaluate`` method name."""

__all__ = [
    "ATTACKS",
    "EAD",
    "PGD",
    "UNTARGETED",
    "Attack",
    "AttackResult",
    "CarliniWagnerL2",
    "MinimalPGD",
    "adversarial_margin",
    "is_adversarial",
]
