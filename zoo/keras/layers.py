"""Keras 3 building blocks shared by the dlzoo models: attention, MLP, pre-LN block, batch norm.

Only ``keras.layers`` and ``keras.ops``: the same file runs on the jax, torch and tensorflow
backends. Every layer takes an explicit ``name=`` (the canonical name of DESIGN.md, with
``blocks.0`` spelled ``blocks_0`` and ``stages.1.blocks.0`` spelled ``stages_1_blocks_0``,
because keras' torch backend registers variables under their path and torch forbids dots there)
and an integer ``seed`` from which it draws the seeds of its initializers and dropout layers, so
a model built twice with one seed is the same model without keras' global random state.

Canonical names follow mechanically from ``variable.path`` (see ``canonical_name``):
``blocks_0/attn/qkv/kernel`` -> ``blocks.0.attn.qkv.kernel``, and keras' leaf names are renamed
(``gamma`` -> ``scale``, ``beta`` -> ``bias``, ``embeddings`` -> ``embedding``, ``moving_mean``
-> ``mean``, ``moving_variance`` -> ``var``). Layouts already agree (dense [in, out], conv HWIO).
"""

from __future__ import annotations

import re

import numpy as np
import keras
from keras import layers, ops

# Large finite negative per compute dtype for additive attention masks (finfo.min, transformers'
# convention): -inf would turn fully masked rows into NaN, and float32's min overflows bfloat16.
MASK_MIN = {"float32": -3.4028234663852886e38, "bfloat16": -3.3895313892515355e38, "float16": -65504.0}

_TRUNCATED_STD = 0.87962566103423978  # std of a standard normal truncated at +-2

_LEAF = {"gamma": "scale", "beta": "bias", "embeddings": "embedding", "moving_mean": "mean", "moving_variance": "var"}


def canonical_name(path: str) -> str:
    """``blocks_0/attn/qkv/kernel`` -> ``blocks.0.attn.qkv.kernel`` (see the module docstring)."""
    *scopes, leaf = path.split("/")
    # "stages_1_blocks_0" -> "stages.1.blocks.0": an underscore before or after an index is a dot.
    scopes = [re.sub(r"_(\d+)(_|$)", lambda m: "." + m[1] + ("." if m[2] else ""), s) for s in scopes]
    return ".".join(scopes + [_LEAF.get(leaf, leaf)])


class Dropout(layers.Dropout):
    """``keras.layers.Dropout`` applied as ``mask * x / keep`` (haiku's form, and the flax and
    equinox layers') rather than keras' ``select(mask, x / keep, 0)``. On jax the mask is keras'
    own draw (``uniform(seed) < keep`` is ``jax.random.bernoulli``), so values are bit-identical;
    XLA fuses the multiply, while the select on the residual stream made it recompute earlier
    residual additions inside transposes (about 10% of a GPT training step, docs/bench.md)."""

    def call(self, inputs, training=False):
        if not training or self.rate == 0.0:
            return inputs
        keep = 1.0 - self.rate
        mask = keras.random.uniform(ops.shape(inputs), seed=self.seed_generator) < keep
        return ops.cast(mask, inputs.dtype) * inputs / keep


def pad_hw(x, pad: int, value: float = 0.0):
    """Pad height and width of an NHWC map by ``pad`` on every side. Explicit and symmetric, as
    torch pads: keras' padding="same" puts the extra pixel bottom/right on stride-2 convs."""
    return ops.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]], constant_values=value)


class Seeds:
    """A stream of distinct integer seeds drawn from one base seed (one per initializer or dropout)."""

    def __init__(self, seed: int):
        self._rng = np.random.default_rng(seed)

    def __call__(self) -> int:
        return int(self._rng.integers(2**31 - 1))


