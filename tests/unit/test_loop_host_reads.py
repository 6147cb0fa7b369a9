"""The attacks' step loops and CLEVER's sampling loop read nothing from the host per step.

On a GPU every host read of a tensor (``.item()``, ``bool()``, ``.cpu()``, ``nonzero``) waits
for the device to drain its queue; one per gradient step makes an attack or a CLEVER batch
launch-bound. The same calls are made on the CPU, so these tests count them there
(``helpers.TorchCalls``): running 4x the steps (or sampling batches) must not add a single
host read. What a loop may read is per round (C&W's binary search over its constant, whose
bookkeeping is on the host) or per early-abort check (at most 10 per round, whatever the
step count).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import TorchCalls, random_network
from nnbound.attacks import EAD, PGD, CarliniWagnerL2, MinimalPGD
from nnbound.clever.estimator import Clever

FEW, MANY = 10, 40


def _problem() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    net = random_network("relu", [12, 16, 16, 4], seed=3, dtype=torch.float32)
    x = torch.rand(6, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        labels = net(x).argmax(1)
    return net, x, labels


def _reads(run) -> int:  # type: ignore[no-untyped-def]
    with TorchCalls() as calls:
        run()
    assert calls.total > 0
    return calls.host_reads


ATTACKS = {
    "pgd-inf": lambda steps: (PGD(norm="inf", steps=steps), {"eps": 0.05}),
    "pgd-2": lambda steps: (PGD(norm=2, steps=steps, restarts=2), {"eps": 0.3}),
    "pgd-1": lambda steps: (PGD(norm=1, steps=steps), {"eps": 1.0}),
    "minimal-pgd": lambda steps: (MinimalPGD(norm="inf", steps=steps, search_steps=4), {}),
    "cw": lambda steps: (CarliniWagnerL2(steps=steps, binary_steps=2, abort_early=False), {}),
    "ead": lambda steps: (EAD(steps=steps, binary_steps=2), {}),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_steps_read_nothing_on_the_host(name: str) -> None:
    net, x, labels = _problem()
    counts = []
    for steps in (FEW, MANY):
        attack, kwargs = ATTACKS[name](steps)
        counts.append(_reads(lambda a=attack, k=kwargs: a(net, x, labels, **k)))
    assert counts[1] == counts[0], counts


def test_cw_early_abort_reads_at_most_ten_times_per_round() -> None:
    """C&W's abort-early check reads the objective every ``steps // 10`` steps."""
    net, x, labels = _problem()
    steps, rounds = 200, 2
    with_abort = _reads(lambda: CarliniWagnerL2(steps=steps, binary_steps=rounds)(net, x, labels))
    without = _reads(
        lambda: CarliniWagnerL2(steps=steps, binary_steps=rounds, abort_early=False)(net, x, labels)
    )
    assert without <= with_abort <= without + 10 * rounds, (with_abort, without)


@pytest.mark.parametrize("share_samples", [False, True])
def test_clever_sampling_batches_read_nothing_on_the_host(share_samples: bool) -> None:
    """Four times the sampling batches, the same host reads (their maxima stay on the
    device until the fit), for the per-target and the shared-samples passes."""
    net, x, labels = _problem()
    counts = []
    for niters in (FEW, MANY):
        est = Clever(nsamp=16, niters=niters, share_samples=share_samples, batch_size=64)
        counts.append(_reads(lambda e=est: e.collect(net, x[0], int(labels[0]), "untargeted")))
    assert counts[1] == counts[0], counts
