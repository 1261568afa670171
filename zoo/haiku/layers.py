"""Leaf layers shared by the Haiku models: canonical parameter names and layouts.

Haiku parameters live in a dict ``{module_path: {leaf: array}}``. These layers name their
leaves after dlzoo's canonical weight format (dense ``kernel`` [in, out] + ``bias``, layer norm
``scale``/``bias``, ``embedding``, conv ``kernel`` HWIO, batch norm ``scale``/``bias`` as
parameters and ``mean``/``var`` as state), and the models name their modules after the canonical
names, with ``_i`` for an index (Python identifiers cannot hold dots). The rule from a Haiku path
to a canonical name is mechanical, see ``canonical_name``:

    "gpt/~/blocks_0/attn/qkv", "kernel"  ->  "blocks.0.attn.qkv.kernel"

(drop the root module, drop "~", turn a trailing ``_<digits>`` into ``.<digits>``).

GPT-2, ViT and BERT share ``Attention`` and ``MLP``; GPT-2 and ViT also share the pre-LN
``Block`` (BERT keeps its own post-LN block). What differs between them is an argument: causal or
not, an additive mask bias, the GELU flavour, the dropout rates, and the initialisers (Haiku draws
a parameter when it is first read, so each model passes its scheme in: ``init`` for the
projections that read the residual stream, ``out_init`` for the two that write into it).

Mixed precision follows Haiku's custom-getter idiom (as ``jmp`` does): ``cast_params`` casts
every parameter to the compute dtype as it is read, so the stored parameters stay float32.
"""

from __future__ import annotations

import math
import re

import haiku as hk
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from ..configs import ZooError

# jax.random.truncated_normal(-2, 2) has std 0.8796; divide it out so `std` means the std.
_TRUNCATED_STD = 0.87962566103423978
_INDEX = re.compile(r"_(\d+)$")


def canonical_name(module_path: str, leaf: str) -> str:
    """Haiku ("gpt/~/blocks_0/attn/qkv", "kernel") -> canonical "blocks.0.attn.qkv.kernel"."""
    parts = [_INDEX.sub(r".\1", p) for p in module_path.split("/")[1:] if p != "~"]
    return ".".join(parts + [leaf])


def normal(std: float) -> hk.initializers.Initializer:
    return hk.initializers.RandomNormal(stddev=std)


def truncated_normal(std: float) -> hk.initializers.Initializer:
    return hk.initializers.TruncatedNormal(stddev=std / _TRUNCATED_STD)


# He et al. (2015) for ReLU, fan-out mode as torchvision's ResNet (untruncated normal).
kaiming_normal_fan_out = hk.initializers.VarianceScaling(2.0, "fan_out", "normal")
# torch.nn.Linear's default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)); used for ResNet's head.
uniform_fan_in = hk.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")


def cast_params(dtype: str) -> hk.custom_getter:
    """A context in which every parameter is read in ``dtype`` (state is left alone)."""

    # theory: mixed-precision
    def getter(next_getter, value, context):
        return next_getter(value.astype(dtype) if jnp.issubdtype(value.dtype, jnp.floating) else value)

    return hk.custom_getter(getter)


def transform_model(model: type[hk.Module], config, *, dtype: str = "float32") -> hk.TransformedWithState:
    """``model(config)`` as Haiku's pure pair with state: ``init(rng, *inputs)``,
    ``apply(params, state, rng, *inputs, is_training=False)``. The module is built afresh inside
    every call, as Haiku requires; inputs (positional or named) pass through.

    ``dtype`` is the compute dtype, applied here at the boundary as a policy (jmp's idiom, and
    torch's autocast), so the models hold no dtype of their own: floating inputs are cast to it,
    every parameter is read in it (``cast_params``), floating outputs come back float32. The
    stored parameters and state stay float32."""

    def cast(x, to):  # flags such as interpolate_pos_encoding pass through as Python values
        return jnp.asarray(x, to) if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating) else x

    def forward(*inputs, is_training: bool = False, **named_inputs) -> dict[str, Array]:
        inputs, named_inputs = jax.tree.map(lambda x: cast(x, dtype), (inputs, named_inputs))
        with cast_params(dtype):
            outputs = model(config)(*inputs, is_training=is_training, **named_inputs)
        return jax.tree.map(lambda x: cast(x, jnp.float32), outputs)

    return hk.transform_with_state(forward)


def dropout(x: Array, rate: float, is_training: bool) -> Array:
    """Inverted dropout with a key from ``hk.next_rng_key()``; the identity at inference."""
    if not is_training or rate == 0.0:
        return x
    return hk.dropout(hk.next_rng_key(), rate, x)


