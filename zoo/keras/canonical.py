"""Keras 3 model <-> canonical tensors (DESIGN.md "Canonical weights").

Canonical names come from ``variable.path`` (``layers.canonical_name``): the model's own name is
dropped, ``blocks_0/attn/qkv/kernel`` becomes ``blocks.0.attn.qkv.kernel``, keras' leaf names are
renamed (gamma -> scale, beta -> bias, embeddings -> embedding, moving_mean -> mean,
moving_variance -> var). Layouts need no transposes: keras already stores dense [in, out], conv
HWIO. Imports only keras, numpy, ``.layers`` and the zoo's configs, so generated projects copy
this file beside their model (KERAS_BACKEND must be chosen before it is imported).
"""

from __future__ import annotations

import numpy as np
import keras
from keras import ops

from ..configs import ZooError
from .layers import canonical_name


def _named_weights(native: keras.Model) -> dict[str, keras.Variable]:
    """canonical name -> variable. Paths start with the model's name when the model built its
    variables inside its own call, and without it when keras built them (e.g. when loading)."""
    return {canonical_name(v.path.removeprefix(f"{native.name}/")): v for v in native.weights}


def _numpy(x) -> np.ndarray:
    return np.array(ops.convert_to_numpy(x), dtype=np.float32)  # a copy, never a view of the model


def state_dict(arch: str, config, native: keras.Model) -> dict[str, np.ndarray]:
    """Every weight (trainable and batch-norm statistics) as float32 numpy, by canonical name."""
    return {name: _numpy(v.value) for name, v in _named_weights(native).items()}


def load_state_dict(arch: str, config, native: keras.Model, tensors: dict[str, np.ndarray]) -> keras.Model:
    """Assign ``tensors`` to ``native``'s variables in place and return it; ZooError when the
    names differ from the model's."""
    named = _named_weights(native)
    if set(named) != set(tensors):
        raise ZooError(
            f"the keras {arch} model does not match its config: missing "
            f"{sorted(set(tensors) - set(named))[:8]}, extra {sorted(set(named) - set(tensors))[:8]}; "
            "build it with dlzoo.zoo.load(arch, 'keras', config)"
        )
    for name, v in named.items():
        v.assign(np.asarray(tensors[name], np.float32))
    return native
