"""The Haiku backend's native API: (transformed, params, state) under jax.jit, module paths that
map 1:1 onto canonical names, state that moves only in training, dropout only in training.

Numerics against torch and transformers live in conformance/; these tests cover what is
specific to Haiku, on tiny configs, each model built once per module.
"""

import numpy as np
import pytest

pytest.importorskip("haiku", reason="dm-haiku is not installed (pip install 'dlzoo[haiku]')")

import haiku as hk  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import dlzoo  # noqa: E402
from dlzoo.zoo import canonical_spec, get_config, load  # noqa: E402
from dlzoo.zoo import haiku as backend  # noqa: E402
from dlzoo.zoo.configs import ZooError  # noqa: E402
from dlzoo.zoo.haiku.layers import MLP, Attention, BatchNorm, canonical_name, normal  # noqa: E402

CONFIGS = {
    "gpt": get_config("gpt", "tiny", vocab_size=64, context_length=16, dropout=0.1, attention_dropout=0.1),
    "bert": get_config("bert", "tiny", vocab_size=64, max_positions=16, num_layers=1, mlm_head=True, num_classes=3),
    "vit": get_config("vit", "tiny", image_size=16, num_layers=1, dropout=0.1, attention_dropout=0.1),
    "resnet": get_config("resnet", "tiny"),
}
OUTPUT_SHAPES = {
    "gpt": {"logits": (2, 8, 64)},
    "bert": {"last_hidden_state": (2, 8, 128), "pooler_output": (2, 128), "mlm_logits": (2, 8, 64), "logits": (2, 3)},
    "vit": {"logits": (2, 10)},
    "resnet": {"logits": (2, 10)},
}


def _inputs(arch: str, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if arch in ("gpt", "bert"):
        return {"input_ids": rng.integers(0, 64, (2, 8)).astype(np.int32)}
    size = CONFIGS[arch].image_size if arch == "vit" else 32
    return {"pixel_values": rng.standard_normal((2, size, size, 3)).astype(np.float32)}


@pytest.fixture(scope="module")
def native():
    """arch -> (transformed, params, state), built once per module."""
    built = {}

    def get(arch: str):
        if arch not in built:
            built[arch] = dlzoo.create_model(arch, framework="haiku", config=CONFIGS[arch], seed=0)
        return built[arch]

    return get


def test_canonical_name_rule():
    assert canonical_name("gpt/~/blocks_0/~/attn/~/qkv", "kernel") == "blocks.0.attn.qkv.kernel"
    assert canonical_name("resnet/~/stages_1/~/blocks_12/~/downsample/~/bn", "var") == "stages.1.blocks.12.downsample.bn.var"
    assert canonical_name("vit", "cls_token") == "cls_token"
    assert canonical_name("bert/~/embeddings/~/token_type", "embedding") == "embeddings.token_type.embedding"
    assert canonical_name("gpt/~/ln_f", "scale") == "ln_f.scale"


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_native_is_a_transformed_triple_whose_names_are_canonical(arch, native):
    transformed, params, state = native(arch)
    assert isinstance(transformed, hk.TransformedWithState)
    spec = canonical_spec(arch, CONFIGS[arch])
    param_names = [canonical_name(m, leaf) for m, leaves in params.items() for leaf in leaves]
    state_names = [canonical_name(m, leaf) for m, leaves in state.items() for leaf in leaves]
    assert len(set(param_names + state_names)) == len(param_names + state_names), "two paths, one name"
    assert set(param_names) == {n for n, s in spec.items() if s.trainable}
    assert set(state_names) == {n for n, s in spec.items() if not s.trainable}  # BN mean/var only
    for name, value in zip(param_names, (v for leaves in params.values() for v in leaves.values())):
        assert value.shape == spec[name].shape and value.dtype == jnp.float32, name


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_jit_apply_shapes_and_canonical_round_trip(arch, native):
    transformed, params, state = native(arch)
    inputs = _inputs(arch)
    apply = jax.jit(transformed.apply, static_argnames="is_training")
    out, _ = apply(params, state, None, **inputs)
    assert {k: v.shape for k, v in out.items()} == OUTPUT_SHAPES[arch]
    assert all(v.dtype == jnp.float32 and bool(jnp.isfinite(v).all()) for v in out.values())

    # canonical -> native -> canonical is bit-exact, and the reloaded model computes the same.
    tensors = backend.state_dict(arch, CONFIGS[arch], (transformed, params, state))
    shuffled = {k: np.asarray(v) + 0.01 * np.float32(i % 7) for i, (k, v) in enumerate(sorted(tensors.items()))}
    reloaded = backend.load_state_dict(arch, CONFIGS[arch], (transformed, params, state), shuffled)
    again = backend.state_dict(arch, CONFIGS[arch], reloaded)
    assert set(again) == set(shuffled) and all(np.array_equal(again[k], shuffled[k]) for k in shuffled)
    back = backend.load_state_dict(arch, CONFIGS[arch], reloaded, tensors)
    out_back, _ = apply(*back[1:], None, **inputs)
    assert all(np.array_equal(out_back[k], out[k]) for k in out)


@pytest.mark.parametrize("arch", ["gpt", "vit"])
def test_dropout_only_when_training(arch, native):
    transformed, params, state = native(arch)
    inputs = _inputs(arch)
    apply = jax.jit(transformed.apply, static_argnames="is_training")
    eval_a, _ = apply(params, state, jax.random.key(1), **inputs)
    eval_b, _ = apply(params, state, jax.random.key(2), **inputs)
    assert np.array_equal(eval_a["logits"], eval_b["logits"]), "eval output depends on the rng"
    train_a, _ = apply(params, state, jax.random.key(1), **inputs, is_training=True)
    train_b, _ = apply(params, state, jax.random.key(1), **inputs, is_training=True)
    train_c, _ = apply(params, state, jax.random.key(2), **inputs, is_training=True)
    assert np.array_equal(train_a["logits"], train_b["logits"]), "same key, different dropout"
    assert not np.allclose(train_a["logits"], eval_a["logits"], atol=1e-4), "training did not drop out"
    assert not np.allclose(train_a["logits"], train_c["logits"], atol=1e-4), "dropout ignores the key"
    with pytest.raises(ValueError, match="PRNGKey"):  # hk.next_rng_key without a key says so
        transformed.apply(params, state, None, **inputs, is_training=True)


def test_resnet_state_changes_only_when_training(native):
    transformed, params, state = native("resnet")
    inputs = _inputs("resnet")
    apply = jax.jit(transformed.apply, static_argnames="is_training")
    _, eval_state = apply(params, state, None, **inputs)
    assert jax.tree.all(jax.tree.map(np.array_equal, eval_state, state))
    train_out, train_state = apply(params, state, None, **inputs, is_training=True)
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(a, b), train_state, state))
    assert moved and all(moved), "some running statistic did not move in training"
    eval_out, _ = apply(params, state, None, **inputs)
    assert not np.allclose(train_out["logits"], eval_out["logits"]), "training used running statistics"


