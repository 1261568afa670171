"""Per-device memory and communication under data parallelism and FSDP (agents/engineer/sharding.py):
the arithmetic of ZeRO (Rajbhandari et al., 2020) checked on the zoo's presets."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlzoo.agents.engineer import sharding
from dlzoo.agents.engineer.costs import cost_report
from dlzoo.zoo.configs import ZooError, get_config
from dlzoo.zoo.estimates import memory

PRESETS = [("gpt", "124M"), ("bert", "base"), ("vit", "B/16"), ("resnet", "50")]


@settings(max_examples=40, deadline=None)
@given(case=st.sampled_from(PRESETS), batch=st.integers(1, 512), devices=st.integers(1, 64), precision=st.sampled_from(["fp32", "bf16"]))
def test_data_parallel_replicates_the_state_and_splits_the_batch(case, batch, devices, precision):
    arch, preset = case
    config = get_config(arch, preset)
    mem = memory(arch, config, batch_size=batch, precision=precision)
    split = sharding.per_device(mem, arch, config, devices=devices, strategy="data", batch_size=batch)
    assert split.state_bytes == mem.total_bytes - mem.activation_bytes
    assert split.batch_per_device == math.ceil(batch / devices)
    assert split.activation_bytes == math.ceil(batch / devices) * mem.activation_bytes_per_example
    assert split.gathered_bytes == 0
    # a ring all-reduce of fp32 gradients: 2 (N - 1) / N of them through every device
    assert split.communication_bytes == round(2 * (devices - 1) / devices * mem.params * 4)
    if devices == 1:
        assert split.total_bytes == mem.total_bytes


@settings(max_examples=40, deadline=None)
@given(case=st.sampled_from(PRESETS), batch=st.integers(1, 512), devices=st.integers(2, 64))
def test_fsdp_shards_the_state_and_costs_one_and_a_half_times_the_traffic(case, batch, devices):
    arch, preset = case
    config = get_config(arch, preset)
    mem = memory(arch, config, batch_size=batch)
    data = sharding.per_device(mem, arch, config, devices=devices, strategy="data", batch_size=batch)
    fsdp = sharding.per_device(mem, arch, config, devices=devices, strategy="fsdp", batch_size=batch)
    assert fsdp.state_bytes == math.ceil(data.state_bytes / devices)
    assert fsdp.activation_bytes == data.activation_bytes
    assert fsdp.gathered_bytes == sharding.largest_unit_params(arch, config) * 8  # fp32 weights + fp32 grads
    assert fsdp.communication_bytes == pytest.approx(1.5 * data.communication_bytes, rel=1e-6)  # ZeRO section 7.2.2


def test_largest_units_of_the_published_models():
    # GPT-2 124M: the root unit (token + position embeddings, final norm) outweighs a block
    gpt = get_config("gpt", "124M")
    assert sharding.largest_unit_params("gpt", gpt) == 50257 * 768 + 1024 * 768 + 2 * 768
    # ViT-B/16: one block (attention 4 d^2 + MLP 8 d^2, biases, two norms) outweighs the root
    d = 768
    block = 4 * d * d + 4 * d + 2 * 4 * d * d + 4 * d + d + 4 * d
    assert sharding.largest_unit_params("vit", get_config("vit", "B/16")) == block
    # ResNet-50: the last stage (three bottlenecks at width 512, the 1x1 projection) is largest
    assert sharding.largest_unit_params("resnet", get_config("resnet", "50")) > 14_000_000


def test_fsdp_fits_larger_batches_and_the_report_carries_it():
    config = get_config("gpt", "124M")
    opts = dict(batch_size=64, precision="bf16", device="h100", seq_len=1024)
    one = cost_report("gpt", config, **opts)
    data = cost_report("gpt", config, devices=8, sharding="data", **opts)
    fsdp = cost_report("gpt", config, devices=8, sharding="fsdp", **opts)
    assert "per_device" not in one and data["per_device"]["batch_per_device"] == 8
    assert fsdp["per_device"]["total_bytes"] < data["per_device"]["total_bytes"] < one["memory"]["total_bytes"]
    assert data["device"]["max_batch_size"] % 8 == 0 and data["device"]["max_batch_size"] >= 8 * one["device"]["max_batch_size"]
    assert fsdp["device"]["max_batch_size"] > data["device"]["max_batch_size"]
    assert data["device"]["step_seconds"] == pytest.approx(one["device"]["step_seconds"] / 8)


def test_bad_device_counts_and_strategies_are_refused():
    config = get_config("gpt", "tiny")
    with pytest.raises(ZooError, match="devices must be a positive integer, got 0"):
        cost_report("gpt", config, devices=0)
    with pytest.raises(ZooError, match="unknown sharding 'zero2'; expected one of: data, fsdp"):
        cost_report("gpt", config, devices=2, sharding="zero2")
