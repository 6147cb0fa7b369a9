"""The sweep tests' small grid: 2 models x 20 images x 2 methods (8 tasks), and records
compared without their timing."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from nnbound.network.layers import Dense
from nnbound.network.load import load_model, save_model
from nnbound.sweep.plan import SweepPlan, plan_from_dict

torch.set_num_threads(1)

# What makes two runs' records equal: everything but timing and the worker's clock.
VOLATILE = ("finished_at", "seconds")


def perturbed_model(path: Path) -> Path:
    """A second real model: mnist-fc-3layer with every weight scaled by 1 + 2% noise (seeded),
    so it classifies like the original but has other radii and another hash."""
    net = load_model("mnist-fc-3layer")
    g = torch.Generator().manual_seed(0)
    layers = []
    for layer in net.layers:
        if isinstance(layer, Dense):
            noise = 1 + 0.02 * torch.randn(layer.weight.shape, generator=g)
            layer = replace(layer, weight=layer.weight * noise)
        layers.append(layer)
    save_model(replace(net, layers=tuple(layers), name="fc3-perturbed"), path)
    return path


def grid_plan(tmp: Path, model_file: Path, **overrides: Any) -> SweepPlan:
    raw: dict[str, Any] = {
        "results": "results",
        "models": ["mnist-fc-3layer", str(model_file)],
        "norms": ["inf"],
        "targets": ["untargeted"],
        "device": "cpu",
        "report": False,
        "data": {"dataset": "mnist100", "start": 0, "count": 20, "chunk": 10},
        "methods": {
            "crown": {"steps": 10},
            "pgd": {"pgd_steps": 20, "pgd_search_steps": 6},
        },
    }
    raw.update(overrides)
    return plan_from_dict(raw, tmp)


def comparable(path: Path) -> dict[tuple[str, str, int], dict[str, Any]]:
    """The merged records by (model, method, image), without timing; fails on duplicates."""
    out: dict[tuple[str, str, int], dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        key = (r["model"], r["method"], r["image"])
        assert key not in out, f"duplicate record {key}"
        out[key] = {k: v for k, v in r.items() if k not in VOLATILE}
    return out
