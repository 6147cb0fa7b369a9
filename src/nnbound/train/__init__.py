"""Training small MLP / CNN classifiers into IR networks (the references' ``train_nlayer.py``)."""

from nnbound.train.recipes import RECIPES, Recipe, RecipeOptions, RecipeResult, train_recipe
from nnbound.train.train import TrainConfig, TrainReport, build_model, train_network

__all__ = [
    "RECIPES",
    "Recipe",
    "RecipeOptions",
    "RecipeResult",
    "TrainConfig",
    "TrainReport",
    "build_model",
    "train_network",
    "train_recipe",
]
