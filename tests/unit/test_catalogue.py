"""The ImageNet architecture catalogue: torchvision's exact layouts (parameter counts and
state-dict keys/shapes), every architecture runs a CLEVER batch, weights files load safely.

The layout fingerprints were checked once against torchvision 0.28's own model classes (same
keys in the same order, same shapes, and bit-identical logits with shared weights); the
parameter counts are torchvision's published ``weights.meta["num_params"]``.
"""

from __future__ import annotations

import hashlib
import math
import pickle
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import helpers  # noqa: F401  (one torch thread)
from nnbound.catalogue import (
    CATALOGUE,
    ImageClassifier,
    build_model,
    count_parameters,
    read_state_dict,
)
from nnbound.catalogue.densenet import rename_legacy_keys
from nnbound.clever import Clever
from nnbound.errors import InputError

# torchvision's published parameter counts (1000 classes)
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "vgg11": 132_863_336,
    "vgg11_bn": 132_868_840,
    "vgg13": 133_047_848,
    "vgg13_bn": 133_053_736,
    "vgg16": 138_357_544,
    "vgg16_bn": 138_365_992,
    "vgg19": 143_667_240,
    "vgg19_bn": 143_678_248,
    "alexnet": 61_100_840,
    "mobilenet_v2": 3_504_872,
    "mobilenet_v3_small": 2_542_856,
    "mobilenet_v3_large": 5_483_032,
    "densenet121": 7_978_856,
    "densenet161": 28_681_000,
    "densenet169": 14_149_480,
    "densenet201": 20_013_928,
    "inception_v3": 27_161_264,
    "squeezenet1_0": 1_248_424,
    "squeezenet1_1": 1_235_496,
}

# state-dict entries and sha256 (first 16 hex) of the "key:shape" lines, in order; equal to
# torchvision 0.28's for all 24 architectures
LAYOUT = {
    "resnet18": (122, "3e58b0798c806a0c"),
    "resnet34": (218, "97e365907d64da74"),
    "resnet50": (320, "781bb16f43b8f96f"),
    "resnet101": (626, "708e8813e2eb3461"),
    "resnet152": (932, "9e3321003337a848"),
    "vgg11": (22, "5e6ee14c22dc415d"),
    "vgg11_bn": (62, "96ee5d41fde5cc7f"),
    "vgg13": (26, "054bce641758c677"),
    "vgg13_bn": (76, "98a0a0f25977c5dd"),
    "vgg16": (32, "77334610293d95e2"),
    "vgg16_bn": (97, "a463166a74dc0850"),
    "vgg19": (38, "b4eb1243614e83cf"),
    "vgg19_bn": (118, "e6e7b876b32ca010"),
    "alexnet": (16, "7cf57469ad654ca3"),
    "mobilenet_v2": (314, "2a375ead3e9604e1"),
    "mobilenet_v3_small": (244, "45e84af7b7bba021"),
    "mobilenet_v3_large": (312, "9cb349b03a916ada"),
    "densenet121": (727, "604b78c2bbed70c0"),
    "densenet161": (967, "3f911412d51f2ecc"),
    "densenet169": (1015, "56728b035e841ddf"),
    "densenet201": (1207, "82cfe2e7fe9f5e8e"),
    "inception_v3": (580, "f17cfe285ae35639"),
    "squeezenet1_0": (52, "d028ebe5030ca989"),
    "squeezenet1_1": (52, "d93224ce3d6af260"),
}

