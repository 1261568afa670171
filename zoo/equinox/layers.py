"""Layers shared by the Equinox models: canonical parameter names and layouts, and the
transformer pieces GPT-2, BERT and ViT have in common (attention, MLP, pre-LN block).

Every layer works on ONE example (no batch axis), as Equinox layers do; models are mapped over
the batch with ``jax.vmap``. Parameter names are the canonical leaves of dlzoo's weight format
(dense ``kernel`` [in, out] + ``bias``, layer norm ``scale``/``bias``, ``embedding``, conv
``kernel`` HWIO, batch norm ``scale``/``bias`` + running ``mean``/``var`` in ``eqx.nn.State``),
so a model's pytree path *is* its canonical name: ``blocks.0.attn.qkv.kernel``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

Init = Callable[[PRNGKeyArray, tuple[int, ...]], Array]

# jax.random.truncated_normal(-2, 2) has std 0.8796; divide it out so `std` means the std.
_TRUNCATED_STD = 0.87962566103423978


def normal(std: float) -> Init:
    return lambda key, shape: std * jax.random.normal(key, shape)


def truncated_normal(std: float) -> Init:
    return lambda key, shape: std / _TRUNCATED_STD * jax.random.truncated_normal(key, -2.0, 2.0, shape)


def kaiming_normal_fan_out(key: PRNGKeyArray, shape: tuple[int, ...]) -> Array:
    """He et al. (2015) for ReLU, fan-out mode as torchvision's ResNet; HWIO kernels."""
    fan_out = math.prod(shape[:-2]) * shape[-1]
    return math.sqrt(2.0 / fan_out) * jax.random.normal(key, shape)


def uniform_fan_in(key: PRNGKeyArray, shape: tuple[int, ...]) -> Array:
    """torch.nn.Linear's default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)); used for ResNet's head."""
    bound = 1.0 / math.sqrt(shape[0])
    return jax.random.uniform(key, shape, minval=-bound, maxval=bound)


def split_key(key: PRNGKeyArray | None, n: int) -> list[PRNGKeyArray | None]:
    """n independent keys, or n Nones in inference (dropout then needs no randomness)."""
    return [None] * n if key is None else list(jax.random.split(key, n))


def cast_floating(tree, dtype: str):
    """Cast every floating array of a pytree (the parameters) to the compute dtype."""
    return jax.tree.map(lambda x: x.astype(dtype) if eqx.is_inexact_array(x) else x, tree)


class Dense(eqx.Module):
    kernel: Float[Array, "n_in n_out"]
    bias: Float[Array, " n_out"] | None

    def __init__(self, n_in: int, n_out: int, *, init: Init, use_bias: bool = True, key: PRNGKeyArray):
        self.kernel = init(key, (n_in, n_out))
        self.bias = jnp.zeros((n_out,)) if use_bias else None

    def __call__(self, x: Float[Array, "... n_in"]) -> Float[Array, "... n_out"]:
        x = x @ self.kernel
        return x if self.bias is None else x + self.bias


class LayerNorm(eqx.Module):
    scale: Float[Array, " dim"]
    bias: Float[Array, " dim"]
    eps: float = eqx.field(static=True)

    def __init__(self, dim: int, *, eps: float):
        self.scale, self.bias, self.eps = jnp.ones((dim,)), jnp.zeros((dim,)), eps

    def __call__(self, x: Float[Array, "... dim"]) -> Float[Array, "... dim"]:
        # Statistics in float32 even under bfloat16 compute: the variance of a bf16 vector is noisy.
        h = x.astype(jnp.float32)
        mean = h.mean(-1, keepdims=True)
        var = jnp.square(h - mean).mean(-1, keepdims=True)
        h = (h - mean) * jax.lax.rsqrt(var + self.eps)
        return (h * self.scale.astype(jnp.float32) + self.bias.astype(jnp.float32)).astype(x.dtype)


class Embedding(eqx.Module):
    embedding: Float[Array, "rows dim"]

    def __init__(self, rows: int, dim: int, *, init: Init, key: PRNGKeyArray):
        self.embedding = init(key, (rows, dim))

    def __call__(self, ids: Int[Array, "*shape"]) -> Float[Array, "*shape dim"]:
        return self.embedding[ids]


