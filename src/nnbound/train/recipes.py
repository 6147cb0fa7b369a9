"""The CLEVER reference's model catalogue as training recipes (``nnbound train --recipe NAME``).

The reference (``huanzhang12/CLEVER``: ``train_models.py``, ``train_2layer.py``,
``train_nlayer.py``, ``setup_mnist.py``) evaluates four MNIST / CIFAR models plus n-layer CNNs
with any activation. Each :class:`Recipe` here rebuilds one of them in torch, trains it, and
returns it as an IR :class:`~nnbound.network.Network` (converted with
:func:`~nnbound.network.from_torch.from_torch`, which checks that the IR computes the same
function):

``2-layer``
    ``Flatten -> Dense(1024) -> softplus with beta 10 -> Dense(classes)``. The reference writes
    the softplus as ``0.1 * softplus(10 x)`` (Keras' softplus has no beta); the IR's softplus
    has beta 1, so the factor 10 is folded into the first layer and 0.1 into the second.
``normal``
    The 7-layer CNN: ``conv(w0) -> act -> conv(w1) -> act -> maxpool 2 -> conv(w2) -> act ->
    conv(w3) -> act -> maxpool 2 -> Flatten -> Dense(w4) -> act -> Dropout(0.5) ->
    Dense(w5) -> act -> Dense(classes)``, 3x3 kernels, ReLU; widths ``32 32 64 64 200 200``
    (MNIST, digits) or ``64 64 128 128 256 256`` (CIFAR). Dropout acts only in training.
``distilled``
    The same CNN by defensive distillation (Papernot et al., S&P 2016) at temperature ``T``
    (default 100), as the reference's ``train_distillation``: one epoch at ``T = 1`` gives the
    common initial weights; the teacher is trained from them with ``softmax(logits / T)``;
    its soft labels ``softmax(teacher(x) / T)`` (eval mode) on the training set train the
    student, again from the initial weights and again at ``T``. The deployed model is the
    student's raw logits (temperature 1), as the reference saves and evaluates it.
``brelu``
    The same CNN with the bounded ReLU ``min(max(x, 0), 1)`` (``setup_mnist.py``'s
    ``K.relu(x, max_value=1)``).
``nlayer``
    ``train_nlayer.py --modeltype cnn``: the same CNN with any activation and the six widths
    given (``nnbound train --recipe nlayer --activation tanh 32 32 64 64 200 200``).

Shapes: the reference's convs are unpadded ("valid"), which fits 28x28 MNIST
(``28 -> 26 -> 24 -> 12 -> 10 -> 8 -> 4``) and 32x32 CIFAR but not scikit-learn's 8x8
digits. ``padding="auto"`` (the default) keeps the reference's valid convs where they fit
(height and width at least 16) and otherwise pads each conv by 1 ("same"): digits go
``8 -> 8 -> 8 -> 4 -> 4 -> 4 -> 2``, i.e. ``64 * 2 * 2`` features into the first dense layer.

Training differs from the reference where small-data speed asks for it, and says so: Adam
(``lr`` 1e-3) by default instead of SGD with Nesterov momentum (``optimizer="sgd"`` gives
the reference's ``lr`` 0.01, momentum 0.9, Nesterov; its tiny learning-rate decay is left
out), few epochs, and Keras' Glorot-uniform weights with zero biases as the reference. With
the same options and seed the weights are bit-identical (seeded initialization, dropout and
shuffling inside ``torch.random.fork_rng``; the caller's RNG is untouched).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nnbound.data.dataset import Dataset
from nnbound.errors import InputError
from nnbound.network.from_torch import from_torch
from nnbound.network.layers import ACTIVATIONS, Activation
from nnbound.network.network import Network
from nnbound.network.to_torch import activation_module
from nnbound.train.train import fit_epochs

MNIST_WIDTHS: tuple[int, ...] = (32, 32, 64, 64, 200, 200)
"""The reference's 7-layer CNN widths for MNIST (also used for digits)."""
CIFAR_WIDTHS: tuple[int, ...] = (64, 64, 128, 128, 256, 256)
"""The reference's 7-layer CNN widths for CIFAR-10 (3-channel inputs)."""
MLP_WIDTH = 1024
"""The reference's 2-layer MLP hidden width."""
SOFTPLUS_BETA = 10.0
"""The reference's 2-layer softplus sharpness: ``0.1 * softplus(10 x)``."""
ACTIVATION_ALIASES: dict[str, str] = {"leaky": "leaky_relu", "atan": "arctan"}
OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")
PADDINGS: tuple[str, ...] = ("auto", "valid", "same")


