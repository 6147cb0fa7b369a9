"""train_network: determinism, sane accuracy, every activation, IR == torch forward."""

from __future__ import annotations

import pytest
import torch

from nnbound.data import Dataset, load_dataset
from nnbound.errors import InputError
from nnbound.network import ACTIVATIONS, Activation, Conv2d, Dense, Flatten, Network, to_torch
from nnbound.train import TrainConfig, build_model, train_network
from nnbound.train.train import _to_layers, network_name


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # On a shared 2-core machine torch's intra-op thread pool can slow these tiny convs down
    # ~20x when another process holds a core (threads wait at barriers); one thread is as fast.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits() -> tuple[Dataset, Dataset]:
    return load_dataset("digits", split="train"), load_dataset("digits", split="test")


def small(ds: Dataset, n: int) -> Dataset:
    return ds.subset(slice(0, n))


def weights(net: Network) -> list[torch.Tensor]:
    return [t for layer in net.layers for t in layer.tensors().values()]


def test_same_seed_same_weights_other_seed_differs(digits) -> None:
    train, test = small(digits[0], 300), small(digits[1], 50)
    cfg = TrainConfig(hidden=(16,), epochs=2, seed=3)
    a, ra = train_network(train, test, cfg, progress=False)
    b, rb = train_network(train, test, cfg, progress=False)
    assert all(torch.equal(x, y) for x, y in zip(weights(a), weights(b), strict=True))
    assert ra.epoch_losses == rb.epoch_losses and ra.test_accuracy == rb.test_accuracy
    c, _ = train_network(train, test, TrainConfig(hidden=(16,), epochs=2, seed=4), progress=False)
    assert not torch.equal(weights(a)[0], weights(c)[0])


def test_training_leaves_the_global_rng_alone(digits) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_network(
        small(digits[0], 100),
        small(digits[1], 20),
        TrainConfig(hidden=(8,), epochs=1),
        progress=False,
    )
    assert torch.equal(torch.rand(3), expected)


def test_mlp_reaches_sane_accuracy(digits) -> None:
    net, report = train_network(*digits, TrainConfig(hidden=(64,), epochs=15), progress=False)
    assert report.test_accuracy > 0.9 and report.train_accuracy > 0.9
    assert len(report.epoch_losses) == 15 and report.epoch_losses[-1] < report.epoch_losses[0]
    assert report.seconds > 0
    # the layout is the reference's NLayerModel
    assert [type(layer) for layer in net.layers] == [Flatten, Dense, Activation, Dense]
    assert net.input_shape == (1, 8, 8) and net.input_range == (-0.5, 0.5)
    assert net.output_shape == (10,) and net.name == "digits_mlp_relu_64"
    for key in (
        "dataset",
        "activation",
        "hidden",
        "epochs",
        "seed",
        "test_accuracy",
        "input_range",
    ):
        assert key in net.meta
    assert net.meta["test_accuracy"] == f"{report.test_accuracy:.4f}"
    # the report's accuracy is the returned network's accuracy
    test = digits[1]
    acc = (net(test.images).argmax(1) == test.labels).float().mean().item()
    assert acc == pytest.approx(report.test_accuracy)


def test_cnn_reaches_sane_accuracy(digits) -> None:
    cfg = TrainConfig(arch="cnn", hidden=(32,), conv_channels=(8, 16), epochs=5, batch_size=32)
    net, report = train_network(*digits, cfg, progress=False)
    assert report.test_accuracy > 0.8
    convs = [layer for layer in net.layers if isinstance(layer, Conv2d)]
    assert [tuple(c.weight.shape[2:]) for c in convs] == [(3, 3), (4, 4)] * 2
    assert [c.stride for c in convs] == [(1, 1), (2, 2)] * 2
    assert net.shapes[len(convs) * 2] == (16, 2, 2)  # 8x8 -> 4x4 -> 2x2
    assert net.meta["conv_channels"] == "8,16" and net.name == "digits_cnn8-16_relu_32"


