"""Every model nnbound knows by name: the built-in trained networks (any subcommand), the
training recipes (``nnbound train --recipe NAME``) and the catalogue of ImageNet
architectures (``nnbound clever NAME`` / ``nnbound evaluate NAME``, weights from
``--weights PATH``: torchvision's files, listed here, or a .safetensors of them).
"""

from __future__ import annotations

import argparse
from typing import Any

from nnbound.cli.common import print_json
from nnbound.report.tables import render_table

HELP = "list built-in models, training recipes and the ImageNet architecture catalogue"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a JSON record on stdout")


def _builtin() -> list[dict[str, Any]]:
    from nnbound.network.builtin import BUILTIN_MODELS, BUILTIN_SOURCES

    return [
        {
            "name": name,
            "input_shape": list(BUILTIN_SOURCES[name][2]) if name in BUILTIN_SOURCES else None,
            "description": desc,
        }
        for name, desc in BUILTIN_MODELS.items()
    ]


def _recipes() -> list[dict[str, Any]] | None:
    """The training recipes, or None when ``nnbound.train.recipes`` is not available."""
    try:
        from nnbound.train.recipes import RECIPES
    except ImportError:
        return None
    return [{"name": name, "description": r.description} for name, r in RECIPES.items()]


def _catalogue() -> list[dict[str, Any]]:
    from nnbound.catalogue import CATALOGUE, WEIGHTS_URL

    return [
        {
            "name": a.name,
            "family": a.family,
            "input_shape": [3, a.crop, a.crop],
            "preprocessing": f"resize {a.resize}, center crop {a.crop}, ImageNet mean/std "
            "inside the model (inputs in [0, 1])",
            "min_size": a.min_size,
            "parameters": a.params,
            "weights_file": a.weights_file,
            "weights_url": WEIGHTS_URL + a.weights_file,
            "description": a.description,
        }
        for a in CATALOGUE.values()
    ]


def run(args: argparse.Namespace) -> int:
    builtin, recipes, catalogue = _builtin(), _recipes(), _catalogue()
    if args.json:
        print_json({"builtin": builtin, "recipes": recipes or [], "catalogue": catalogue})
        return 0
    print("Built-in models (trained; any subcommand takes the name):")
    print(
        render_table(
            ["name", "input", "description"],
            [
                [m["name"], "x".join(map(str, m["input_shape"] or [])), m["description"]]
                for m in builtin
            ],
        )
    )
    print()
    print("Training recipes (nnbound train --recipe NAME):")
    if recipes is None:
        print("  (not available in this installation)")
    else:
        print(
            render_table(["name", "description"], [[r["name"], r["description"]] for r in recipes])
        )
    print()
    print(
        "ImageNet architectures (nnbound clever|evaluate NAME --weights PATH --data-dir "
        "IMAGES; CLEVER and attacks only, no certified bounds):"
    )
    print(
        render_table(
            ["name", "input", "parameters", "weights (torchvision file)", "description"],
            [
                [
                    m["name"],
                    "x".join(map(str, m["input_shape"])),
                    f"{m['parameters']:,}",
                    m["weights_file"],
                    m["description"],
                ]
                for m in catalogue
            ],
        )
    )
    print()
    print(
        "Weights: --weights PATH takes a state dict (.safetensors, or .pth/.pt read with "
        "torch.load(weights_only=True)); torchvision publishes the files above under "
        "https://download.pytorch.org/models/ (nnbound never downloads). Without --weights "
        "the weights are random and every score is meaningless."
    )
    return 0


__all__ = ["HELP", "configure", "run"]