@keras.saving.register_keras_serializable(package="dlzoo")
class Normal(keras.initializers.Initializer):
    """Normal(0, std) drawn with numpy from an integer seed, optionally truncated at 2 std
    (redrawn, as jax.nn.initializers.truncated_normal; BERT and ViT) or not (GPT-2, ResNet).

    keras' own random initializers would do, but on the jax backend each new shape compiles its
    own XLA program (seconds per model); numpy also gives the same weights on every backend.
    """

    def __init__(self, std: float = 0.02, seed: int = 0, truncated: bool = True):
        self.std, self.seed, self.truncated = std, seed, truncated

    def __call__(self, shape, dtype=None):
        rng = np.random.default_rng(self.seed)
        x = rng.standard_normal(shape)
        while self.truncated and (outside := np.abs(x) > 2).any():
            x[outside] = rng.standard_normal(int(outside.sum()))
        # Cutting at +-2 leaves std 0.8796; divide it out so `std` is the std (as the other backends).
        std = self.std / _TRUNCATED_STD if self.truncated else self.std
        return ops.convert_to_tensor(std * x, dtype=dtype or "float32")

    def get_config(self):
        return {"std": self.std, "seed": self.seed, "truncated": self.truncated}


def normal_init(seed: int, std: float = 0.02, *, truncated: bool = True) -> Normal:
    return Normal(std, seed, truncated)  # theory: initialization