class Conv2d(eqx.Module):
    """Channels-last convolution (eqx.nn.Conv2d is channels-first) with explicit symmetric
    padding: "SAME" pads bottom/right more on strided convs, torch pads both sides alike."""

    kernel: Float[Array, "kh kw c_in c_out"]
    bias: Float[Array, " c_out"] | None
    stride: int = eqx.field(static=True)
    padding: int = eqx.field(static=True)

    def __init__(
        self,
        c_in: int,
        c_out: int,
        size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        use_bias: bool = False,
        init: Init = kaiming_normal_fan_out,
        key: PRNGKeyArray,
    ):
        self.kernel = init(key, (size, size, c_in, c_out))
        self.bias = jnp.zeros((c_out,)) if use_bias else None
        self.stride, self.padding = stride, padding

    def __call__(self, x: Float[Array, "H W c_in"]) -> Float[Array, "h w c_out"]:
        p = self.padding
        y = jax.lax.conv_general_dilated(
            x[None], self.kernel, (self.stride, self.stride), ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )[0]
        return y if self.bias is None else y + self.bias


class BatchNorm(eqx.Module):
    """Batch norm over (batch, H, W) with running statistics in ``eqx.nn.State``.

    Written here rather than using eqx.nn.BatchNorm because PyTorch (and so every dlzoo
    framework) normalises with the biased batch variance but updates the running variance with
    the unbiased one, var * n / (n - 1); eqx.nn.BatchNorm stores the biased one. Call it under
    ``jax.vmap(..., axis_name=axis_name)`` in training: the batch statistics are means across
    that axis. ``momentum`` is Equinox's convention, the weight of the OLD running statistic.
    """

    scale: Float[Array, " C"]
    bias: Float[Array, " C"]
    state_index: eqx.nn.StateIndex
    momentum: float = eqx.field(static=True)
    eps: float = eqx.field(static=True)
    axis_name: str = eqx.field(static=True)

    def __init__(self, channels: int, *, momentum: float, eps: float, axis_name: str = "batch"):
        self.scale, self.bias = jnp.ones((channels,)), jnp.zeros((channels,))
        self.state_index = eqx.nn.StateIndex((jnp.zeros((channels,)), jnp.ones((channels,))))
        self.momentum, self.eps, self.axis_name = momentum, eps, axis_name

    def __call__(
        self, x: Float[Array, "*spatial C"], state: eqx.nn.State, *, inference: bool
    ) -> tuple[Float[Array, "*spatial C"], eqx.nn.State]:
        h = x.astype(jnp.float32)
        if inference:
            mean, var = state.get(self.state_index)
        else:
            axes = tuple(range(x.ndim - 1))
            mean = jax.lax.pmean(h.mean(axes), self.axis_name)
            var = jax.lax.pmean(jnp.square(h - mean).mean(axes), self.axis_name)  # biased
            n = jax.lax.psum(1, self.axis_name) * math.prod(x.shape[:-1])
            running_mean, running_var = state.get(self.state_index)
            m = self.momentum
            state = state.set(self.state_index, (m * running_mean + (1 - m) * mean, m * running_var + (1 - m) * var * n / (n - 1)))
        h = (h - mean) * jax.lax.rsqrt(var + self.eps)
        return (h * self.scale.astype(jnp.float32) + self.bias.astype(jnp.float32)).astype(x.dtype), state


class Dropout(eqx.nn.Dropout):
    """``eqx.nn.Dropout`` with the same mask, applied as ``mask * x / q`` (haiku's form) rather
    than ``where(mask, x / q, 0)``: the values are bit-identical, but XLA fuses the multiply,
    while a select on the residual stream made it recompute earlier residual additions inside
    transposition kernels (docs/bench.md)."""

    def __call__(self, x, *, key: PRNGKeyArray | None = None, inference: bool | None = None, deterministic: bool | None = None):
        inference = self.inference if inference is None else inference
        if inference or (isinstance(self.p, (int, float)) and self.p == 0):
            return x
        if key is None:
            raise RuntimeError("Dropout requires a key when running in non-deterministic mode.")
        q = 1 - jax.lax.stop_gradient(self.p)
        mask = jax.random.bernoulli(key, q, x.shape)
        return mask.astype(x.dtype) * x / q