@dataclass(frozen=True)
class RecipeOptions:
    """How to train a recipe. The defaults are small: on digits with one CPU thread the
    2-layer MLP trains in ~5 s, each CNN in ~25 s and ``distilled`` (21 epochs) in ~40 s, to
    95-99% test accuracy (85% for ``distilled``).

    Attributes:
        epochs: passes over the training set (each of teacher and student for ``distilled``).
        batch_size: mini-batch size.
        lr: learning rate; ``None`` = 1e-3 for Adam, 0.01 for SGD (the reference's).
        seed: seeds initialization, dropout and shuffling.
        optimizer: ``"adam"`` or ``"sgd"`` (the reference's: momentum 0.9, Nesterov).
        widths: the architecture's widths, ``None`` for the recipe's default: six numbers for
            the CNNs (four conv channels, two dense widths), one for ``2-layer``.
        activation: the CNN activation of ``nlayer`` (any IR activation; ``leaky``, ``atan``
            accepted); ``None`` = ReLU. The other recipes fix theirs.
        leaky_slope: the negative-side slope when ``activation`` is ``leaky_relu`` (the
            reference's 0.3).
        temperature: the distillation temperature ``T`` (``distilled`` only).
        dropout: dropout rate after the first dense layer of the CNNs (reference 0.5).
        padding: ``"auto"``, ``"valid"`` (the reference's) or ``"same"`` (see the module
            docstring).
        train_limit: use only the first ``train_limit`` training images (``None``: all).
        device: where the models train (``None``: the CPU); networks come back on the CPU.
    """

    epochs: int = 10
    batch_size: int = 64
    lr: float | None = None
    seed: int = 0
    optimizer: str = "adam"
    widths: tuple[int, ...] | None = None
    activation: str | None = None
    leaky_slope: float = 0.3
    temperature: float = 100.0
    dropout: float = 0.5
    padding: str = "auto"
    train_limit: int | None = None
    device: torch.device | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise InputError(
                f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise InputError(
                f"unknown optimizer {self.optimizer!r}; expected one of: {', '.join(OPTIMIZERS)}"
            )
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"lr must be finite and > 0, got {self.lr}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise InputError(f"temperature must be finite and > 0, got {self.temperature}")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.padding not in PADDINGS:
            raise InputError(
                f"unknown padding {self.padding!r}; expected one of: {', '.join(PADDINGS)}"
            )
        if self.widths is not None:
            object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
            if any(w <= 0 for w in self.widths):
                raise InputError(f"widths must be positive, got {list(self.widths)}")
        if self.activation is not None:
            act = ACTIVATION_ALIASES.get(self.activation, self.activation)
            if act not in ACTIVATIONS:
                raise InputError(
                    f"unknown activation {self.activation!r}; expected one of: "
                    f"{', '.join(ACTIVATIONS)} (or 'leaky', 'atan')"
                )
            object.__setattr__(self, "activation", act)
        if not (math.isfinite(self.leaky_slope) and self.leaky_slope >= 0):
            raise InputError(f"leaky_slope must be finite and >= 0, got {self.leaky_slope}")
        if self.train_limit is not None and self.train_limit < 1:
            raise InputError(f"train_limit must be >= 1, got {self.train_limit}")

    @property
    def learning_rate(self) -> float:
        """``lr``, or the optimizer's default."""
        if self.lr is not None:
            return float(self.lr)
        return 1e-3 if self.optimizer == "adam" else 0.01


@dataclass(frozen=True)
class RecipeResult:
    """A trained recipe.

    Attributes:
        network: the deployed model as an IR network (inputs in the data's range, logits out).
        train_accuracy: accuracy of ``network`` on the training images used, in ``[0, 1]``.
        test_accuracy: accuracy of ``network`` on the test set.
        seconds: wall-clock training time.
        extra: recipe-specific numbers (``distilled``: the teacher's accuracy, the student's
            agreement with the teacher and the KL divergences at temperature T).
    """

    network: Network
    train_accuracy: float
    test_accuracy: float
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    """One entry of the catalogue.

    Attributes:
        name: what ``--recipe`` takes.
        description: one line for listings (``nnbound models``).
        train: ``(train, test, options) -> RecipeResult``.
    """

    name: str
    description: str
    train: Callable[[Dataset, Dataset, RecipeOptions], RecipeResult]


# -- building blocks ------------------------------------------------------------------------------
def _act(name: str, leaky_slope: float = 0.3) -> nn.Module:
    return activation_module(Activation(name, leaky_slope if name == "leaky_relu" else 0.0))


def _glorot(model: nn.Module) -> None:
    """Keras' default initialization (Glorot-uniform weights, zero biases)."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


def cnn_widths(options: RecipeOptions, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The six CNN widths: ``options.widths`` or the reference's for the data's channels."""
    if options.widths is None:
        return CIFAR_WIDTHS if shape[0] == 3 else MNIST_WIDTHS
    if len(options.widths) != 6:
        raise InputError(
            "the 7-layer CNN takes six widths (conv1 conv2 conv3 conv4 dense1 dense2, e.g. "
            f"32 32 64 64 200 200), got {len(options.widths)}: {list(options.widths)}"
        )
    return options.widths


def conv_padding(options: RecipeOptions, shape: tuple[int, ...]) -> int:
    """0 (the reference's valid convs) or 1 (same); ``auto`` pads inputs smaller than 16x16."""
    if options.padding == "valid":
        return 0
    if options.padding == "same":
        return 1
    return 0 if min(shape[1:]) >= 16 else 1


def build_cnn(
    shape: tuple[int, ...],
    num_classes: int,
    widths: tuple[int, ...],
    activation: str,
    *,
    padding: int = 0,
    dropout: float = 0.5,
    leaky_slope: float = 0.3,
) -> nn.Sequential:
    """The reference's 7-layer CNN (untrained, Glorot-uniform init from the global RNG).

    Raises:
        InputError: ``shape`` is not an image ``(C, H, W)`` or too small for the layers.
    """
    if len(shape) != 3:
        raise InputError(f"the CNN recipes need images (C, H, W), got input shape {shape}")
    c, h, w = shape
    for _ in range(2):  # two (conv, conv, pool) stages
        # each 3x3 conv changes a side by 2 * padding - 2; the pool halves it (floor)
        h, w = (h + 4 * padding - 4) // 2, (w + 4 * padding - 4) // 2
        if h < 1 or w < 1:
            raise InputError(
                f"input {shape} is too small for the 7-layer CNN with padding {padding} "
                "(use padding 'same')"
            )
    c1, c2, c3, c4, d1, d2 = widths

    def act() -> nn.Module:
        return _act(activation, leaky_slope)

    model = nn.Sequential(
        nn.Conv2d(c, c1, 3, padding=padding), act(),
        nn.Conv2d(c1, c2, 3, padding=padding), act(),
        nn.MaxPool2d(2),
        nn.Conv2d(c2, c3, 3, padding=padding), act(),
        nn.Conv2d(c3, c4, 3, padding=padding), act(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c4 * h * w, d1), act(),
        nn.Dropout(dropout),
        nn.Linear(d1, d2), act(),
        nn.Linear(d2, num_classes),
    )  # fmt: skip
    _glorot(model)
    return model


def build_two_layer(shape: tuple[int, ...], num_classes: int, width: int) -> nn.Sequential:
    """``Flatten -> Linear(width) -> Softplus(beta 10) -> Linear(classes)`` (untrained)."""
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(shape), width),
        nn.Softplus(beta=SOFTPLUS_BETA),
        nn.Linear(width, num_classes),
    )
    _glorot(model)
    return model


