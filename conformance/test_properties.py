"""Structural properties every implementation must have, checked with hypothesis through the
handle: causal models never see the future, padding never changes unpadded positions, and a
batch row never depends on the other rows. Shapes stay fixed so compiled frameworks compile once."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlzoo.zoo import load

from .harness import FRAMEWORKS, framework_id, max_abs

SETTINGS = settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
B, T = 3, 16
_handles = {}


def _handle(arch, framework):
    key = (arch, framework)
    if key not in _handles:
        _handles[key] = load(
            arch, framework, config="tiny", seed=1, **({"vocab_size": 101, "max_positions": 32, "mlm_head": True} if arch == "bert" else {})
        )
    return _handles[key]


def _ids(seed, vocab):
    return np.random.default_rng(seed).integers(0, vocab, (B, T)).astype(np.int32)


@pytest.mark.parametrize("framework", FRAMEWORKS, ids=framework_id)
@SETTINGS
@given(t=st.integers(0, T - 2), seed=st.integers(0, 2**16))
def test_gpt_never_sees_the_future(framework, t, seed):
    h = _handle("gpt", framework)
    ids = _ids(seed, h.config.vocab_size)
    changed = ids.copy()
    changed[:, t + 1 :] = _ids(seed + 1, h.config.vocab_size)[:, t + 1 :]
    a, b = h.apply({"input_ids": ids})["logits"], h.apply({"input_ids": changed})["logits"]
    assert max_abs(a[:, : t + 1], b[:, : t + 1]) <= 1e-5
    assert max_abs(a[:, t + 1 :], b[:, t + 1 :]) > 1e-4  # the change is visible where it may be


@pytest.mark.parametrize("framework", FRAMEWORKS, ids=framework_id)
@SETTINGS
@given(lengths=st.lists(st.sampled_from([1, 6, 11, T]), min_size=B, max_size=B), seed=st.integers(0, 2**16))
def test_gpt_left_padded_rows_equal_the_unpadded_prompts(framework, lengths, seed):
    """Left padding (random ids under a 0 mask) changes no logit of a real token: each padded
    row equals its prompt run alone (lengths from a fixed set, so compiled frameworks compile
    a few shapes only)."""
    h = _handle("gpt", framework)
    ids = _ids(seed, h.config.vocab_size)
    mask = (np.arange(T)[None, :] >= T - np.array(lengths)[:, None]).astype(np.int32)
    padded = h.apply({"input_ids": ids, "attention_mask": mask})["logits"]
    for row, n in enumerate(lengths):
        alone = h.apply({"input_ids": ids[row : row + 1, T - n :]})["logits"][0]
        assert max_abs(padded[row, T - n :], alone) <= 1e-5, (row, n)


@pytest.mark.parametrize("framework", FRAMEWORKS, ids=framework_id)
@SETTINGS
@given(lengths=st.lists(st.integers(1, T), min_size=B, max_size=B), seed=st.integers(0, 2**16))
def test_bert_padding_content_is_invisible(framework, lengths, seed):
    h = _handle("bert", framework)
    mask = (np.arange(T)[None, :] < np.array(lengths)[:, None]).astype(np.int32)
    ids = _ids(seed, h.config.vocab_size)
    noise = np.where(mask == 1, ids, _ids(seed + 1, h.config.vocab_size)).astype(np.int32)
    types = np.zeros((B, T), np.int32)
    a = h.apply({"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
    b = h.apply({"input_ids": noise, "attention_mask": mask, "token_type_ids": types})
    keep = mask.astype(bool)
    for key in ("last_hidden_state", "mlm_logits"):
        assert max_abs(a[key][keep], b[key][keep]) <= 1e-5, key
    assert max_abs(a["pooler_output"], b["pooler_output"]) <= 1e-5


@pytest.mark.parametrize("framework", FRAMEWORKS, ids=framework_id)
@pytest.mark.parametrize("arch", ["bert", "gpt", "vit", "resnet"])
@SETTINGS
@given(seed=st.integers(0, 2**16))
def test_batch_rows_are_independent(framework, arch, seed):
    h = _handle(arch, framework)
    rng = np.random.default_rng(seed)
    if arch in ("bert", "gpt"):
        inputs = {"input_ids": _ids(seed, h.config.vocab_size)}
        other = {"input_ids": inputs["input_ids"].copy()}
        other["input_ids"][1:] = _ids(seed + 1, h.config.vocab_size)[1:]
    else:
        size = h.config.image_size if arch == "vit" else 32
        x = rng.standard_normal((B, size, size, h.config.num_channels)).astype(np.float32)
        inputs, other = {"pixel_values": x}, {"pixel_values": x.copy()}
        other["pixel_values"][1:] = rng.standard_normal(x[1:].shape)
    a, b = h.apply(inputs), h.apply(other)
    for key in a:
        assert max_abs(a[key][0], b[key][0]) <= 1e-5, key
