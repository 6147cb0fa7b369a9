"""Training small MLP / CNN classifiers into IR networks (the references' ``train_nlayer.py``)."""

from nnbound.train.train import TrainConfig, TrainReport, build_model, train_network

__all__ = ["TrainConfig", "TrainReport", "build_model", "train_network"]
