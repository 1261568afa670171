"""GPT-2 in Haiku: a pre-LN causal transformer decoder with an LM head tied to the token
embedding (or its own, ``tie_word_embeddings=False``), a key/value cache and ``generate``.

Paper: Radford et al., 2019, "Language Models are Unsupervised Multitask Learners".

Args (``GPTConfig``): vocab_size, context_length, hidden_size, num_layers, num_heads, mlp_dim,
layer_norm_eps, dropout (embedding and residual), attention_dropout, tie_word_embeddings, gelu, remat,
scan_layers (the blocks as one ``jax.lax.scan``, ``layers.run_blocks``; the KV-cache path of
``generate`` and ``block_outputs``' method interception keep the loop).
``transform(config, dtype="bfloat16")`` runs activations and matmuls in bfloat16 while the
parameters stay float32. ``is_training=True`` turns dropout on and needs an rng key in ``apply``.

``attention_mask`` (B, T), 1 for real tokens and 0 for padding, hides padded keys and sets the
position ids (transformers' GPT-2 convention: ``cumsum(mask) - 1``, 0 on padding), so a
left-padded prompt gives the same logits on its real tokens as the unpadded prompt. The cache
is a pytree (``KVCache``) passed to ``apply`` and returned, so a decoding step is pure.

Module paths map onto dlzoo's canonical names ("gpt/~/blocks_0/~/attn/~/qkv" + "kernel" ->
"blocks.0.attn.qkv.kernel", see ``layers.canonical_name``). Example::

    import jax, jax.numpy as jnp
    from dlzoo.zoo.configs import get_config
    from dlzoo.zoo.haiku.gpt import generate, transform

    config = get_config("gpt", "tiny")
    model = transform(config)                                     # hk.TransformedWithState
    ids = jnp.zeros((2, 16), dtype=jnp.int32)
    params, state = model.init(jax.random.key(0), ids)
    out, state = jax.jit(model.apply)(params, state, None, ids)
    out["logits"]                                                 # (2, 16, 256)
    out, state = model.apply(params, state, jax.random.key(1), ids, is_training=True)  # dropout on
    mask = jnp.ones((2, 16), jnp.int32).at[1, :4].set(0)          # row 1 left-padded
    generate(config, model, params, state, ids, mask, max_new_tokens=8)        # (2, 24), greedy
    generate(config, model, params, state, ids, mask, max_new_tokens=8, temperature=0.8,
             top_p=0.9, key=jax.random.key(1))                                 # sampled
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from ..configs import GPTConfig, check_generation
from .layers import Block, Dense, Embedding, LayerNorm, dropout, normal, run_blocks, transform_model


class KVCache(NamedTuple):
    """Every layer's keys and values in ``S`` preallocated slots, the mask of the slots written
    so far (1 = real token; padding and unwritten slots 0) and how many are written. A pytree:
    a decoding step takes one and returns the next."""

    keys: tuple[Float[Array, "B S N H"], ...]
    values: tuple[Float[Array, "B S N H"], ...]
    mask: Int[Array, "B S"]
    length: Int[Array, ""]

    @classmethod
    def empty(cls, config: GPTConfig, batch: int, slots: int, dtype=jnp.float32) -> "KVCache":
        shape = (batch, slots, config.num_heads, config.hidden_size // config.num_heads)
        zeros = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
        return cls(zeros, zeros, jnp.zeros((batch, slots), jnp.int32), jnp.zeros((), jnp.int32))


def position_ids(mask: Int[Array, "B S"]) -> Int[Array, "B S"]:
    """Real tokens count from 0, padding sits at 0."""
    # theory: position-embeddings
    return jnp.where(mask == 1, jnp.cumsum(mask, axis=-1) - 1, 0)


def attention_bias(mask: Int[Array, "B S"], past: Int[Array, ""] | int, num_queries: int, dtype) -> Float[Array, "B 1 T S"]:
    """Additive bias for the T = ``num_queries`` tokens at slots past..past+T: 0 where a query
    may attend (an earlier or the same slot holding a real token), else the dtype's most negative
    finite value (-inf would turn a fully masked padding row into NaN)."""
    slots = jnp.arange(mask.shape[1])
    # theory: causal-masking
    causal = slots[None, :] <= past + jnp.arange(num_queries)[:, None]  # (T, S)
    allowed = causal & (mask[:, None, None, :] == 1)  # (B, 1, T, S)  # theory: attention-mask
    return jnp.where(allowed, 0.0, jnp.finfo(dtype).min).astype(dtype)


class GPT(hk.Module):
    def __init__(self, config: GPTConfig, *, name: str = "gpt"):
        super().__init__(name=name)
        self.config = config
        d = config.hidden_size
        self.wte = Embedding(config.vocab_size, d, init=normal(0.02), name="wte")
        # theory: position-embeddings
        self.wpe = Embedding(config.context_length, d, init=normal(0.02), name="wpe")
        # GPT-2 scales the init of the two projections that write into the residual stream
        # (attn.out, mlp.out) by 1/sqrt(2 * num_layers): one per residual addition.
        out_std = 0.02 / math.sqrt(2 * config.num_layers)  # theory: initialization
        # one factory: the blocks are identical, which scan_layers relies on (layers.run_blocks)
        self.make_block = partial(
            Block,
            d,
            config.num_heads,
            config.mlp_dim,
            layer_norm_eps=config.layer_norm_eps,
            approximate=config.gelu == "tanh",  # GPT-2's "gelu_new" is the tanh form
            dropout=config.dropout,
            attention_dropout=config.attention_dropout,
            init=normal(0.02),
            out_init=normal(out_std),
        )
        self.blocks = [self.make_block(name=f"blocks_{i}") for i in range(config.num_layers)]
        self.ln_f = LayerNorm(eps=config.layer_norm_eps, name="ln_f")  # theory: layer-norm
        # theory: weight-tying
        self.lm_head = None if config.tie_word_embeddings else Dense(config.vocab_size, init=normal(0.02), use_bias=False, name="lm_head")

    def forward_features(
        self,
        input_ids: Int[Array, "B T"],
        attention_mask: Int[Array, "B T"] | None = None,
        *,
        cache: KVCache | None = None,
        is_training: bool = False,
    ):
        """``input_ids`` (B, T) -> final hidden states (B, T, D), after ln_f; with a ``cache``,
        (hidden states, the cache with these T tokens written after the cached ones)."""
        B, T = input_ids.shape
        mask = jnp.ones((B, T), jnp.int32) if attention_mask is None else attention_mask.astype(jnp.int32)
        past = 0
        if cache is not None:
            past = cache.length
            mask = jax.lax.dynamic_update_slice(cache.mask, mask, (0, past))  # (B, S)
        x = self.wte(input_ids)  # (B, T, D)
        bias = None  # no padding, no cache: the fused kernel's own causal mask
        if attention_mask is not None or cache is not None:
            bias = attention_bias(mask, past, T, x.dtype)  # (B, 1, T, S)
        positions = jax.lax.dynamic_slice(position_ids(mask), (0, past), (B, T))  # (B, T)
        x = x + self.wpe(positions)  # (B, T, D)
        x = dropout(x, self.config.dropout, is_training)  # theory: dropout
        if cache is None:
            # theory: causal-masking
            x = run_blocks(
                self.blocks,
                self.make_block,
                x,
                remat=self.config.remat,
                scan=self.config.scan_layers,
                is_causal=bias is None,
                attn_bias=bias,
                is_training=is_training,
            )
            return self.ln_f(x)
        keys, values = [], []
        for i, block in enumerate(self.blocks):  # the KV-cache path keeps the loop, scan_layers or not
            x, (k, v) = block(x, attn_bias=bias, is_training=is_training, cache=(cache.keys[i], cache.values[i], past))
            keys.append(k)
            values.append(v)
        return self.ln_f(x), KVCache(tuple(keys), tuple(values), mask, past + T)

    def forward_head(self, x: Float[Array, "B T D"]) -> Float[Array, "B T V"]:
        if self.lm_head is not None:
            return self.lm_head(x)
        # theory: weight-tying
        return x @ self.wte.embedding.T  # theory: next-token-prediction

    def __call__(
        self,
        input_ids: Int[Array, "B T"],
        attention_mask: Int[Array, "B T"] | None = None,
        *,
        cache: KVCache | None = None,
        is_training: bool = False,
    ) -> dict[str, Array | KVCache]:
        """``input_ids`` (B, T) -> {"logits": (B, T, V)}, and "cache" (the updated ``KVCache``)
        when a cache is given."""
        features = self.forward_features(input_ids, attention_mask, cache=cache, is_training=is_training)
        if cache is None:
            return {"logits": self.forward_head(features)}
        x, cache = features
        return {"logits": self.forward_head(x), "cache": cache}


def transform(config: GPTConfig, *, dtype: str = "float32") -> hk.TransformedWithState:
    """GPT as Haiku's pure pair (``layers.transform_model``): ``apply(params, state, rng,
    input_ids, attention_mask=None, cache=None)`` -> ({"logits": (B, T, V)} float32 [+ "cache"],
    state). The state is empty, kept so that every model has one signature; ``rng`` feeds
    dropout and may be None unless ``is_training=True``."""
    return transform_model(GPT, config, dtype=dtype)


def filter_logits(
    logits: Float[Array, "B V"], temperature: float, top_k: int | None = None, top_p: float | None = None
) -> Float[Array, "B V"]:
    """Logits divided by ``temperature`` (> 0), then every token outside the ``top_k`` largest
    (ties with the k-th kept) and outside the smallest most-likely set whose probability reaches
    ``top_p`` (at least one token) set to -inf. transformers' order and rules
    (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)."""
    # theory: sampling-strategies
    logits = logits / temperature
    if top_k is not None:
        kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][:, -1:]  # (B, 1)
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p is not None:
        order = jnp.argsort(logits, axis=-1)  # ascending
        ascending = jnp.take_along_axis(logits, order, axis=-1)
        mass = jnp.cumsum(jax.nn.softmax(ascending, axis=-1), axis=-1)  # this token and every less likely one
        drop = (mass <= 1 - top_p).at[:, -1].set(False)  # the most likely token always stays
        drop = jnp.take_along_axis(drop, jnp.argsort(order, axis=-1), axis=-1)  # back to vocabulary order
        logits = jnp.where(drop, -jnp.inf, logits)
    return logits


def next_token(logits: Float[Array, "B V"], key: jax.Array, temperature: float, top_k: int | None, top_p: float | None) -> Int[Array, " B"]:
    """Argmax when ``temperature == 0``, else a draw from the filtered softmax."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, filter_logits(logits, temperature, top_k, top_p), axis=-1).astype(jnp.int32)