def fold_softplus_beta(model: nn.Sequential) -> nn.Sequential:
    """The same function with every ``Softplus(beta)`` as beta-1 softplus: ``softplus_b(z) =
    softplus(b z) / b`` (torch's threshold applies to ``b z`` in both), so ``b`` scales the
    preceding Linear and ``1 / b`` the next one's weights."""
    mods = [m for m in model]
    out: list[nn.Module] = []
    scale_next = 1.0
    for i, m in enumerate(mods):
        if isinstance(m, nn.Linear):
            lin = nn.Linear(m.in_features, m.out_features, dtype=m.weight.dtype)
            beta = 1.0
            if i + 1 < len(mods) and isinstance(mods[i + 1], nn.Softplus):
                beta = float(mods[i + 1].beta)
            with torch.no_grad():
                lin.weight.copy_(m.weight * (scale_next * beta))
                lin.bias.copy_(m.bias * beta)
            out.append(lin)
            scale_next = 1.0
        elif isinstance(m, nn.Softplus):
            out.append(nn.Softplus(beta=1.0, threshold=m.threshold))
            scale_next = 1.0 / float(m.beta)
        else:
            out.append(m)
    return nn.Sequential(*out)


def _optimizer(model: nn.Module, options: RecipeOptions) -> torch.optim.Optimizer:
    if options.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=options.learning_rate, momentum=0.9, nesterov=True
        )
    return torch.optim.Adam(model.parameters(), lr=options.learning_rate)


