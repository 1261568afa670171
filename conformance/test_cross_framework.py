"""Every framework against dlzoo's PyTorch implementation, through the framework-neutral handle:
the same canonical weights must give the same outputs, gradients, batch statistics and AdamW step."""

import numpy as np
import pytest

from dlzoo.zoo import canonical_spec, get_config, load

from .harness import (
    ADAMW_TOL,
    BF16_RTOL,
    CASES,
    FRAMEWORKS,
    OTHER_FRAMEWORKS,
    assert_grads_close,
    assert_outputs_close,
    cotangents,
    framework_id,
    max_abs,
)
from .conftest import copy_tensors

RESNETS = ["resnet", "resnet-basic"]


@pytest.mark.parametrize("framework", OTHER_FRAMEWORKS, ids=framework_id)
@pytest.mark.parametrize("case", list(CASES))
def test_forward_agrees_across_frameworks(case, framework, handle):
    inputs = CASES[case].inputs(4)
    want = handle(case, "torch").apply(inputs)
    assert_outputs_close(handle(case, framework).apply(inputs), want, what=f"{framework} {case}")


@pytest.mark.parametrize("framework", OTHER_FRAMEWORKS, ids=framework_id)
@pytest.mark.parametrize("case", list(CASES))
def test_gradients_agree_across_frameworks(case, framework, handle):
    inputs = CASES[case].inputs(5)
    reference = handle(case, "torch")
    cots = cotangents(reference.apply(inputs))
    want = reference.vjp(inputs, cots)
    trainable = {k for k, s in canonical_spec(reference.arch, reference.config).items() if s.trainable}
    assert set(want) == trainable
    assert_grads_close(handle(case, framework).vjp(inputs, cots), want, what=f"{framework} {case}")


@pytest.mark.parametrize("framework", OTHER_FRAMEWORKS, ids=framework_id)
@pytest.mark.parametrize("case", RESNETS)
def test_train_mode_gradients_agree_across_frameworks(case, framework, handle):
    """Gradients through batch statistics (train mode), not just the running ones."""
    inputs = CASES[case].inputs(6)
    reference = handle(case, "torch")
    cots = cotangents(reference.apply(inputs))
    want = reference.vjp(inputs, cots, train=True)
    assert_grads_close(handle(case, framework).vjp(inputs, cots, train=True), want, what=f"{framework} {case} train")


@pytest.mark.parametrize("framework", OTHER_FRAMEWORKS, ids=framework_id)
@pytest.mark.parametrize("case", RESNETS)
def test_batch_norm_train_mode_agrees_across_frameworks(case, framework, handle):
    """Outputs from batch statistics, then the running statistics written (momentum convention
    translated per framework, unbiased variance), over two consecutive training batches."""
    reference, other = handle(case, "torch"), handle(case, framework)
    for seed in (7, 8):
        inputs = CASES[case].inputs(seed)
        assert_outputs_close(other.apply(inputs, train=True), reference.apply(inputs, train=True), what=f"{framework} {case} train")
    want, got = reference.state_dict(), other.state_dict()
    for key in (k for k in want if k.endswith((".mean", ".var"))):
        assert max_abs(got[key], want[key]) <= 1e-5 * max(1.0, float(np.abs(want[key]).max())), key


@pytest.mark.parametrize("framework", OTHER_FRAMEWORKS, ids=framework_id)
@pytest.mark.parametrize("case", ["bert", "gpt", "vit", "resnet"])
def test_adamw_step_agrees_across_frameworks(case, framework, handle):
    """One AdamW step from the same weights and gradient equals torch.optim.AdamW's.

    Adam divides a gradient by its own magnitude, so where the exact gradient is zero the step
    follows the sign of fp32 rounding noise. The key bias is such a place (softmax ignores a
    constant added to every score of a row): its gradient is rounding noise (<1e-7, sometimes
    exactly 0) in every framework, with arbitrary sign. Elements whose reference gradient is at
    most 1e-4 of that tensor's largest are held only to Adam's bound on a first step (|update|
    <= lr * (1 + weight_decay * |p|)); every other element must agree within ADAMW_TOL."""
    inputs = CASES[case].inputs(9)
    reference = handle(case, "torch")
    cots = cotangents(reference.apply(inputs))
    grads = reference.vjp(inputs, cots)
    step = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    before = reference.state_dict()
    want = reference.adamw_step(inputs, cots, **step).state_dict()
    got = handle(case, framework).adamw_step(inputs, cots, **step).state_dict()
    moved = max(max_abs(want[k], before[k]) for k in want)
    assert moved > 1e-3, "the reference step did not move the parameters"
    for key in want:
        exact = np.ones(want[key].shape, bool)
        if key in grads:
            g = np.abs(grads[key])
            exact = g > 1e-4 * g.max()
        diff = max_abs(got[key][exact], want[key][exact])
        assert diff <= ADAMW_TOL, f"{framework} {case} {key}: {diff:.3g}"
        bound = step["lr"] * (1 + step["weight_decay"] * np.abs(before[key][~exact]))
        assert np.all(np.abs(got[key][~exact] - before[key][~exact]) <= bound + 1e-7), key


@pytest.mark.parametrize("framework", FRAMEWORKS, ids=framework_id)
@pytest.mark.parametrize("arch", ["bert", "gpt", "vit", "resnet"])
def test_canonical_round_trip_is_bit_exact(arch, framework):
    """canonical -> native -> canonical returns the very same bits, for every tensor."""
    config = get_config(arch, "tiny")
    rng = np.random.default_rng(0)
    source = {k: rng.standard_normal(s.shape).astype(np.float32) for k, s in canonical_spec(arch, config).items()}
    back = load(arch, framework, weights=copy_tensors(source)).state_dict()
    assert set(back) == set(source)
    for key in source:
        assert back[key].dtype == np.float32 and np.array_equal(back[key], source[key]), key


@pytest.mark.parametrize("framework", FRAMEWORKS, ids=framework_id)
@pytest.mark.parametrize("case", ["bert", "gpt", "vit", "resnet"])
def test_bfloat16_compute_stays_within_tolerance(case, framework, handle):
    """bf16 activations with fp32 parameters: within BF16_RTOL of the output scale of fp32,
    and not bit-identical to it (the option must really change the compute dtype)."""
    inputs = CASES[case].inputs(10)
    full = handle(case, framework).apply(inputs)
    half = handle(case, framework, compute_dtype="bfloat16").apply(inputs)
    for key in full:
        assert half[key].dtype == np.float32
        scale = max(1.0, float(np.abs(full[key]).max()))
        diff = max_abs(half[key], full[key])
        assert 0 < diff <= BF16_RTOL * scale, f"{framework} {case} {key}: bf16 diff {diff:.3g} (scale {scale:.3g})"


@pytest.mark.parametrize("framework", OTHER_FRAMEWORKS, ids=framework_id)
@pytest.mark.parametrize("case", list(CASES))
def test_block_outputs_agree_across_frameworks(case, framework, handle):
    inputs = CASES[case].inputs(8)
    want = handle(case, "torch").block_outputs(inputs)
    assert_outputs_close(handle(case, framework).block_outputs(inputs), want, what=f"{framework} {case} blocks")