def generate(
    config: GPTConfig,
    model: hk.TransformedWithState,
    params: hk.Params,
    state: hk.State,
    input_ids: Int[Array, "B T"],
    attention_mask: Int[Array, "B T"] | None = None,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    key: jax.Array | None = None,
) -> Int[Array, "B T+N"]:
    """Prompts ``input_ids`` (B, T), left-padded where ``attention_mask`` is 0, -> (B, T + N):
    the prompts followed by N = ``max_new_tokens`` new tokens of ``model`` (``transform(config)``).
    ``temperature=0`` is greedy; otherwise each token is drawn (with ``key``) from the softmax of
    the logits divided by ``temperature``, restricted to the ``top_k`` most likely and to the
    smallest set whose mass reaches ``top_p``. One jitted program: a prefill over the prompt,
    then a ``lax.scan`` of one-token steps that carry the ``KVCache``. Dropout is off."""
    check_generation(
        config,
        input_ids.shape[1],
        max_new_tokens,
        temperature,
        top_k,
        top_p,
        None if attention_mask is None else jax.device_get(attention_mask[:, -1]),
    )
    if attention_mask is None:
        attention_mask = jnp.ones(input_ids.shape, jnp.int32)
    return _generate(
        params,
        state,
        jnp.asarray(input_ids, jnp.int32),
        jnp.asarray(attention_mask, jnp.int32),
        jax.random.key(0) if key is None else key,
        config=config,
        model=model,
        max_new_tokens=max_new_tokens,
        temperature=float(temperature),
        top_k=top_k,
        top_p=top_p,
    )


@partial(jax.jit, static_argnames=("config", "model", "max_new_tokens", "temperature", "top_k", "top_p"))
def _generate(params, state, input_ids, attention_mask, key, *, config, model, max_new_tokens, temperature, top_k, top_p):
    B, T = input_ids.shape
    cache = KVCache.empty(config, B, T + max_new_tokens)  # theory: kv-cache
    out, _ = model.apply(params, state, None, input_ids, attention_mask, cache=cache)
    keys = jax.random.split(key, max_new_tokens)

    def step(carry, key):
        logits, cache = carry  # (B, V): the last token's
        token = next_token(logits, key, temperature, top_k, top_p)  # (B,)
        out, _ = model.apply(params, state, None, token[:, None], jnp.ones((B, 1), jnp.int32), cache=cache)
        return (out["logits"][:, -1], out["cache"]), token

    (logits, _), tokens = jax.lax.scan(step, (out["logits"][:, -1], out["cache"]), keys[:-1])  # (N-1, B)
    last = next_token(logits, keys[-1], temperature, top_k, top_p)
    return jnp.concatenate([input_ids, tokens.T, last[:, None]], axis=1)
