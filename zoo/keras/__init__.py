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


def _jax_function(arch: str, native: keras.Model, what: str, train: bool):
    import jax

    cache = _JAX_CACHE.setdefault(native, {})
    if (what, train) not in cache:
        model = weakref.ref(native)  # the cache must not keep the model alive

        def forward(params, state, inputs):
            return model().stateless_call(params, state, inputs, training=train)

        def objective(params, state, inputs, cotangents):
            return _objective(forward(params, state, inputs)[0], cotangents, arch)

        cache[(what, train)] = jax.jit(forward if what == "apply" else jax.grad(objective))
    return cache[(what, train)]


def _values(variables) -> list:
    return [v.value for v in variables]


def apply(arch: str, config, native: keras.Model, inputs: dict[str, np.ndarray], *, train: bool = False,
          seed: int = 0) -> tuple[dict[str, np.ndarray], keras.Model]:
    if train:
        _reseed(native, seed)
    if keras.backend.backend() == "jax":
        forward = _jax_function(arch, native, "apply", train)
        outputs, state = forward(_values(native.trainable_variables), _values(native.non_trainable_variables), inputs)
        for v, value in zip(native.non_trainable_variables, state):  # batch-norm statistics, seeds
            v.assign(value)
    else:
        outputs = native(inputs, training=train)
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
    try:
        native(inputs, training=False)
    finally:
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
    if backend == "jax":  # stateless: the returned statistics are simply dropped
        grad = _jax_function(arch, native, "grad", train)
        cots = {k: np.asarray(c, np.float32) for k, c in cotangents.items()}
        return list(grad(_values(variables), _values(native.non_trainable_variables), inputs, cots))
    saved = [(v, ops.copy(v.value)) for v in native.non_trainable_variables]
    try:
        if backend == "torch":
            import torch

            loss = _objective(native(inputs, training=train), cotangents, arch)
            grads = torch.autograd.grad(loss, [v.value for v in variables], allow_unused=True)
        elif backend == "tensorflow":
            import tensorflow as tf

            with tf.GradientTape() as tape:
                loss = _objective(native(inputs, training=train), cotangents, arch)
            grads = [None if g is None else tf.convert_to_tensor(g)  # embeddings give IndexedSlices
                     for g in tape.gradient(loss, variables)]
        else:
            raise ZooError(f"keras backend {backend!r} is not supported by dlzoo; "
                           "set KERAS_BACKEND to jax, torch or tensorflow")
    finally:
        for v, value in saved:
            v.assign(value)
    return [ops.zeros_like(v.value) if g is None else g for v, g in zip(variables, grads)]


def vjp(arch: str, config, native: keras.Model, inputs: dict[str, np.ndarray], cotangents: dict[str, np.ndarray],
        *, train: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    if train:
        _reseed(native, seed)
    grads = _gradients(arch, native, inputs, cotangents, train=train)
    names = {id(v): name for name, v in _named_weights(native).items()}
    return {names[id(v)]: _numpy(g) for v, g in zip(native.trainable_variables, grads)}


def adamw_step(arch: str, config, native: keras.Model, inputs: dict[str, np.ndarray],
               cotangents: dict[str, np.ndarray], *, lr: float, betas: tuple[float, float], eps: float,
               weight_decay: float, seed: int = 0) -> keras.Model:
    """One keras.optimizers.AdamW step (fresh state) on the vjp objective, in eval mode.

    keras decays like torch (p -= lr * wd * p, then the Adam update) but adds epsilon to
    sqrt(v) before bias correction, torch after: eps_keras = eps * sqrt(1 - beta2^t) makes the
    two identical at step t, here t = 1.
    """
    # theory: adamw
    grads = _gradients(arch, native, inputs, cotangents, train=False)
    optimizer = keras.optimizers.AdamW(learning_rate=lr, weight_decay=weight_decay, beta_1=betas[0],
                                       beta_2=betas[1], epsilon=eps * (1.0 - betas[1]) ** 0.5)
    optimizer.apply_gradients(zip(grads, native.trainable_variables))
    return native


__all__ = ["MODELS", "adamw_step", "apply", "block_outputs", "build", "load_state_dict", "state_dict", "vjp"]
