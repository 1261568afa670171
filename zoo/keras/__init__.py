"""Keras 3 backend: the models of this package on whichever backend ``KERAS_BACKEND`` names.

The seven functions below are the backend contract of ``dlzoo.zoo.handle``; the handle's framework
id is "keras" whatever keras runs on (jax, torch or tensorflow). When ``KERAS_BACKEND`` is unset
and tensorflow (keras' default) is not installed, an installed backend is chosen before keras is
imported (jax, then torch) and the choice is logged (``dlzoo.zoo.frameworks``), instead of failing
inside keras.

Canonical names come from ``variable.path`` (``layers.canonical_name``): the model's own name is
dropped, ``blocks_0/attn/qkv/kernel`` becomes ``blocks.0.attn.qkv.kernel``, keras' leaf names are
renamed (gamma -> scale, beta -> bias, embeddings -> embedding, moving_mean -> mean,
moving_variance -> var). Layouts need no transposes: keras already stores dense [in, out], conv
HWIO, images NHWC.

Model files use keras.ops only; gradients need the backend's own autodiff (jax.grad, torch
autograd, tf.GradientTape), and that backend-specific code lives here and nowhere else.
"""

from __future__ import annotations

import functools
import weakref

from ..frameworks import choose_keras_backend

choose_keras_backend()  # before keras is imported; logged, never printed (see dlzoo.zoo.frameworks)

import numpy as np  # noqa: E402
import keras  # noqa: E402
from keras import ops  # noqa: E402

from ..configs import ZooError  # noqa: E402
from .bert import Bert  # noqa: E402
from .canonical import _named_weights, _numpy, load_state_dict, state_dict  # noqa: E402
from .gpt import GPT  # noqa: E402
from .layers import canonical_name  # noqa: E402
from .resnet import ResNet  # noqa: E402
from .vit import ViT  # noqa: E402

MODELS: dict[str, type[keras.Model]] = {"bert": Bert, "gpt": GPT, "resnet": ResNet, "vit": ViT}


def _symbolic_inputs(arch: str, config) -> dict[str, keras.KerasTensor]:
    """Symbolic inputs: one call on them creates every variable without running (or, on jax,
    compiling) the model."""
    if arch in ("gpt", "bert"):
        return {"input_ids": keras.KerasTensor((1, 1), "int32")}
    size = config.image_size if arch == "vit" else 32  # 32 px still leaves 1x1 after /32
    return {"pixel_values": keras.KerasTensor((1, size, size, config.num_channels), "float32")}


def build(arch: str, config, *, seed: int = 0, compute_dtype: str = "float32") -> keras.Model:
    """A built model with weights drawn from ``seed``. bfloat16 compute is keras' mixed_bfloat16
    policy: float32 variables, bfloat16 activations and matmuls, outputs cast back to float32."""
    policy = "mixed_bfloat16" if compute_dtype == "bfloat16" else "float32"  # theory: mixed-precision
    model = MODELS[arch](config, seed=seed, name=arch, dtype=policy)
    model(_symbolic_inputs(arch, config))
    return model


# --------------------------------------------------------------------------- running the model


def _reseed(native: keras.Model, seed: int) -> None:
    """Dropout randomness from ``seed``: restart every dropout layer's SeedGenerator from a seed
    derived from it, each generator its own, so one call with one seed is reproducible."""
    derive = np.random.default_rng(seed)
    for v in native.non_trainable_variables:
        if v.name == "seed_generator_state":
            dtype = ops.convert_to_numpy(v.value).dtype
            v.assign(np.array([derive.integers(2**31 - 1), 0], dtype=dtype))


# model -> {(what, train): jitted function}. On jax, keras runs eagerly op by op, compiling every
# op for every new shape; one jitted stateless call per model and mode compiles once instead.
_JAX_CACHE: "weakref.WeakKeyDictionary[keras.Model, dict]" = weakref.WeakKeyDictionary()


def _split_flags(inputs: dict) -> tuple[dict, dict]:
    """(arrays, options): Python bools such as ``interpolate_pos_encoding`` are call keywords of
    the model (and part of the jit cache key), never traced."""
    return ({k: v for k, v in inputs.items() if not isinstance(v, bool)}, {k: v for k, v in inputs.items() if isinstance(v, bool)})


def _jax_function(arch: str, native: keras.Model, what: str, train: bool, flags: dict | None = None):
    import jax

    flags = flags or {}
    cache = _JAX_CACHE.setdefault(native, {})
    key = (what, train, tuple(sorted(flags.items())))
    if key not in cache:
        model = weakref.ref(native)  # the cache must not keep the model alive

        def forward(params, state, inputs):
            return model().stateless_call(params, state, inputs, training=train, **flags)

        def objective(params, state, inputs, cotangents):
            return _objective(forward(params, state, inputs)[0], cotangents, arch)

        cache[key] = jax.jit(forward if what == "apply" else jax.grad(objective))
    return cache[key]


def _values(variables) -> list:
    return [v.value for v in variables]


