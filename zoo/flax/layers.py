"""Small layers the Flax NNX models share: attention with dropout, and a PyTorch-exact BatchNorm.

Everything else (Linear, LayerNorm, Embed, Conv, Dropout) is flax's own ``nnx`` layer, whose
parameter names (``kernel`` [in, out], ``bias``, ``scale``, ``embedding``, conv ``kernel`` HWIO)
are already dlzoo's canonical leaf names.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from ..configs import ZooError


def attention(
    q: Float[Array, "B T N H"],
    k: Float[Array, "B S N H"],
    v: Float[Array, "B S N H"],
    *,
    bias: Float[Array, "B 1 1 S"] | None = None,
    is_causal: bool = False,
    dropout_rate: float = 0.0,
    rngs: nnx.Rngs | None = None,
) -> Float[Array, "B T N H"]:
    """softmax(q k^T / sqrt(H) + bias) v, with dropout on the attention weights when
    ``dropout_rate > 0`` (pass ``dropout_rate=0.0`` outside training, as torch's SDPA takes
    ``dropout_p``). ``bias`` is additive (a large negative on masked keys)."""
    if dropout_rate == 0.0:
        # theory: scaled-dot-product-attention
        return jax.nn.dot_product_attention(q, k, v, bias=bias, is_causal=is_causal)
    if rngs is None:
        raise ZooError("attention dropout is active (train=True) but no rngs were given; "
                         "call the model with rngs=nnx.Rngs(dropout=seed)")
    # jax's fused kernel has no dropout, so the same computation is written out here; logits
    # and softmax stay in float32 as in the fused kernel.
    logits = jnp.einsum("btnh,bsnh->bnts", q, k, preferred_element_type=jnp.float32)
    logits = logits / math.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if is_causal:
        t, s = logits.shape[-2:]
        future = jnp.tril(jnp.ones((t, s), dtype=bool))
        logits = jnp.where(future, logits, jnp.finfo(jnp.float32).min)  # theory: causal-masking
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    keep = jax.random.bernoulli(rngs.dropout(), 1.0 - dropout_rate, weights.shape)  # theory: dropout
    weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0).astype(v.dtype)
    return jnp.einsum("bnts,bsnh->btnh", weights, v)


class BatchNorm(nnx.Module):
    """Batch norm over NHWC images whose running statistics match PyTorch's exactly.

    ``nnx.BatchNorm`` updates the running variance with the biased batch variance; torch
    normalises with the biased one but tracks the unbiased one (var * n / (n - 1)). dlzoo's
    models must agree with torch in train mode, so this layer does what torch does.

    Args:
        num_features: channels C.
        momentum: weight of the OLD running statistic (flax's convention, torch's 1 - momentum).
        epsilon: added to the variance before the square root.
        dtype: dtype of the output; statistics are always computed in float32.
        rngs: unused (batch norm has no random initialisation); kept for the nnx signature.
    """

    def __init__(self, num_features: int, *, momentum: float, epsilon: float,
                 dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
        self.momentum, self.epsilon, self.dtype = momentum, epsilon, dtype

    def __call__(self, x: Float[Array, "B H W C"], *, train: bool) -> Float[Array, "B H W C"]:
        x32 = x.astype(jnp.float32)
        if train:
            # theory: batch-norm
            mean = x32.mean(axis=(0, 1, 2))
            var = jnp.square(x32 - mean).mean(axis=(0, 1, 2))  # biased: used to normalise
            n = x.shape[0] * x.shape[1] * x.shape[2]
            unbiased = var * (n / max(n - 1, 1))
            m = self.momentum
            self.mean[...] = m * self.mean[...] + (1 - m) * mean
            self.var[...] = m * self.var[...] + (1 - m) * unbiased
        else:
            mean, var = self.mean[...], self.var[...]
        y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon) * self.scale[...] + self.bias[...]
        return y.astype(self.dtype)
