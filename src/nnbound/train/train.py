"""Train small classifiers (the reference's ``train_nlayer.py`` MLPs, plus a small CNN) and
return them as IR :class:`~nnbound.network.Network` objects.

Architectures (``num_classes`` = ``len(train.class_names)``, ``act`` = ``config.activation``):

* ``mlp`` (the references' ``NLayerModel``):
  ``Flatten -> [Dense(h) -> act for h in hidden] -> Dense(num_classes)``.
* ``cnn``: for each ``c`` in ``conv_channels``:
  ``Conv2d(c, 3x3, stride 1, padding 1) -> act -> Conv2d(c, 4x4, stride 2, padding 1) -> act``
  (the strided conv halves H and W; there are no pooling layers because the IR has none), then
  ``Flatten -> [Dense(h) -> act for h in hidden] -> Dense(num_classes)``.

Initialization: Glorot-uniform weights and zero biases (Keras's default, as the references'
models). Training: Adam (``lr``, ``weight_decay`` as Adam's L2 term), cross-entropy on logits,
``epochs`` passes over ``train`` in shuffled mini-batches of ``batch_size``. With the same
``seed`` (and the same torch build / thread count) the returned weights are bit-identical:
initialization runs under ``torch.manual_seed(seed)`` inside ``torch.random.fork_rng`` (the
caller's global RNG is left untouched) and shuffling uses its own seeded ``torch.Generator``.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from nnbound.data.dataset import Dataset
from nnbound.errors import InputError
from nnbound.network.layers import ACTIVATIONS, Activation, Conv2d, Dense, Flatten, Layer
from nnbound.network.network import Network
from nnbound.network.to_torch import activation_module, activation_of_module

ARCHS: tuple[str, ...] = ("mlp", "cnn")
ACTIVATION_ALIASES: dict[str, str] = {"leaky": "leaky_relu", "atan": "arctan"}
"""Names accepted besides the IR's (``leaky`` is the reference's spelling)."""


@dataclass(frozen=True)
class TrainConfig:
    """What to train and how.

    Attributes:
        hidden: dense hidden-layer sizes (for ``cnn``, the dense layers after the convs);
            may be empty (a linear / conv-only model).
        arch: ``"mlp"`` or ``"cnn"`` (see the module docstring).
        activation: one of ``relu, leaky_relu (or leaky), tanh, sigmoid, arctan, softplus,
            elu``; stored canonical (``leaky`` becomes ``leaky_relu``).
        leaky_slope: negative-side slope of ``leaky_relu`` (the reference's default 0.3).
        lr: Adam learning rate.
        weight_decay: Adam's L2 penalty coefficient.
        epochs: passes over the training set.
        batch_size: mini-batch size.
        seed: seeds initialization and shuffling.
        optimizer: only ``"adam"``.
        conv_channels: output channels of each conv stage (``cnn`` only).
    """

    hidden: tuple[int, ...] = (64,)
    arch: str = "mlp"
    activation: str = "relu"
    leaky_slope: float = 0.3
    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 30
    batch_size: int = 128
    seed: int = 0
    optimizer: str = "adam"
    conv_channels: tuple[int, ...] = (16, 32)

    def __post_init__(self) -> None:
        act = ACTIVATION_ALIASES.get(self.activation, self.activation)
        if act not in ACTIVATIONS:
            raise InputError(
                f"unknown activation {self.activation!r}; expected one of: "
                f"{', '.join(ACTIVATIONS)} (or 'leaky')"
            )
        object.__setattr__(self, "activation", act)
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        object.__setattr__(self, "conv_channels", tuple(int(c) for c in self.conv_channels))
        if self.arch not in ARCHS:
            raise InputError(f"unknown arch {self.arch!r}; expected one of: {', '.join(ARCHS)}")
        if self.optimizer != "adam":
            raise InputError(f"unknown optimizer {self.optimizer!r}; only 'adam' is supported")
        if any(h <= 0 for h in self.hidden):
            raise InputError(f"hidden layer sizes must be positive, got {self.hidden}")
        if self.arch == "cnn" and (
            not self.conv_channels or any(c <= 0 for c in self.conv_channels)
        ):
            raise InputError(f"conv_channels must be positive, got {self.conv_channels}")
        if self.epochs < 1 or self.batch_size < 1:
            raise InputError(
                f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}"
            )
        for key in ("lr", "weight_decay", "leaky_slope"):
            v = float(getattr(self, key))
            if not math.isfinite(v) or v < 0 or (key == "lr" and v == 0):
                raise InputError(f"{key} must be finite and {'> 0' if key == 'lr' else '>= 0'}")

    @property
    def alpha(self) -> float:
        """The IR ``Activation.alpha``: the leaky slope, ELU's scale 1, else 0."""
        if self.activation == "leaky_relu":
            return float(self.leaky_slope)
        return 1.0 if self.activation == "elu" else 0.0


@dataclass(frozen=True)
class TrainReport:
    """What happened during :func:`train_network`.

    Attributes:
        epoch_losses: mean training cross-entropy of each epoch (length ``epochs``).
        train_accuracy: final accuracy on the training set, in ``[0, 1]``.
        test_accuracy: final accuracy on the test set, in ``[0, 1]``.
        seconds: wall-clock training time (excluding the final evaluation).
        config: the (canonicalized) configuration that was trained.
    """

    epoch_losses: tuple[float, ...]
    train_accuracy: float
    test_accuracy: float
    seconds: float
    config: TrainConfig


def build_model(
    config: TrainConfig, input_shape: tuple[int, ...], num_classes: int
) -> nn.Sequential:
    """The untrained torch model for ``config``: Glorot-uniform weights, zero biases (drawn
    from the global RNG; :func:`train_network` seeds it).

    Every module is one the private converter :func:`_to_layers` maps 1:1 to an IR layer, and
    activations are made by the IR's own ``activation_module`` so that training and the
    returned Network compute the same function.
    """

    def act() -> nn.Module:
        return activation_module(Activation(config.activation, config.alpha))

    modules: list[nn.Module] = []
    shape = tuple(input_shape)
    if config.arch == "cnn":
        if len(shape) != 3:
            raise InputError(f"arch 'cnn' needs images (C, H, W), got input shape {shape}")
        c, h, w = shape
        for out_c in config.conv_channels:
            if h < 2 or w < 2:
                raise InputError(
                    f"input {input_shape} is too small for {len(config.conv_channels)} "
                    "stride-2 conv stages"
                )
            modules += [nn.Conv2d(c, out_c, 3, stride=1, padding=1), act()]
            # 4x4 stride 2 padding 1 maps H to floor(H / 2): a learned downsampling step.
            modules += [nn.Conv2d(out_c, out_c, 4, stride=2, padding=1), act()]
            c, h, w = out_c, h // 2, w // 2
        features = c * h * w
    else:
        features = math.prod(shape)
    modules.append(nn.Flatten())
    for size in config.hidden:
        modules += [nn.Linear(features, size), act()]
        features = size
    modules.append(nn.Linear(features, num_classes))
    model = nn.Sequential(*modules)
    # Keras's default init (Glorot-uniform weights, zero biases), as in the references'
    # train_nlayer.py models; it also trains these small nets faster than torch's default.
    for m in model:
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def _activation_layer(m: nn.Module) -> Activation | None:
    """The IR activation a torch activation module computes, or None if it is not one."""
    return activation_of_module(m)


def _to_layers(model: nn.Sequential) -> tuple[Layer, ...]:
    """IR layers (detached float copies) for exactly the modules :func:`build_model` makes."""
    layers: list[Layer] = []
    for m in model:
        if isinstance(m, nn.Linear):
            layers.append(Dense(m.weight.detach().clone(), m.bias.detach().clone()))
        elif isinstance(m, nn.Conv2d):
            layers.append(
                Conv2d(
                    m.weight.detach().clone(),
                    m.bias.detach().clone(),
                    stride=tuple(m.stride),
                    padding=tuple(m.padding),
                    dilation=tuple(m.dilation),
                    groups=m.groups,
                )
            )
        elif isinstance(m, nn.Flatten):
            layers.append(Flatten())
        elif (act := _activation_layer(m)) is not None:
            layers.append(act)
        else:  # pragma: no cover - build_model makes nothing else
            raise TypeError(f"no IR layer for {type(m).__name__}")
    return tuple(layers)


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 1024) -> float:
    """Fraction of ``images`` ``(N, *shape)`` whose argmax logit equals ``labels`` ``(N,)``."""
    if len(labels) == 0:
        return float("nan")
    correct = 0
    for i in range(0, len(labels), batch_size):
        logits = model(images[i : i + batch_size])
        correct += int((logits.argmax(dim=1) == labels[i : i + batch_size]).sum())
    return correct / len(labels)


