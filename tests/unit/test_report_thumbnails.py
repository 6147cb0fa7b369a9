"""Report thumbnails stay small at ImageNet size, a perturbation stays visible when shrunk,
and a random-weights run says so at the top of the page."""

from __future__ import annotations

import io

import pytest
import torch

pytest.importorskip("matplotlib")

from matplotlib import image as mpimg

from nnbound.report.plots import THUMBNAIL_MAX_PX, thumbnail_png


def _size(png: bytes | None) -> tuple[int, int]:
    assert png is not None
    return mpimg.imread(io.BytesIO(png)).shape[:2]


def test_imagenet_inputs_are_shrunk_and_mnist_ones_enlarged() -> None:
    assert max(_size(thumbnail_png(torch.rand(3, 224, 224), (0.0, 1.0)))) <= THUMBNAIL_MAX_PX
    assert _size(thumbnail_png(torch.rand(3, 224, 160), (0.0, 1.0))) == (96, 69)
    assert _size(thumbnail_png(torch.rand(1, 28, 28), (0.0, 1.0))) == (56, 56)


def test_a_shrunk_sign_perturbation_keeps_its_magnitude() -> None:
    eps = 0.01
    pert = eps * torch.sign(torch.randn(3, 224, 224, generator=torch.Generator().manual_seed(0)))
    img = mpimg.imread(io.BytesIO(thumbnail_png(pert, None, signed=True) or b""))
    # drawn as grey +- max |value|: every pixel is black or white, none the grey of zero
    assert float(abs(img[..., :3] - 0.5).min()) > 0.45


def test_random_weights_banner_comes_first() -> None:
    from nnbound.report.html import render_html
    from nnbound.tasks.evaluate import EvaluateSettings, Evaluation

    ev = Evaluation(
        model="resnet18",
        norm=float("inf"),
        methods=(),
        records=(),
        stage_seconds={},
        settings=EvaluateSettings(),
        inputs=torch.zeros(0, 3, 8, 8),
    )
    page = render_html(ev, {}, provenance={"weights": "random (seed 0)", "random_weights": True})
    assert page.index("RANDOM weights") < page.index('class="cards"')
    assert "RANDOM" not in render_html(ev, {}, provenance={"weights": "w.pth"})
