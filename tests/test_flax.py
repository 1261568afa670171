"""The Flax NNX backend's native API: nnx.Modules whose state paths are the canonical names,
nnx.jit and the backend's jax.jit over nnx.split state agreeing, batch-norm running statistics
in nnx.BatchStat, explicit `train` flag and dropout `rngs`, bfloat16 compute.

Numerics against transformers and the other frameworks live in conformance/
(`pytest conformance -k flax`).
"""

from __future__ import annotations

import logging

import ast
import math
import re
from pathlib import Path

import numpy as np
import pytest

import tiny

jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")
pytest.importorskip("optax")

import jax.numpy as jnp  # noqa: E402

from dlzoo.zoo import ZooError, canonical_spec, get_config, load  # noqa: E402
from dlzoo.zoo.handle import Handle  # noqa: E402
from dlzoo.zoo import flax as backend  # noqa: E402
from dlzoo.zoo.configs import BertConfig, GPTConfig, ResNetConfig  # noqa: E402
from dlzoo.zoo.flax import layers  # noqa: E402
from dlzoo.zoo.flax.layers import BatchNorm, attention  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = tiny.configs(num_layers=1)
BATCH = 3
ARCHS = list(CONFIGS)


def _inputs(arch: str, seed: int = 0) -> dict[str, np.ndarray]:
    return tiny.inputs(arch, CONFIGS[arch], BATCH, seed)


@pytest.fixture(scope="module")
def natives():
    """One tiny model per architecture for the module; tests that change weights build their own."""
    return {arch: backend.build(arch, config, seed=0) for arch, config in CONFIGS.items()}


def _flat(state) -> dict[str, np.ndarray]:
    return {".".join(map(str, path)): np.asarray(v.get_value()) for path, v in nnx.to_flat_state(state)}


EXPECTED_SHAPES = tiny.output_shapes(BATCH)


# --------------------------------------------------------------------------- shapes and names


@pytest.mark.parametrize("arch", ARCHS)
def test_shapes_and_state_paths_are_the_canonical_names(arch, natives):
    model = natives[arch]
    outputs = nnx.jit(lambda m, x: m(**x))(model, {k: jnp.asarray(v) for k, v in _inputs(arch).items()})
    assert {k: v.shape for k, v in outputs.items()} == EXPECTED_SHAPES[arch]
    assert all(v.dtype == jnp.float32 for v in outputs.values())
    # The nnx state path joined with "." is the canonical name, leaf for leaf.
    spec = canonical_spec(arch, CONFIGS[arch])
    params, stats = _flat(nnx.state(model, nnx.Param)), _flat(nnx.state(model, nnx.BatchStat))
    assert {k: v.shape for k, v in params.items()} == {k: s.shape for k, s in spec.items() if s.trainable}
    assert {k: v.shape for k, v in stats.items()} == {k: s.shape for k, s in spec.items() if not s.trainable}
    assert all(v.dtype == np.float32 for v in params.values())


@pytest.mark.parametrize(
    "arch, preset, published",
    [("gpt", "124M", 124_439_808), ("bert", "base", 109_482_240), ("vit", "B/16", 86_567_656), ("resnet", "50", 25_557_032)],
)
def test_full_size_parameter_counts(arch, preset, published):
    """Counted on abstract shapes (nnx.eval_shape): no full-size weights are allocated."""
    config = get_config(arch, preset)
    model = nnx.eval_shape(lambda: backend.MODELS[arch](config, rngs=nnx.Rngs(0)))
    assert sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model, nnx.Param))) == published