def _check_data(train: Dataset, test: Dataset) -> None:
    if len(train) == 0:
        raise InputError(f"training set {train.name} is empty")
    if train.shape != test.shape:
        raise InputError(f"train images {train.shape} and test images {test.shape} differ")
    if train.input_range != test.input_range:
        raise InputError(
            f"train input_range {train.input_range} and test {test.input_range} differ"
        )
    if train.class_names != test.class_names:
        raise InputError("train and test sets have different class names")


def network_name(dataset: str, config: TrainConfig) -> str:
    """A short name such as ``digits_mlp_relu_64`` or ``mnist_cnn16-32_tanh_100``."""
    arch = config.arch if config.arch == "mlp" else "cnn" + "-".join(map(str, config.conv_channels))
    sizes = "x".join(map(str, config.hidden)) or "linear"
    return f"{dataset}_{arch}_{config.activation}_{sizes}"


@contextlib.contextmanager
def _moved(model: nn.Module, device: torch.device) -> Iterator[None]:
    """``model`` on ``device`` inside, back where it was after (even on an error).
    ``Module.to`` moves the parameters in place, so an optimizer keeps updating them."""
    home = next(model.parameters()).device
    model.to(device)
    try:
        yield
    finally:
        model.to(home)


def fit_epochs(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    images: Tensor,
    targets: Tensor,
    *,
    batch_size: int,
    epochs: int,
    generator: torch.Generator,
    lr: float,
    temperature: float = 1.0,
    desc: str = "train",
    show: bool = False,
    device: torch.device | None = None,
) -> list[float]:
    """Train ``model`` in place on ``cross_entropy(model(x) / temperature, targets)``
    (``targets``: class indices ``(N,)`` or probabilities ``(N, classes)``), shuffling with
    ``generator``, and return the mean loss of each epoch; the model is left in eval mode.
    ``device``: where to train (the model goes there and comes back, the data is copied there
    once; ``None``: where the model is).

    Raises:
        InputError: the loss becomes NaN or infinite (``lr`` is named in the message).
    """
    device = next(model.parameters()).device if device is None else device
    images, targets = images.to(device), targets.to(device)
    n = len(images)
    losses: list[float] = []
    bar = tqdm(range(epochs), desc=desc, unit="epoch", file=sys.stderr, disable=not show,
               leave=False)  # fmt: skip
    with _moved(model, device):
        model.train()
        for epoch in bar:
            # drawn on the CPU generator whatever the device: the same order everywhere
            perm = torch.randperm(n, generator=generator).to(device)
            # summed on the device, read once per epoch (a read per step waits for the GPU)
            total = torch.zeros((), dtype=torch.float64, device=device)
            for i in range(0, n, batch_size):
                idx = perm[i : i + batch_size]
                loss = F.cross_entropy(model(images[idx]) / temperature, targets[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach().double() * len(idx)
            mean = float(total) / n
            if not math.isfinite(mean):
                raise InputError(
                    f"training diverged (loss {mean}) at epoch {epoch + 1}; lower the learning "
                    f"rate (lr={lr})"
                )
            losses.append(mean)
            bar.set_postfix(loss=f"{mean:.4f}")
        bar.close()
        model.eval()
    return losses


def train_network(
    train: Dataset,
    test: Dataset,
    config: TrainConfig,
    *,
    progress: bool = True,
    device: torch.device | None = None,
) -> tuple[Network, TrainReport]:
    """Train ``config``'s model on ``train`` and return it as an IR Network plus a report.

    Args:
        train: training images ``(N, *shape)`` and labels ``(N,)``.
        test: held-out images with the same shape, range and classes, for the final accuracy.
        config: architecture and optimization settings.
        progress: show a tqdm bar on stderr (only when stderr is a terminal).
        device: where to train (``None``: the CPU); the network comes back on the CPU.

    Returns:
        ``(network, report)``: ``network`` takes inputs of ``train.shape`` in
        ``train.input_range`` and outputs ``num_classes`` logits; its ``meta`` records the
        dataset, architecture, activation, hidden sizes, epochs, seed and accuracies.
    """
    _check_data(train, test)
    num_classes = train.num_classes
    x_train = train.images.to(torch.float32)
    y_train = train.labels
    start = time.perf_counter()
    # fork_rng restores the caller's global CPU RNG afterwards: training is a pure function of
    # (data, config) and does not perturb anybody else's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(config, train.shape, num_classes)
        gen = torch.Generator().manual_seed(config.seed)
        opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        losses = fit_epochs(
            model,
            opt,
            x_train,
            y_train,
            batch_size=config.batch_size,
            epochs=config.epochs,
            generator=gen,
            lr=config.lr,
            show=progress and sys.stderr.isatty(),
            device=device,
        )
    seconds = time.perf_counter() - start
    train_acc = accuracy(model, x_train, y_train)
    test_acc = accuracy(model, test.images.to(torch.float32), test.labels)
    report = TrainReport(tuple(losses), train_acc, test_acc, seconds, config)
    meta = {
        "dataset": train.name,
        "arch": config.arch,
        "activation": config.activation,
        "alpha": f"{config.alpha:g}",
        "hidden": ",".join(map(str, config.hidden)),
        "epochs": str(config.epochs),
        "seed": str(config.seed),
        "lr": f"{config.lr:g}",
        "weight_decay": f"{config.weight_decay:g}",
        "batch_size": str(config.batch_size),
        "train_accuracy": f"{train_acc:.4f}",
        "test_accuracy": f"{test_acc:.4f}",
        "input_range": f"{train.input_range[0]:g},{train.input_range[1]:g}",
        "trained_by": "nnbound.train.train_network",
    }
    if config.arch == "cnn":
        meta["conv_channels"] = ",".join(map(str, config.conv_channels))
    net = Network(
        layers=_to_layers(model),
        input_shape=train.shape,
        input_range=train.input_range,
        name=network_name(train.name, config),
        meta=meta,
    )
    return net, report