def test_batch_norm_momentum_and_unbiased_running_variance():
    """decay_rate weights the old statistic; the running variance takes the unbiased batch
    variance (torch's rule), while the output is normalised with the biased one."""
    x = np.random.default_rng(0).standard_normal((2, 3, 3, 4)).astype(np.float32) * 3 + 1
    bn = hk.transform_with_state(lambda x: BatchNorm(decay_rate=0.9, eps=1e-5, name="bn")(x, is_training=True))
    params, state = bn.init(None, x)
    y, new_state = bn.apply(params, state, None, x)
    mean, var, n = x.mean((0, 1, 2)), x.var((0, 1, 2)), 18
    np.testing.assert_allclose(new_state["bn"]["mean"], 0.1 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new_state["bn"]["var"], 0.9 + 0.1 * var * n / (n - 1), rtol=1e-5)
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-4)


def _module_calls(model_fn, *inputs):
    """Abstractly (jax.eval_shape, no compute) init ``model_fn``'s model; return its parameter
    shapes and, per module path, every module called: (module, input shape, output shape)."""
    calls = {}

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__":
            calls[context.module.module_name] = (context.module, args[0].shape, getattr(out, "shape", None))
        return out

    def forward(*xs):
        with hk.intercept_methods(record):
            return model_fn()(*xs)

    params, _ = jax.eval_shape(hk.transform_with_state(forward).init, jax.random.key(0), *inputs)
    return params, calls


