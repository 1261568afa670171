"""Equinox backend of dlzoo: the seven functions of the backend contract (see zoo/handle.py).

``native`` is ``(module, state)``: an ``eqx.Module`` and its ``eqx.nn.State`` (batch-norm
running statistics for ResNet, empty otherwise), as ``eqx.nn.make_with_state`` returns them.
Models map one example; here they are ``jax.vmap``-ed over the batch (axis name ``"batch"``,
which batch norm reduces over) with one dropout key per row. A module's pytree path is its
canonical tensor name, so conversion is a walk over the tree: no renaming table.

apply / vjp / adamw_step are ``eqx.filter_jit``-compiled; filter_jit caches on the static part
of its arguments (arch, config and dtype in the module's static fields, train flag, optimizer
hyperparameters) and on array shapes, so repeated calls with the same shapes do not recompile.
"""

from __future__ import annotations

from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..configs import ZooError
from .bert import Bert
from .canonical import _name, load_state_dict, state_dict
from .gpt import GPT
from .gpt import generate as gpt_generate
from .resnet import ResNet
from .vit import ViT

MODELS = {"bert": Bert, "gpt": GPT, "resnet": ResNet, "vit": ViT}

__all__ = [
    "MODELS",
    "Bert",
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


def build(arch: str, config, *, seed: int = 0, compute_dtype: str = "float32"):
    return eqx.nn.make_with_state(MODELS[arch])(config, key=jax.random.key(seed), dtype=compute_dtype)


def _forward(arch: str, module, state, inputs: dict, key, inference: bool):
    """The batched model: one vmap over rows, each with its own dropout key. Python bools among
    the inputs (``interpolate_pos_encoding``) are options: static under filter_jit, not mapped."""
    flags = {k: v for k, v in inputs.items() if isinstance(v, bool)}
    inputs = {k: v for k, v in inputs.items() if k not in flags}
    batch = next(iter(inputs.values())).shape[0]
    keys = jax.random.split(key, batch)
    if arch == "resnet":

        def one(x, s, k):
            return module(x, s, key=k, inference=inference)

        # The new running statistics are batch means (pmean over "batch"): unbatched outputs.
        return jax.vmap(one, axis_name="batch", in_axes=(0, None, 0), out_axes=(0, None))(inputs["pixel_values"], state, keys)
    return jax.vmap(lambda example, k: module(**example, **flags, key=k, inference=inference))(inputs, keys), state


@eqx.filter_jit
def _apply(arch, module, state, inputs, key, inference):
    return _forward(arch, module, state, inputs, key, inference)


class _Recorded(eqx.Module):
    """A residual block that also writes its output into ``sink`` under its canonical name."""

    block: eqx.Module
    name: str = eqx.field(static=True)
    sink: dict = eqx.field(static=True)

    def __call__(self, *args, **kwargs):
        out = self.block(*args, **kwargs)
        self.sink[self.name] = out[0] if isinstance(out, tuple) else out  # ResNet blocks return (x, state)
        return out


def _blocks(module) -> list[eqx.Module]:
    """The residual blocks in run order (the order of ``config.block_names()``)."""
    if hasattr(module, "stages"):
        return [block for stage in module.stages for block in stage.blocks]
    return list(module.blocks)


def block_outputs(arch: str, config, native, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The output of every residual block in inference mode, by canonical block name. Equinox
    has no hooks; the model is a pytree, so ``eqx.tree_at`` swaps each block for one that
    records its output, and the vmapped function returns the records as outputs."""
    module, state = native
    names = config.block_names()
    flags = {k: v for k, v in inputs.items() if isinstance(v, bool)}
    inputs = {k: v for k, v in inputs.items() if k not in flags}

    def one(example):
        sink: dict = {}
        recorded = eqx.tree_at(_blocks, module, [_Recorded(block, name, sink) for name, block in zip(names, _blocks(module), strict=True)])
        if arch == "resnet":
            recorded(example["pixel_values"], state, inference=True)
        else:
            recorded(**example, **flags, inference=True)
        return [sink[name] for name in names]

    return {name: np.asarray(out, dtype=np.float32) for name, out in zip(names, jax.vmap(one, axis_name="batch")(inputs))}


def _objective(module, arch, state, inputs, cotangents, key, inference):
    outputs, _ = _forward(arch, module, state, inputs, key, inference)
    unknown = sorted(set(cotangents) - set(outputs))
    if unknown:
        raise ZooError(f"cotangents {unknown} name no {arch} output; expected keys among {sorted(outputs)}")
    return sum(jnp.sum(outputs[k] * cotangents[k]) for k in cotangents)


@eqx.filter_jit
def _grads(arch, module, state, inputs, cotangents, key, inference):
    return eqx.filter_grad(_objective)(module, arch, state, inputs, cotangents, key, inference)


@eqx.filter_jit
def _adamw(arch, module, state, inputs, cotangents, key, lr, b1, b2, eps, weight_decay):
    grads = eqx.filter_grad(_objective)(module, arch, state, inputs, cotangents, key, True)
    params = eqx.filter(module, eqx.is_inexact_array)
    # eps_root=0 (optax's default) makes optax.adamw step exactly as torch.optim.AdamW does.
    optimizer = optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)  # theory: adamw
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    return eqx.apply_updates(module, updates)


def apply(arch: str, config, native, inputs: dict[str, np.ndarray], *, train: bool = False, seed: int = 0):
    module, state = native
    outputs, state = _apply(arch, module, state, inputs, jax.random.key(seed), not train)
    return {k: np.asarray(v) for k, v in outputs.items()}, (module, state)


def vjp(arch: str, config, native, inputs, cotangents, *, train: bool = False, seed: int = 0):
    module, state = native
    cotangents = {k: np.asarray(v, dtype=np.float32) for k, v in cotangents.items()}
    grads = _grads(arch, module, state, inputs, cotangents, jax.random.key(seed), not train)
    return {_name(path): np.array(g, dtype=np.float32) for path, g in jax.tree_util.tree_leaves_with_path(grads) if eqx.is_array(g)}


def adamw_step(arch: str, config, native, inputs, cotangents, *, lr: float, betas, eps: float, weight_decay: float, seed: int = 0):
    """One optax.adamw step from a fresh optimizer state, in inference mode (no dropout, running
    batch-norm statistics), so the step is deterministic and comparable across frameworks."""
    module, state = native
    cotangents = {k: np.asarray(v, dtype=np.float32) for k, v in cotangents.items()}
    # Hyperparameters travel as arrays: filter_jit treats Python floats as static, so a learning-rate
    # schedule would recompile on every call.
    hyper = (jnp.asarray(x, dtype=jnp.float32) for x in (lr, betas[0], betas[1], eps, weight_decay))
    module = _adamw(arch, module, state, inputs, cotangents, jax.random.key(seed), *hyper)
    return module, state


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
    """``gpt.generate``: one compiled prefill + scan, vmapped over rows; keys from ``seed``."""
    module, _ = native
    out = gpt_generate(
        module,
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
    """A function that runs one step and returns once it is done (see the torch backend): the
    module partitioned once into arrays and static structure, a plain ``jax.jit`` over the
    arrays (no per-call filtering), buffers donated. A train step returns the objective before
    its update; ``native`` is left as it was."""
    module, state = native
    params, static = eqx.partition(module, eqx.is_inexact_array)
    inputs = {k: jnp.asarray(v) for k, v in inputs.items()}
    cots = {k: jnp.asarray(v, jnp.float32) for k, v in cotangents.items()}
    if mode == "forward":
        forward = jax.jit(lambda params, state: _forward(arch, eqx.combine(params, static), state, inputs, jax.random.key(0), True))
        return lambda: jax.block_until_ready(forward(params, state))
    optimizer = optax.adamw(1e-4)

    @partial(jax.jit, donate_argnums=(0, 1, 2))
    def train(params, state, opt_state, key):
        def loss(params):
            outputs, new_state = _forward(arch, eqx.combine(params, static), state, inputs, key, False)
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
