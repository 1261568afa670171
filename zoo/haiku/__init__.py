"""dm-haiku backend of dlzoo: the seven functions of the backend contract (see zoo/handle.py).

``native`` is ``(transformed, params, state)``: an ``hk.TransformedWithState`` whose ``apply``
takes the model's named inputs and ``is_training``, its parameters ``{module_path: {leaf:
array}}`` and its state (batch-norm running ``mean``/``var`` for ResNet, empty otherwise).
Every model's modules are named after the canonical names, so conversion is one renaming rule,
``layers.canonical_name``: ("vit/~/blocks_0/~/attn/~/qkv", "kernel") -> "blocks.0.attn.qkv.kernel".

The transformed pair is built once per (arch, config, compute dtype), and its jit-compiled
apply / gradient / AdamW step once per (transformed, train flag); jax.jit then caches on input
shapes, so repeated calls with the same shapes do not recompile.
"""

from __future__ import annotations

import functools

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..configs import ZooError
from . import bert, gpt, resnet, vit
from .canonical import _to_canonical, load_state_dict, state_dict
from .layers import canonical_name

MODELS = {"bert": bert.transform, "gpt": gpt.transform, "resnet": resnet.transform, "vit": vit.transform}

__all__ = ["MODELS", "adamw_step", "apply", "block_outputs", "build", "canonical_name", "generate", "load_state_dict", "state_dict", "vjp"]


# the compute dtype each transformed pair was built with (block_outputs rebuilds it without scan)
_COMPUTE_DTYPE: dict[hk.TransformedWithState, str] = {}


@functools.lru_cache(maxsize=None)
def _transform(arch: str, config, compute_dtype: str) -> hk.TransformedWithState:
    transformed = MODELS[arch](config, dtype=compute_dtype)
    _COMPUTE_DTYPE[transformed] = compute_dtype
    return transformed


def _example_inputs(arch: str, config) -> dict[str, np.ndarray]:
    """The smallest inputs that create every parameter (shapes depend on the config alone)."""
    if arch in ("gpt", "bert"):
        return {"input_ids": np.zeros((1, 1), np.int32)}
    size = config.image_size if arch == "vit" else 32
    return {"pixel_values": np.zeros((1, size, size, config.num_channels), np.float32)}


def _split_flags(inputs: dict) -> tuple[dict, tuple]:
    """(arrays, options): Python bools such as ``interpolate_pos_encoding`` are baked into the
    compiled function (one compilation per value), never traced."""
    return (
        {k: v for k, v in inputs.items() if not isinstance(v, bool)},
        tuple(sorted((k, v) for k, v in inputs.items() if isinstance(v, bool))),
    )


@functools.lru_cache(maxsize=None)
def _compiled(transformed: hk.TransformedWithState, kind: str, train: bool = False, flags: tuple = ()):
    def forward(params, state, rng, inputs):
        return transformed.apply(params, state, rng, **inputs, **dict(flags), is_training=train)

    def objective(params, state, rng, inputs, cotangents):
        outputs, _ = forward(params, state, rng, inputs)
        unknown = sorted(set(cotangents) - set(outputs))
        if unknown:
            raise ZooError(f"cotangents {unknown} name no output; expected keys among {sorted(outputs)}")
        return sum(jnp.sum(outputs[k] * cotangents[k]) for k in cotangents)

    def adamw(params, state, rng, inputs, cotangents, lr, b1, b2, eps, weight_decay):
        grads = jax.grad(objective)(params, state, rng, inputs, cotangents)
        # eps_root=0 (optax's default) makes optax.adamw step exactly as torch.optim.AdamW does.
        optimizer = optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)  # theory: adamw
        updates, _ = optimizer.update(grads, optimizer.init(params), params)
        return optax.apply_updates(params, updates)

    functions = {"init": lambda rng, inputs: transformed.init(rng, **inputs), "apply": forward, "grad": jax.grad(objective), "adamw": adamw}
    return jax.jit(functions[kind])


def build(arch: str, config, *, seed: int = 0, compute_dtype: str = "float32"):
    transformed = _transform(arch, config, compute_dtype)
    params, state = _compiled(transformed, "init")(jax.random.key(seed), _example_inputs(arch, config))
    return transformed, params, state


def apply(arch: str, config, native, inputs: dict[str, np.ndarray], *, train: bool = False, seed: int = 0):
    """Outputs as numpy; in training the returned native carries the updated batch-norm state."""
    transformed, params, state = native
    inputs, flags = _split_flags(inputs)
    outputs, new_state = _compiled(transformed, "apply", train, flags)(params, state, jax.random.key(seed), inputs)
    return {k: np.asarray(v) for k, v in outputs.items()}, (transformed, params, new_state)


