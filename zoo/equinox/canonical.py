"""Equinox model <-> canonical tensors (DESIGN.md "Canonical weights").

``native`` is ``(module, state)`` as ``eqx.nn.make_with_state`` returns it. A module's pytree
path is its canonical name (``blocks.0.attn.qkv.kernel``), and each batch norm's running
``mean``/``var`` live in the ``eqx.nn.State`` under its ``state_index``, named after the batch
norm's path. Imports only equinox, jax, numpy and ``.layers``, so generated projects copy this
file beside their model.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .layers import BatchNorm


def _name(path) -> str:
    """A pytree key path as a canonical name: (.blocks, [0], .attn) -> "blocks.0.attn"."""
    return ".".join(str(getattr(k, "name", getattr(k, "idx", getattr(k, "key", k)))) for k in path)


def _batch_norms(module) -> list[tuple[str, BatchNorm]]:
    leaves = jax.tree_util.tree_leaves_with_path(module, is_leaf=lambda x: isinstance(x, BatchNorm))
    return [(_name(path), leaf) for path, leaf in leaves if isinstance(leaf, BatchNorm)]


def state_dict(arch: str, config, native) -> dict[str, np.ndarray]:
    """Every array leaf of the module plus each batch norm's running statistics, float32 numpy."""
    module, state = native
    tensors = {
        _name(path): np.array(leaf, dtype=np.float32) for path, leaf in jax.tree_util.tree_leaves_with_path(module) if eqx.is_array(leaf)
    }
    for name, bn in _batch_norms(module):
        mean, var = state.get(bn.state_index)
        tensors[f"{name}.mean"] = np.array(mean, dtype=np.float32)
        tensors[f"{name}.var"] = np.array(var, dtype=np.float32)
    return tensors


def load_state_dict(arch: str, config, native, tensors: dict[str, np.ndarray]):
    """A new ``(module, state)`` holding ``tensors`` (KeyError on a missing name: the handle
    validates names and shapes before calling this)."""
    module, state = native
    state = jax.tree.map(lambda x: x, state)  # a copy: State.set invalidates the object it is called on
    module = jax.tree_util.tree_map_with_path(lambda path, leaf: jnp.asarray(tensors[_name(path)]) if eqx.is_array(leaf) else leaf, module)
    for name, bn in _batch_norms(module):
        state = state.set(bn.state_index, (jnp.asarray(tensors[f"{name}.mean"]), jnp.asarray(tensors[f"{name}.var"])))
    return module, state
