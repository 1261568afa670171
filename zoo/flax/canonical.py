"""Flax NNX model <-> canonical tensors (DESIGN.md "Canonical weights").

An NNX model's state paths are the canonical names already (``blocks.0.attn.qkv.kernel``,
``stages.1.blocks.0.downsample.bn.mean``), so the mapping is a join of the path; layouts agree
(dense [in, out], conv HWIO). Imports only flax, jax, numpy and the zoo's configs, so generated
projects copy this file beside their model.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..configs import ZooError


def _name(path: tuple) -> str:
    """An NNX state path as a canonical name: ("blocks", 0, "attn") -> "blocks.0.attn"."""
    return ".".join(str(part) for part in path)


def state_dict(arch: str, config, native: nnx.Module) -> dict[str, np.ndarray]:
    """Every variable (parameters and batch-norm statistics) as float32 numpy, by canonical name."""
    return {_name(path): np.array(variable.get_value(), dtype=np.float32) for path, variable in nnx.to_flat_state(nnx.state(native))}


def load_state_dict(arch: str, config, native: nnx.Module, tensors: dict[str, np.ndarray]) -> nnx.Module:
    """Write ``tensors`` into ``native`` in place and return it. Raises ZooError listing missing
    and unexpected names, or the first name whose shape differs from the model's."""
    flat = nnx.to_flat_state(nnx.state(native))
    names = {_name(path) for path, _ in flat}
    missing, unexpected = sorted(names - set(tensors)), sorted(set(tensors) - names)
    if missing or unexpected:
        raise ZooError(
            f"flax {arch} model does not match the tensors: missing {missing[:8]}, "
            f"unexpected {unexpected[:8]}; build the model from the weights' config"
        )
    for path, variable in flat:
        value = tensors[_name(path)]
        if tuple(value.shape) != variable.get_value().shape:
            raise ZooError(
                f"{_name(path)} has shape {list(value.shape)}, the model expects "
                f"{list(variable.get_value().shape)}; build the model from the weights' config"
            )
        variable.set_value(jnp.asarray(value, dtype=jnp.float32))
    nnx.update(native, nnx.from_flat_state(flat))
    return native
