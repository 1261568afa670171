"""Pieces shared by the Flax NNX models: initialisers, layer norm, the transformer's attention,
MLP and pre-LN block, and a batch norm whose running statistics match PyTorch's.

The leaf layers are flax's own (nnx.Linear, nnx.LayerNorm, nnx.Embed, nnx.Conv, nnx.Dropout;
LayerNorm keeps nnx's variables but computes as torch does, see ``LayerNorm``),
whose variable names (``kernel`` [in, out], ``bias``, ``scale``, ``embedding``, conv ``kernel``
HWIO) are already the canonical leaf names of dlzoo's weight format; the models name the modules
after the canonical paths (``blocks.0.attn.qkv``), so the state path *is* the canonical name.
GPT-2, ViT and BERT share ``Attention`` and ``MLP``; GPT-2 and ViT also share the pre-LN
``Block`` (BERT keeps its own post-LN block). What differs between them is an argument: causal
or not, an additive mask bias, the GELU flavour, the dropout rates, and the initialisers (flax
draws the weights at construction, so each model passes its scheme in: ``kernel_init`` for the
projections that read the residual stream, ``out_init`` for the two that write into it).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from ..configs import ZooError

# A normal truncated at +-2 standard deviations has std 0.8796 of the untruncated one; jax's
# truncated_normal(s) draws the untruncated std s, so divide it out: `std` means the std (the
# same distribution as the torch backend's).
_TRUNCATED_STD = 0.87962566103423978


def normal(std: float) -> nnx.Initializer:
    return nnx.initializers.normal(std)


def truncated_normal(std: float) -> nnx.Initializer:
    return nnx.initializers.truncated_normal(std / _TRUNCATED_STD, lower=-2.0, upper=2.0)


def uniform_fan_in(fan_in: int) -> nnx.Initializer:
    """torch.nn.Linear's default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), for kernel and bias."""
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class LayerNorm(nnx.LayerNorm):
    """nnx.LayerNorm over the last axis (its ``scale`` and ``bias`` variables, so the canonical
    names are unchanged), computed as torch.nn.functional.layer_norm and haiku's LayerNorm do:
    ``(x - mean) * rsqrt(var + eps) * scale + bias`` with the two-pass (biased) variance, in
    float32 for half-precision inputs, cast back to the compute dtype.

    flax's own ``__call__`` (0.12) folds the scale into the reciprocal standard deviation first
    (``(x - mean) * (rsqrt(var + eps) * scale)``), whose backward pass XLA:CPU compiles to one
    more fusion per layer norm (ViT-B/16 gradient: 993 fusions, 968 with this order, as haiku's);
    the ViT-B/16 training step went from 1.11x haiku's to 0.99x (docs/bench.md).

    x: (..., D) float; returns the same shape in ``dtype`` (or x's dtype).
    """

    def __call__(self, x, *, mask=None):
        if mask is not None:
            raise ZooError("dlzoo's LayerNorm takes no mask: it normalises every position")
        dtype = self.dtype or x.dtype
        h = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        mean = h.mean(-1, keepdims=True)
        var = jnp.square(h - mean).mean(-1, keepdims=True)
        h = (h - mean) * jax.lax.rsqrt(var + self.epsilon)
        return (h * self.scale[...] + self.bias[...]).astype(dtype)


def layer_norm(dim: int, epsilon: float, *, dtype, rngs: nnx.Rngs) -> LayerNorm:
    # epsilon always from the config (flax's default is 1e-6); the two-pass variance, as torch,
    # rather than flax's default E[x^2] - E[x]^2, which loses digits when the mean is large.
    return LayerNorm(dim, epsilon=epsilon, use_fast_variance=False, dtype=dtype, rngs=rngs)


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
        return jax.nn.dot_product_attention(q, k, v, bias=bias, is_causal=is_causal)
    if rngs is None:
        raise ZooError("attention dropout is active (train=True) but no rngs were given; call the model with rngs=nnx.Rngs(dropout=seed)")
    # jax's fused kernel has no dropout, so the same computation is written out here; logits
    # and softmax stay in float32 as in the fused kernel.
    logits = jnp.einsum("btnh,bsnh->bnts", q, k, preferred_element_type=jnp.float32)
    logits = logits / math.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if is_causal:
        t, s = logits.shape[-2:]
        future = jnp.tril(jnp.ones((t, s), dtype=bool))
        logits = jnp.where(future, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    keep = jax.random.bernoulli(rngs.dropout(), 1.0 - dropout_rate, weights.shape)
    weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0).astype(v.dtype)
    return jnp.einsum("bnts,bsnh->btnh", weights, v)