# a few keys of torchvision's files, with their shapes
SPOT_KEYS = {
    "resnet50": {"layer1.0.downsample.0.weight": (256, 64, 1, 1), "fc.weight": (1000, 2048)},
    "vgg16": {"features.28.weight": (512, 512, 3, 3), "classifier.6.weight": (1000, 4096)},
    "alexnet": {"features.10.weight": (256, 256, 3, 3), "classifier.1.weight": (4096, 9216)},
    "mobilenet_v2": {
        "features.1.conv.0.0.weight": (32, 1, 3, 3),
        "features.18.0.weight": (1280, 320, 1, 1),
    },
    "mobilenet_v3_large": {
        "features.4.block.2.fc1.weight": (24, 72, 1, 1),
        "classifier.0.weight": (1280, 960),
    },
    "densenet121": {
        "features.denseblock1.denselayer1.norm1.weight": (64,),
        "classifier.weight": (1000, 1024),
    },
    "inception_v3": {
        "AuxLogits.fc.weight": (1000, 768),
        "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    },
    "squeezenet1_1": {"classifier.1.weight": (1000, 512, 1, 1)},
}

SLOW = {
    "resnet101",
    "resnet152",
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
    "densenet161",
    "densenet169",
    "densenet201",
    "inception_v3",
}


def _meta(name: str) -> torch.nn.Module:
    with torch.device("meta"):
        return CATALOGUE[name].build(name, 1000)


def test_the_catalogue_holds_the_torchvision_architectures() -> None:
    assert set(CATALOGUE) == set(TORCHVISION_PARAMS)


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_parameter_count_and_state_dict_layout_are_torchvision_s(name: str) -> None:
    m = _meta(name)
    assert count_parameters(m) == TORCHVISION_PARAMS[name] == CATALOGUE[name].params
    sd = m.state_dict()
    text = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in sd.items())
    assert (len(sd), hashlib.sha256(text.encode()).hexdigest()[:16]) == LAYOUT[name]
    for key, shape in SPOT_KEYS.get(name, {}).items():
        assert tuple(sd[key].shape) == shape


def _params(name: str) -> list[object]:
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in name]


@pytest.mark.parametrize("name", _params(sorted(CATALOGUE)))
def test_every_architecture_runs_a_clever_batch(name: str) -> None:
    size = 80 if name == "inception_v3" else 64
    model = build_model(name, image_size=size)
    assert isinstance(model, ImageClassifier) and not model.training
    assert model.input_shape == (3, size, size) and model.input_range == (0.0, 1.0)
    assert model.random_weights and "seed 0" in model.weights
    assert not any(p.requires_grad for p in model.parameters())
    x = torch.rand(3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(x[None])
    assert logits.shape == (1, 1000) and bool(torch.isfinite(logits).all())
    label = int(logits.argmax())
    target = int(logits[0].argsort()[-2])
    samples = Clever(4, 1, method="maxsamp", input_range=model.input_range).collect(
        model, x, label, [target]
    )
    assert samples.maxima.shape == (1, 3, 1)
    assert bool((samples.maxima >= 0).all()) and math.isfinite(float(samples.g_x0[0]))


def test_random_weights_are_seeded() -> None:
    a = build_model("squeezenet1_1", image_size=32, seed=3).state_dict()
    b = build_model("squeezenet1_1", image_size=32, seed=3).state_dict()
    c = build_model("squeezenet1_1", image_size=32, seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["net.features.0.weight"], c["net.features.0.weight"])


def test_an_input_below_the_minimum_size_is_refused() -> None:
    with pytest.raises(InputError, match="at least 75x75"):
        build_model("inception_v3", image_size=64)
    with pytest.raises(InputError, match="unknown catalogue architecture"):
        build_model("resnet51")


def test_float64_and_normalisation_inside_the_model() -> None:
    model = build_model("squeezenet1_1", image_size=32, dtype=torch.float64)
    assert model.dtype == torch.float64
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(x), model.net((x - mean) / std))


# -- weights files ------------------------------------------------------------------------------

NAME = "squeezenet1_1"


@pytest.fixture(scope="module")
def trained_state() -> dict[str, torch.Tensor]:
    """A state dict unlike the seed-0 random weights (seed 7), as a user's file would be."""
    return build_model(NAME, seed=7).net.state_dict()


def _same(model: ImageClassifier, state: dict[str, torch.Tensor]) -> bool:
    own = model.net.state_dict()
    return all(torch.equal(own[k], state[k]) for k in state)


def test_a_pth_state_dict_loads_strictly(tmp_path: Path, trained_state) -> None:
    path = tmp_path / "squeezenet1_1-b8a52dc0.pth"
    torch.save(trained_state, path)
    model = build_model(NAME, weights=path)
    assert _same(model, trained_state) and model.weights == str(path)
    assert not model.random_weights


