"""Flax NNX backend: the dlzoo backend contract (see ``dlzoo/zoo/handle.py``) for ``nnx.Module`` models.

``native`` is the ``nnx.Module`` itself. Its state paths are the canonical names already
(``blocks.0.attn.qkv.kernel``, ``stages.1.blocks.0.downsample.bn.mean``), so converting to and
from canonical tensors is a join of the path. The numerical entry points split the module into
(graphdef, state) and run plain ``jax.jit`` functions over the state: the graphdef is a static
argument, so jax caches one compilation per (arch, config, compute dtype, train, input shapes).
"""

from __future__ import annotations

import weakref
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ..configs import ZooError
from .bert import BERT
from .canonical import _name, load_state_dict, state_dict
from .gpt import GPT
from .gpt import generate as gpt_generate
from .resnet import ResNet
from .vit import ViT

MODELS = {"bert": BERT, "gpt": GPT, "resnet": ResNet, "vit": ViT}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

__all__ = [
    "MODELS",
    "BERT",
    "GPT",
    "ResNet",
    "ViT",
    "adamw_step",
    "apply",
    "block_outputs",
    "build",
    "generate",
    "load_state_dict",
    "state_dict",
    "vjp",
]


def build(arch: str, config, *, seed: int = 0, compute_dtype: str = "float32") -> nnx.Module:
    if compute_dtype not in DTYPES:
        raise ZooError(f"compute_dtype must be one of {', '.join(DTYPES)}, got {compute_dtype!r}")
    return MODELS[arch](config, dtype=DTYPES[compute_dtype], rngs=nnx.Rngs(params=seed))


# --- compiled entry points ---------------------------------------------------------------------


def _split_flags(inputs: dict) -> tuple[dict, tuple]:
    """(arrays, options): Python bools such as ``interpolate_pos_encoding`` are static arguments
    of the compiled functions (one compilation per value), never traced."""
    return (
        {k: v for k, v in inputs.items() if not isinstance(v, bool)},
        tuple(sorted((k, v) for k, v in inputs.items() if isinstance(v, bool))),
    )


def _call(model: nnx.Module, inputs: dict, train: bool, key: jax.Array, flags: tuple = ()) -> dict:
    inputs = {**inputs, **dict(flags)}
    if isinstance(model, ResNet):  # no dropout, so no randomness
        return model(**inputs, train=train)
    return model(**inputs, train=train, rngs=nnx.Rngs(dropout=key))


def _objective(graphdef, params, rest, inputs, cotangents, key, train, flags=()):
    # copy: train-mode batch norm writes its statistics, and the variables passed in belong to
    # the enclosing jit trace, not to grad's.
    model = nnx.merge(graphdef, params, rest, copy=True)
    outputs = _call(model, inputs, train, key, flags)
    return sum(jnp.sum(outputs[k] * cotangents[k]) for k in cotangents)


@partial(jax.jit, static_argnames=("graphdef", "train", "flags"))
def _grads(graphdef, params, rest, inputs, cotangents, key, *, train, flags=()):
    return jax.grad(_objective, argnums=1)(graphdef, params, rest, inputs, cotangents, key, train, flags)


@partial(jax.jit, static_argnames=("graphdef", "flags"))
def _adamw(graphdef, params, rest, inputs, cotangents, key, lr, b1, b2, eps, weight_decay, flags=()):
    grads = jax.grad(_objective, argnums=1)(graphdef, params, rest, inputs, cotangents, key, False, flags)
    # theory: adamw
    optimizer = optax.adamw(lr, b1=b1, b2=b2, eps=eps, eps_root=0.0, weight_decay=weight_decay)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    return optax.apply_updates(params, updates)


@partial(nnx.jit, static_argnames=("train", "flags"))
def _apply_module(model: nnx.Module, inputs, key, *, train, flags=()):
    # nnx.jit writes train-mode batch statistics back into ``model``
    return _call(model, inputs, train, key, flags)


# module -> nnx.cached_partial(_apply_module, module): the graph is traversed once per module, not
# on every call (splitting a GPT-tiny costs more than its compiled forward). The handle never
# changes a module's structure, only its variables' values, which the cached graph sees.
_APPLY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def apply(arch: str, config, native: nnx.Module, inputs: dict[str, np.ndarray], *, train: bool = False, seed: int = 0):
    inputs, flags = _split_flags(inputs)
    cached = _APPLY.get(native)
    if cached is None:
        cached = _APPLY[native] = nnx.cached_partial(_apply_module, native)
    outputs = cached(inputs, jax.random.key(seed), train=train, flags=flags)
    return {k: np.asarray(v, dtype=np.float32) for k, v in outputs.items()}, native