def run_block(block: nnx.Module, x: Array, *, remat: bool, **kwargs):
    """``block(x, **kwargs)``; with ``remat`` (the config's flag) under ``nnx.remat``
    (``jax.checkpoint``): under differentiation the block's activations are not kept for the
    backward pass but recomputed there. Python bools among ``kwargs`` (``train``, ``is_causal``)
    stay static; arrays, ``None`` and ``rngs`` are traced. The recomputation replays the same
    RNG stream counts, so dropout draws the same masks; batch statistics update once. Gradients
    equal those without remat."""
    if not remat:
        return block(x, **kwargs)
    static = {k: v for k, v in kwargs.items() if isinstance(v, bool)}
    traced = {k: v for k, v in kwargs.items() if not isinstance(v, bool)}
    return nnx.remat(lambda block, x, traced: block(x, **static, **traced))(block, x, traced)


def run_blocks(blocks, x: Array, *, remat: bool, scan: bool, rngs=None, **kwargs):
    """Run ``blocks`` (identical in structure: GPT-2, BERT, ViT) one after the other, each as
    ``run_block``. With ``scan`` (the config's ``scan_layers``) they run as ONE ``jax.lax.scan``
    whose body is compiled once, instead of an unrolled loop whose program grows with depth:
    each block's state is split off (``nnx.split``), the states stacked along a new leading axis
    inside the traced function, and the body merges one slice back into a block
    (``nnx.merge``). The modules keep their canonical per-layer parameters; only the traced
    program changes. The ``rngs`` streams are carried through the scan and written back, so each
    layer draws the keys it draws in the loop (same dropout masks), and later draws continue
    from the same counts. With ``remat`` the body is checkpointed. -> x, the last block's output.
    """
    if not scan or len(blocks) < 2:
        for block in blocks:
            x = run_block(block, x, remat=remat, rngs=rngs, **kwargs)
        return x
    graphdef, first = nnx.split(blocks[0])
    stacked = jax.tree.map(lambda *a: jnp.stack(a), first, *(nnx.state(block) for block in blocks[1:]))
    carried = isinstance(rngs, (nnx.Rngs, nnx.RngStream))
    rng_graph, rng_state = nnx.split(rngs) if carried else (None, None)

    def body(carry, state):
        x, rng_state = carry
        layer_rngs = nnx.merge(rng_graph, rng_state) if carried else rngs
        x = run_block(nnx.merge(graphdef, state), x, remat=remat, rngs=layer_rngs, **kwargs)
        return (x, nnx.state(layer_rngs) if carried else None), None

    (x, rng_state), _ = jax.lax.scan(body, (x, rng_state), stacked)
    if carried:
        nnx.update(rngs, rng_state)
    return x


# --------------------------------------------------------------------------- transformer layers


class Dropout(nnx.Dropout):
    """``nnx.Dropout`` with the same mask, applied as ``mask * x / keep`` (haiku's form) rather
    than ``where(mask, x / keep, 0)``: the values are bit-identical, but XLA fuses the multiply,
    while a select on the residual stream made it recompute earlier residual additions inside
    transposition kernels (docs/bench.md)."""

    def __call__(self, inputs, *, deterministic: bool | None = None, rngs=None):
        deterministic = self.deterministic if deterministic is None else deterministic
        if self.rate == 0.0 or deterministic:
            return inputs
        rngs = self.rngs if rngs is None else rngs
        if isinstance(rngs, nnx.Rngs):
            key = rngs[self.rng_collection]()
        elif isinstance(rngs, nnx.RngStream):
            key = rngs()
        else:
            key = rngs
        if key is None:
            raise ZooError("dropout is active (train=True) but no rngs were given; call the model with rngs=nnx.Rngs(dropout=seed)")
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(key, p=keep, shape=inputs.shape)
        return mask.astype(inputs.dtype) * inputs / keep