def test_a_safetensors_file_and_wrapped_or_prefixed_checkpoints_load(
    tmp_path: Path, trained_state
) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in trained_state.items()}, tmp_path / "w.safetensors")
    assert _same(build_model(NAME, weights=tmp_path / "w.safetensors"), trained_state)
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in trained_state.items()}, "epoch": 3},
        tmp_path / "ckpt.pth",
    )
    assert _same(build_model(NAME, weights=tmp_path / "ckpt.pth"), trained_state)


def test_missing_unexpected_and_misshapen_keys_are_named(tmp_path: Path, trained_state) -> None:
    state = dict(trained_state)
    del state["features.0.weight"]
    state["extra.weight"] = torch.zeros(1)
    state["classifier.1.bias"] = torch.zeros(10)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(InputError) as info:
        build_model(NAME, weights=tmp_path / "bad.pth")
    msg = str(info.value)
    assert "1 missing keys: features.0.weight" in msg
    assert "1 unexpected keys: extra.weight" in msg
    assert "classifier.1.bias (10,) (model (1000,))" in msg


def test_missing_corrupt_and_non_tensor_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="weights file not found"):
        build_model(NAME, weights=tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(InputError, match="not a readable PyTorch weights file"):
        read_state_dict(tmp_path / "junk.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken")
    with pytest.raises(InputError, match=r"not a readable \.safetensors file"):
        read_state_dict(tmp_path / "junk.safetensors")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(InputError, match="expected a state dict"):
        read_state_dict(tmp_path / "list.pth")
    torch.save({"a": torch.zeros(2), "b": 3}, tmp_path / "mixed.pth")
    with pytest.raises(InputError, match="not tensors: b"):
        read_state_dict(tmp_path / "mixed.pth")


class _Payload:
    """Unpickling this would run code: weights_only=True must refuse it."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


def test_a_pickle_with_code_is_refused(tmp_path: Path, capsys) -> None:
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"features.0.weight": _Payload()}, f)
    with pytest.raises(InputError, match=r"refused|not a readable"):
        read_state_dict(path)
    torch.save({"w": torch.zeros(1), "obj": _Payload()}, tmp_path / "evil2.pth")
    with pytest.raises(InputError, match=r"refused: .*\(print\)"):
        read_state_dict(tmp_path / "evil2.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "evil2.pth").read_bytes()[:100])
    with pytest.raises(InputError, match="not a readable PyTorch weights file"):
        read_state_dict(tmp_path / "cut.pth")
    assert "pwned" not in capsys.readouterr().out


def test_non_finite_weights_are_refused(tmp_path: Path, trained_state) -> None:
    state = dict(trained_state)
    state["features.0.bias"] = torch.full_like(state["features.0.bias"], float("nan"))
    torch.save(state, tmp_path / "nan.pth")
    with pytest.raises(InputError, match=r"NaN or inf values in features\.0\.bias"):
        build_model(NAME, weights=tmp_path / "nan.pth")


def test_torchvision_legacy_densenet_keys_are_renamed() -> None:
    state = {
        "features.denseblock1.denselayer1.norm.1.weight": 1,
        "features.denseblock1.denselayer1.conv.2.weight": 2,
        "features.transition1.norm.weight": 3,
    }
    assert list(rename_legacy_keys(state)) == [
        "features.denseblock1.denselayer1.norm1.weight",
        "features.denseblock1.denselayer1.conv2.weight",
        "features.transition1.norm.weight",
    ]


def test_old_checkpoints_without_num_batches_tracked_load(tmp_path: Path) -> None:
    state = {
        k: v
        for k, v in build_model("resnet18", seed=5).net.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    torch.save(state, tmp_path / "old.pth")
    model = build_model("resnet18", weights=tmp_path / "old.pth", image_size=32)
    assert torch.equal(model.net.fc.weight, state["fc.weight"])


def test_inception_checkpoint_with_aux_head_loads_into_a_model_without() -> None:
    from nnbound.catalogue.inception import inception

    with torch.device("meta"):
        full = inception().state_dict()
        bare = inception(aux_logits=False)
    adapted = CATALOGUE["inception_v3"].adapt(full, bare)  # type: ignore[misc]
    assert set(adapted) == set(bare.state_dict())
