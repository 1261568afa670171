"""dm-haiku parameters and state <-> canonical tensors (DESIGN.md "Canonical weights").

``native`` is ``(transformed, params, state)``. Parameters and state are ``{module_path: {leaf:
array}}``; the models name their modules after the canonical names, so the mapping is one
renaming rule, ``layers.canonical_name``: ("vit/~/blocks_0/~/attn/~/qkv", "kernel") ->
"blocks.0.attn.qkv.kernel". Batch-norm ``mean``/``var`` live in the state, everything else in
the parameters. Imports only jax, numpy and ``.layers``, so generated projects copy this file
beside their model.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .layers import canonical_name


def _to_canonical(tree) -> dict[str, np.ndarray]:
    return {
        canonical_name(module, leaf): np.array(value, dtype=np.float32) for module, leaves in tree.items() for leaf, value in leaves.items()
    }


def _from_canonical(tree, tensors: dict[str, np.ndarray]):
    return {module: {leaf: jnp.asarray(tensors[canonical_name(module, leaf)]) for leaf in leaves} for module, leaves in tree.items()}


def state_dict(arch: str, config, native) -> dict[str, np.ndarray]:
    """Parameters and state as float32 numpy, by canonical name."""
    _, params, state = native
    return {**_to_canonical(params), **_to_canonical(state)}


def load_state_dict(arch: str, config, native, tensors: dict[str, np.ndarray]):
    """A new ``(transformed, params, state)`` holding ``tensors`` with the structure of
    ``native``'s (KeyError on a missing name: the handle validates names and shapes first)."""
    transformed, params, state = native
    return transformed, _from_canonical(params, tensors), _from_canonical(state, tensors)