class Attention(nnx.Module):
    """Multi-head self-attention with a fused q|k|v projection (heads contiguous within each).

    ``__call__(x, is_causal=..., attn_bias=..., train=..., rngs=..., cache=...)``: ``is_causal``
    hides the future (GPT-2); ``attn_bias`` [B, 1, 1, S] or [B, 1, T, S] is added to the scores
    before the softmax (BERT's padding mask; GPT-2's causal and padding mask). ``rngs`` is needed
    only when ``train=True`` and a dropout rate is non-zero. ``cache`` = (keys, values, index),
    keys and values [B, S, N, H] preallocated: this call's keys and values are written at slots
    index..index+T, the queries attend over all S slots (``attn_bias`` hides the unwritten ones),
    and the call returns (y, (keys, values)).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        dropout: float,
        attention_dropout: float,
        kernel_init: nnx.Initializer,
        out_init: nnx.Initializer,
        dtype,
        rngs: nnx.Rngs,
    ):
        self.qkv = nnx.Linear(dim, 3 * dim, kernel_init=kernel_init, dtype=dtype, rngs=rngs)  # fused: columns q | k | v
        self.out = nnx.Linear(dim, dim, kernel_init=out_init, dtype=dtype, rngs=rngs)
        self.resid_drop = Dropout(dropout)
        self.num_heads, self.attention_dropout = num_heads, attention_dropout

    def __call__(
        self,
        x: Float[Array, "B T C"],
        *,
        is_causal: bool = False,
        attn_bias: Float[Array, "B 1 T S"] | None = None,
        train: bool,
        rngs: nnx.Rngs | None,
        cache: tuple[Array, Array, Array] | None = None,
    ):
        B, T, C = x.shape
        # theory: multi-head-attention
        q, k, v = (
            t.reshape(B, T, self.num_heads, C // self.num_heads) for t in jnp.split(self.qkv(x), 3, axis=-1)
        )  # [B, T, N, H], heads contiguous
        if cache is not None:
            keys, values, index = cache  # [B, S, N, H] each
            # theory: kv-cache
            k = keys = jax.lax.dynamic_update_slice(keys, k.astype(keys.dtype), (0, index, 0, 0))
            v = values = jax.lax.dynamic_update_slice(values, v.astype(values.dtype), (0, index, 0, 0))
        # theory: scaled-dot-product-attention
        y = attention(q, k, v, bias=attn_bias, is_causal=is_causal, dropout_rate=self.attention_dropout if train else 0.0, rngs=rngs)
        y = self.resid_drop(self.out(y.reshape(B, T, C)), deterministic=not train, rngs=rngs)  # [B, T, C]
        return y if cache is None else (y, (keys, values))


class MLP(nnx.Module):
    """Position-wise feed-forward: fc -> GELU -> out -> dropout. ``approximate`` is always passed
    (jax's default is the tanh approximation): True for GPT-2's "gelu_new", False for the exact
    erf GELU of BERT and ViT."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        *,
        approximate: bool,
        dropout: float,
        kernel_init: nnx.Initializer,
        out_init: nnx.Initializer,
        dtype,
        rngs: nnx.Rngs,
    ):
        self.fc = nnx.Linear(dim, hidden, kernel_init=kernel_init, dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(hidden, dim, kernel_init=out_init, dtype=dtype, rngs=rngs)
        self.drop = Dropout(dropout)
        self.approximate = approximate

    def __call__(self, x: Float[Array, "B T C"], *, train: bool, rngs: nnx.Rngs | None) -> Float[Array, "B T C"]:
        h = jax.nn.gelu(self.fc(x), approximate=self.approximate)  # [B, T, F]  # theory: gelu
        return self.drop(self.out(h), deterministic=not train, rngs=rngs)


class Block(nnx.Module):
    """Pre-LN transformer block (GPT-2, ViT): x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        *,
        layer_norm_eps: float,
        approximate: bool,
        dropout: float,
        attention_dropout: float,
        kernel_init: nnx.Initializer,
        out_init: nnx.Initializer,
        dtype,
        rngs: nnx.Rngs,
    ):
        self.ln1 = layer_norm(dim, layer_norm_eps, dtype=dtype, rngs=rngs)
        self.attn = Attention(
            dim,
            num_heads,
            dropout=dropout,
            attention_dropout=attention_dropout,
            kernel_init=kernel_init,
            out_init=out_init,
            dtype=dtype,
            rngs=rngs,
        )
        self.ln2 = layer_norm(dim, layer_norm_eps, dtype=dtype, rngs=rngs)
        self.mlp = MLP(
            dim, mlp_dim, approximate=approximate, dropout=dropout, kernel_init=kernel_init, out_init=out_init, dtype=dtype, rngs=rngs
        )

    def __call__(
        self,
        x: Float[Array, "B T C"],
        *,
        is_causal: bool = False,
        attn_bias: Float[Array, "B 1 T S"] | None = None,
        train: bool,
        rngs: nnx.Rngs | None,
        cache: tuple[Array, Array, Array] | None = None,
    ):
        """-> x [B, T, C], or (x, (keys, values)) with a ``cache`` (see ``Attention``)."""
        attended = self.attn(self.ln1(x), is_causal=is_causal, attn_bias=attn_bias, train=train, rngs=rngs, cache=cache)
        attended, kv = attended if cache is not None else (attended, None)
        # theory: pre-ln-vs-post-ln
        x = x + attended  # theory: residual-connections
        x = x + self.mlp(self.ln2(x), train=train, rngs=rngs)
        return x if cache is None else (x, kv)


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

    No ``rngs``: nothing here is drawn at random (scale 1, bias 0, mean 0, var 1).
    """

    def __init__(self, num_features: int, *, momentum: float, epsilon: float, dtype=jnp.float32):
        self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
        self.momentum, self.epsilon, self.dtype = momentum, epsilon, dtype

    def __call__(self, x: Float[Array, "B H W C"], *, train: bool) -> Float[Array, "B H W C"]:
        x32 = x.astype(jnp.float32)
        if train:
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