def fit(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    options: RecipeOptions,
    *,
    epochs: int,
    temperature: float = 1.0,
    generator: torch.Generator,
    desc: str = "train",
) -> list[float]:
    """Train ``model`` in place on ``cross_entropy(model(x) / temperature, targets)``
    (``targets``: class indices ``(N,)`` or probabilities ``(N, classes)``) and return the
    mean loss of each epoch. Shuffling draws from ``generator``, dropout from the global RNG.

    Raises:
        InputError: the loss becomes NaN or infinite.
    """
    return fit_epochs(
        model,
        _optimizer(model, options),
        images,
        targets,
        batch_size=options.batch_size,
        epochs=epochs,
        generator=generator,
        lr=options.learning_rate,
        temperature=temperature,
        desc=desc,
        show=sys.stderr.isatty(),
        device=options.device,
    )


@torch.no_grad()
def accuracy(fn: Callable[[Tensor], Tensor], images: Tensor, labels: Tensor) -> float:
    """Fraction of ``images`` whose argmax output equals ``labels`` (NaN for no images)."""
    if len(labels) == 0:
        return float("nan")
    correct = 0
    for i in range(0, len(labels), 512):
        correct += int((fn(images[i : i + 512]).argmax(1) == labels[i : i + 512]).sum())
    return correct / len(labels)


def _check(train: Dataset, test: Dataset, options: RecipeOptions) -> Dataset:
    if len(train) == 0:
        raise InputError(f"training set {train.name} is empty")
    if train.shape != test.shape or train.class_names != test.class_names:
        raise InputError(
            f"train ({train.shape}, {train.num_classes} classes) and test ({test.shape}, "
            f"{test.num_classes} classes) sets differ"
        )
    if options.train_limit is not None:
        train = train.subset(slice(0, options.train_limit))
    return train


def _to_network(model: nn.Module, train: Dataset, name: str, meta: dict[str, str]) -> Network:
    net = from_torch(model, train.shape, input_range=train.input_range, name=name)
    return net.with_meta(**meta)


