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

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..configs import ZooError
from .bert import Bert
from .canonical import _name, load_state_dict, state_dict
from .gpt import GPT
from .resnet import ResNet
from .vit import ViT

MODELS = {"bert": Bert, "gpt": GPT, "resnet": ResNet, "vit": ViT}

__all__ = ["MODELS", "Bert", "GPT", "ResNet", "ViT", "adamw_step", "apply", "block_outputs", "build",
           "load_state_dict", "state_dict", "vjp"]


def build(arch: str, config, *, seed: int = 0, compute_dtype: str = "float32"):
    return eqx.nn.make_with_state(MODELS[arch])(config, key=jax.random.key(seed), dtype=compute_dtype)


def _forward(arch: str, module, state, inputs: dict, key, inference: bool):
    """The batched model: one vmap over rows, each with its own dropout key."""
    batch = next(iter(inputs.values())).shape[0]
    keys = jax.random.split(key, batch)
    if arch == "resnet":
        def one(x, s, k):
            return module(x, s, key=k, inference=inference)
        # The new running statistics are batch means (pmean over "batch"): unbatched outputs.
        return jax.vmap(one, axis_name="batch", in_axes=(0, None, 0),
                        out_axes=(0, None))(inputs["pixel_values"], state, keys)
    return jax.vmap(lambda example, k: module(**example, key=k, inference=inference))(inputs, keys), state


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

    def one(example):
        sink: dict = {}
        recorded = eqx.tree_at(_blocks, module,
                               [_Recorded(block, name, sink) for name, block in zip(names, _blocks(module), strict=True)])
        if arch == "resnet":
            recorded(example["pixel_values"], state, inference=True)
        else:
            recorded(**example, inference=True)
        return [sink[name] for name in names]

    return {name: np.asarray(out, dtype=np.float32)
            for name, out in zip(names, jax.vmap(one, axis_name="batch")(inputs))}


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
    return {_name(path): np.array(g, dtype=np.float32)
            for path, g in jax.tree_util.tree_leaves_with_path(grads) if eqx.is_array(g)}


def adamw_step(arch: str, config, native, inputs, cotangents, *, lr: float, betas, eps: float,
               weight_decay: float, seed: int = 0):
    """One optax.adamw step from a fresh optimizer state, in inference mode (no dropout, running
    batch-norm statistics), so the step is deterministic and comparable across frameworks."""
    module, state = native
    cotangents = {k: np.asarray(v, dtype=np.float32) for k, v in cotangents.items()}
    module = _adamw(arch, module, state, inputs, cotangents, jax.random.key(seed),
                    float(lr), float(betas[0]), float(betas[1]), float(eps), float(weight_decay))
    return module, state
