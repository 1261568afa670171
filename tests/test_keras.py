"""The Keras 3 backend's native side: named layers, model.fit, .keras files with safe_mode,
the torch-statistics batch norm, seeded dropout, AdamW's epsilon, and picking a keras backend
when KERAS_BACKEND is unset. Run once per keras backend (KERAS_BACKEND=jax|torch|tensorflow).

Numerics against transformers and the other frameworks live in conformance/.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tiny

pytest.importorskip("keras")

from dlzoo.zoo import canonical_spec, count_params, load  # noqa: E402
from dlzoo.zoo import keras as backend  # noqa: E402  (chooses the keras backend before keras loads)
from dlzoo.zoo.configs import ZooError, get_config  # noqa: E402
from dlzoo.zoo.keras.layers import BatchNorm, canonical_name  # noqa: E402

import keras  # noqa: E402

CONFIGS = tiny.configs(num_layers=2, vit_dropout=0.0)
ARCHS = list(CONFIGS)
BATCH = 4
OUTPUTS = tiny.output_shapes(BATCH)


def _inputs(arch: str, seed: int = 0) -> dict[str, np.ndarray]:
    return tiny.inputs(arch, CONFIGS[arch], BATCH, seed)


@pytest.fixture(scope="module")
def handles():
    """One handle per arch for the read-only tests (each model is built and compiled once)."""
    return {arch: load(arch, "keras", config=CONFIGS[arch], seed=0) for arch in ARCHS}


@pytest.mark.parametrize("arch", ARCHS)
def test_variables_are_the_canonical_spec(arch, handles):
    model = handles[arch].native
    spec = canonical_spec(arch, CONFIGS[arch])
    shapes = {canonical_name(v.path.removeprefix(f"{model.name}/")): tuple(v.shape) for v in model.weights}
    assert shapes == {name: s.shape for name, s in spec.items()}
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    assert trainable == count_params(arch, CONFIGS[arch])


def test_resnet18_has_the_published_parameter_count():
    model = backend.build("resnet", get_config("resnet", "18"), seed=0)
    assert sum(int(np.prod(v.shape)) for v in model.trainable_weights) == 11_689_512


@pytest.mark.parametrize("arch", ARCHS)
def test_summary_lists_the_named_layers(arch, handles):
    lines = []
    handles[arch].native.summary(print_fn=lambda line, **_: lines.append(line))
    text = "\n".join(lines)
    expected = {
        "gpt": ["wte", "wpe", "blocks_0", "blocks_1", "ln_f"],
        "bert": ["embeddings", "blocks_0", "pooler", "mlm", "classifier"],
        "vit": ["patch_embed", "blocks_0", "ln_f", "head"],
        "resnet": ["stem", "stages_0_blocks_0", "stages_1_blocks_0", "head"],
    }[arch]
    for name in expected:
        assert name in text, f"{name} missing from the summary:\n{text}"
    assert f"{count_params(arch, CONFIGS[arch]):,}" in text  # trainable count, as the spec says


@pytest.mark.parametrize("arch", ARCHS)
def test_output_shapes_and_dtypes(arch, handles):
    outputs = handles[arch].apply(_inputs(arch))
    assert {k: v.shape for k, v in outputs.items()} == OUTPUTS[arch]
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in outputs.values())


@pytest.mark.parametrize("arch", ["gpt", "resnet"])
def test_bfloat16_policy_keeps_float32_variables_and_outputs(arch):
    h = load(arch, "keras", config=CONFIGS[arch], seed=0, compute_dtype="bfloat16")
    assert h.native.dtype_policy.name == "mixed_bfloat16"
    assert {v.dtype for v in h.native.weights} == {"float32"}
    outputs = h.native(_inputs(arch))
    assert all(keras.backend.standardize_dtype(v.dtype) == "float32" for v in outputs.values())
    hidden = h.native.forward_features(*_inputs(arch).values())
    assert keras.backend.standardize_dtype(hidden.dtype) == "bfloat16"


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = (backend.state_dict("vit", CONFIGS["vit"], backend.build("vit", CONFIGS["vit"], seed=s)) for s in (3, 3, 4))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["blocks.0.attn.qkv.kernel"], c["blocks.0.attn.qkv.kernel"])
    # every initializer draws its own values: no two tensors of one shape are copies
    assert not np.array_equal(a["blocks.0.attn.out.kernel"], a["blocks.0.mlp.fc.kernel"][:, :32])


def test_dropout_is_seeded_and_only_in_training(handles):
    h, inputs = handles["gpt"], _inputs("gpt")
    first, again = h.apply(inputs, train=True, seed=1), h.apply(inputs, train=True, seed=1)
    other, evaluated = h.apply(inputs, train=True, seed=2), h.apply(inputs)
    np.testing.assert_array_equal(first["logits"], again["logits"])
    assert not np.allclose(first["logits"], other["logits"])
    assert not np.allclose(first["logits"], evaluated["logits"])
    np.testing.assert_array_equal(evaluated["logits"], h.apply(inputs)["logits"])


def test_batch_norm_updates_running_variance_with_the_unbiased_variance():
    """keras.layers.BatchNormalization would use the biased variance; torch (and dlzoo) the unbiased."""
    x = np.random.default_rng(0).standard_normal((2, 3, 3, 4)).astype(np.float32) * 2 + 1
    bn = BatchNorm(momentum=0.9, epsilon=1e-5)
    y = keras.ops.convert_to_numpy(bn(x, training=True))
    n = x.shape[0] * x.shape[1] * x.shape[2]
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean), 0.1 * mean, atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_variance), 0.9 + 0.1 * var * n / (n - 1), rtol=1e-6)
    inference = keras.ops.convert_to_numpy(bn(x, training=False))
    np.testing.assert_allclose(inference, (x - 0.1 * mean) / np.sqrt(0.9 + 0.1 * var * n / (n - 1) + 1e-5), atol=1e-5)


def test_vjp_restores_batch_norm_statistics():
    h = load("resnet", "keras", config=CONFIGS["resnet"], seed=0)
    before = h.state_dict()
    outputs = h.apply(_inputs("resnet"))
    h.vjp(_inputs("resnet"), {"logits": np.ones_like(outputs["logits"])}, train=True)
    after = h.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_adamw_step_uses_torch_epsilon_convention():
    """One step against AdamW written out as torch does it; epsilon large enough that keras'
    own convention (epsilon added before bias correction) would be off by far more than 1e-6."""
    h = load("vit", "keras", config=CONFIGS["vit"], seed=0)
    inputs = _inputs("vit")
    cots = {"logits": np.random.default_rng(1).standard_normal((BATCH, 5)).astype(np.float32) * 1e-3}
    before, grads = h.state_dict(), h.vjp(inputs, cots)
    lr, (b1, b2), eps, wd = 1e-2, (0.9, 0.99), 1e-4, 0.1
    after = h.adamw_step(inputs, cots, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd).state_dict()
    for name, p in before.items():
        g = grads[name]
        m_hat, v_hat = (1 - b1) * g / (1 - b1), (1 - b2) * g * g / (1 - b2)
        want = p * (1 - lr * wd) - lr * m_hat / (np.sqrt(v_hat) + eps)
        np.testing.assert_allclose(after[name], want, atol=2e-6, err_msg=name)


def test_unknown_cotangent_is_a_clear_error(handles):
    with pytest.raises(ZooError, match="names no output of this gpt"):
        handles["gpt"].vjp(_inputs("gpt"), {"hidden": np.zeros((BATCH, tiny.LENGTH, 32), np.float32)})


def _fit_data(arch: str):
    rng = np.random.default_rng(0)
    inputs = _inputs(arch)
    if arch == "gpt":
        return inputs, {"logits": np.roll(inputs["input_ids"], -1, axis=1)}  # next token
    if arch == "bert":
        return inputs, {"mlm_logits": inputs["input_ids"], "logits": rng.integers(0, 3, (BATCH,)).astype(np.int32)}
    return inputs, {"logits": rng.integers(0, 5, (BATCH,)).astype(np.int32)}


@pytest.mark.parametrize("arch", ARCHS)
def test_fit_reduces_the_loss(arch):
    model = backend.build(arch, CONFIGS[arch], seed=0)
    x, y = _fit_data(arch)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=1e-2), loss={k: loss for k in y})
    history = model.fit(x, y, batch_size=BATCH, epochs=8, verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize("arch", ARCHS)
def test_keras_file_round_trip_with_safe_mode(arch, tmp_path):
    model = backend.build(arch, CONFIGS[arch], seed=0, compute_dtype="bfloat16" if arch == "vit" else "float32")
    if arch == "resnet":  # running statistics must travel too
        model(_inputs(arch), training=True)
    path = tmp_path / f"{arch}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded) is type(model) and loaded.config == model.config
    assert loaded.dtype_policy.name == model.dtype_policy.name
    want = backend.state_dict(arch, CONFIGS[arch], model)
    got = backend.state_dict(arch, CONFIGS[arch], loaded)
    assert set(got) == set(want) and all(np.array_equal(got[k], want[k]) for k in want)
    a, b = model(_inputs(arch)), loaded(_inputs(arch))
    for key in a:
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a[key]), keras.ops.convert_to_numpy(b[key]))


# Makes the listed packages look uninstalled, through sitecustomize so it is in place before
# anything imports: a None entry in sys.modules makes `import` raise ModuleNotFoundError and
# importlib.util.find_spec return None, as for a package that is not there.
_HIDE = textwrap.dedent("""
    import sys
    for name in {hidden!r}:
        sys.modules[name] = None
