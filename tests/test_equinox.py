"""The Equinox backend's native API: single-example modules mapped with jax.vmap, filter_jit,
batch-norm running statistics in eqx.nn.State, explicit `inference` flag and dropout `key`.

Numerics against transformers and the other frameworks live in conformance/.
"""

from __future__ import annotations

import numpy as np
import pytest

import tiny

jax = pytest.importorskip("jax")
eqx = pytest.importorskip("equinox")
pytest.importorskip("optax")

import jax.numpy as jnp  # noqa: E402

from dlzoo.zoo import canonical_spec, load  # noqa: E402
from dlzoo.zoo import equinox as backend  # noqa: E402
from dlzoo.zoo.configs import GPTConfig, ResNetConfig  # noqa: E402

CONFIGS = tiny.configs(num_layers=1)
BATCH = 3
ARCHS = list(CONFIGS)


def _inputs(arch: str, seed: int = 0) -> dict[str, np.ndarray]:
    return tiny.inputs(arch, CONFIGS[arch], BATCH, seed)


@pytest.fixture(scope="module")
def natives():
    return {arch: backend.build(arch, config, seed=0) for arch, config in CONFIGS.items()}


def _call(arch, module, state, example: dict, **kwargs):
    """One example through the native module; outputs only."""
    if arch == "resnet":
        return module(example["pixel_values"], state, **kwargs)[0]
    return module(**example, **kwargs)


def _batched(arch, module, state, inputs: dict, **kwargs):
    return jax.vmap(lambda example: _call(arch, module, state, example, **kwargs))(inputs)


EXPECTED_SHAPES = tiny.output_shapes(BATCH)


@pytest.mark.parametrize("arch", ARCHS)
def test_shapes_and_canonical_names(arch, natives):
    module, state = natives[arch]
    outputs = _batched(arch, module, state, _inputs(arch))
    assert {k: v.shape for k, v in outputs.items()} == EXPECTED_SHAPES[arch]
    assert all(v.dtype == jnp.float32 for v in outputs.values())
    # The pytree path of every array is its canonical name, with the canonical shape.
    tensors = backend.state_dict(arch, CONFIGS[arch], natives[arch])
    spec = canonical_spec(arch, CONFIGS[arch])
    assert sorted(tensors) == sorted(spec)
    assert {k: v.shape for k, v in tensors.items()} == {k: s.shape for k, s in spec.items()}


@pytest.mark.parametrize("arch", ARCHS)
def test_canonical_round_trip_is_bit_exact(arch, natives):
    config = CONFIGS[arch]
    rng = np.random.default_rng(1)
    tensors = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in backend.state_dict(arch, config, natives[arch]).items()}
    if arch == "resnet":
        tensors = {k: np.abs(v) if k.endswith(".var") else v for k, v in tensors.items()}
    native = backend.load_state_dict(arch, config, backend.build(arch, config, seed=5), tensors)
    back = backend.state_dict(arch, config, native)
    assert sorted(back) == sorted(tensors)
    for name, value in tensors.items():
        assert np.array_equal(back[name], value), name


@pytest.mark.parametrize("arch", ARCHS)
def test_filter_jit_matches_eager(arch, natives):
    module, state = natives[arch]
    inputs = _inputs(arch)
    eager = _batched(arch, module, state, inputs)
    traces = []

    @eqx.filter_jit
    def jitted(module, inputs):
        traces.append(1)
        return _batched(arch, module, state, inputs)

    first = jitted(module, inputs)
    second = jitted(module, _inputs(arch, seed=1))  # same shapes, new values: no retrace
    assert len(traces) == 1
    for key in eager:
        np.testing.assert_allclose(first[key], eager[key], atol=1e-5, rtol=1e-5)
    assert not np.allclose(second[next(iter(second))], first[next(iter(first))])


@pytest.mark.parametrize("arch", ARCHS)
def test_vmap_equals_per_example_calls(arch, natives):
    module, state = natives[arch]
    inputs = _inputs(arch)
    batched = _batched(arch, module, state, inputs)
    for row in range(BATCH):
        single = _call(arch, module, state, {k: v[row] for k, v in inputs.items()})
        for key in batched:
            np.testing.assert_allclose(batched[key][row], single[key], atol=1e-5, rtol=1e-5, err_msg=f"{arch} {key} row {row}")


def test_backend_apply_does_not_recompile(natives, monkeypatch):
    traces = []
    forward = backend._forward
    monkeypatch.setattr(backend, "_forward", lambda *a, **k: traces.append(1) or forward(*a, **k))
    handle = load("gpt", "equinox", CONFIGS["gpt"], seed=0)
    handle.apply(_inputs("gpt", seed=0))
    traces.clear()
    handle.apply(_inputs("gpt", seed=1))
    handle.apply(_inputs("gpt", seed=2))
    assert traces == []