def block_outputs(arch: str, config, native: nnx.Module, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The output of every residual block in eval mode, by canonical block name: NNX's own
    ``nnx.capture`` sows each method's output. It runs on a copy, so the model keeps no captures;
    the copy runs its blocks as a loop (``scan_layers`` off: a scanned block is called once)."""
    model = nnx.merge(*nnx.split(native))
    if getattr(model.config, "scan_layers", False):
        model.config = model.config.replace(scan_layers=False)
    _, captured = nnx.capture(_call, nnx.Intermediate, method_outputs=nnx.Intermediate)(model, inputs, False, jax.random.key(0))
    outputs, blocks = {}, set(config.block_names())
    for path, variable in nnx.to_flat_state(captured):
        if path[-1] == "__call__" and _name(path[:-1]) in blocks:
            outputs[_name(path[:-1])] = np.asarray(variable.get_value()[-1], dtype=np.float32)
    return outputs


def _cotangents(arch: str, config, inputs, cotangents) -> dict[str, jax.Array]:
    # names and shapes are checked by the handle (handle._check_cotangents)
    return {k: jnp.asarray(v, dtype=jnp.float32) for k, v in cotangents.items()}


def vjp(arch: str, config, native: nnx.Module, inputs, cotangents, *, train: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    cotangents = _cotangents(arch, config, inputs, cotangents)
    graphdef, params, rest = nnx.split(native, nnx.Param, ...)
    inputs, flags = _split_flags(inputs)
    grads = _grads(graphdef, params, rest, inputs, cotangents, jax.random.key(seed), train=train, flags=flags)
    return {_name(path): np.array(g.get_value(), dtype=np.float32) for path, g in nnx.to_flat_state(grads)}


def adamw_step(
    arch: str,
    config,
    native: nnx.Module,
    inputs,
    cotangents,
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    seed: int = 0,
) -> nnx.Module:
    """One optax.adamw step (fresh state) on sum(outputs * cotangents), in eval mode."""
    cotangents = _cotangents(arch, config, inputs, cotangents)
    graphdef, params, rest = nnx.split(native, nnx.Param, ...)
    f32 = partial(jnp.asarray, dtype=jnp.float32)
    inputs, flags = _split_flags(inputs)
    params = _adamw(
        graphdef,
        params,
        rest,
        inputs,
        cotangents,
        jax.random.key(seed),
        f32(lr),
        f32(betas[0]),
        f32(betas[1]),
        f32(eps),
        f32(weight_decay),
        flags=flags,
    )
    nnx.update(native, params)
    return native


def generate(
    arch: str,
    config,
    native: nnx.Module,
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
    out = gpt_generate(
        native,
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
    arch: str, config, native: nnx.Module, inputs: dict[str, np.ndarray], cotangents: dict[str, np.ndarray], *, mode: str, seed: int = 0
):
    """A function that runs one step and returns once it is done (see the torch backend): NNX's
    low-overhead path, the module split once and a plain ``jax.jit`` over its state, buffers
    donated. The step's state lives in the closure; ``native`` is left as it was. A train step
    returns the objective before its update."""
    graphdef, params, rest = nnx.split(native, nnx.Param, ...)
    inputs = {k: jnp.asarray(v) for k, v in inputs.items()}
    cots = {k: jnp.asarray(v, jnp.float32) for k, v in cotangents.items()}
    if mode == "forward":
        forward = jax.jit(lambda params, rest: _call(nnx.merge(graphdef, params, rest), inputs, False, jax.random.key(0)))
        return lambda: jax.block_until_ready(forward(params, rest))
    optimizer = optax.adamw(1e-4)

    @partial(jax.jit, donate_argnums=(0, 1, 2))
    def train(params, rest, opt_state, key):
        def loss(params):
            model = nnx.merge(graphdef, params, rest, copy=True)
            outputs = _call(model, inputs, True, key)
            return sum(jnp.sum(outputs[k] * cots[k]) for k in cots), nnx.state(model, nnx.BatchStat)

        (value, batch_stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        rest = nnx.merge_state(rest, batch_stats)
        return optax.apply_updates(params, updates), rest, opt_state, value

    # copies: the step donates its buffers, and these arrays still belong to the model
    state = [*jax.tree.map(jnp.copy, (params, rest)), optimizer.init(params), 0]

    def step():
        params, rest, opt_state, i = state
        *new, value = train(params, rest, opt_state, jax.random.fold_in(jax.random.key(seed), i))
        state[:] = [*new, i + 1]
        return jax.block_until_ready(value)

    return step