""")


# As the CLI does (dlzoo.clitools): the library's notices shown as "note:" lines.
_CLI_NOTES = "from dlzoo.clitools import _show_notes; _show_notes(); "


def _run_without(hidden: list[str], tmp_path, keras_backend: str | None = None, prefix: str = ""):
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_HIDE.format(hidden=sorted(hidden)))
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    if keras_backend:
        env["KERAS_BACKEND"] = keras_backend
    code = prefix + "import dlzoo.zoo.keras, keras; print(keras.backend.backend())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("hidden, chosen", [(["tensorflow"], "jax"), (["tensorflow", "jax"], "torch")])
def test_backend_is_chosen_when_unset_and_tensorflow_is_missing(hidden, chosen, tmp_path):
    pytest.importorskip(chosen)
    result = _run_without(hidden, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == chosen
    assert "KERAS_BACKEND" not in result.stderr, "the library logs its choice, it never prints it"
    shown = _run_without(hidden, tmp_path, prefix=_CLI_NOTES)
    notes = [line for line in shown.stderr.splitlines() if line.startswith("note:")]
    assert notes == [
        f"note: KERAS_BACKEND is unset and tensorflow is not installed; keras runs on {chosen} "
        "(set KERAS_BACKEND=jax|torch|tensorflow to choose)"
    ]


def test_explicit_keras_backend_is_respected_silently(tmp_path):
    pytest.importorskip("torch")
    result = _run_without(["tensorflow"], tmp_path, keras_backend="torch", prefix=_CLI_NOTES)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "torch"
    assert "note:" not in result.stderr


_CONV_GRADIENTS = """
import numpy as np, keras
from dlzoo.zoo.keras.layers import Conv2D

