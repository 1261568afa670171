"""The public face: dlzoo.create_model / dlzoo.from_pretrained return each framework's own
object, and the handle API behaves the same for every framework."""

import numpy as np
import pytest

import dlzoo
from dlzoo.zoo import ZooError, installed_frameworks, load

FRAMEWORKS = installed_frameworks()


def _is_native(framework, native):
    if framework == "torch":
        import torch

        return isinstance(native, torch.nn.Module)
    if framework == "flax":
        from flax import nnx

        return isinstance(native, nnx.Module)
    if framework == "equinox":
        import equinox as eqx

        module, state = native
        return isinstance(module, eqx.Module) and isinstance(state, eqx.nn.State)
    if framework == "haiku":
        import haiku as hk

        transformed, params, state = native
        return isinstance(transformed, hk.TransformedWithState) and isinstance(params, dict)
    if framework == "keras":
        import keras

        return isinstance(native, keras.Model)
    raise AssertionError(framework)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_create_model_returns_the_native_object(framework):
    native = dlzoo.create_model("vit", framework=framework, config="tiny", num_classes=3)
    assert _is_native(framework, native)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_from_pretrained_returns_the_native_object_with_the_weights(framework, tmp_path):
    source = load("gpt", FRAMEWORKS[0], seed=5)
    from dlzoo.zoo import hub

    folder = hub.export("gpt", source.config, source.state_dict(), tmp_path / "gpt")
    native = dlzoo.from_pretrained(str(folder), framework=framework)
    assert _is_native(framework, native)
    handle = dlzoo.zoo.from_pretrained(folder, framework=framework)
    assert all(np.array_equal(handle.state_dict()[k], v) for k, v in source.state_dict().items())


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_save_and_load_through_a_canonical_file(framework, tmp_path):
    handle = load("resnet", framework, seed=2)
    path = dlzoo.save(handle, tmp_path / "resnet.safetensors")
    again = load("resnet", framework, weights=path)
    x = {"pixel_values": np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)}
    assert again.config == handle.config
    np.testing.assert_array_equal(again.apply(x)["logits"], handle.apply(x)["logits"])


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_seeds_are_reproducible_and_distinct(framework):
    a, b, c = (load("gpt", framework, seed=s).state_dict() for s in (1, 1, 2))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["wte.embedding"], c["wte.embedding"])


@pytest.mark.parametrize(
    "inputs,fragment",
    [
        ({"input_ids": np.zeros((2, 3), np.float32)}, "integer array [B, T]"),
        ({"input_ids": np.full((1, 4), 10_000, np.int32)}, "input_ids must be in [0, 256)"),
        ({"input_ids": np.zeros((1, 65), np.int32)}, "at most 64"),
        ({"tokens": np.zeros((1, 4), np.int32)}, "expected keys input_ids"),
    ],
)
def test_bad_inputs_are_refused_before_reaching_the_framework(inputs, fragment):
    handle = load("gpt", FRAMEWORKS[0])
    with pytest.raises(ZooError, match="") as info:
        handle.apply(inputs)
    assert fragment in str(info.value)


def test_unknown_framework_lists_the_valid_ones():
    with pytest.raises(ZooError, match="expected one of: torch, flax, equinox, haiku, keras"):
        load("gpt", "mxnet")


def test_save_refuses_to_overwrite_unless_asked(tmp_path):
    handle = load("gpt", FRAMEWORKS[0], seed=1)
    path = handle.save(tmp_path / "gpt.safetensors")
    before = path.read_bytes()
    other = load("gpt", FRAMEWORKS[0], seed=2)
    with pytest.raises(dlzoo.OutputExistsError, match="already exists; choose a new name, or pass overwrite=True"):
        other.save(path)
    assert path.read_bytes() == before
    assert other.save(path, overwrite=True) == path and path.read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt.safetensors"], "no temporary file left"


@pytest.mark.parametrize(
    "name,fragment",
    [
        (".", "is a folder; expected a canonical weights file name"),
        ("missing_dir/w.safetensors", "folder {tmp}/missing_dir does not exist; create it first"),
        ("afile/w.safetensors", "{tmp}/afile is a file, not a folder"),
        ("weights.bin", "must end in .safetensors, not '.bin'"),
    ],
)
def test_save_refuses_bad_destinations_with_one_line(tmp_path, name, fragment):
    (tmp_path / "afile").write_text("mine")
    handle = load("gpt", FRAMEWORKS[0])
    with pytest.raises(dlzoo.PathError) as info:
        handle.save(tmp_path / name)
    assert fragment.format(tmp=tmp_path) in str(info.value) and "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


COTANGENT_CASES = [
    ({"probs": np.ones((2, 5), np.float32)}, "cotangent 'probs' names no output of this vit; outputs: logits"),
    ({"logits": np.ones((1, 5), np.float32)}, "cotangent 'logits' has shape [1, 5], expected [2, 10]"),
    ({"logits": np.ones((2, 10, 1), np.float32)}, "has shape [2, 10, 1], expected [2, 10]"),
    ({"logits": [["a"] * 10] * 2}, "cotangent 'logits' must be a numeric array"),
    ({}, "cotangents must be a non-empty dict"),
    (np.ones((2, 10)), "cotangents must be a non-empty dict"),
]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_wrong_cotangents_are_zoo_errors_in_every_framework(framework):
    handle = load("vit", framework)
    x = {"pixel_values": np.zeros((2, 32, 32, 3), np.float32)}
    for cotangents, fragment in COTANGENT_CASES:
        for call in (handle.vjp, handle.adamw_step):
            with pytest.raises(ZooError) as info:
                call(x, cotangents)
            assert fragment in str(info.value), (call.__name__, str(info.value))


@pytest.mark.parametrize("hyper", [{"lr": -1.0}, {"betas": (0.9, 1.0)}, {"eps": 0.0}, {"weight_decay": -0.1}])
def test_adamw_hyperparameters_are_checked(hyper):
    handle = load("gpt", FRAMEWORKS[0])
    before = handle.state_dict()
    x = {"input_ids": np.zeros((1, 4), np.int32)}
    with pytest.raises(ZooError, match="AdamW needs lr >= 0"):
        handle.adamw_step(x, {"logits": np.ones((1, 4, 256), np.float32)}, **hyper)
    assert all(np.array_equal(handle.state_dict()[k], v) for k, v in before.items())


def test_error_classes_are_public_and_share_one_base():
    import dlzoo.zoo.files
    import dlzoo.zoo.hub
    from dlzoo.agents.metrics import MetricsError
    from dlzoo.agents.theory import UnknownTopicError

    assert dlzoo.OutputExistsError is dlzoo.zoo.files.OutputExistsError and dlzoo.HubError is dlzoo.zoo.hub.HubError
    for name in ("ConfigError", "WeightsError", "HubError", "PathError", "OutputExistsError", "MetricsError", "UnknownTopicError"):
        cls = getattr(dlzoo, name)
        assert issubclass(cls, dlzoo.ZooError) and issubclass(cls, ValueError) and name in dlzoo.__all__
    assert dlzoo.MetricsError is MetricsError and dlzoo.UnknownTopicError is UnknownTopicError