class Dense(hk.Module):
    def __init__(
        self,
        n_out: int,
        *,
        init: hk.initializers.Initializer,
        use_bias: bool = True,
        bias_init: hk.initializers.Initializer = jnp.zeros,
        name: str,
    ):
        super().__init__(name=name)
        self.n_out, self.init, self.use_bias, self.bias_init = n_out, init, use_bias, bias_init

    def __call__(self, x: Float[Array, "... n_in"]) -> Float[Array, "... n_out"]:
        kernel = hk.get_parameter("kernel", (x.shape[-1], self.n_out), init=self.init)
        y = x @ kernel.astype(x.dtype)
        if self.use_bias:
            y = y + hk.get_parameter("bias", (self.n_out,), init=self.bias_init).astype(x.dtype)
        return y


class LayerNorm(hk.Module):
    def __init__(self, *, eps: float, name: str):
        super().__init__(name=name)
        self.eps = eps

    def __call__(self, x: Float[Array, "... D"]) -> Float[Array, "... D"]:
        dim = x.shape[-1]
        scale = hk.get_parameter("scale", (dim,), init=jnp.ones)
        bias = hk.get_parameter("bias", (dim,), init=jnp.zeros)
        # Statistics in float32 even under bfloat16 compute: the variance of a bf16 vector is noisy.
        h = x.astype(jnp.float32)
        mean = h.mean(-1, keepdims=True)
        var = jnp.square(h - mean).mean(-1, keepdims=True)
        h = (h - mean) * jax.lax.rsqrt(var + self.eps)
        return (h * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


class Embedding(hk.Module):
    def __init__(self, rows: int, dim: int, *, init: hk.initializers.Initializer, name: str):
        super().__init__(name=name)
        self.rows, self.dim, self.init = rows, dim, init

    @property
    def embedding(self) -> Float[Array, "rows D"]:
        return hk.get_parameter("embedding", (self.rows, self.dim), init=self.init)

    def __call__(self, ids: Int[Array, "*shape"]) -> Float[Array, "*shape D"]:
        return self.embedding[ids]


class Conv2D(hk.Module):
    """NHWC convolution with explicit symmetric padding: "SAME" pads bottom/right more on
    strided convs (haiku's own nets/resnet.py does), torch pads both sides alike."""

    def __init__(
        self,
        n_out: int,
        size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        use_bias: bool = False,
        init: hk.initializers.Initializer = kaiming_normal_fan_out,
        name: str,
    ):
        super().__init__(name=name)
        self.n_out, self.size, self.stride, self.padding = n_out, size, stride, padding
        self.use_bias, self.init = use_bias, init

    def __call__(self, x: Float[Array, "B H W C_in"]) -> Float[Array, "B h w C_out"]:
        kernel = hk.get_parameter("kernel", (self.size, self.size, x.shape[-1], self.n_out), init=self.init)
        p = self.padding
        y = jax.lax.conv_general_dilated(
            x, kernel.astype(x.dtype), (self.stride, self.stride), ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        if self.use_bias:
            y = y + hk.get_parameter("bias", (self.n_out,), init=jnp.zeros).astype(x.dtype)
        return y


class BatchNorm(hk.Module):
    """Batch norm over (B, H, W) with running ``mean``/``var`` in Haiku state.

    Written here rather than using hk.BatchNorm because PyTorch (and so every dlzoo framework)
    normalises with the biased batch variance but updates the running variance with the
    unbiased one, var * n / (n - 1); hk.BatchNorm averages the biased one. ``decay_rate`` is
    Haiku's convention, the weight of the OLD running statistic (1 - torch's momentum).
    """

    def __init__(self, *, decay_rate: float, eps: float, scale_init=jnp.ones, name: str):
        super().__init__(name=name)
        self.decay_rate, self.eps, self.scale_init = decay_rate, eps, scale_init

    def __call__(self, x: Float[Array, "B H W C"], *, is_training: bool) -> Float[Array, "B H W C"]:
        channels = x.shape[-1]
        scale = hk.get_parameter("scale", (channels,), init=self.scale_init)
        bias = hk.get_parameter("bias", (channels,), init=jnp.zeros)
        running_mean = hk.get_state("mean", (channels,), init=jnp.zeros)
        running_var = hk.get_state("var", (channels,), init=jnp.ones)
        h = x.astype(jnp.float32)
        if is_training:
            axes = tuple(range(x.ndim - 1))
            mean = h.mean(axes)
            var = jnp.square(h - mean).mean(axes)  # biased: what normalises
            n = math.prod(x.shape[:-1])
            d = self.decay_rate
            hk.set_state("mean", d * running_mean + (1 - d) * mean)
            hk.set_state("var", d * running_var + (1 - d) * var * n / (n - 1))
        else:
            mean, var = running_mean, running_var
        h = (h - mean) * jax.lax.rsqrt(var + self.eps)
        return (h * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


def attention(
    q: Float[Array, "B T N H"],
    k: Float[Array, "B S N H"],
    v: Float[Array, "B S N H"],
    *,
    bias: Float[Array, "B 1 1 S"] | None = None,
    is_causal: bool = False,
    dropout_rate: float = 0.0,
    is_training: bool = False,
) -> Float[Array, "B T N H"]:
    """Fused softmax(q k^T / sqrt(H) + bias) v; spelled out only when attention dropout is on,
    which jax.nn.dot_product_attention does not offer."""
    if not is_training or dropout_rate == 0.0:
        return jax.nn.dot_product_attention(q, k, v, bias=bias, is_causal=is_causal)
    logits = jnp.einsum("btnh,bsnh->bnts", q, k) / math.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias
    if is_causal:
        causal = jnp.tril(jnp.ones((q.shape[1], k.shape[1]), dtype=bool))
        logits = jnp.where(causal, logits, jnp.finfo(logits.dtype).min)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(q.dtype)
    probs = dropout(probs, dropout_rate, is_training)
    return jnp.einsum("bnts,bsnh->btnh", probs, v)


# --------------------------------------------------------------------------- transformer layers


class Attention(hk.Module):
    """Multi-head self-attention with a fused q|k|v projection (heads contiguous within each).

    ``__call__(x, is_causal=..., attn_bias=..., is_training=..., cache=...)``: ``is_causal``
    hides the future (GPT-2); ``attn_bias`` (B, 1, 1, S) or (B, 1, T, S) is added to the scores
    before the softmax (BERT's padding mask; GPT-2's causal and padding mask). Dropout needs an
    rng key in ``apply`` only when ``is_training=True``. ``cache`` = (keys, values, index), keys
    and values (B, S, N, H) preallocated: this call's keys and values are written at slots
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
        init: hk.initializers.Initializer,
        out_init: hk.initializers.Initializer,
        name: str = "attn",
    ):
        super().__init__(name=name)
        self.qkv = Dense(3 * dim, init=init, name="qkv")  # fused: columns q | k | v
        self.out = Dense(dim, init=out_init, name="out")
        self.num_heads = num_heads
        self.attention_dropout, self.dropout = attention_dropout, dropout

    def __call__(
        self,
        x: Float[Array, "B T D"],
        *,
        is_causal: bool = False,
        attn_bias: Float[Array, "B 1 T S"] | None = None,
        is_training: bool,
        cache: tuple[Array, Array, Array] | None = None,
    ):
        B, T, D = x.shape
        # theory: multi-head-attention
        q, k, v = (
            t.reshape(B, T, self.num_heads, D // self.num_heads) for t in jnp.split(self.qkv(x), 3, axis=-1)
        )  # (B, T, N, H), heads contiguous
        if cache is not None:
            keys, values, index = cache  # (B, S, N, H) each
            # theory: kv-cache
            k = keys = jax.lax.dynamic_update_slice(keys, k.astype(keys.dtype), (0, index, 0, 0))
            v = values = jax.lax.dynamic_update_slice(values, v.astype(values.dtype), (0, index, 0, 0))
        # theory: scaled-dot-product-attention
        y = attention(q, k, v, bias=attn_bias, is_causal=is_causal, dropout_rate=self.attention_dropout, is_training=is_training)
        y = dropout(self.out(y.reshape(B, T, D)), self.dropout, is_training)  # (B, T, D)
        return y if cache is None else (y, (keys, values))


def run_block(block: hk.Module, x: Array, *, remat: bool, **kwargs):
    """``block(x, **kwargs)``; with ``remat`` (the config's flag) under ``hk.remat``
    (``jax.checkpoint`` lifted over haiku's state): under differentiation the block's activations
    are not kept for the backward pass but recomputed there. Python bools among ``kwargs``
    (``is_training``, ``is_causal``) stay static; arrays and ``None`` are traced. The
    recomputation replays the same ``hk.next_rng_key`` keys, so dropout draws the same masks;
    batch statistics update once. Gradients equal those without remat."""
    if not remat:
        return block(x, **kwargs)
    static = {k: v for k, v in kwargs.items() if isinstance(v, bool)}
    traced = {k: v for k, v in kwargs.items() if not isinstance(v, bool)}
    return hk.remat(lambda x, traced: block(x, **static, **traced))(x, traced)


def run_blocks(blocks: list[hk.Module], make_block, x: Array, *, remat: bool, scan: bool, **kwargs):
    """``x`` through ``blocks`` in order, each as ``run_block(block, x, remat=remat, **kwargs)``.

    With ``scan`` (the config's ``scan_layers``) the blocks run as ONE ``jax.lax.scan`` whose
    body is compiled once, instead of an unrolled loop whose program grows with depth. Haiku's
    own ``hk.layer_stack`` would store the parameters stacked under one name; to keep the
    canonical per-layer parameters (``blocks_3/...``) the body is a separate ``hk.transform`` of
    one block, ``make_block(name)``, whose ``apply`` is scanned over the per-layer parameters
    (``block.params_dict()``) stacked along a new leading axis inside the traced function. The
    custom getters in force (the compute-dtype policy) apply inside it. The random sequence
    (``hk.next_rng_key``) is carried through the scan and handed back
    (``hk.experimental.replace_rng_sequence_state``), so each layer draws the keys it draws in
    the loop (same dropout masks), and later draws continue from the same place; this needs
    haiku's default ``rng_reserve_size`` of 1. With ``remat`` the body is checkpointed.
    Initialisation (``hk.running_init()``) always runs the loop, which creates the parameters.
    -> x, the last block's output."""
    if not scan or len(blocks) < 2 or hk.running_init():
        for block in blocks:
            x = run_block(block, x, remat=remat, **kwargs)
        return x
    root = "block"

    def relative(block: hk.Module) -> dict:  # {"gpt/~/blocks_3/~/attn/~/qkv/kernel": v} -> {"block/~/attn/~/qkv": {"kernel": v}}
        params: dict = {}
        for name, value in block.params_dict().items():
            module, leaf = name.rsplit("/", 1)
            params.setdefault(root + module[len(block.module_name) :], {})[leaf] = value
        return params

    stacked = jax.tree.map(lambda *a: jnp.stack(a), *(relative(block) for block in blocks))

    def layer(x, rng_state):
        if rng_state is not None:
            hk.experimental.replace_rng_sequence_state(rng_state)
        x = run_block(make_block(name=root), x, remat=remat, **kwargs)
        return x, hk.experimental.maybe_get_rng_sequence_state()

    apply = hk.transform(layer).apply

    def body(carry, params):
        x, rng_state = carry
        return apply(params, None if rng_state is None else rng_state[0], x, rng_state), None

    (x, rng_state), _ = jax.lax.scan(body, (x, hk.experimental.maybe_get_rng_sequence_state()), stacked)
    if rng_state is not None:
        hk.experimental.replace_rng_sequence_state(rng_state)
    return x


class MLP(hk.Module):
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
        init: hk.initializers.Initializer,
        out_init: hk.initializers.Initializer,
        name: str = "mlp",
    ):
        super().__init__(name=name)
        if not isinstance(approximate, bool):
            raise ZooError(f"MLP approximate={approximate!r}: expected True (tanh GELU, GPT-2) or False (exact GELU)")
        self.fc = Dense(hidden, init=init, name="fc")
        self.out = Dense(dim, init=out_init, name="out")
        self.approximate, self.dropout = approximate, dropout

    def __call__(self, x: Float[Array, "B T D"], *, is_training: bool) -> Float[Array, "B T D"]:
        h = jax.nn.gelu(self.fc(x), approximate=self.approximate)  # (B, T, F)  # theory: gelu
        return dropout(self.out(h), self.dropout, is_training)


class Block(hk.Module):
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
        init: hk.initializers.Initializer,
        out_init: hk.initializers.Initializer,
        name: str,
    ):
        super().__init__(name=name)
        self.ln1 = LayerNorm(eps=layer_norm_eps, name="ln1")
        self.attn = Attention(dim, num_heads, dropout=dropout, attention_dropout=attention_dropout, init=init, out_init=out_init)
        self.ln2 = LayerNorm(eps=layer_norm_eps, name="ln2")
        self.mlp = MLP(dim, mlp_dim, approximate=approximate, dropout=dropout, init=init, out_init=out_init)

    def __call__(
        self,
        x: Float[Array, "B T D"],
        *,
        is_causal: bool = False,
        attn_bias: Float[Array, "B 1 T S"] | None = None,
        is_training: bool,
        cache: tuple[Array, Array, Array] | None = None,
    ):
        """-> x (B, T, D), or (x, (keys, values)) with a ``cache`` (see ``Attention``)."""
        attended = self.attn(self.ln1(x), is_causal=is_causal, attn_bias=attn_bias, is_training=is_training, cache=cache)
        attended, kv = attended if cache is not None else (attended, None)
        # theory: pre-ln-vs-post-ln
        x = x + attended  # theory: residual-connections
        x = x + self.mlp(self.ln2(x), is_training=is_training)
        return x if cache is None else (x, kv)