@pytest.mark.parametrize("preset", ["tiny", "18", "50"])
def test_resnet_blocks_follow_the_config_layout(preset):
    """Every block's channels, stride (on the 3x3 conv: v1.5) and projection shortcut are the
    ones ResNetConfig.layout() states."""
    config = get_config("resnet", preset)
    model = nnx.eval_shape(lambda: backend.MODELS["resnet"](config, rngs=nnx.Rngs(0)))
    layout = config.layout()
    assert [len(stage.blocks) for stage in model.stages] == [len(stage) for stage in layout]
    for stage, stage_layout in zip(model.stages, layout):
        for block, (n_in, width, n_out, stride) in zip(stage.blocks, stage_layout):
            convs = [block.conv1, block.conv2] + ([block.conv3] if config.block == "bottleneck" else [])
            assert convs[0].in_features == n_in and convs[-1].out_features == n_out
            assert all(c.out_features == width for c in convs[:-1])
            assert convs[-1].kernel.get_value().shape[-1] == n_out  # the kernel, not only the attribute
            strided = block.conv2 if config.block == "bottleneck" else block.conv1
            assert [tuple(c.strides) for c in convs] == [(stride, stride) if c is strided else (1, 1) for c in convs]
            if stride != 1 or n_in != n_out:
                assert tuple(block.downsample.conv.strides) == (stride, stride)
                assert block.downsample.conv.kernel.get_value().shape == (1, 1, n_in, n_out)
            else:
                assert block.downsample is None


@pytest.mark.parametrize("arch", ARCHS)
def test_canonical_round_trip_is_bit_exact(arch):
    config = CONFIGS[arch]
    rng = np.random.default_rng(1)
    source = {k: rng.standard_normal(s.shape).astype(np.float32) for k, s in canonical_spec(arch, config).items()}
    model = backend.load_state_dict(arch, config, backend.build(arch, config, seed=0), {k: v.copy() for k, v in source.items()})
    back = backend.state_dict(arch, config, model)
    assert set(back) == set(source)
    for key in source:
        assert back[key].dtype == np.float32 and np.array_equal(back[key], source[key]), key
    # The native module holds the very tensors: a dense kernel is [in, out], a conv kernel HWIO.
    if arch == "gpt":
        np.testing.assert_array_equal(model.blocks[0].attn.qkv.kernel[...], source["blocks.0.attn.qkv.kernel"])
    if arch == "resnet":
        np.testing.assert_array_equal(model.stages[1].blocks[0].downsample.bn.var[...], source["stages.1.blocks.0.downsample.bn.var"])


def test_long_input_and_wrong_cotangent_raise_zoo_errors(natives):
    with pytest.raises(ZooError, match="context_length"):
        natives["gpt"](jnp.zeros((1, 17), jnp.int32))
    with pytest.raises(ZooError, match="NHWC"):
        natives["vit"](jnp.zeros((1, 3, 16, 16)))
    inputs = _inputs("vit")
    handle = Handle("vit", "flax", CONFIGS["vit"], natives["vit"])  # the handle checks cotangents
    with pytest.raises(ZooError, match="names no output"):
        handle.vjp(inputs, {"probs": np.ones((BATCH, 5), np.float32)})
    with pytest.raises(ZooError, match="expected"):
        handle.vjp(inputs, {"logits": np.ones((1, 5), np.float32)})


# --------------------------------------------------------------------------- initialisation


def test_initialisation_follows_the_documented_schemes():
    bert = backend.build("bert", BertConfig(vocab_size=2048, hidden_size=64, num_layers=1, num_heads=4, mlp_dim=128), seed=0)
    word = np.asarray(bert.embeddings.word.embedding[...])
    assert abs(word.std() - 0.02) < 0.001  # truncated normal whose std *is* 0.02 ...
    assert np.abs(word).max() <= 2 * 0.02 / 0.8796 + 1e-6  # ... cut at two of its sigmas
    assert not np.asarray(bert.blocks[0].attn.qkv.bias[...]).any()
    gpt = backend.build("gpt", GPTConfig(vocab_size=64, context_length=16, hidden_size=256, num_layers=8, num_heads=4, mlp_dim=256), seed=0)
    for module, std in (
        (gpt.blocks[0].attn.qkv, 0.02),
        (gpt.blocks[0].attn.out, 0.02 / 4),
        (gpt.blocks[0].mlp.out, 0.02 / 4),
    ):  # residual projections: 1/sqrt(2 * 8)
        assert abs(np.asarray(module.kernel[...]).std() / std - 1) < 0.05
    resnet = backend.build("resnet", ResNetConfig(depths=(1,), widths=(64,), zero_init_residual=True), seed=0)
    block = resnet.stages[0].blocks[0]
    fan_out = 3 * 3 * 64  # kaiming normal, fan-out mode, ReLU gain
    assert abs(np.asarray(block.conv2.kernel[...]).std() / np.sqrt(2 / fan_out) - 1) < 0.05
    assert not np.asarray(block.bn3.scale[...]).any() and np.asarray(block.bn2.scale[...]).all()