def kernel_gradient(conv, x, cot):
    if keras.backend.backend() == "torch":
        import torch
        y = conv(x)
        (grad,) = torch.autograd.grad((y * torch.tensor(cot)).sum(), [conv.kernel.value])
        return y.detach().numpy(), grad.numpy()
    import tensorflow as tf
    with tf.GradientTape() as tape:
        y = conv(x)
        loss = tf.reduce_sum(y * cot)
    return y.numpy(), tape.gradient(loss, conv.kernel.value).numpy()

rng = np.random.default_rng(0)
for trial in range(60):
    for c_in, c_out, stride, size in [(8, 16, 2, 10), (16, 32, 2, 10), (8, 8, 1, 10), (32, 16, 1, 5)]:
        conv = Conv2D(c_out, 1, strides=stride, use_bias=False)
        conv.build((None, size, size, c_in))
        x = rng.standard_normal((5, size, size, c_in), dtype=np.float32)
        sub = x[:, ::stride, ::stride]
        cot = rng.standard_normal(sub.shape[:3] + (c_out,)).astype(np.float32)
        y, grad = kernel_gradient(conv, x, cot)
        w = keras.ops.convert_to_numpy(conv.kernel)[0, 0]
        np.testing.assert_allclose(y, np.einsum("bhwi,io->bhwo", sub, w), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(grad[0, 0], np.einsum("bhwi,bhwo->io", sub, cot), rtol=1e-4, atol=1e-4)
print("ok")
"""


@pytest.mark.parametrize("keras_backend", ["torch", "tensorflow"])
def test_1x1_conv_gradients_are_right_and_do_not_crash(keras_backend):
    """oneDNN's 1x1 weight-gradient kernel (torch 2.13 with channels-last input, tensorflow's
    CPU build) crashes intermittently on AVX-512 CPUs: a segfault in most runs of this loop with
    keras.layers.Conv2D. dlzoo's Conv2D computes a 1x1 convolution as a matmul. Run in a
    subprocess: a crash must fail, not kill, the suite."""
    pytest.importorskip(keras_backend)
    env = {**os.environ, "KERAS_BACKEND": keras_backend}
    result = subprocess.run([sys.executable, "-c", _CONV_GRADIENTS], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_is_a_multiply_by_the_scaled_mask(rate):
    """The models' Dropout keeps ``keep = 1 - rate`` of the values, scaled by 1/keep, and is the
    identity in inference; on jax it draws keras' own mask, so it equals keras.layers.Dropout bit
    for bit (the multiply only changes what XLA can fuse)."""
    from dlzoo.zoo.keras.layers import Dropout

    x = np.random.default_rng(0).normal(size=(8, 64, 32)).astype("float32")
    ours, theirs = Dropout(rate, seed=7), keras.layers.Dropout(rate, seed=7)
    y = keras.ops.convert_to_numpy(ours(x, training=True))
    kept = y != 0
    assert abs(1 - kept.mean() - rate) < 0.02
    np.testing.assert_allclose(y[kept], x[kept] / (1 - rate), rtol=1e-6)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(ours(x, training=False)), x)
    if keras.backend.backend() == "jax":
        np.testing.assert_array_equal(y, keras.ops.convert_to_numpy(theirs(x, training=True)))
        # the seed generators advance in step: the next draws agree too
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(ours(x, training=True)), keras.ops.convert_to_numpy(theirs(x, training=True))
        )