@pytest.mark.parametrize("preset", ["tiny", "18", "50"])
def test_resnet_blocks_follow_the_config_layout(preset):
    """Every block's channels, stride (on the 3x3 conv: v1.5) and projection shortcut are the
    ones ResNetConfig.layout() states."""
    from dlzoo.zoo.haiku.resnet import ResNet

    config = get_config("resnet", preset)
    params, calls = _module_calls(lambda: ResNet(config), jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
    layout = config.layout()
    blocks = {"/~/".join(m.split("/~/")[:3]) for m in calls if "/~/blocks_" in m}  # resnet/~/stages_s/~/blocks_b
    assert len(blocks) == sum(len(stage) for stage in layout)
    convs = ["conv1", "conv2"] + (["conv3"] if config.block == "bottleneck" else [])
    strided = "conv2" if config.block == "bottleneck" else "conv1"
    for s, stage in enumerate(layout):
        for b, (n_in, width, n_out, stride) in enumerate(stage):
            path = f"resnet/~/stages_{s}/~/blocks_{b}"
            _, shape_in, shape_out = calls[path]
            assert (shape_in[-1], shape_out[-1], shape_in[1] // shape_out[1]) == (n_in, n_out, stride), path
            kernels = [params[f"{path}/~/{c}"]["kernel"].shape for c in convs]
            assert kernels[0][2] == n_in and kernels[-1][3] == n_out, path
            assert all(k[3] == width for k in kernels[:-1]), path
            ratios = [calls[f"{path}/~/{c}"][1][1] // calls[f"{path}/~/{c}"][2][1] for c in convs]
            assert ratios == [stride if c == strided else 1 for c in convs], path
            projection = f"{path}/~/downsample/~/conv"
            if stride != 1 or n_in != n_out:
                assert params[projection]["kernel"].shape == (1, 1, n_in, n_out), path
                assert calls[projection][1][1] // calls[projection][2][1] == stride, path
            else:
                assert projection not in params, path


def test_shared_attention_causal_flag_equals_a_causal_bias():
    """GPT's is_causal and BERT's additive bias are two doors into the same attention."""

    def run(x, **kwargs):
        return Attention(16, 4, dropout=0.0, attention_dropout=0.0, init=normal(0.02), out_init=normal(0.02))(
            x, is_training=False, **kwargs
        )

    attn = hk.without_apply_rng(hk.transform(run))
    x = jax.random.normal(jax.random.key(0), (2, 5, 16))
    params = attn.init(jax.random.key(1), x)
    future = jnp.triu(jnp.ones((5, 5), dtype=bool), k=1)
    bias = jnp.where(future, jnp.finfo(jnp.float32).min, 0.0)[None, None]  # (1, 1, T, T)
    causal, biased, full = (attn.apply(params, x, **kw) for kw in ({"is_causal": True}, {"attn_bias": bias}, {}))
    np.testing.assert_allclose(causal, biased, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(causal[:, 0], attn.apply(params, x[:, :1])[:, 0])  # the first token sees only itself
    assert not np.allclose(causal, full, atol=1e-4)


def test_gelu_flavour_is_chosen_per_model():
    from dlzoo.zoo.haiku import bert, gpt, vit

    def flavours(model_cls, arch, inputs):
        _, calls = _module_calls(lambda: model_cls(CONFIGS[arch]), inputs)
        return {module.approximate for module, _, _ in calls.values() if isinstance(module, MLP)}

    ids = jax.ShapeDtypeStruct((1, 4), jnp.int32)
    assert flavours(gpt.GPT, "gpt", ids) == {True}  # GPT-2's "gelu_new"
    assert flavours(bert.BERT, "bert", ids) == {False}
    assert flavours(vit.ViT, "vit", jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)) == {False}
    with pytest.raises(ZooError, match="approximate"):
        hk.transform(lambda: MLP(16, 64, approximate="tanh", dropout=0.0, init=normal(0.02), out_init=normal(0.02))).init(None)


def test_zero_init_residual_zeroes_each_blocks_last_bn_scale():
    config = CONFIGS["resnet"].replace(zero_init_residual=True)
    tensors = load("resnet", "haiku", config).state_dict()
    last = [k for k in tensors if k.endswith("bn3.scale")]
    assert last and all(not tensors[k].any() for k in last)
    assert tensors["stages.0.blocks.0.bn1.scale"].all() and tensors["stem.bn.scale"].all()


def test_bfloat16_keeps_float32_params_and_outputs(native):
    transformed, params, state = native("gpt")
    handle = load("gpt", "haiku", CONFIGS["gpt"], compute_dtype="bfloat16")
    _, params16, _ = handle.native
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(params16))
    handle.load_state_dict(backend.state_dict("gpt", CONFIGS["gpt"], (transformed, params, state)))
    got = handle.apply(_inputs("gpt"))["logits"]
    want, _ = transformed.apply(params, state, None, **_inputs("gpt"))
    assert got.dtype == np.float32
    scale = float(np.abs(want["logits"]).max())
    assert 0 < np.abs(got - want["logits"]).max() <= 5e-2 * scale  # bf16 rounding, not a different model


def test_handle_calls_compile_once_per_shape():
    handle = load("gpt", "haiku", CONFIGS["gpt"])
    transformed = handle.native[0]
    for seed in range(3):
        handle.apply(_inputs("gpt", seed))
    assert backend._compiled(transformed, "apply", False, ())._cache_size() == 1
    handle.apply({"input_ids": np.zeros((1, 5), np.int32)})
    assert backend._compiled(transformed, "apply", False, ())._cache_size() == 2


def test_theory_markers_are_known_and_the_same_as_torch():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "architecture.md").read_text()
    known = set(text.split("## Theory markers", 1)[1].split("```")[1].split())

    def markers(path: Path) -> set[str]:
        return set(re.findall(r"# theory: ([\w-]+)", path.read_text()))

    for arch in CONFIGS:
        used = markers(root / "zoo" / "haiku" / f"{arch}.py")
        assert used and used <= known, (arch, sorted(used - known))
        assert used == markers(root / "zoo" / "torch" / f"{arch}.py"), arch
    # The shared transformer layers carry the markers of the lines that moved there.
    shared = markers(root / "zoo" / "haiku" / "layers.py")
    assert shared <= known and shared >= markers(root / "zoo" / "torch" / "layers.py")
