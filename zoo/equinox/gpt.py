"""GPT-2 in Equinox: a pre-LN causal transformer decoder with an LM head tied to the token
embedding (or its own, ``tie_word_embeddings=False``), a key/value cache and ``generate``.

Paper: Radford et al., 2019, "Language Models are Unsupervised Multitask Learners".

Args (``GPTConfig``): vocab_size, context_length, hidden_size, num_layers, num_heads, mlp_dim,
layer_norm_eps, dropout (embedding and residual), attention_dropout, tie_word_embeddings, gelu, remat,
scan_layers (the blocks as one ``jax.lax.scan``, ``layers.run_blocks``; the KV-cache path of
``generate`` and ``block_outputs``' recording keep the loop).
``dtype="bfloat16"`` runs activations and matmuls in bfloat16 while the parameters stay float32.

``attention_mask`` (T,), 1 for real tokens and 0 for padding, hides padded keys and sets the
position ids (transformers' GPT-2 convention: ``cumsum(mask) - 1``, 0 on padding), so a
left-padded prompt gives the same logits on its real tokens as the unpadded prompt. The cache
is a pytree (``KVCache``) passed in and returned, so a decoding step is a pure function.

The model maps ONE sequence, as Equinox layers do; ``jax.vmap`` it over the batch and give each
row its own dropout key. Example::

    import jax, jax.numpy as jnp
    from dlzoo.zoo.configs import get_config
    from dlzoo.zoo.equinox.gpt import GPT, generate

    model = GPT(get_config("gpt", "tiny"), key=jax.random.key(0))
    ids = jnp.zeros((2, 16), dtype=jnp.int32)
    logits = jax.vmap(lambda x: model(x)["logits"])(ids)                  # (2, 16, 256)
    keys = jax.random.split(jax.random.key(1), 2)                         # training: dropout on
    logits = jax.vmap(lambda x, k: model(x, key=k, inference=False)["logits"])(ids, keys)
    mask = jnp.ones((2, 16), jnp.int32).at[1, :4].set(0)                  # row 1 left-padded
    out = generate(model, ids, mask, max_new_tokens=8)                    # (2, 24), greedy
    out = generate(model, ids, mask, max_new_tokens=8, temperature=0.8, top_p=0.9,
                   key=jax.random.key(1))                                 # sampled
"""

from __future__ import annotations

import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ..configs import GPTConfig, check_generation
from .layers import Block, Dense, Dropout, Embedding, LayerNorm, cast_floating, normal, run_blocks, split_key