def _meta(recipe: str, train: Dataset, options: RecipeOptions, **more: str) -> dict[str, str]:
    return {
        "recipe": recipe,
        "dataset": train.name,
        "epochs": str(options.epochs),
        "batch_size": str(options.batch_size),
        "lr": f"{options.learning_rate:g}",
        "optimizer": options.optimizer,
        "seed": str(options.seed),
        "train_images": str(len(train)),
        "input_range": f"{train.input_range[0]:g},{train.input_range[1]:g}",
        "trained_by": "nnbound.train.recipes",
        **more,
    }


def _finish(
    net: Network,
    train: Dataset,
    test: Dataset,
    seconds: float,
    extra: dict[str, float] | None = None,
) -> RecipeResult:
    dtype = net.dtype
    train_acc = accuracy(net, train.images.to(dtype), train.labels)
    test_acc = accuracy(net, test.images.to(dtype), test.labels)
    net = net.with_meta(train_accuracy=f"{train_acc:.4f}", test_accuracy=f"{test_acc:.4f}")
    return RecipeResult(net, train_acc, test_acc, seconds, dict(extra or {}))


# -- the recipes ---------------------------------------------------------------------------------
def _train_cnn(recipe: str, activation: str) -> Callable[..., RecipeResult]:
    def run(train: Dataset, test: Dataset, options: RecipeOptions) -> RecipeResult:
        train = _check(train, test, options)
        widths = cnn_widths(options, train.shape)
        padding = conv_padding(options, train.shape)
        act = (options.activation or activation) if recipe == "nlayer" else activation
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(options.seed)
            model = build_cnn(
                train.shape,
                train.num_classes,
                widths,
                act,
                padding=padding,
                dropout=options.dropout,
                leaky_slope=options.leaky_slope,
            )
            gen = torch.Generator().manual_seed(options.seed)
            fit(
                model,
                train.images,
                train.labels,
                options,
                epochs=options.epochs,
                generator=gen,
                desc=recipe,
            )
        seconds = time.perf_counter() - start
        leaky = act == "leaky_relu"
        act_meta = f"leaky_relu({options.leaky_slope:g})" if leaky else act
        meta = _meta(
            recipe,
            train,
            options,
            activation=act_meta,
            widths=",".join(map(str, widths)),
            padding=str(padding),
        )
        name = f"{train.name}_{recipe}" + (f"_{act}" if recipe == "nlayer" else "")
        return _finish(_to_network(model, train, name, meta), train, test, seconds)

    return run


def _train_two_layer(train: Dataset, test: Dataset, options: RecipeOptions) -> RecipeResult:
    train = _check(train, test, options)
    if options.widths is not None and len(options.widths) != 1:
        raise InputError(f"2-layer takes one hidden width, got {list(options.widths)}")
    width = options.widths[0] if options.widths else MLP_WIDTH
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        model = build_two_layer(train.shape, train.num_classes, width)
        gen = torch.Generator().manual_seed(options.seed)
        fit(
            model,
            train.images,
            train.labels,
            options,
            epochs=options.epochs,
            generator=gen,
            desc="2-layer",
        )
    seconds = time.perf_counter() - start
    meta = _meta(
        "2-layer",
        train,
        options,
        activation="softplus",
        widths=str(width),
        softplus_beta=f"{SOFTPLUS_BETA:g} (folded into the dense layers)",
    )
    net = _to_network(fold_softplus_beta(model), train, f"{train.name}_2-layer", meta)
    return _finish(net, train, test, seconds)