# --------------------------------------------------------------------------- compilation


@pytest.mark.parametrize("arch", ARCHS)
def test_nnx_jit_matches_jax_jit_over_split_state(arch, natives):
    model = natives[arch]
    inputs = _inputs(arch)
    native = nnx.jit(lambda m, x: m(**x))(model, {k: jnp.asarray(v) for k, v in inputs.items()})
    split, _ = backend.apply(arch, CONFIGS[arch], model, inputs, train=False)
    for key in native:
        np.testing.assert_allclose(split[key], np.asarray(native[key]), rtol=1e-6, atol=1e-6, err_msg=key)


def test_backend_compiles_once_per_config_and_shape(natives):
    config = CONFIGS["gpt"]
    first = load("gpt", "flax", config, seed=0)
    first.apply(_inputs("gpt", seed=0))
    compiles = []

    class Count(logging.Handler):
        def emit(self, record):
            if "Compiling" in record.getMessage():
                compiles.append(record.getMessage())

    handler, logger = Count(), logging.getLogger("jax")
    logger.addHandler(handler)
    jax.config.update("jax_log_compiles", True)
    try:
        first.apply(_inputs("gpt", seed=1))  # new values, same shapes
        load("gpt", "flax", config, seed=3).apply(_inputs("gpt", seed=2))  # new model, same config
        first.apply(_inputs("gpt", seed=0), seed=5)  # new dropout seed is data, not a constant
    finally:
        jax.config.update("jax_log_compiles", False)
        logger.removeHandler(handler)
    assert [m for m in compiles if "_apply_module" in m] == [], compiles


def test_apply_sees_weights_changed_after_its_first_call(natives):
    """The cached graph of ``apply`` reads the module's current variables, and train-mode batch
    statistics are written back into the module."""
    handle = load("gpt", "flax", CONFIGS["gpt"], seed=0)
    inputs = _inputs("gpt")
    before = handle.apply(inputs)["logits"]
    nnx.update(handle.native, jax.tree.map(lambda v: v * 0.5, nnx.state(handle.native, nnx.Param)))
    after = handle.apply(inputs)["logits"]
    fresh = load("gpt", "flax", CONFIGS["gpt"], seed=0)
    nnx.update(fresh.native, nnx.state(handle.native, nnx.Param))
    np.testing.assert_array_equal(after, fresh.apply(inputs)["logits"])
    assert not np.allclose(before, after)
    resnet = load("resnet", "flax", CONFIGS["resnet"], seed=0)
    stats = jax.tree.map(np.asarray, nnx.state(resnet.native, nnx.BatchStat))
    resnet.apply(_inputs("resnet"), train=True)
    moved = jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)), stats, nnx.state(resnet.native, nnx.BatchStat))
    assert any(jax.tree.leaves(moved))


# --------------------------------------------------------------------------- batch norm