class KVCache(NamedTuple):
    """Every layer's keys and values in ``S`` preallocated slots, the mask of the slots written
    so far (1 = real token; padding and unwritten slots 0) and how many are written. A pytree:
    a decoding step takes one and returns the next."""

    keys: tuple[Float[Array, "S N H"], ...]
    values: tuple[Float[Array, "S N H"], ...]
    mask: Int[Array, " S"]
    length: Int[Array, ""]

    @classmethod
    def empty(cls, config: GPTConfig, slots: int, dtype: str = "float32") -> "KVCache":
        shape = (slots, config.num_heads, config.hidden_size // config.num_heads)
        zeros = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
        return cls(zeros, zeros, jnp.zeros((slots,), jnp.int32), jnp.zeros((), jnp.int32))


def position_ids(mask: Int[Array, " S"]) -> Int[Array, " S"]:
    """Real tokens count from 0, padding sits at 0."""
    # theory: position-embeddings
    return jnp.where(mask == 1, jnp.cumsum(mask) - 1, 0)


def attention_bias(mask: Int[Array, " S"], past: Int[Array, ""] | int, num_queries: int, dtype: str) -> Float[Array, "1 T S"]:
    """Additive bias for the T = ``num_queries`` tokens at slots past..past+T: 0 where a query
    may attend (an earlier or the same slot holding a real token), else the dtype's most negative
    finite value (-inf would turn a fully masked padding row into NaN)."""
    slots = jnp.arange(mask.shape[0])
    # theory: causal-masking
    causal = slots[None, :] <= past + jnp.arange(num_queries)[:, None]  # (T, S)
    allowed = causal & (mask[None, :] == 1)  # (T, S)  # theory: attention-mask
    return jnp.where(allowed, 0.0, jnp.finfo(dtype).min).astype(dtype)[None]


class GPT(eqx.Module):
    wte: Embedding
    wpe: Embedding
    drop: Dropout
    blocks: list[Block]
    ln_f: LayerNorm
    lm_head: Dense | None
    config: GPTConfig = eqx.field(static=True)
    dtype: str = eqx.field(static=True)

    def __init__(self, config: GPTConfig, *, key: PRNGKeyArray, dtype: str = "float32"):
        keys = jax.random.split(key, config.num_layers + 2)
        d, std = config.hidden_size, 0.02
        self.wte = Embedding(config.vocab_size, d, init=normal(std), key=keys[0])
        # theory: position-embeddings
        self.wpe = Embedding(config.context_length, d, init=normal(std), key=keys[1])
        self.drop = Dropout(config.dropout)  # theory: dropout
        # The residual projections (attn.out, mlp.out) start smaller the deeper the model: each
        # block adds two branches to the residual stream, whose variance would otherwise grow.
        out_init = normal(std / math.sqrt(2 * config.num_layers))  # theory: initialization
        # theory: pre-ln-vs-post-ln
        self.blocks = [
            Block(
                d,
                config.num_heads,
                config.mlp_dim,
                eps=config.layer_norm_eps,
                is_causal=True,  # theory: causal-masking
                # GPT-2's "gelu_new" is the tanh approximation.
                approximate=config.gelu == "tanh",  # theory: gelu
                dropout=config.dropout,
                attention_dropout=config.attention_dropout,
                init=normal(std),
                out_init=out_init,
                key=k,
            )
            for k in keys[2:]
        ]
        self.ln_f = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # theory: layer-norm
        # theory: weight-tying
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else Dense(d, config.vocab_size, init=normal(std), use_bias=False, key=jax.random.fold_in(key, 1))
        )
        self.config, self.dtype = config, dtype

    def forward_features(
        self,
        input_ids: Int[Array, " T"],
        attention_mask: Int[Array, " T"] | None = None,
        *,
        cache: KVCache | None = None,
        key: PRNGKeyArray | None = None,
        inference: bool = True,
    ):
        """``input_ids`` (T,) -> final hidden states (T, D), after ln_f; with a ``cache``,
        (hidden states, the cache with these T tokens written after the cached ones)."""
        T = input_ids.shape[0]
        keys = split_key(key, len(self.blocks) + 1)
        mask = jnp.ones((T,), jnp.int32) if attention_mask is None else attention_mask.astype(jnp.int32)
        past = 0
        if cache is not None:
            past = cache.length
            mask = jax.lax.dynamic_update_slice(cache.mask, mask, (past,))  # (S,)
        bias = None  # no padding, no cache: the fused kernel's own causal mask
        if attention_mask is not None or cache is not None:
            bias = attention_bias(mask, past, T, self.dtype)  # (1, T, S)
        positions = jax.lax.dynamic_slice(position_ids(mask), (past,), (T,))  # (T,)
        x = self.drop(self.wte(input_ids) + self.wpe(positions), key=keys[0], inference=inference)
        if cache is None:
            x = run_blocks(self.blocks, x, bias, remat=self.config.remat, scan=self.config.scan_layers, keys=keys[1:], inference=inference)
            return self.ln_f(x)
        kv = []
        for i, (block, k) in enumerate(zip(self.blocks, keys[1:])):  # the KV-cache path keeps the loop, scan_layers or not
            x, layer_kv = block(x, bias, key=k, inference=inference, cache=(cache.keys[i], cache.values[i], past))
            kv.append(layer_kv)
        return self.ln_f(x), KVCache(tuple(k for k, _ in kv), tuple(v for _, v in kv), mask, past + T)

    def forward_head(self, x: Float[Array, "T D"]) -> Float[Array, "T V"]:
        if self.lm_head is not None:
            return self.lm_head(x)
        # theory: weight-tying
        return x @ self.wte.embedding.T  # theory: next-token-prediction

    def __call__(
        self,
        input_ids: Int[Array, " T"],
        attention_mask: Int[Array, " T"] | None = None,
        *,
        cache: KVCache | None = None,
        key: PRNGKeyArray | None = None,
        inference: bool = True,
    ) -> dict[str, Float[Array, "T V"] | KVCache]:
        """``input_ids`` (T,) -> {"logits": (T, V)} float32, and "cache" (the updated
        ``KVCache``) when a cache is given; ``key`` is needed when ``inference=False`` and
        dropout is non-zero."""
        # theory: mixed-precision
        model = cast_floating(self, self.dtype)
        features = model.forward_features(input_ids, attention_mask, cache=cache, key=key, inference=inference)
        if cache is None:
            return {"logits": model.forward_head(features).astype(jnp.float32)}
        x, cache = features
        return {"logits": model.forward_head(x).astype(jnp.float32), "cache": cache}