def apply(
    arch: str, config, native: keras.Model, inputs: dict[str, np.ndarray], *, train: bool = False, seed: int = 0
) -> tuple[dict[str, np.ndarray], keras.Model]:
    if train:
        _reseed(native, seed)
    inputs, flags = _split_flags(inputs)
    if keras.backend.backend() == "jax":
        forward = _jax_function(arch, native, "apply", train, flags)
        outputs, state = forward(_values(native.trainable_variables), _values(native.non_trainable_variables), inputs)
        for v, value in zip(native.non_trainable_variables, state):  # batch-norm statistics, seeds
            v.assign(value)
    else:
        outputs = native(inputs, training=train, **flags)
    return {k: _numpy(v) for k, v in outputs.items()}, native


def block_outputs(arch: str, config, native: keras.Model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The output of every residual block in inference mode, by canonical block name. Keras has
    no forward hooks: for one eager call, each block's ``call`` is shadowed on the instance by a
    wrapper that records the output (``Layer.__call__`` looks ``call`` up on the instance)."""
    outputs: dict[str, np.ndarray] = {}
    blocks = {canonical_name(f"{layer.name}/x").removesuffix(".x"): layer for layer in native.blocks}

    def recording(name, call):
        def wrapper(*args, **kwargs):
            out = call(*args, **kwargs)
            outputs[name] = _numpy(out)
            return out

        return wrapper

    for name, layer in blocks.items():
        layer.call = recording(name, layer.call)
    inputs, flags = _split_flags(inputs)
    config = native.config
    if getattr(config, "scan_layers", False):
        native.config = config.replace(scan_layers=False)  # a scanned block is called once, on traced values
    try:
        native(inputs, training=False, **flags)
    finally:
        native.config = config
        for layer in blocks.values():
            del layer.call  # the class's own call again
    return outputs


def _objective(outputs: dict, cotangents: dict[str, np.ndarray], arch: str):
    """sum_k sum(outputs[k] * cotangents[k]): its gradient is the vjp with those cotangents."""
    unknown = sorted(set(cotangents) - set(outputs))
    if unknown:
        raise ZooError(f"cotangents for {unknown} match no {arch} output; outputs are {sorted(outputs)}")
    return sum(ops.sum(outputs[k] * ops.convert_to_tensor(c, dtype="float32")) for k, c in cotangents.items())


def _gradients(arch: str, native: keras.Model, inputs, cotangents, *, train: bool) -> list:
    """Gradients of the objective for ``native.trainable_variables``, in that order, with the
    backend's own autodiff. Batch-norm running statistics are left as they were: a gradient is
    a question about the model, not a training step."""
    variables = native.trainable_variables
    backend = keras.backend.backend()
    inputs, flags = _split_flags(inputs)
    if backend == "jax":  # stateless: the returned statistics are simply dropped
        grad = _jax_function(arch, native, "grad", train, flags)
        cots = {k: np.asarray(c, np.float32) for k, c in cotangents.items()}
        return list(grad(_values(variables), _values(native.non_trainable_variables), inputs, cots))
    saved = [(v, ops.copy(v.value)) for v in native.non_trainable_variables]
    try:
        if backend == "torch":
            import torch

            loss = _objective(native(inputs, training=train, **flags), cotangents, arch)
            grads = torch.autograd.grad(loss, [v.value for v in variables], allow_unused=True)
        elif backend == "tensorflow":
            import tensorflow as tf

            with tf.GradientTape() as tape:
                loss = _objective(native(inputs, training=train, **flags), cotangents, arch)
            grads = [
                None if g is None else tf.convert_to_tensor(g)  # embeddings give IndexedSlices
                for g in tape.gradient(loss, variables)
            ]
        else:
            raise ZooError(f"keras backend {backend!r} is not supported by dlzoo; set KERAS_BACKEND to jax, torch or tensorflow")
    finally:
        for v, value in saved:
            v.assign(value)
    return [ops.zeros_like(v.value) if g is None else g for v, g in zip(variables, grads)]


def vjp(
    arch: str,
    config,
    native: keras.Model,
    inputs: dict[str, np.ndarray],
    cotangents: dict[str, np.ndarray],
    *,
    train: bool = False,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    if train:
        _reseed(native, seed)
    grads = _gradients(arch, native, inputs, cotangents, train=train)
    names = {id(v): name for name, v in _named_weights(native).items()}
    return {names[id(v)]: _numpy(g) for v, g in zip(native.trainable_variables, grads)}


def adamw_step(
    arch: str,
    config,
    native: keras.Model,
    inputs: dict[str, np.ndarray],
    cotangents: dict[str, np.ndarray],
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    seed: int = 0,
) -> keras.Model:
    """One keras.optimizers.AdamW step (fresh state) on the vjp objective, in eval mode.

    keras decays like torch (p -= lr * wd * p, then the Adam update) but adds epsilon to
    sqrt(v) before bias correction, torch after: eps_keras = eps * sqrt(1 - beta2^t) makes the
    two identical at step t, here t = 1.
    """

    # theory: adamw
    def make_optimizer(learning_rate):
        return keras.optimizers.AdamW(
            learning_rate=learning_rate, weight_decay=weight_decay, beta_1=betas[0], beta_2=betas[1], epsilon=eps * (1.0 - betas[1]) ** 0.5
        )

    if keras.backend.backend() == "jax":
        # Eagerly, keras' optimizer runs op by op (and compiles each op on first use); one jitted
        # stateless step per (model, betas, eps, weight decay) with the learning rate as data
        # compiles once, whatever schedule the caller follows.
        key = ("adamw", tuple(betas), eps, weight_decay)
        cache = _JAX_CACHE.setdefault(native, {})
        if key not in cache:
            cache[key] = _jax_adamw(arch, native, make_optimizer(1.0))
        step, fresh, lr_index = cache[key]
        opt_vars = list(fresh)
        opt_vars[lr_index] = np.float32(lr)
        cots = {k: np.asarray(c, np.float32) for k, c in cotangents.items()}
        params = step(_values(native.trainable_variables), _values(native.non_trainable_variables), opt_vars, inputs, cots)
        for v, value in zip(native.trainable_variables, params):
            v.assign(value)
        return native
    grads = _gradients(arch, native, inputs, cotangents, train=False)
    make_optimizer(lr).apply_gradients(zip(grads, native.trainable_variables))
    return native


def generate(
    arch: str,
    config,
    native: keras.Model,
    input_ids: np.ndarray,
    attention_mask: np.ndarray | None,
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    seed: int,
) -> np.ndarray:
    """``GPT.generate`` (eager, any keras backend); sampling draws from keras.random with ``seed``."""
    out = native.generate(
        input_ids, attention_mask, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed
    )
    return np.asarray(ops.convert_to_numpy(out), dtype=np.int32)


def _jax_adamw(arch: str, native: keras.Model, optimizer):
    """A jitted AdamW step from a fresh optimizer state: (step, fresh state, index of the lr)."""
    import jax

    optimizer.build(native.trainable_variables)
    fresh = [np.array(ops.convert_to_numpy(v.value)) for v in optimizer.variables]
    lr_index = next(i for i, v in enumerate(optimizer.variables) if v.path.endswith("learning_rate"))
    grad = _jax_function(arch, native, "grad", False)

    def step(params, state, opt_vars, inputs, cotangents):
        grads = grad(params, state, inputs, cotangents)
        params, _ = optimizer.stateless_apply(opt_vars, grads, params)
        return params

    return jax.jit(step), fresh, lr_index


def benchmark_step(
    arch: str,
    config,
    native: keras.Model,
    inputs: dict[str, np.ndarray],
    cotangents: dict[str, np.ndarray],
    *,
    mode: str,
    seed: int = 0,
    fit: bool = False,
):
    """A function that runs one step and returns once it is done (see the torch backend). On the
    jax backend: a jitted stateless step (``stateless_call`` + ``optimizer.stateless_apply``),
    keras' low-overhead path. With ``fit=True``, or on another backend: keras' own compiled
    ``train_on_batch`` / ``predict_on_batch``, the path ``model.fit`` takes. A train step returns
    the objective before its update (``train_on_batch``: keras' reported loss)."""
    if mode == "forward":
        if keras.backend.backend() == "jax" and not fit:
            forward = _jax_function(arch, native, "apply", False)
            params, state = _values(native.trainable_variables), _values(native.non_trainable_variables)
            return lambda: _block(forward(params, state, inputs))
        return lambda: _block(native.predict_on_batch(inputs))
    optimizer = keras.optimizers.AdamW(learning_rate=1e-4)
    _reseed(native, seed)
    if keras.backend.backend() != "jax" or fit:
        names = list(native(inputs, training=False))
        native.compile(optimizer=optimizer, loss={k: _dot_loss for k in names if k in cotangents}, jit_compile="auto")
        targets = {k: np.asarray(v, np.float32) for k, v in cotangents.items()}
        return lambda: _block(native.train_on_batch(inputs, targets))
    import jax

    optimizer.build(native.trainable_variables)
    cots = {k: np.asarray(v, np.float32) for k, v in cotangents.items()}

    def loss(params, state):
        outputs, state = native.stateless_call(params, state, inputs, training=True)
        return _objective(outputs, cots, arch), state

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def train(params, state, opt_vars):
        (value, state), grads = jax.value_and_grad(loss, has_aux=True)(params, state)
        params, opt_vars = optimizer.stateless_apply(opt_vars, grads, params)
        return params, state, opt_vars, value

    carry = [
        [jax.numpy.copy(v.value) for v in variables]
        for variables in (native.trainable_variables, native.non_trainable_variables, optimizer.variables)
    ]

    def step():
        *carry[:], value = train(*carry)
        return _block(value)

    return step


def _dot_loss(y_true, y_pred):
    """sum(outputs * cotangents) as a keras loss (y_true carries the cotangents)."""
    return ops.sum(y_true * y_pred)


def _block(tree):
    """Wait for asynchronously dispatched results (jax) by reading them back."""
    if keras.backend.backend() == "jax":
        import jax

        jax.block_until_ready(tree)
    return tree


__all__ = ["MODELS", "adamw_step", "apply", "block_outputs", "build", "generate", "load_state_dict", "state_dict", "vjp"]
