"""The reference's model catalogue (``nnbound.train.recipes``): each recipe trains a tiny
version (narrow widths, few images and steps), converts exactly to the IR and round-trips
through ONNX; distillation's student learns its teacher's soft labels; the CLI."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import helpers  # noqa: F401  (sets torch threads)
from nnbound.cli.main import main
from nnbound.data import Dataset, load_dataset
from nnbound.errors import InputError
from nnbound.network import Activation, Dense, MaxPool2d
from nnbound.network.from_onnx import from_onnx
from nnbound.network.load import load_model
from nnbound.network.to_onnx import save_onnx
from nnbound.train.recipes import (
    RECIPES,
    RecipeOptions,
    build_cnn,
    build_two_layer,
    conv_padding,
    fold_softplus_beta,
    get_recipe,
    train_recipe,
)

TINY_CNN = (4, 4, 8, 8, 16, 16)


@pytest.fixture(scope="module")
def digits() -> tuple[Dataset, Dataset]:
    train = load_dataset("digits", split="train")
    test = load_dataset("digits", split="test")
    return train.subset(slice(0, 240)), test.subset(slice(0, 120))


def _tiny(name: str, **kw) -> RecipeOptions:
    widths = (32,) if name == "2-layer" else TINY_CNN
    base = dict(epochs=3, batch_size=32, widths=widths, seed=1, lr=1e-2)
    base.update(kw)
    return RecipeOptions(**base)


def test_catalogue_has_the_reference_models() -> None:
    assert list(RECIPES) == ["2-layer", "normal", "distilled", "brelu", "nlayer"]
    for name, recipe in RECIPES.items():
        assert recipe.name == name and isinstance(recipe.description, str) and recipe.description
    with pytest.raises(InputError, match="unknown recipe 'nomal'; available: 2-layer"):
        get_recipe("nomal")


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_trains_converts_and_round_trips_onnx(
    name: str, digits: tuple[Dataset, Dataset], tmp_path: Path
) -> None:
    train, test = digits
    # (distillation at T = 100 learns too slowly for a few steps; its own test uses 100)
    kw = {"nlayer": {"activation": "tanh"}, "distilled": {"temperature": 2.0}}.get(name, {})
    res = train_recipe(name, train, test, _tiny(name, **kw))
    net = res.network
    assert net.input_shape == (1, 8, 8) and net.num_outputs == 10
    assert net.input_range == train.input_range and net.meta["recipe"] == name
    assert 0.0 <= res.test_accuracy <= 1.0 and res.train_accuracy > 0.15  # learned something
    acts = {a.name for a in net.activations}
    want = {
        "2-layer": "softplus",
        "normal": "relu",
        "distilled": "relu",
        "brelu": "brelu",
        "nlayer": "tanh",
    }[name]
    assert acts == {want}
    if name == "brelu":
        assert all(a.alpha == 1.0 for a in net.activations)
    if name != "2-layer":
        assert sum(isinstance(layer, MaxPool2d) for layer in net.layers) == 2
    x = test.images[:16]
    path = save_onnx(net, tmp_path / f"{name}.onnx")
    back = from_onnx(path)
    assert torch.allclose(back(x), net(x), rtol=1e-5, atol=1e-5)
    # deterministic: the same options give the same weights
    again = train_recipe(name, train, test, _tiny(name, **kw)).network
    assert torch.equal(again(x), net(x))


def test_same_padding_only_where_valid_convs_do_not_fit() -> None:
    opts = RecipeOptions()
    assert conv_padding(opts, (1, 8, 8)) == 1
    assert conv_padding(opts, (1, 28, 28)) == 0 and conv_padding(opts, (3, 32, 32)) == 0
    # the reference's MNIST net: 28 -> 26 -> 24 -> 12 -> 10 -> 8 -> 4
    model = build_cnn((1, 28, 28), 10, TINY_CNN, "relu", padding=0)
    assert model[11].in_features == 8 * 4 * 4
    assert build_cnn((1, 8, 8), 10, TINY_CNN, "relu", padding=1)[11].in_features == 8 * 2 * 2
    with pytest.raises(InputError, match="too small"):
        build_cnn((1, 8, 8), 10, TINY_CNN, "relu", padding=0)
    with pytest.raises(InputError, match="six widths"):
        train_recipe("normal", *_two_images(), RecipeOptions(widths=(4, 4)))


def _two_images() -> tuple[Dataset, Dataset]:
    ds = load_dataset("digits", split="test").subset(slice(0, 2))
    return ds, ds


def test_two_layer_softplus_beta_is_folded_exactly() -> None:
    torch.manual_seed(0)
    model = build_two_layer((1, 8, 8), 10, 16).double()
    with torch.no_grad():  # exercise torch's threshold (beta * z > 20) too
        model[1].bias.mul_(40.0)
    folded = fold_softplus_beta(model)
    assert isinstance(folded[2], nn.Softplus) and folded[2].beta == 1.0
    x = torch.rand(50, 1, 8, 8, dtype=torch.float64) - 0.5
    assert torch.allclose(folded(x), model(x), rtol=1e-12, atol=1e-12)


def test_distilled_student_learns_the_teachers_soft_labels(digits) -> None:
    train, test = digits
    res = train_recipe("distilled", train, test, _tiny("distilled", epochs=3))
    ex = res.extra
    assert ex["kl_teacher_student"] < 0.5 * ex["kl_teacher_uniform"], ex
    assert ex["student_teacher_agreement"] > 0.3, ex  # chance is ~0.1
    assert res.network.meta["temperature"] == "100"
    # deployed at temperature 1: the student's raw logits (large, trained at T = 100)
    assert res.network.name == "digits_distilled-100"


def test_bad_options_and_fixed_activations(digits) -> None:
    train, test = digits
    with pytest.raises(InputError, match="fixes its activation"):
        train_recipe("normal", train, test, RecipeOptions(activation="tanh"))
    for bad in (
        dict(optimizer="rmsprop"),
        dict(temperature=0.0),
        dict(padding="full"),
        dict(activation="hard_sigmoid"),
        dict(epochs=0),
        dict(widths=(3, -1)),
    ):
        with pytest.raises(InputError):
            RecipeOptions(**bad)
    assert RecipeOptions(optimizer="sgd").learning_rate == 0.01
    assert RecipeOptions(activation="leaky").activation == "leaky_relu"


def test_nlayer_leaky_uses_the_slope(digits) -> None:
    train, test = digits
    res = train_recipe(
        "nlayer", train, test, _tiny("nlayer", activation="leaky", leaky_slope=0.2, epochs=1)
    )
    assert {(a.name, a.alpha) for a in res.network.activations} == {("leaky_relu", 0.2)}


def test_cli_recipe(tmp_path: Path, capsys) -> None:
    out = tmp_path / "m.safetensors"
    args = [
        "train",
        "--recipe",
        "brelu",
        "4",
        "4",
        "8",
        "8",
        "16",
        "16",
        "--epochs",
        "1",
        "--train-limit",
        "128",
        "--out",
        str(out),
        "--json",
        "--quiet",
    ]
    assert main(args) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["recipe"] == "brelu" and 0.0 <= rec["test_accuracy"] <= 1.0
    net = load_model(out)
    assert {a.name for a in net.activations} == {"brelu"}
    # the text output, and ONNX through --out
    onnx_out = tmp_path / "m.onnx"
    args = [
        "train",
        "--recipe",
        "2-layer",
        "8",
        "--epochs",
        "1",
        "--train-limit",
        "64",
        "--out",
        str(onnx_out),
        "--quiet",
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "test accuracy" in text and onnx_out.exists()
    assert isinstance(load_model(onnx_out).layers[1], Dense)


def test_cli_bad_recipe_is_a_clear_usage_error(capsys) -> None:
    assert main(["train", "--recipe", "resnet"]) == 2
    err = capsys.readouterr().err
    assert "unknown recipe 'resnet'; available: 2-layer, normal, distilled, brelu, nlayer" in err
    assert main(["train", "--recipe", "normal", "--activation", "tanh", "--quiet"]) == 2
    assert "fixes its activation" in capsys.readouterr().err
    assert main(["train", "--recipe", "normal", "--arch", "cnn", "--quiet"]) == 2


def test_classic_train_defaults_unchanged(capsys, tmp_path: Path) -> None:
    """Without --recipe the old defaults hold (64 hidden, relu, 30 epochs, lr 1e-3, batch 128)."""
    out = tmp_path / "c.safetensors"
    assert main(["train", "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    net = load_model(out)
    assert net.meta["hidden"] == "64" and net.meta["activation"] == "relu"
    assert net.meta["lr"] == "0.001" and net.meta["batch_size"] == "128"
    assert isinstance(net.layers[2], Activation)
    assert math.isfinite(float(net.meta["test_accuracy"]))