def test_batch_norm_state_changes_only_in_train_mode(natives):
    module, state = natives["resnet"]
    images = jnp.asarray(_inputs("resnet")["pixel_values"])

    def run(inference):
        # state goes in as an argument (in_axes None): State.set invalidates the object it was
        # called on, so a closed-over state would be unusable afterwards.
        return jax.vmap(lambda x, s: module(x, s, inference=inference), axis_name="batch", in_axes=(0, None), out_axes=(0, None))(
            images, state
        )[1]

    bn = module.stem.bn
    mean0, var0 = state.get(bn.state_index)
    mean_eval, var_eval = run(inference=True).get(bn.state_index)
    assert np.array_equal(mean_eval, mean0) and np.array_equal(var_eval, var0)

    mean_train, var_train = run(inference=False).get(bn.state_index)
    # torch's convention: momentum weights the new batch; running var from the UNBIASED variance.
    h = np.asarray(jax.vmap(module.stem.conv)(images), np.float64).reshape(-1, bn.scale.shape[0])
    m = CONFIGS["resnet"].bn_momentum
    np.testing.assert_allclose(mean_train, (1 - m) * np.asarray(mean0) + m * h.mean(0), atol=1e-6)
    np.testing.assert_allclose(var_train, (1 - m) * np.asarray(var0) + m * h.var(0, ddof=1), rtol=1e-5)

    # The handle returns the updated state only when train=True.
    handle = load("resnet", "equinox", CONFIGS["resnet"], seed=0)
    before = handle.state_dict()
    handle.apply(_inputs("resnet"), train=False)
    assert all(np.array_equal(v, before[k]) for k, v in handle.state_dict().items())
    handle.apply(_inputs("resnet"), train=True)
    after = handle.state_dict()
    assert not np.array_equal(after["stem.bn.mean"], before["stem.bn.mean"])
    assert np.array_equal(after["stem.conv.kernel"], before["stem.conv.kernel"])


@pytest.mark.parametrize("arch", ["gpt", "vit"])
def test_dropout_only_when_not_inference(arch, natives):
    module, state = natives[arch]
    example = {k: v[0] for k, v in _inputs(arch).items()}
    k1, k2 = jax.random.split(jax.random.key(0))
    clean = _call(arch, module, state, example)["logits"]
    # inference=True ignores the key entirely.
    np.testing.assert_array_equal(_call(arch, module, state, example, key=k1)["logits"], clean)
    noisy1 = _call(arch, module, state, example, key=k1, inference=False)["logits"]
    noisy1_again = _call(arch, module, state, example, key=k1, inference=False)["logits"]
    noisy2 = _call(arch, module, state, example, key=k2, inference=False)["logits"]
    np.testing.assert_array_equal(noisy1, noisy1_again)  # randomness comes from the key only
    assert not np.allclose(noisy1, clean) and not np.allclose(noisy1, noisy2)
    with pytest.raises(RuntimeError, match="key"):
        _call(arch, module, state, example, inference=False)


@pytest.mark.parametrize("arch", ["gpt", "resnet"])
def test_bfloat16_compute_keeps_float32_parameters_and_outputs(arch, natives):
    config = CONFIGS[arch]
    fp32 = natives[arch]
    module, state = backend.load_state_dict(
        arch, config, backend.build(arch, config, seed=0, compute_dtype="bfloat16"), backend.state_dict(arch, config, fp32)
    )
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(eqx.filter(module, eqx.is_array)))
    inputs = _inputs(arch)
    low = _batched(arch, module, state, inputs)["logits"]
    high = _batched(arch, *fp32, inputs)["logits"]
    assert low.dtype == jnp.float32
    scale = max(1.0, float(np.abs(high).max()))
    assert float(np.abs(low - high).max()) <= 5e-2 * scale
    assert not np.array_equal(low, high)  # bfloat16 really ran