def attention(
    q: Float[Array, "T N H"],
    k: Float[Array, "S N H"],
    v: Float[Array, "S N H"],
    *,
    bias: Float[Array, "1 1 S"] | None = None,
    is_causal: bool = False,
    dropout: Dropout,
    key: PRNGKeyArray | None,
    inference: bool,
) -> Float[Array, "T N H"]:
    """Fused softmax(q k^T / sqrt(H) + bias) v; spelled out only when attention dropout is on,
    which jax.nn.dot_product_attention does not offer."""
    if inference or dropout.p == 0:
        return jax.nn.dot_product_attention(q, k, v, bias=bias, is_causal=is_causal)
    logits = jnp.einsum("tnh,snh->nts", q, k) / math.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias
    if is_causal:
        causal = jnp.tril(jnp.ones((q.shape[0], k.shape[0]), dtype=bool))
        logits = jnp.where(causal, logits, jnp.finfo(logits.dtype).min)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(q.dtype)
    probs = dropout(probs, key=key, inference=False)
    return jnp.einsum("nts,snh->tnh", probs, v)


class Attention(eqx.Module):
    """Multi-head self-attention with a fused q|k|v projection, shared by GPT-2, BERT and ViT.

    ``is_causal`` lets each position see only itself and the past (GPT-2); a ``bias`` at call
    time is added to the logits (BERT's padding mask) and, in a causal layer, replaces the
    built-in causal mask, so it must carry it (GPT-2's causal and padding bias). ``out_init``
    initialises the residual projection ``out`` (GPT-2 scales it down with depth); by default it
    is ``init``. ``cache`` = (keys, values, index), keys and values (S, N, H) preallocated: this
    call's keys and values are written at slots index..index+T, the queries attend over all S
    slots (the bias hides the unwritten ones), and the call returns (y, (keys, values)).
    """

    qkv: Dense
    out: Dense
    attn_drop: Dropout
    resid_drop: Dropout
    num_heads: int = eqx.field(static=True)
    is_causal: bool = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        is_causal: bool = False,
        dropout: float,
        attention_dropout: float,
        init: Init,
        out_init: Init | None = None,
        key: PRNGKeyArray,
    ):
        k1, k2 = jax.random.split(key)
        self.qkv = Dense(dim, 3 * dim, init=init, key=k1)  # fused: columns q | k | v
        self.out = Dense(dim, dim, init=init if out_init is None else out_init, key=k2)
        self.attn_drop = Dropout(attention_dropout)
        self.resid_drop = Dropout(dropout)
        self.num_heads, self.is_causal = num_heads, is_causal

    def __call__(
        self,
        x: Float[Array, "T D"],
        bias: Float[Array, "1 T S"] | None = None,
        *,
        key: PRNGKeyArray | None,
        inference: bool,
        cache: tuple[Array, Array, Array] | None = None,
    ):
        k_attn, k_resid = split_key(key, 2)
        T, D = x.shape
        # theory: multi-head-attention
        q, k, v = (
            t.reshape(T, self.num_heads, D // self.num_heads) for t in jnp.split(self.qkv(x), 3, axis=-1)
        )  # (T, N, H), heads contiguous
        if cache is not None:
            keys, values, index = cache  # (S, N, H) each
            # theory: kv-cache
            k = keys = jax.lax.dynamic_update_slice(keys, k.astype(keys.dtype), (index, 0, 0))
            v = values = jax.lax.dynamic_update_slice(values, v.astype(values.dtype), (index, 0, 0))
        # theory: scaled-dot-product-attention
        y = attention(
            q, k, v, bias=bias, is_causal=self.is_causal and bias is None, dropout=self.attn_drop, key=k_attn, inference=inference
        )
        y = self.resid_drop(self.out(y.reshape(T, D)), key=k_resid, inference=inference)  # (T, D)
        return y if cache is None else (y, (keys, values))


def run_block(block: eqx.Module, *args, remat: bool, **kwargs):
    """``block(*args, **kwargs)``; with ``remat`` (the config's flag) under
    ``eqx.filter_checkpoint`` (``jax.checkpoint``): under differentiation the block's activations
    are not kept for the backward pass but recomputed there. Arrays (inputs, the dropout ``key``,
    batch-norm ``State``) are traced, everything else is static; the recomputation reuses the
    same key, so dropout draws the same mask. Gradients equal those without remat."""
    if not remat:
        return block(*args, **kwargs)
    return eqx.filter_checkpoint(lambda block, args, kwargs: block(*args, **kwargs))(block, args, kwargs)


def run_blocks(blocks, x: Array, *args, remat: bool, scan: bool, keys, **kwargs):
    """``x`` through ``blocks`` in order, block i as ``run_block(blocks[i], x, *args, key=keys[i],
    **kwargs)``; ``keys`` holds one dropout key per block (or Nones in inference), split as the
    loop always has. With ``scan`` (the config's ``scan_layers``) the blocks run as ONE
    ``jax.lax.scan`` whose body is compiled once, instead of an unrolled loop whose program grows
    with depth: each block is ``eqx.partition``ed into arrays and the rest, the arrays stacked
    along a new leading axis inside the traced function, and the body ``eqx.combine``s one slice
    with the shared rest. The model keeps its canonical per-layer parameters; the keys and so
    the dropout masks are those of the loop. With ``remat`` the body is checkpointed. Blocks
    that differ in anything but array values (``block_outputs``' recording wrappers, named per
    block) run as the loop. -> x, the last block's output."""
    parts = [eqx.partition(block, eqx.is_array) for block in blocks]
    params, static = parts[0]
    signature = (jax.tree.structure(params), jax.tree.structure(static), jax.tree.leaves(static))
    identical = all((jax.tree.structure(p), jax.tree.structure(s), jax.tree.leaves(s)) == signature for p, s in parts[1:])
    if not scan or len(blocks) < 2 or not identical:
        for block, key in zip(blocks, keys, strict=True):
            x = run_block(block, x, *args, remat=remat, key=key, **kwargs)
        return x
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *(p for p, _ in parts))

    def body(x, layer):
        params, key = layer
        return run_block(eqx.combine(params, static), x, *args, remat=remat, key=key, **kwargs), None

    x, _ = jax.lax.scan(body, x, (stacked, None if keys[0] is None else jnp.stack(keys)))
    return x