def block_outputs(arch: str, config, native, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The output of every residual block in eval mode, by canonical block name, read with
    haiku's own method interceptor (unjitted, so the recorded values are concrete arrays). With
    ``scan_layers`` the same parameters run through the model built without it: a scanned block
    is called once, on traced values."""
    transformed, params, state = native
    if getattr(config, "scan_layers", False):
        transformed = _transform(arch, config.replace(scan_layers=False), _COMPUTE_DTYPE.get(transformed, "float32"))
    outputs: dict[str, np.ndarray] = {}
    blocks = set(config.block_names())

    def record(next_fn, args, kwargs, context):
        out = next_fn(*args, **kwargs)
        name = canonical_name(context.module.module_name, "").rstrip(".")
        if context.method_name == "__call__" and name in blocks:
            outputs[name] = np.asarray(out, dtype=np.float32)
        return out

    with hk.intercept_methods(record):
        transformed.apply(params, state, jax.random.key(0), **inputs, is_training=False)
    return outputs


def _cotangents(cotangents) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=np.float32) for k, v in cotangents.items()}


def vjp(arch: str, config, native, inputs, cotangents, *, train: bool = False, seed: int = 0):
    """Gradients of sum_k sum(outputs[k] * cotangents[k]) w.r.t. the parameters (batch-norm
    running statistics are state, not parameters, so they have none)."""
    transformed, params, state = native
    inputs, flags = _split_flags(inputs)
    grads = _compiled(transformed, "grad", train, flags)(params, state, jax.random.key(seed), inputs, _cotangents(cotangents))
    return _to_canonical(grads)


def adamw_step(arch: str, config, native, inputs, cotangents, *, lr: float, betas, eps: float, weight_decay: float, seed: int = 0):
    """One optax.adamw step from a fresh optimizer state, in eval mode (no dropout, running
    batch-norm statistics), so the step is deterministic and comparable across frameworks."""
    transformed, params, state = native
    hyper = (np.float32(x) for x in (lr, betas[0], betas[1], eps, weight_decay))
    inputs, flags = _split_flags(inputs)
    params = _compiled(transformed, "adamw", False, flags)(params, state, jax.random.key(seed), inputs, _cotangents(cotangents), *hyper)
    return transformed, params, state


def generate(
    arch: str,
    config,
    native,
    input_ids: np.ndarray,
    attention_mask: np.ndarray | None,
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    seed: int,
) -> np.ndarray:
    """``gpt.generate``: one jitted prefill + scan; sampling keys from ``jax.random.key(seed)``."""
    transformed, params, state = native
    out = gpt.generate(
        config,
        transformed,
        params,
        state,
        input_ids,
        attention_mask,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        key=jax.random.key(seed),
    )
    return np.asarray(out, dtype=np.int32)


def benchmark_step(
    arch: str, config, native, inputs: dict[str, np.ndarray], cotangents: dict[str, np.ndarray], *, mode: str, seed: int = 0
):
    """A function that runs one step and returns once it is done (see the torch backend):
    ``transformed.apply`` under ``jax.jit`` with optax.adamw, buffers donated. A train step
    returns the objective before its update; ``native`` is left as it was."""
    transformed, params, state = native
    inputs = {k: jnp.asarray(v) for k, v in inputs.items()}
    cots = {k: jnp.asarray(v, jnp.float32) for k, v in cotangents.items()}
    if mode == "forward":
        forward = jax.jit(lambda params, state: transformed.apply(params, state, None, **inputs, is_training=False))
        return lambda: jax.block_until_ready(forward(params, state))
    optimizer = optax.adamw(1e-4)

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def train(params, state, opt_state, key):
        def loss(params):
            outputs, new_state = transformed.apply(params, state, key, **inputs, is_training=True)
            return sum(jnp.sum(outputs[k] * cots[k]) for k in cots), new_state

        (value, state), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), state, opt_state, value

    # copies: the step donates its buffers, and these arrays still belong to the model
    carry = [*jax.tree.map(jnp.copy, (params, state)), optimizer.init(params), 0]

    def step():
        params, state, opt_state, i = carry
        *new, value = train(params, state, opt_state, jax.random.fold_in(jax.random.key(seed), i))
        carry[:] = [*new, i + 1]
        return jax.block_until_ready(value)

    return step