def test_vjp_and_adamw_step_cover_every_trainable_tensor(natives):
    arch, config = "resnet", CONFIGS["resnet"]
    inputs = _inputs(arch)
    outputs, native = backend.apply(arch, config, natives[arch], inputs, train=False)
    cot = {"logits": np.random.default_rng(0).standard_normal(outputs["logits"].shape).astype(np.float32)}
    # adamw_step runs in inference mode (running statistics), so its gradients are these.
    grads = backend.vjp(arch, config, native, inputs, cot, train=False)
    spec = canonical_spec(arch, config)
    assert sorted(grads) == sorted(k for k, s in spec.items() if s.trainable)
    stepped = backend.adamw_step(arch, config, native, inputs, cot, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    before, after = backend.state_dict(arch, config, native), backend.state_dict(arch, config, stepped)
    # A first Adam step moves each parameter by ~lr * sign(grad); statistics stay put.
    kernel = "stem.conv.kernel"
    moved = after[kernel] - before[kernel]
    nonzero = np.abs(grads[kernel]) > 1e-4  # where eps=1e-8 is negligible
    np.testing.assert_allclose(moved[nonzero], -1e-2 * np.sign(grads[kernel][nonzero]), rtol=1e-3)
    assert np.array_equal(after["stem.bn.var"], before["stem.bn.var"])


def _block_layout(block) -> tuple[int, int, int, int]:
    """(in_channels, width, out_channels, stride) read off a ResNet block's conv kernels."""
    convs = [block.conv1, block.conv2] + ([block.conv3] if hasattr(block, "conv3") else [])
    strided = convs[1] if len(convs) == 3 else convs[0]  # v1.5: the bottleneck's 3x3 carries the stride
    return convs[0].kernel.shape[2], convs[0].kernel.shape[3], convs[-1].kernel.shape[3], strided.stride


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_resnet_blocks_follow_config_layout(block):
    config = ResNetConfig(block=block, depths=(2, 1, 1), widths=(4, 8, 8), stem_width=8, num_classes=5)
    module, _ = backend.build("resnet", config, seed=0)
    found = [[_block_layout(b) for b in stage.blocks] for stage in module.stages]
    assert found == config.layout()
    e = config.expansion
    assert found[2] == [(8 * e, 8, 8 * e, 2)]  # stride 2 without a width change still downsamples
    for stage, blocks in zip(module.stages, config.layout()):
        for b, (n_in, _, n_out, stride) in zip(stage.blocks, blocks):
            # A projection shortcut exactly where the residual's shape changes.
            assert (b.downsample is not None) == (stride != 1 or n_in != n_out)


def test_transformer_blocks_are_wired_per_architecture(natives):
    """The shared layers.Attention / MLP are parametrised per model: GPT-2 causal with tanh GELU
    and depth-scaled residual projections, BERT and ViT bidirectional with exact GELU."""
    from dlzoo.zoo.equinox import layers

    expected = {"gpt": (True, True), "vit": (False, False), "bert": (False, False)}
    for arch, (causal, approximate) in expected.items():
        module, _ = natives[arch]
        for block in module.blocks:
            assert isinstance(block.attn, layers.Attention) and isinstance(block.mlp, layers.MLP), arch
            assert (block.attn.is_causal, block.mlp.approximate) == (causal, approximate), arch
            assert block.attn.num_heads == CONFIGS[arch].num_heads, arch
    assert isinstance(natives["gpt"][0].blocks[0], layers.Block)
    assert isinstance(natives["vit"][0].blocks[0], layers.Block)
    assert not isinstance(natives["bert"][0].blocks[0], layers.Block)  # BERT is post-LN

    # GPT-2 init: std 0.02, the residual projections 0.02 / sqrt(2 * num_layers); big enough to measure.
    config = GPTConfig(vocab_size=64, context_length=16, hidden_size=256, num_layers=8, num_heads=4, mlp_dim=512)
    block = backend.build("gpt", config, seed=0)[0].blocks[0]
    residual_std = 0.02 / np.sqrt(2 * config.num_layers)
    for kernel, std in [
        (block.attn.qkv.kernel, 0.02),
        (block.mlp.fc.kernel, 0.02),
        (block.attn.out.kernel, residual_std),
        (block.mlp.out.kernel, residual_std),
    ]:
        assert abs(float(jnp.std(kernel)) / std - 1) < 0.03, (kernel.shape, float(jnp.std(kernel)), std)


def test_theory_markers_are_known_and_where_each_model_decides():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "architecture.md").read_text()
    known = set(text.split("## Theory markers", 1)[1].split("```")[1].split())
    folder = root / "zoo" / "equinox"

    def markers(name: str) -> set[str]:
        return set(re.findall(r"# theory: ([\w-]+)", (folder / f"{name}.py").read_text()))

    shared = markers("layers")
    assert {"multi-head-attention", "scaled-dot-product-attention", "gelu", "pre-ln-vs-post-ln", "residual-connections"} <= shared <= known
    # Each model marks the choices it makes itself: causality, mask, GELU flavour, block order, init.
    own = {
        "gpt": {"causal-masking", "gelu", "pre-ln-vs-post-ln", "initialization", "weight-tying"},
        "vit": {"gelu", "pre-ln-vs-post-ln", "initialization", "patch-embedding", "cls-pooling"},
        "bert": {"attention-mask", "gelu", "pre-ln-vs-post-ln", "residual-connections", "initialization", "masked-lm"},
        "resnet": {"batch-norm", "bottleneck-block", "residual-connections", "initialization"},
    }
    for arch, required in own.items():
        used = markers(arch)
        assert used <= known, (arch, sorted(used - known))
        assert required <= used, (arch, sorted(required - used))
