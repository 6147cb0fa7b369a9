"""Fast-Lip (Weng et al. 2018, spec §8.2): element-wise Jacobian bounds by interval arithmetic.

Going backward from the exact last matrix ``V``, each partial product
``Y_k = Y_{k+1} S_k W_k`` is bounded by the interval product of the bounds of ``Y_{k+1}``, the
derivative interval of ``S_k`` and the exact ``W_k``. The reference writes the same interval
arithmetic in a centre / deviation form with per-entry numba loops (``fastlip_2layer``,
``fastlip_nplus1_layer`` and leaky variants); here each step is four matrix products.

Fast-Lip is defined for ReLU and leaky-ReLU networks, whose derivative intervals depend only on
the neuron states (``[1, 1]`` active, ``[alpha, alpha]`` inactive, ``[alpha, 1]`` unstable).
One difference with the reference: a neuron with lower bound exactly 0 counts as active here
(its derivative on the input set is 1 wherever it is defined), where Fast-Lip's neuron states
call it unstable; both are sound, ours is never looser.
"""

from __future__ import annotations

from torch import Tensor

from nnbound.jacobian.recurjac import Chain, interval_step


def interval_level_bounds(ch: Chain) -> list[tuple[Tensor, Tensor]]:
    """Bounds ``(lower, upper)`` ``(B, R, c_k)`` of every partial product ``Y_k``, ``k = 0..K``
    (``Y_K = end`` exactly), by interval arithmetic."""
    k_total = len(ch.mats)
    levels: list[tuple[Tensor, Tensor]] = [(ch.end, ch.end)] * (k_total + 1)
    for k in range(k_total - 1, -1, -1):
        lo, up = levels[k + 1]
        levels[k] = interval_step(lo, up, ch.dlo[k], ch.dhi[k], ch.mats[k])
    return levels
