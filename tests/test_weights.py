import json
import struct

import numpy as np
import pytest

from dlzoo.zoo import WeightsError, canonical_spec, get_config, weights


def _random(arch="gpt", preset="tiny", seed=0):
    config = get_config(arch, preset)
    rng = np.random.default_rng(seed)
    return config, {k: rng.standard_normal(s.shape).astype(np.float32) for k, s in canonical_spec(arch, config).items()}


def test_save_and_load_round_trip(tmp_path):
    config, tensors = _random("resnet")
    path = weights.save(tmp_path / "w.safetensors", "resnet", config, tensors)
    arch, loaded_config, loaded = weights.load(path)
    assert arch == "resnet" and loaded_config == config
    assert all(np.array_equal(loaded[k], tensors[k]) for k in tensors)
    meta = weights.read_metadata(path)
    assert meta["format"] == "dlzoo" and meta["format_version"] == "1" and json.loads(meta["config"])


def test_spec_names_follow_the_canonical_layout():
    spec = canonical_spec("gpt", get_config("gpt", "tiny"))
    assert spec["blocks.0.attn.qkv.kernel"].shape == (64, 192)
    assert spec["wte.embedding"].shape == (256, 64)
    assert "lm_head.kernel" not in spec  # tied to wte
    resnet = canonical_spec("resnet", get_config("resnet", "50"))
    assert resnet["stages.1.blocks.0.conv2.kernel"].shape == (3, 3, 128, 128)  # v1.5: stride on the 3x3
    assert resnet["stages.0.blocks.0.downsample.conv.kernel"].shape == (1, 1, 64, 256)
    assert not resnet["stem.bn.var"].trainable
    vit = canonical_spec("vit", get_config("vit", "B/16"))
    assert vit["patch_embed.kernel"].shape == (16, 16, 3, 768) and vit["pos_embed"].shape == (1, 197, 768)


def test_validation_names_every_problem_in_one_line():
    config, tensors = _random()
    tensors.pop("ln_f.scale")
    tensors["extra.kernel"] = np.zeros((2, 2), np.float32)
    tensors["wpe.embedding"] = np.zeros((3, 64), np.float32)
    tensors["wte.embedding"] = tensors["wte.embedding"].astype(np.int32)
    with pytest.raises(WeightsError) as info:
        weights.validate("gpt", config, tensors)
    message = str(info.value)
    assert "\n" not in message
    for fragment in (
        "missing 1: ln_f.scale [64]",
        "unexpected 1: extra.kernel [2, 2]",
        "wpe.embedding has shape [3, 64], expected [64, 64]",
        "wte.embedding has dtype int32, expected float32",
    ):
        assert fragment in message


def test_loading_checks_the_architecture_and_config(tmp_path):
    config, tensors = _random("vit")
    path = weights.save(tmp_path / "vit.safetensors", "vit", config, tensors)
    with pytest.raises(WeightsError, match="holds 'vit' weights, expected 'gpt'"):
        weights.load(path, arch="gpt")
    with pytest.raises(WeightsError, match="differs from the requested"):
        weights.load(path, config=config.replace(num_classes=3))


def test_corrupt_truncated_and_foreign_files_fail_cleanly(tmp_path):
    config, tensors = _random()
    good = weights.save(tmp_path / "good.safetensors", "gpt", config, tensors).read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00not a safetensors file at all")
    header = json.dumps({"__metadata__": {"format": "pt"}}).encode()
    (tmp_path / "foreign.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    for name, fragment in [
        ("truncated", "corrupt, truncated"),
        ("garbage", "corrupt, truncated or not a safetensors"),
        ("foreign", "not a dlzoo canonical file"),
        ("missing", "no such file"),
    ]:
        with pytest.raises(WeightsError, match=fragment) as info:
            weights.load(tmp_path / f"{name}.safetensors")
        assert "\n" not in str(info.value)


def test_a_failed_save_leaves_no_file(tmp_path):
    config, tensors = _random()
    tensors.pop("ln_f.bias")
    with pytest.raises(WeightsError):
        weights.save(tmp_path / "w.safetensors", "gpt", config, tensors)
    assert list(tmp_path.iterdir()) == []