@keras.saving.register_keras_serializable(package="dlzoo")
class Attention(layers.Layer):
    """Multi-head self-attention with a fused q|k|v projection (heads contiguous within each).

    ``call(x, bias=..., is_causal=..., training=..., cache=..., cache_index=...)``: ``bias``,
    broadcastable to (B, nh, T, S), is added to the scores before the softmax (BERT's padding
    mask; GPT-2's causal and padding mask). ``cache`` = (keys, values), each (B, S, nh, hs)
    preallocated: this call's keys and values are written at slots cache_index..cache_index+T,
    the queries attend over all S slots (``bias`` hides the unwritten ones), and the call
    returns (y, (keys, values)), as keras-hub's cached attention does.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        init_std: float = 0.02,
        out_std: float = 0.02,
        truncated: bool = True,
        seed: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.dim, self.num_heads, self.seed = dim, num_heads, seed
        self.rates, self.stds, self.truncated = (dropout, attention_dropout), (init_std, out_std), truncated
        seeds, policy = Seeds(seed), self.dtype_policy
        self.qkv = layers.Dense(3 * dim, kernel_initializer=normal_init(seeds(), init_std, truncated=truncated), name="qkv", dtype=policy)
        self.out = layers.Dense(dim, kernel_initializer=normal_init(seeds(), out_std, truncated=truncated), name="out", dtype=policy)
        self.attn_drop = Dropout(attention_dropout, seed=seeds(), name="attn_drop", dtype=policy)
        self.resid_drop = Dropout(dropout, seed=seeds(), name="resid_drop", dtype=policy)

    def call(self, x, *, bias=None, is_causal=False, training=False, cache=None, cache_index=None):
        B, T = ops.shape(x)[0], ops.shape(x)[1]
        H = self.dim // self.num_heads
        q, k, v = ops.split(self.qkv(x), 3, axis=-1)  # 3 x (B, T, C)  # theory: multi-head-attention
        q, k, v = (ops.reshape(t, (B, T, self.num_heads, H)) for t in (q, k, v))  # (B, T, nh, hs)
        if cache is not None:
            keys, values = cache  # (B, S, nh, hs) each
            # theory: kv-cache
            k = keys = ops.slice_update(keys, [0, cache_index, 0, 0], ops.cast(k, keys.dtype))
            v = values = ops.slice_update(values, [0, cache_index, 0, 0], ops.cast(v, values.dtype))
        if training and self.attn_drop.rate > 0:
            # keras.ops.dot_product_attention has no dropout: spell attention out only when it is on.
            scores = ops.einsum("btnh,bsnh->bnts", q, k) / ops.cast(H**0.5, q.dtype)  # (B, nh, T, T)
            if is_causal:
                future = ops.triu(ops.ones((T, T), "bool"), 1)
                scores = ops.where(future, ops.cast(MASK_MIN[self.compute_dtype], q.dtype), scores)
            if bias is not None:
                scores = scores + bias
            probs = self.attn_drop(ops.softmax(scores, axis=-1), training=training)
            y = ops.einsum("bnts,bsnh->btnh", probs, v)
        else:
            y = ops.dot_product_attention(q, k, v, bias=bias, is_causal=is_causal)  # theory: scaled-dot-product-attention
        y = ops.reshape(y, (B, T, self.dim))  # (B, T, C): heads side by side again
        y = self.resid_drop(self.out(y), training=training)
        return y if cache is None else (y, (keys, values))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "num_heads": self.num_heads,
            "dropout": self.rates[0],
            "attention_dropout": self.rates[1],
            "init_std": self.stds[0],
            "out_std": self.stds[1],
            "truncated": self.truncated,
            "seed": self.seed,
        }


def run_block(block: layers.Layer, x, *, remat: bool, **kwargs):
    """``block(x, **kwargs)``; with ``remat`` (the config's flag) under ``keras.remat``, the
    backend's own rematerialisation (``jax.checkpoint``, ``tf.recompute_grad``,
    ``torch.utils.checkpoint``): under differentiation the block's activations are not kept for
    the backward pass but recomputed there.

    Not ``keras.RematScope``: it wraps ``Block.call`` itself, tracing its Python flags
    (``is_causal``, ``training``) as arrays, and lets the dropout seed generators and batch-norm
    statistics assign new values from inside the checkpoint (a leaked tracer on jax). Here the
    flags are closed over and the block runs as ``stateless_call``: its variables go in and its
    updated non-trainable state (seeds, statistics) comes out as values, assigned once outside.
    The recomputation sees the same seeds, so dropout draws the same masks. The first call
    (keras' symbolic build) runs the block plainly: nothing is differentiated there."""
    if not remat or not block.built:
        return block(x, **kwargs)
    static = {k: v for k, v in kwargs.items() if isinstance(v, bool) or v is None}
    traced = {k: v for k, v in kwargs.items() if k not in static}

    def run(trainable, non_trainable, x, traced):
        return block.stateless_call(trainable, non_trainable, x, **static, **traced)

    trainable = [v.value for v in block.trainable_variables]
    # copies: on the torch backend assign() writes in place, and the recomputation must see the
    # seeds and statistics the forward saw, not the updated ones
    non_trainable = [ops.copy(v.value) for v in block.non_trainable_variables]
    y, non_trainable = keras.remat(run)(trainable, non_trainable, x, traced)
    for variable, value in zip(block.non_trainable_variables, non_trainable):
        variable.assign(value)
    return y


def run_blocks(blocks: list[layers.Layer], x, *, remat: bool, scan: bool, **kwargs):
    """``x`` through ``blocks`` in order, each as ``run_block(block, x, remat=remat, **kwargs)``.

    With ``scan`` (the config's ``scan_layers``) on the jax backend the blocks run as ONE
    ``keras.ops.scan`` (``jax.lax.scan``) whose body is compiled once, instead of an unrolled loop whose program grows
    with depth, through the stateless API as ``run_block`` does for remat: every block's
    variable values (its weights, and its dropout seed-generator state) are stacked along a new
    leading axis inside the traced function, the body is the first block's ``stateless_call`` on
    one slice, and each block's updated seed state comes out of the scan and is assigned to that
    block's own variables once. Each block keeps its variables (canonical names unchanged) and
    draws from its own seeds, so dropout draws the masks of the loop. With ``remat`` the body is
    checkpointed (``keras.remat``). Other backends (tensorflow, torch: eager, no compile-time
    problem), keras' symbolic build (blocks not yet built) and blocks whose variables differ in
    shape run the loop. -> x, the last block's output."""
    shapes = [[tuple(v.shape) for v in block.variables] for block in blocks]
    if (
        not scan
        or keras.backend.backend() != "jax"
        or len(blocks) < 2
        or not all(b.built for b in blocks)
        or shapes.count(shapes[0]) != len(shapes)
    ):
        for block in blocks:
            x = run_block(block, x, remat=remat, **kwargs)
        return x
    static = {k: v for k, v in kwargs.items() if isinstance(v, bool) or v is None}
    traced = {k: v for k, v in kwargs.items() if k not in static}
    body_block = blocks[0]

    def stacked(which: str) -> list:
        return [ops.stack(values) for values in zip(*([v.value for v in getattr(block, which)] for block in blocks))]

    def run(trainable, non_trainable, x, traced):
        return body_block.stateless_call(trainable, non_trainable, x, **static, **traced)

    run = keras.remat(run) if remat else run

    def body(x, layer):
        return run(*layer, x, traced)

    x, non_trainable = ops.scan(body, x, (stacked("trainable_variables"), stacked("non_trainable_variables")))
    for i, block in enumerate(blocks):
        for variable, value in zip(block.non_trainable_variables, non_trainable):
            variable.assign(value[i])
    return x


@keras.saving.register_keras_serializable(package="dlzoo")
class MLP(layers.Layer):
    """Position-wise feed-forward: fc -> GELU -> out -> dropout."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        *,
        approximate_gelu: bool,
        dropout: float = 0.0,
        init_std: float = 0.02,
        out_std: float = 0.02,
        truncated: bool = True,
        seed: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.dim, self.hidden, self.approximate_gelu, self.rate, self.seed = dim, hidden, approximate_gelu, dropout, seed
        self.stds, self.truncated = (init_std, out_std), truncated
        seeds, policy = Seeds(seed), self.dtype_policy
        self.fc = layers.Dense(hidden, kernel_initializer=normal_init(seeds(), init_std, truncated=truncated), name="fc", dtype=policy)
        self.out = layers.Dense(dim, kernel_initializer=normal_init(seeds(), out_std, truncated=truncated), name="out", dtype=policy)
        self.drop = Dropout(dropout, seed=seeds(), name="drop", dtype=policy)

    def call(self, x, training=False):
        h = ops.gelu(self.fc(x), approximate=self.approximate_gelu)  # (B, T, 4C)  # theory: gelu
        return self.drop(self.out(h), training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "hidden": self.hidden,
            "approximate_gelu": self.approximate_gelu,
            "dropout": self.rate,
            "init_std": self.stds[0],
            "out_std": self.stds[1],
            "truncated": self.truncated,
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(package="dlzoo")
class Block(layers.Layer):
    """Pre-LN transformer block (GPT-2, ViT): x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        *,
        layer_norm_eps: float,
        approximate_gelu: bool,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        init_std: float = 0.02,
        out_std: float = 0.02,
        truncated: bool = True,
        seed: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.args = dict(
            dim=dim,
            num_heads=num_heads,
            mlp_dim=mlp_dim,
            layer_norm_eps=layer_norm_eps,
            approximate_gelu=approximate_gelu,
            dropout=dropout,
            attention_dropout=attention_dropout,
            init_std=init_std,
            out_std=out_std,
            truncated=truncated,
            seed=seed,
        )
        seeds, policy = Seeds(seed), self.dtype_policy
        self.ln1 = layers.LayerNormalization(epsilon=layer_norm_eps, name="ln1", dtype=policy)  # theory: layer-norm
        self.attn = Attention(
            dim,
            num_heads,
            dropout=dropout,
            attention_dropout=attention_dropout,
            init_std=init_std,
            out_std=out_std,
            truncated=truncated,
            seed=seeds(),
            name="attn",
            dtype=policy,
        )
        self.ln2 = layers.LayerNormalization(epsilon=layer_norm_eps, name="ln2", dtype=policy)
        self.mlp = MLP(
            dim,
            mlp_dim,
            approximate_gelu=approximate_gelu,
            dropout=dropout,
            init_std=init_std,
            out_std=out_std,
            truncated=truncated,
            seed=seeds(),
            name="mlp",
            dtype=policy,
        )

    def call(self, x, *, bias=None, is_causal=False, training=False, cache=None, cache_index=None):
        """-> x (B, T, C), or (x, (keys, values)) with a ``cache`` (see ``Attention``)."""
        attended = self.attn(self.ln1(x), bias=bias, is_causal=is_causal, training=training, cache=cache, cache_index=cache_index)
        attended, kv = attended if cache is not None else (attended, None)
        x = x + attended  # theory: pre-ln-vs-post-ln
        x = x + self.mlp(self.ln2(x), training=training)  # theory: residual-connections
        return x if cache is None else (x, kv)  # (B, T, C)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), **self.args}


@keras.saving.register_keras_serializable(package="dlzoo")
class BatchNorm(layers.BatchNormalization):
    """Batch norm with PyTorch's statistics: normalise with the biased batch variance, update the
    running variance with the unbiased one (n / (n - 1) times larger).

    keras.layers.BatchNormalization updates ``moving_variance`` with the biased variance, so its
    running statistics drift from torch's by a factor n / (n - 1) per update (large for small
    batches or late, small feature maps). ``momentum`` keeps keras' meaning (weight of the OLD
    statistic): pass ``1 - ResNetConfig.bn_momentum``.
    """

    def call(self, x, training=False):
        x32 = ops.cast(x, "float32")  # statistics in float32 even under mixed precision
        if training and self.trainable:
            reduce = [a for a in range(len(x.shape)) if a != self.axis % len(x.shape)]
            mean, var = ops.moments(x32, axes=reduce)  # biased variance, used to normalise
            n = 1.0
            for a in reduce:  # ops.shape: the batch size may be symbolic inside a compiled fit step
                n = n * ops.cast(ops.shape(x32)[a], "float32")
            unbiased = var * n / ops.maximum(n - 1.0, 1.0)
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum + unbiased * (1.0 - self.momentum))
        else:
            mean, var = self.moving_mean, self.moving_variance
        y = ops.batch_normalization(
            x32, mean, var, axis=self.axis, offset=self.beta, scale=self.gamma, epsilon=self.epsilon
        )  # theory: batch-norm
        return ops.cast(y, self.compute_dtype)


