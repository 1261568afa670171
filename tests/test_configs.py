import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlzoo.zoo import ARCHS, PRESETS, BertConfig, ConfigError, GPTConfig, ResNetConfig, ViTConfig, count_params, get_config

# Published parameter counts (transformers' models, random init).
PUBLISHED = [
    ("bert", "base", 109_482_240),  # BertModel, with pooler
    ("bert", "large", 335_141_888),
    ("gpt", "124M", 124_439_808),  # GPT2Model; the LM head is tied
    ("gpt", "medium", 354_823_168),
    ("vit", "B/16", 86_567_656),  # ViTForImageClassification, 1000 classes
    ("resnet", "50", 25_557_032),
    ("resnet", "18", 11_689_512),
]


@pytest.mark.parametrize("arch,preset,expected", PUBLISHED)
def test_parameter_counts_equal_the_published_models(arch, preset, expected):
    assert count_params(arch, get_config(arch, preset)) == expected


def test_every_architecture_has_a_tiny_preset_for_tests():
    for arch in ARCHS:
        assert "tiny" in PRESETS[arch]
        assert count_params(arch, get_config(arch, "tiny")) < 5_000_000


@pytest.mark.parametrize(
    "name,patch,hidden", [("B/16", 16, 768), ("b/32", 32, 768), ("S/8", 8, 384), ("H/14", 14, 1280), ("Ti/16", 16, 192)]
)
def test_vit_grammar(name, patch, hidden):
    config = get_config("vit", name)
    assert (config.patch_size, config.hidden_size) == (patch, hidden)


@pytest.mark.parametrize("alias,preset", [("gpt2", "124M"), ("gpt2-xl", "xl"), ("355M", "medium")])
def test_gpt_aliases(alias, preset):
    assert get_config("gpt", alias) == get_config("gpt", preset)


@pytest.mark.parametrize(
    "make,fragment",
    [
        (lambda: BertConfig(hidden_size=100, num_heads=12), "not divisible by num_heads"),
        (lambda: GPTConfig(num_layers=0), "positive integer"),
        (lambda: ViTConfig(image_size=224, patch_size=15), "does not divide image_size"),
        (lambda: ResNetConfig(block="dense"), "'basic' or 'bottleneck'"),
        (lambda: ResNetConfig(depths=(1, 2), widths=(8,)), "equal length"),
        (lambda: ResNetConfig(bn_momentum=0.99 + 0.02), "torch convention"),
        (lambda: GPTConfig(dropout=1.5), "in [0, 1)"),
        (lambda: BertConfig(num_classes=3, pooler=False), "needs the pooler"),
    ],
)
def test_invalid_configs_fail_with_a_clear_message(make, fragment):
    with pytest.raises(ConfigError, match="") as info:
        make()
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ConfigError, match="expected one of: tiny, mini"):
        get_config("bert", "huge")
    with pytest.raises(ConfigError, match="expected one of: bert, gpt, resnet, vit"):
        get_config("lstm")
    with pytest.raises(ConfigError, match="no field"):
        get_config("gpt", "tiny", n_embd=3)


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_config("gpt").hidden_size = 3


def test_overrides_are_validated():
    assert get_config("vit", "B/16", num_classes=10).num_classes == 10
    with pytest.raises(ConfigError):
        get_config("vit", "B/16", patch_size=15)


@settings(max_examples=40, deadline=None)
@given(
    heads=st.integers(1, 8),
    head_dim=st.integers(1, 16),
    layers=st.integers(1, 4),
    vocab=st.integers(2, 500),
    mlm=st.booleans(),
    labels=st.integers(0, 4),
)
def test_config_json_round_trip(heads, head_dim, layers, vocab, mlm, labels):
    config = BertConfig(
        vocab_size=vocab, hidden_size=heads * head_dim, num_heads=heads, num_layers=layers, mlp_dim=4, mlm_head=mlm, num_classes=labels
    )
    assert BertConfig.from_dict(json.loads(config.to_json())) == config
    resnet = ResNetConfig(depths=(1,) * (layers), widths=(4,) * layers)
    assert ResNetConfig.from_dict(json.loads(resnet.to_json())) == resnet


def test_block_names_follow_the_run_order():
    assert get_config("resnet", "50").block_names()[:5] == [
        "stages.0.blocks.0",
        "stages.0.blocks.1",
        "stages.0.blocks.2",
        "stages.1.blocks.0",
        "stages.1.blocks.1",
    ]
    assert len(get_config("resnet", "50").block_names()) == 3 + 4 + 6 + 3
    assert get_config("gpt", "124M").block_names() == [f"blocks.{i}" for i in range(12)]
    assert len(get_config("vit", "B/16").block_names()) == 12 and len(get_config("bert", "large").block_names()) == 24