@pytest.mark.parametrize("activation", [*ACTIVATIONS, "leaky"])
def test_every_activation_trains_without_nan(digits, activation: str) -> None:
    cfg = TrainConfig(hidden=(16, 16), activation=activation, epochs=3, leaky_slope=0.2)
    net, report = train_network(small(digits[0], 400), small(digits[1], 100), cfg, progress=False)
    assert all(torch.isfinite(torch.tensor(report.epoch_losses)))
    assert report.epoch_losses[-1] < report.epoch_losses[0]
    acts = net.activations
    assert len(acts) == 2
    canonical = "leaky_relu" if activation == "leaky" else activation
    assert {a.name for a in acts} == {canonical} and net.meta["activation"] == canonical
    if canonical == "leaky_relu":
        assert acts[0].alpha == pytest.approx(0.2)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("activation", ["leaky_relu", "arctan", "elu", "softplus"])
def test_network_forward_equals_torch_forward(arch: str, activation: str) -> None:
    torch.manual_seed(0)
    cfg = TrainConfig(hidden=(12,), arch=arch, activation=activation, conv_channels=(4,))
    model = build_model(cfg, (1, 8, 8), 10)
    net = Network(_to_layers(model), (1, 8, 8))
    x = torch.rand(5, 1, 8, 8) - 0.5
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(net(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(to_torch(net)(x), expected, rtol=0, atol=0)


def test_trained_network_round_trips_through_to_torch(digits) -> None:
    cfg = TrainConfig(arch="cnn", hidden=(), conv_channels=(4,), epochs=1, activation="tanh")
    net, _ = train_network(small(digits[0], 200), small(digits[1], 50), cfg, progress=False)
    x = digits[1].images[:20]
    with torch.no_grad():
        torch.testing.assert_close(to_torch(net)(x), net(x), rtol=0, atol=0)
    assert net.name.endswith("_linear")


def test_progress_bar_is_silent_when_not_a_tty(digits, capsys) -> None:
    train_network(small(digits[0], 50), small(digits[1], 10), TrainConfig(hidden=(4,), epochs=1))
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        ({"activation": "swish"}, "unknown activation 'swish'"),
        ({"arch": "rnn"}, "unknown arch"),
        ({"optimizer": "sgd"}, "only 'adam'"),
        ({"hidden": (0,)}, "positive"),
        ({"epochs": 0}, ">= 1"),
        ({"lr": 0.0}, "lr must be"),
        ({"weight_decay": -1.0}, "weight_decay must be"),
        ({"arch": "cnn", "conv_channels": ()}, "conv_channels"),
    ],
)
def test_config_validation(kwargs: dict, msg: str) -> None:
    with pytest.raises(InputError, match=msg):
        TrainConfig(**kwargs)


def test_data_mismatch_and_cnn_shape_errors(digits) -> None:
    mnist = load_dataset("mnist100")
    with pytest.raises(InputError, match="differ"):
        train_network(digits[0], mnist, TrainConfig(epochs=1), progress=False)
    flat = Dataset(torch.zeros(4, 6), torch.zeros(4, dtype=torch.long), "flat", (0.0, 1.0), "ab")
    with pytest.raises(InputError, match="needs images"):
        train_network(flat, flat, TrainConfig(arch="cnn", epochs=1), progress=False)
    with pytest.raises(InputError, match="too small"):
        train_network(
            digits[0],
            digits[1],
            TrainConfig(arch="cnn", conv_channels=(2, 2, 2, 2)),
            progress=False,
        )


def test_divergence_is_reported(digits) -> None:
    cfg = TrainConfig(hidden=(16,), epochs=2, lr=1e30, activation="elu")
    with pytest.raises(InputError, match="diverged"):
        train_network(small(digits[0], 200), small(digits[1], 20), cfg, progress=False)


def test_network_name() -> None:
    assert network_name("mnist", TrainConfig(hidden=(20, 20), activation="leaky")) == (
        "mnist_mlp_leaky_relu_20x20"
    )