@keras.saving.register_keras_serializable(package="dlzoo")
class Conv2D(layers.Conv2D):
    """keras.layers.Conv2D (NHWC) that computes a 1x1 convolution as the matmul it is:
    ``x[:, ::s, ::s, :] @ kernel[0, 0]`` (B, H', W', C_in) @ (C_in, C_out).

    The oneDNN 1x1 weight-gradient kernel that torch 2.13 (channels-last input, which keras'
    torch backend hands it) and tensorflow 2.x CPU both dispatch to crashes the process
    intermittently on AVX-512 CPUs (reproduced with each framework alone). A matmul takes the
    GEMM path instead; the values agree with the convolution to fp32 rounding. Larger kernels,
    and every kernel on the jax backend (XLA's convolution is not affected), keep keras' own
    convolution.
    """

    def convolution_op(self, inputs, kernel):
        if keras.backend.backend() == "jax":
            return super().convolution_op(inputs, kernel)
        if tuple(self.kernel_size) != (1, 1) or self.data_format != "channels_last" or self.groups != 1:
            return super().convolution_op(inputs, kernel)
        if self.padding != "valid" or tuple(self.dilation_rate) != (1, 1):
            return super().convolution_op(inputs, kernel)
        sh, sw = self.strides
        return ops.matmul(inputs[:, ::sh, ::sw, :], kernel[0, 0])  # (B, H', W', C_out)