class MLP(eqx.Module):
    """Position-wise feed-forward: fc -> GELU -> out -> dropout. ``approximate`` picks the GELU:
    True is GPT-2's tanh approximation ("gelu_new"), False the exact erf GELU of BERT and ViT."""

    fc: Dense
    out: Dense
    drop: Dropout
    approximate: bool = eqx.field(static=True)

    def __init__(
        self, dim: int, hidden: int, *, approximate: bool, dropout: float, init: Init, out_init: Init | None = None, key: PRNGKeyArray
    ):
        k1, k2 = jax.random.split(key)
        self.fc = Dense(dim, hidden, init=init, key=k1)
        self.out = Dense(hidden, dim, init=init if out_init is None else out_init, key=k2)
        self.drop = Dropout(dropout)
        self.approximate = approximate

    def __call__(self, x: Float[Array, "T D"], *, key: PRNGKeyArray | None, inference: bool) -> Float[Array, "T D"]:
        # Always explicit: jax.nn.gelu defaults to the tanh approximation, torch's nn.GELU to exact.
        h = jax.nn.gelu(self.fc(x), approximate=self.approximate)  # (T, hidden)  # theory: gelu
        return self.drop(self.out(h), key=key, inference=inference)


class Block(eqx.Module):
    """Pre-LN transformer block (GPT-2, ViT): x + attn(ln1(x)), then x + mlp(ln2(x)). BERT's
    post-LN block, which reuses Attention and MLP, lives in bert.py."""

    ln1: LayerNorm
    attn: Attention
    ln2: LayerNorm
    mlp: MLP

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        *,
        eps: float,
        is_causal: bool = False,
        approximate: bool,
        dropout: float,
        attention_dropout: float,
        init: Init,
        out_init: Init | None = None,
        key: PRNGKeyArray,
    ):
        k1, k2 = jax.random.split(key)
        self.ln1 = LayerNorm(dim, eps=eps)
        self.attn = Attention(
            dim, num_heads, is_causal=is_causal, dropout=dropout, attention_dropout=attention_dropout, init=init, out_init=out_init, key=k1
        )
        self.ln2 = LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, mlp_dim, approximate=approximate, dropout=dropout, init=init, out_init=out_init, key=k2)

    def __call__(
        self,
        x: Float[Array, "T D"],
        bias: Float[Array, "1 T S"] | None = None,
        *,
        key: PRNGKeyArray | None,
        inference: bool,
        cache: tuple[Array, Array, Array] | None = None,
    ):
        """-> x (T, D), or (x, (keys, values)) with a ``cache`` (see ``Attention``)."""
        k1, k2 = split_key(key, 2)
        attended = self.attn(self.ln1(x), bias, key=k1, inference=inference, cache=cache)
        attended, kv = attended if cache is not None else (attended, None)
        # theory: pre-ln-vs-post-ln
        x = x + attended  # theory: residual-connections
        x = x + self.mlp(self.ln2(x), key=k2, inference=inference)
        return x if cache is None else (x, kv)