def test_batch_norm_matches_torch_conventions():
    """Normalise with the biased batch variance; track the unbiased one with torch's momentum."""
    bn = BatchNorm(4, momentum=0.9, epsilon=1e-5)  # torch momentum 0.1
    x = jax.random.normal(jax.random.key(0), (2, 3, 5, 4)) * 3.0 + 1.0
    y = bn(x, train=True)
    flat = np.asarray(x).reshape(-1, 4).astype(np.float64)
    np.testing.assert_allclose(bn.mean[...], 0.1 * flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(bn.var[...], 0.9 + 0.1 * flat.var(0, ddof=1), rtol=1e-5)
    want = (flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5)
    np.testing.assert_allclose(np.asarray(y).reshape(-1, 4), want, atol=1e-5)


def test_batch_stats_live_in_nnx_state_and_change_only_in_train_mode():
    config = CONFIGS["resnet"]
    model = backend.build("resnet", config, seed=0)
    before = _flat(nnx.state(model, nnx.BatchStat))
    params_before = _flat(nnx.state(model, nnx.Param))
    inputs = _inputs("resnet")
    backend.apply("resnet", config, model, inputs, train=False)
    assert all(np.array_equal(v, before[k]) for k, v in _flat(nnx.state(model, nnx.BatchStat)).items())
    backend.apply("resnet", config, model, inputs, train=True)
    after = _flat(nnx.state(model, nnx.BatchStat))
    assert set(after) == set(before)
    assert all(not np.array_equal(after[k], before[k]) for k in after), "every running statistic moves"
    assert all(np.array_equal(v, params_before[k]) for k, v in _flat(nnx.state(model, nnx.Param)).items())
    # The native module in place, as nnx users call it, moves the same statistics the same way.
    twin = backend.build("resnet", config, seed=0)
    twin(jnp.asarray(inputs["pixel_values"]), train=True)
    for key, value in _flat(nnx.state(twin, nnx.BatchStat)).items():
        np.testing.assert_allclose(value, after[key], rtol=1e-5, atol=1e-6, err_msg=key)


# --------------------------------------------------------------------------- shared transformer layers


def test_transformers_are_built_from_the_shared_layers_with_their_own_gelu(natives):
    """GPT-2 and ViT stack layers.Block (pre-LN); BERT keeps its post-LN block around the same
    layers.Attention and layers.MLP. The GELU flavour is each model's: tanh for GPT-2 only."""
    gpt, vit, bert = natives["gpt"], natives["vit"], natives["bert"]
    assert all(type(b) is layers.Block for model in (gpt, vit) for b in model.blocks)
    assert all(type(b) is not layers.Block and type(b.attn) is layers.Attention and type(b.mlp) is layers.MLP for b in bert.blocks)
    assert [b.mlp.approximate for b in gpt.blocks] == [True] * CONFIGS["gpt"].num_layers
    assert [b.mlp.approximate for b in [*vit.blocks, *bert.blocks]] == [False] * 2


@pytest.mark.parametrize("arch, causal", [("gpt", True), ("bert", False)])
def test_only_gpt_attention_is_causal(arch, causal, natives):
    """Changing the last token changes the first position's output in BERT, never in GPT-2."""
    ids = jnp.asarray(_inputs(arch)["input_ids"])
    changed = ids.at[:, -1].set((ids[:, -1] + 1) % CONFIGS[arch].vocab_size)
    out = "logits" if arch == "gpt" else "last_hidden_state"
    first, first_changed = natives[arch](ids)[out][:, 0], natives[arch](changed)[out][:, 0]
    assert np.array_equal(first, first_changed) == causal


def test_shared_mlp_gelu_flavours_are_the_published_formulas():
    x = jax.random.normal(jax.random.key(0), (2, 3, 4))
    erf = np.vectorize(math.erf)
    formulas = {
        False: lambda h: 0.5 * h * (1 + erf(h / np.sqrt(2))),  # exact (BERT, ViT)
        True: lambda h: 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3))),
    }  # GPT-2
    outputs = {}
    for approximate, gelu in formulas.items():
        mlp = layers.MLP(
            4,
            8,
            approximate=approximate,
            dropout=0.0,
            kernel_init=layers.normal(1.0),
            out_init=layers.normal(1.0),
            dtype=jnp.float32,
            rngs=nnx.Rngs(0),
        )
        h = np.asarray(mlp.fc(x), np.float64)  # [2, 3, 8]
        want = gelu(h) @ np.asarray(mlp.out.kernel[...], np.float64) + np.asarray(mlp.out.bias[...])
        outputs[approximate] = np.asarray(mlp(x, train=False, rngs=None))
        np.testing.assert_allclose(outputs[approximate], want, atol=1e-5)
    assert np.abs(outputs[False] - outputs[True]).max() > 1e-4  # the two flavours differ here


