"""Handle.generate and GPT's attention_mask input: arguments checked in one clear line, the
result's shape and dtype, and bfloat16 compute in every framework."""

import numpy as np
import pytest

from dlzoo.zoo import ZooError, installed_frameworks, load

FRAMEWORKS = installed_frameworks()
IDS = np.random.default_rng(0).integers(0, 256, (2, 6)).astype(np.int32)


@pytest.fixture(scope="module")
def gpt():
    return load("gpt", FRAMEWORKS[0], config="tiny", seed=0)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be a positive integer"),
        ({"max_new_tokens": 60}, "exceeds context_length 64"),
        ({"max_new_tokens": 2, "temperature": -1.0}, "temperature must be a number >= 0"),
        ({"max_new_tokens": 2, "temperature": 1.0, "top_k": 0}, "top_k must be a positive integer"),
        ({"max_new_tokens": 2, "temperature": 1.0, "top_p": 1.5}, "top_p must be in (0, 1]"),
        ({"max_new_tokens": 2, "attention_mask": np.array([[1, 1, 1, 1, 1, 0], [1] * 6])}, "needs left padding"),
        ({"max_new_tokens": 2, "attention_mask": np.full((2, 6), 2)}, "attention_mask must hold 1"),
        ({"max_new_tokens": 2, "attention_mask": np.ones((2, 5), np.int32)}, "must share one [B, T] shape"),
    ],
)
def test_bad_arguments_are_one_line(gpt, kwargs, fragment):
    with pytest.raises(ZooError) as error:
        gpt.generate(IDS, **kwargs)
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_generate_is_gpt_only():
    with pytest.raises(ZooError, match="generate is for gpt"):
        load("bert", FRAMEWORKS[0], config="tiny").generate(IDS, max_new_tokens=1)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_bfloat16_generate_and_padded_forward(framework):
    """bf16 compute: greedy tokens mostly agree with float32 (a near-tie may flip), padded
    logits stay finite and close to float32 on real tokens."""
    mask = np.ones_like(IDS)
    mask[1, :2] = 0
    f32 = load("gpt", framework, config="tiny", seed=1)
    bf16 = load("gpt", framework, config="tiny", seed=1, compute_dtype="bfloat16")
    got, want = bf16.generate(IDS, mask, max_new_tokens=4), f32.generate(IDS, mask, max_new_tokens=4)
    assert got.dtype == np.int32 and got.shape == (2, 10) and np.array_equal(got[:, :6], IDS)
    assert (got[:, 6] == want[:, 6]).mean() >= 0.5
    a = bf16.apply({"input_ids": IDS, "attention_mask": mask})["logits"]
    b = f32.apply({"input_ids": IDS, "attention_mask": mask})["logits"]
    real = mask.astype(bool)
    assert np.isfinite(a).all() and np.abs(a[real] - b[real]).max() <= 5e-2 * max(1.0, np.abs(b).max())
