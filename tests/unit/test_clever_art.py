"""Cross-check against IBM's adversarial-robustness-toolbox (``art.metrics.clever_u``) where the
two algorithms coincide (clever_spec §14): logits model, c = the prediction, samples uniform in
the radius-R ball of the score's own norm (``sampling="ball"``), clipping to the same box, and
the paper's cap ``min(score, R)`` (``cap_at_radius=True``).

What still differs (and why the smooth-net check has a tolerance): ART bootstraps its batch
maxima from one pool of ``10 * batch_size`` samples and fits one unregularised Weibull without
rescaling, K-S test or fallback, which in practice returns the pool maximum; the reference fit
extrapolates past the largest sample. So ART's score is the same or slightly larger.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

art = pytest.importorskip("art")
from art.estimators.classification import PyTorchClassifier  # noqa: E402
from art.metrics import clever_u  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import helpers  # noqa: F401, E402
from nnbound.clever import clever, gradient_norms  # noqa: E402

# ART's tqdm and scipy's fit of tied data (constant maxima) warn; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore")

NORMS = {"1": 1, "2": 2, "inf": np.inf}


def classifier(m: nn.Module, n: int, k: int, clip: tuple[float, float] | None) -> PyTorchClassifier:
    return PyTorchClassifier(
        model=m, loss=nn.CrossEntropyLoss(), input_shape=(n,), nb_classes=k, clip_values=clip
    )


def test_linear_model_both_give_the_exact_distance() -> None:
    torch.manual_seed(0)
    m = nn.Linear(16, 4)
    x = torch.rand(16) * 0.5 + 0.25
    clf = classifier(m, 16, 4, (0.0, 1.0))
    w, b = m.weight.detach().double(), m.bias.detach().double()
    out = w @ x.double() + b
    c = int(out.argmax())
    radius = 50.0  # large: the cap does not bind
    ours = clever(
        m,
        x,
        nsamp=8,
        niters=5,
        sampling="ball",
        radius=radius,
        cap_at_radius=True,
        input_range=(0.0, 1.0),
    )
    for key, p in NORMS.items():
        q = {"1": math.inf, "2": 2.0, "inf": 1.0}[key]
        exact = min(
            float((out[c] - out[j]) / torch.linalg.vector_norm(w[c] - w[j], q))
            for j in range(4)
            if j != c
        )
        np.random.seed(0)
        theirs = clever_u(
            clf, x.numpy(), nb_batches=5, batch_size=8, radius=radius, norm=p, verbose=False
        )
        assert math.isclose(ours.scores[key], exact, rel_tol=1e-5)
        assert math.isclose(theirs, exact, rel_tol=1e-5)
    # a small radius: both report the cap R
    np.random.seed(0)
    capped = clever_u(
        clf, x.numpy(), nb_batches=5, batch_size=8, radius=1e-3, norm=2, verbose=False
    )
    ours_capped = clever(
        m,
        x,
        nsamp=8,
        niters=5,
        sampling="ball",
        radius=1e-3,
        cap_at_radius=True,
        input_range=(0.0, 1.0),
        method="maxsamp",
    )
    assert capped == ours_capped.scores["2"] == 1e-3


def test_gradient_norms_equal_arts_class_gradients() -> None:
    torch.manual_seed(1)
    m = nn.Sequential(nn.Linear(12, 20), nn.Tanh(), nn.Linear(20, 5))
    clf = classifier(m, 12, 5, None)
    xs = torch.randn(64, 12)
    for c, j in ((0, 3), (4, 1)):
        g = clf.class_gradient(xs.numpy(), label=c) - clf.class_gradient(xs.numpy(), label=j)
        g = g.reshape(64, -1)
        expected = np.stack([np.linalg.norm(g, ord=o, axis=1) for o in (np.inf, 2, 1)], 1)
        np.testing.assert_allclose(gradient_norms(m, xs, c, j).numpy(), expected, rtol=1e-5)


def test_smooth_net_scores_agree_with_art() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 4))
    clf = classifier(m, 10, 4, None)
    x = torch.rand(10) * 0.2
    radii = {"1": 2.0, "2": 0.5, "inf": 0.3}
    ours = clever(
        m,
        x,
        nsamp=32,
        niters=30,
        sampling="ball",
        radius=radii,
        cap_at_radius=True,
        input_range=None,
        seed=0,
    )
    for key, p in NORMS.items():
        runs = []
        for seed in (0, 1, 2):
            np.random.seed(seed)
            runs.append(
                clever_u(
                    clf,
                    x.numpy(),
                    nb_batches=30,
                    batch_size=32,
                    radius=radii[key],
                    norm=p,
                    verbose=False,
                )
            )
        # ART's single unregularised fit sometimes diverges (spec §14: loc far beyond the data,
        # score ~ 1e-6): exactly what the reference's penalty and K-S fallback guard against.
        # Such runs are fit failures, not robustness information; the best of three seeds is not.
        theirs = max(runs)
        assert ours.scores[key] < radii[key]  # the cap does not decide the answer
        # same within a few percent; ART (pool maximum) at most slightly less conservative
        assert 0.98 <= theirs / ours.scores[key] <= 1.10, (key, runs, ours.scores[key])