def filter_logits(
    logits: Float[Array, " V"], temperature: float, top_k: int | None = None, top_p: float | None = None
) -> Float[Array, " V"]:
    """Logits divided by ``temperature`` (> 0), then every token outside the ``top_k`` largest
    (ties with the k-th kept) and outside the smallest most-likely set whose probability reaches
    ``top_p`` (at least one token) set to -inf. transformers' order and rules
    (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)."""
    # theory: sampling-strategies
    logits = logits / temperature
    if top_k is not None:
        kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p is not None:
        order = jnp.argsort(logits, axis=-1)  # ascending
        ascending = jnp.take_along_axis(logits, order, axis=-1)
        mass = jnp.cumsum(jax.nn.softmax(ascending, axis=-1), axis=-1)  # this token and every less likely one
        drop = (mass <= 1 - top_p).at[..., -1].set(False)  # the most likely token always stays
        drop = jnp.take_along_axis(drop, jnp.argsort(order, axis=-1), axis=-1)  # back to vocabulary order
        logits = jnp.where(drop, -jnp.inf, logits)
    return logits


def next_token(logits: Float[Array, " V"], key: PRNGKeyArray, temperature: float, top_k: int | None, top_p: float | None) -> Int[Array, ""]:
    """Argmax when ``temperature == 0``, else a draw from the filtered softmax."""
    if temperature == 0.0:
        return jnp.argmax(logits).astype(jnp.int32)
    return jax.random.categorical(key, filter_logits(logits, temperature, top_k, top_p)).astype(jnp.int32)


def generate(
    model: GPT,
    input_ids: Int[Array, "B T"],
    attention_mask: Int[Array, "B T"] | None = None,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    key: PRNGKeyArray | None = None,
) -> Int[Array, "B T+N"]:
    """Prompts ``input_ids`` (B, T), left-padded where ``attention_mask`` is 0, -> (B, T + N):
    the prompts followed by N = ``max_new_tokens`` new tokens. ``temperature=0`` is greedy;
    otherwise each token is drawn (with ``key``, one per row) from the softmax of the logits
    divided by ``temperature``, restricted to the ``top_k`` most likely and to the smallest set
    whose mass reaches ``top_p``. One compiled program, vmapped over rows: a prefill over the
    prompt, then a ``lax.scan`` of one-token steps that carry the ``KVCache``. Dropout is off."""
    check_generation(
        model.config,
        input_ids.shape[1],
        max_new_tokens,
        temperature,
        top_k,
        top_p,
        None if attention_mask is None else jax.device_get(attention_mask[:, -1]),
    )
    if attention_mask is None:
        attention_mask = jnp.ones(input_ids.shape, jnp.int32)
    keys = jax.random.split(jax.random.key(0) if key is None else key, input_ids.shape[0])
    return _generate(
        model,
        jnp.asarray(input_ids, jnp.int32),
        jnp.asarray(attention_mask, jnp.int32),
        keys,
        max_new_tokens,
        float(temperature),
        top_k,
        top_p,
    )


@eqx.filter_jit
def _generate(model: GPT, input_ids, attention_mask, keys, max_new_tokens, temperature, top_k, top_p):
    def one(ids: Int[Array, " T"], mask: Int[Array, " T"], key: PRNGKeyArray) -> Int[Array, " T+N"]:
        cache = KVCache.empty(model.config, ids.shape[0] + max_new_tokens, model.dtype)  # theory: kv-cache
        out = model(ids, mask, cache=cache)

        def step(carry, key):
            logits, cache = carry  # (V,): the last token's
            token = next_token(logits, key, temperature, top_k, top_p)
            out = model(token[None], jnp.ones((1,), jnp.int32), cache=cache)
            return (out["logits"][-1], out["cache"]), token

        step_keys = jax.random.split(key, max_new_tokens)
        (logits, _), tokens = jax.lax.scan(step, (out["logits"][-1], out["cache"]), step_keys[:-1])
        last = next_token(logits, step_keys[-1], temperature, top_k, top_p)
        return jnp.concatenate([ids, tokens, last[None]])

    return jax.vmap(one)(input_ids, attention_mask, keys)