# --------------------------------------------------------------------------- dropout


@pytest.mark.parametrize("arch", ["gpt", "bert", "vit"])
def test_dropout_only_when_train(arch, natives):
    model = natives[arch]
    x = {k: jnp.asarray(v) for k, v in _inputs(arch).items()}
    out = next(iter(EXPECTED_SHAPES[arch]))
    call = nnx.jit(lambda m, x, rng, train: m(**x, train=train, rngs=nnx.Rngs(dropout=rng))[out], static_argnames="train")
    key0, key1 = jax.random.key(0), jax.random.key(1)
    eval_a, eval_b = call(model, x, key0, False), call(model, x, key1, False)
    np.testing.assert_array_equal(eval_a, eval_b)
    np.testing.assert_allclose(eval_a, model(**x)[out], atol=1e-6)  # eval needs no rngs at all (eager)
    train_a, train_a2, train_b = call(model, x, key0, True), call(model, x, key0, True), call(model, x, key1, True)
    np.testing.assert_array_equal(train_a, train_a2)  # same seed, same mask
    assert not np.allclose(train_a, train_b) and not np.allclose(train_a, eval_a)
    with pytest.raises(Exception, match="rngs"):
        model(**x, train=True)


def test_attention_dropout_alone_is_active_in_train_mode():
    config = CONFIGS["gpt"].replace(dropout=0.0)
    model = backend.build("gpt", config, seed=0)
    x = jnp.asarray(_inputs("gpt")["input_ids"])
    eval_out = model(x)["logits"]
    train_out = model(x, train=True, rngs=nnx.Rngs(dropout=0))["logits"]
    assert not np.allclose(train_out, eval_out)


@pytest.mark.parametrize("causal", [False, True])
def test_written_out_attention_equals_the_fused_kernel(causal):
    """The path that carries attention dropout computes what jax.nn.dot_product_attention does."""
    q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 5, 4, 8))
    bias = jnp.where(jnp.arange(5) < 3, 0.0, jnp.finfo(jnp.float32).min)[None, None, None, :].repeat(2, 0)
    fused = attention(q, k, v, bias=bias, is_causal=causal)
    # A dropout rate so small that no weight is dropped (keep probability rounds to 1 in float32).
    written = attention(q, k, v, bias=bias, is_causal=causal, dropout_rate=1e-12, rngs=nnx.Rngs(dropout=0))
    np.testing.assert_allclose(written, fused, atol=1e-6)


# --------------------------------------------------------------------------- bfloat16


def _primitives(jaxpr, found: list) -> list:
    """Every (primitive, operand dtypes) in a jaxpr, nested jaxprs included."""
    for eqn in jaxpr.eqns:
        found.append((eqn.primitive.name, tuple(str(v.aval.dtype) for v in eqn.invars if hasattr(v, "aval"))))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else (param,):
                if hasattr(sub, "eqns"):
                    _primitives(sub, found)
                elif hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                    _primitives(sub.jaxpr, found)
    return found


@pytest.mark.parametrize("arch", ARCHS)
def test_bfloat16_activations_with_float32_parameters_and_outputs(arch):
    model = backend.build(arch, CONFIGS[arch], seed=0, compute_dtype="bfloat16")
    assert all(v.dtype == np.float32 for v in _flat(nnx.state(model)).values())
    inputs = {k: jnp.asarray(v) for k, v in _inputs(arch).items()}
    graphdef, state = nnx.split(model)
    jaxpr = jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(**x))(state, inputs)
    matmuls = [dtypes for name, dtypes in _primitives(jaxpr.jaxpr, []) if name in ("dot_general", "conv_general_dilated")]
    assert matmuls and all(set(d) == {"bfloat16"} for d in matmuls), matmuls
    features = (
        model.forward_features(**inputs)
        if arch != "bert"
        else model.forward_features(inputs["input_ids"], inputs["token_type_ids"], inputs["attention_mask"])
    )
    assert features.dtype == jnp.bfloat16
    outputs, _ = backend.apply(arch, CONFIGS[arch], model, _inputs(arch), train=False)
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in outputs.values())