def _train_distilled(train: Dataset, test: Dataset, options: RecipeOptions) -> RecipeResult:
    train = _check(train, test, options)
    widths = cnn_widths(options, train.shape)
    padding = conv_padding(options, train.shape)
    t = float(options.temperature)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)

        def fresh() -> nn.Sequential:
            return build_cnn(
                train.shape,
                train.num_classes,
                widths,
                "relu",
                padding=padding,
                dropout=options.dropout,
            )

        gen = torch.Generator().manual_seed(options.seed)
        init = fresh()
        # the reference: "train for one epoch to get a good starting point" (at T = 1)
        fit(init, train.images, train.labels, options, epochs=1, generator=gen, desc="init")
        teacher = fresh()
        teacher.load_state_dict(init.state_dict())
        fit(
            teacher,
            train.images,
            train.labels,
            options,
            epochs=options.epochs,
            temperature=t,
            generator=gen,
            desc="teacher",
        )
        with torch.no_grad():
            soft = torch.softmax(teacher(train.images) / t, dim=1)
        student = fresh()
        student.load_state_dict(init.state_dict())
        fit(
            student,
            train.images,
            soft,
            options,
            epochs=options.epochs,
            temperature=t,
            generator=gen,
            desc="student",
        )
    seconds = time.perf_counter() - start
    with torch.no_grad():
        x = test.images
        p_teacher = torch.softmax(teacher(x) / t, dim=1)
        log_student = torch.log_softmax(student(x) / t, dim=1)
        kl_student = F.kl_div(log_student, p_teacher, reduction="batchmean")
        uniform = torch.full_like(log_student, -math.log(train.num_classes))
        kl_uniform = F.kl_div(uniform, p_teacher, reduction="batchmean")
        agreement = (student(x).argmax(1) == teacher(x).argmax(1)).double().mean()
    extra = {
        "teacher_test_accuracy": accuracy(teacher, x, test.labels),
        "student_teacher_agreement": float(agreement),
        "kl_teacher_student": float(kl_student),
        "kl_teacher_uniform": float(kl_uniform),
    }
    meta = _meta(
        "distilled",
        train,
        options,
        activation="relu",
        temperature=f"{t:g}",
        widths=",".join(map(str, widths)),
        padding=str(padding),
        deployed_temperature="1",
    )
    net = _to_network(student, train, f"{train.name}_distilled-{t:g}", meta)
    return _finish(net, train, test, seconds, extra)


RECIPES: dict[str, Recipe] = {
    "2-layer": Recipe(
        "2-layer",
        "the reference's MLP: 1024 hidden units, softplus with beta 10 (train_2layer.py)",
        _train_two_layer,
    ),
    "normal": Recipe(
        "normal",
        "the reference's 7-layer CNN (conv 32-32, maxpool, conv 64-64, maxpool, dense "
        "200-200), ReLU (train_models.py)",
        _train_cnn("normal", "relu"),
    ),
    "distilled": Recipe(
        "distilled",
        "the 7-layer CNN by defensive distillation at temperature 100, deployed at 1 "
        "(train_models.py)",
        _train_distilled,
    ),
    "brelu": Recipe(
        "brelu",
        "the 7-layer CNN with the bounded ReLU min(max(x, 0), 1) (setup_mnist.py)",
        _train_cnn("brelu", "brelu"),
    ),
    "nlayer": Recipe(
        "nlayer",
        "the 7-layer CNN with any activation and widths, e.g. --activation tanh 32 32 64 64 "
        "200 200 (train_nlayer.py --modeltype cnn)",
        _train_cnn("nlayer", "relu"),
    ),
}
"""Recipe name -> :class:`Recipe`, in the reference README's order."""


def get_recipe(name: str) -> Recipe:
    """The recipe ``name``.

    Raises:
        InputError: no such recipe (the message lists them).
    """
    if name not in RECIPES:
        raise InputError(f"unknown recipe {name!r}; available: {', '.join(RECIPES)}")
    return RECIPES[name]


def train_recipe(
    name: str, train: Dataset, test: Dataset, options: RecipeOptions | None = None
) -> RecipeResult:
    """Train recipe ``name`` on ``train`` and evaluate it on ``test``.

    Raises:
        InputError: unknown recipe, bad options, data the recipe cannot take.
    """
    recipe = get_recipe(name)
    options = options or RecipeOptions()
    if name not in ("nlayer",) and options.activation not in (None, _FIXED.get(name)):
        raise InputError(
            f"recipe {name!r} fixes its activation ({_FIXED[name]}); use --recipe nlayer for "
            "another activation"
        )
    return recipe.train(train, test, options)


_FIXED = {"2-layer": "softplus", "normal": "relu", "distilled": "relu", "brelu": "brelu"}