# --------------------------------------------------------------------------- gradients and AdamW


def test_vjp_matches_nnx_grad_and_adamw_step_moves_only_parameters():
    arch, config = "bert", CONFIGS["bert"]
    model = backend.build(arch, config, seed=0)
    inputs = _inputs(arch)
    outputs, _ = backend.apply(arch, config, model, inputs)
    rng = np.random.default_rng(2)
    cots = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in outputs.items()}
    grads = backend.vjp(arch, config, model, inputs, cots)
    assert set(grads) == {k for k, s in canonical_spec(arch, config).items() if s.trainable}

    def objective(m):
        out = m(**{k: jnp.asarray(v) for k, v in inputs.items()})
        return sum(jnp.sum(out[k] * cots[k]) for k in cots)

    native = _flat(nnx.grad(objective)(model))
    for key, value in grads.items():  # fp32 summation order differs eager vs compiled
        scale = max(1e-3, float(np.abs(native[key]).max()))
        assert np.abs(value - native[key]).max() <= 1e-5 * scale, key

    before = backend.state_dict(arch, config, model)
    lr = 1e-2
    backend.adamw_step(arch, config, model, inputs, cots, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    after = backend.state_dict(arch, config, model)
    # First Adam step without decay: each coordinate with a clear gradient moves by lr against its sign.
    clear = np.abs(grads["pooler.kernel"]) > 1e-3
    delta = after["pooler.kernel"] - before["pooler.kernel"]
    np.testing.assert_allclose(delta[clear], -lr * np.sign(grads["pooler.kernel"][clear]), rtol=1e-3)


# --------------------------------------------------------------------------- code conventions


def _markers(text: str) -> set[str]:
    return set(re.findall(r"# theory: ([\w-]+)", text))


def _arch_markers(framework: str, arch: str) -> set[str]:
    """The theory markers of ``zoo/<framework>/<arch>.py`` plus those of the layers.py functions
    and classes it imports (and what those use in turn): a concept that moved into the shared
    layers still belongs to every architecture built from them."""
    folder = ROOT / "zoo" / framework
    arch_text = (folder / f"{arch}.py").read_text()
    found = _markers(arch_text)
    if not (folder / "layers.py").exists():
        return found
    text = (folder / "layers.py").read_text()
    lines = text.splitlines()
    defs = {
        node.name: "\n".join(lines[node.lineno - 1 : node.end_lineno])
        for node in ast.parse(text).body
        if isinstance(node, (ast.FunctionDef, ast.ClassDef))
    }  # whole lines: trailing comments too
    todo = [
        alias.name
        for node in ast.walk(ast.parse(arch_text))
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module == "layers"
        for alias in node.names
    ]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or name not in defs:
            continue
        seen.add(name)
        found |= _markers(defs[name])
        todo += [other for other in defs if re.search(rf"\b{other}\b", defs[name])]
    return found


def test_theory_markers_are_known_and_the_same_as_torch():
    text = (ROOT / "docs" / "architecture.md").read_text()
    known = set(text.split("## Theory markers", 1)[1].split("```")[1].split())
    for arch in ARCHS:
        used = _arch_markers("flax", arch)
        assert used and used <= known, (arch, sorted(used - known))
        if (ROOT / "zoo" / "torch" / f"{arch}.py").exists():  # the same concepts as the torch model
            torch_used = _arch_markers("torch", arch)
            assert used == torch_used, (arch, sorted(used ^ torch_used))
    # Per-model choices stay in the model file, where the reader of that model looks.
    assert "causal-masking" in _markers((ROOT / "zoo" / "flax" / "gpt.py").read_text())
    assert "attention-mask" in _markers((ROOT / "zoo" / "flax" / "bert.py").read_text())
    assert "pre-ln-vs-post-ln" in _markers((ROOT / "zoo" / "flax" / "bert.py").read_text())
