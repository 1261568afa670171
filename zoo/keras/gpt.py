"""GPT-2 in Keras 3: a pre-LN causal transformer decoder with the LM head tied to the token
embedding (or its own, ``tie_word_embeddings=False``), a key/value cache and ``generate``.

Radford et al., 2019, "Language Models are Unsupervised Multitask Learners".

Args:
    config: a ``GPTConfig`` (or its dict form, as stored by ``get_config``).
    seed: seed for initialization and dropout.
    dtype: keras dtype policy, e.g. ``"mixed_bfloat16"`` (float32 variables, bfloat16 compute).

Inputs: ``{"input_ids": (B, T) int, "attention_mask": (B, T) optional}``; the mask, 1 for real
tokens and 0 for padding, hides padded keys and sets the position ids (transformers' GPT-2
convention: ``cumsum(mask) - 1``, 0 on padding), so a left-padded prompt gives the same logits
on its real tokens as the unpadded prompt. ``call_with_cache`` runs new tokens after cached
ones (a ``KVCache`` of preallocated tensors, as keras-hub's causal LMs keep); ``generate``
decodes with it, eagerly, on any backend.

Example:
    >>> import os; _ = os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is imported
    >>> import numpy as np
    >>> from dlzoo.zoo.configs import get_config
    >>> from dlzoo.zoo.keras.gpt import GPT
    >>> model = GPT(get_config("gpt", "tiny"), seed=0)
    >>> tuple(model({"input_ids": np.zeros((2, 8), "int32")})["logits"].shape)
    (2, 8, 256)
    >>> mask = np.ones((2, 8), "int32"); mask[1, :3] = 0                 # row 1 left-padded
    >>> tuple(model.generate(np.zeros((2, 8), "int32"), mask, max_new_tokens=4).shape)  # greedy
    (2, 12)
"""

from __future__ import annotations

from typing import NamedTuple

import keras
from keras import layers, ops

from ..configs import GPTConfig, check_generation
from .layers import MASK_MIN, Block, Dropout, Seeds, normal_init, run_blocks


class KVCache(NamedTuple):
    """Every layer's keys and values (B, S, nh, hs) in S preallocated slots, the mask (B, S) of
    the slots written so far (1 = real token; padding and unwritten slots 0), and how many are
    written (a Python int: decoding runs eagerly)."""

    keys: tuple
    values: tuple
    mask: object
    length: int

    @classmethod
    def empty(cls, config: GPTConfig, batch: int, slots: int, dtype: str = "float32") -> "KVCache":
        shape = (batch, slots, config.num_heads, config.hidden_size // config.num_heads)
        zeros = tuple(ops.zeros(shape, dtype) for _ in range(config.num_layers))
        return cls(zeros, zeros, ops.zeros((batch, slots), "int32"), 0)


def position_ids(mask):
    """(B, S) mask -> (B, S) positions: real tokens count from 0, padding sits at 0."""
    return ops.where(mask == 1, ops.cumsum(mask, axis=-1) - 1, 0)  # theory: position-embeddings


def attention_bias(mask, past: int, num_queries: int, dtype: str):
    """(B, S) key mask -> additive bias (B, 1, T, S) for the T = ``num_queries`` tokens at slots
    past..past+T: 0 where a query may attend (an earlier or the same slot holding a real token),
    else the dtype's most negative finite value (-inf would turn a padding row into NaN)."""
    slots = ops.arange(ops.shape(mask)[1])
    causal = slots[None, :] <= past + ops.arange(num_queries)[:, None]  # (T, S)  # theory: causal-masking
    allowed = ops.logical_and(causal[None, None], (mask == 1)[:, None, None, :])  # (B, 1, T, S)  # theory: attention-mask
    return ops.where(allowed, ops.cast(0.0, dtype), ops.cast(MASK_MIN[dtype], dtype))


@keras.saving.register_keras_serializable(package="dlzoo")
class GPT(keras.Model):
    def __init__(self, config: GPTConfig | dict = GPTConfig(), *, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.config = config = GPTConfig.from_dict(config) if isinstance(config, dict) else config
        self.seed = seed
        seeds, policy, d = Seeds(seed), self.dtype_policy, config.hidden_size
        self.wte = layers.Embedding(
            config.vocab_size, d, embeddings_initializer=normal_init(seeds(), truncated=False), name="wte", dtype=policy
        )
        self.wpe = layers.Embedding(
            config.context_length,
            d,  # theory: position-embeddings
            embeddings_initializer=normal_init(seeds(), truncated=False),
            name="wpe",
            dtype=policy,
        )
        self.drop = Dropout(config.dropout, seed=seeds(), name="drop", dtype=policy)  # theory: dropout
        # GPT-2 scales the residual projections by 1/sqrt(2 * layers): each block adds two of them.
        out_std = 0.02 / (2 * config.num_layers) ** 0.5  # theory: initialization
        self.blocks = [
            Block(
                d,
                config.num_heads,
                config.mlp_dim,
                layer_norm_eps=config.layer_norm_eps,
                approximate_gelu=config.gelu == "tanh",
                dropout=config.dropout,
                attention_dropout=config.attention_dropout,
                out_std=out_std,
                truncated=False,
                seed=seeds(),
                name=f"blocks_{i}",
                dtype=policy,
            )
            for i in range(config.num_layers)
        ]
        self.ln_f = layers.LayerNormalization(epsilon=config.layer_norm_eps, name="ln_f", dtype=policy)  # theory: layer-norm
        self.lm_head = None
        if not config.tie_word_embeddings:  # theory: weight-tying
            self.lm_head = layers.Dense(
                config.vocab_size, use_bias=False, name="lm_head", dtype=policy, kernel_initializer=normal_init(seeds(), truncated=False)
            )

    def call(self, inputs, training=False):
        h = self.forward_features(inputs["input_ids"], inputs.get("attention_mask"), training=training)
        return {"logits": self.forward_head(h)}

    def forward_features(self, input_ids, attention_mask=None, training=False):
        T = ops.shape(input_ids)[1]
        if attention_mask is None:  # no padding: the fused kernel's own causal mask
            x = self.wte(input_ids) + self.wpe(ops.arange(T))[None]  # (B, T, C)
            bias = None
        else:
            mask = ops.cast(attention_mask, "int32")
            x = self.wte(input_ids) + self.wpe(position_ids(mask))  # (B, T, C)
            bias = attention_bias(mask, 0, T, self.compute_dtype)  # (B, 1, T, T)
        x = self.drop(x, training=training)
        # theory: causal-masking
        x = run_blocks(
            self.blocks, x, remat=self.config.remat, scan=self.config.scan_layers, bias=bias, is_causal=bias is None, training=training
        )
        return self.ln_f(x)  # (B, T, C)

    def forward_head(self, h):
        if self.lm_head is not None:
            return ops.cast(self.lm_head(h), "float32")  # (B, T, V)
        # The LM head reuses the token embedding matrix (no separate weights).
        wte = ops.cast(self.wte.embeddings, h.dtype)  # theory: weight-tying
        logits = ops.matmul(h, ops.transpose(wte))  # (B, T, V)  # theory: next-token-prediction
        return ops.cast(logits, "float32")

    def call_with_cache(self, input_ids, attention_mask, cache: KVCache):
        """(B, T) new tokens after the ``cache.length`` cached ones -> (logits (B, T, V) float32,
        the cache with these tokens written). Eager: ``cache.length`` is a Python int."""
        T, past = ops.shape(input_ids)[1], cache.length
        mask = ops.slice_update(cache.mask, [0, past], ops.cast(attention_mask, "int32"))  # (B, S)
        positions = ops.slice(position_ids(mask), [0, past], [ops.shape(mask)[0], T])  # (B, T)
        bias = attention_bias(mask, past, T, self.compute_dtype)  # (B, 1, T, S)
        x = self.wte(input_ids) + self.wpe(positions)  # (B, T, C)
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            x, (k, v) = block(x, bias=bias, cache=(cache.keys[i], cache.values[i]), cache_index=past)
            keys.append(k)
            values.append(v)
        return self.forward_head(self.ln_f(x)), KVCache(tuple(keys), tuple(values), mask, past + T)

    def generate(
        self,
        input_ids,
        attention_mask=None,
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ):
        """Prompts ``input_ids`` (B, T), left-padded where ``attention_mask`` is 0, -> (B, T + N)
        int32: the prompts followed by N = ``max_new_tokens`` new tokens. ``temperature=0`` is
        greedy; otherwise each token is drawn (keras.random, from ``seed``) from the softmax of the
        logits divided by ``temperature``, restricted to the ``top_k`` most likely and to the
        smallest set whose mass reaches ``top_p``. One forward pass per token over the new token
        only, with a ``KVCache``; eager, dropout off."""
        ids = ops.cast(ops.convert_to_tensor(input_ids), "int32")
        B, T = ops.shape(ids)
        mask = ops.ones((B, T), "int32") if attention_mask is None else ops.cast(ops.convert_to_tensor(attention_mask), "int32")
        check_generation(
            self.config, T, max_new_tokens, temperature, top_k, top_p, None if attention_mask is None else ops.convert_to_numpy(mask[:, -1])
        )
        cache = KVCache.empty(self.config, B, T + max_new_tokens, self.compute_dtype)  # theory: kv-cache
        logits, cache = self.call_with_cache(ids, mask, cache)
        seeds = keras.random.SeedGenerator(seed)
        new = []
        for step in range(max_new_tokens):
            token = next_token(logits[:, -1], temperature, top_k, top_p, seeds)  # (B,)
            new.append(token)
            if step + 1 < max_new_tokens:
                logits, cache = self.call_with_cache(token[:, None], ops.ones((B, 1), "int32"), cache)
        return ops.concatenate([ids, ops.stack(new, axis=1)], axis=1)

    def get_config(self):
        return {**super().get_config(), "config": self.config.to_dict(), "seed": self.seed}


def filter_logits(logits, temperature: float, top_k: int | None = None, top_p: float | None = None):
    """(B, V) logits divided by ``temperature`` (> 0), then every token outside the ``top_k``
    largest (ties with the k-th kept) and outside the smallest most-likely set whose probability
    reaches ``top_p`` (at least one token) set to -inf. transformers' order and rules
    (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)."""
    # theory: sampling-strategies
    logits = logits / temperature
    if top_k is not None:
        kth = ops.top_k(logits, min(top_k, ops.shape(logits)[-1]))[0][:, -1:]  # (B, 1)
        logits = ops.where(logits < kth, float("-inf"), logits)
    if top_p is not None:
        order = ops.argsort(logits, axis=-1)  # ascending
        ascending = ops.take_along_axis(logits, order, axis=-1)
        mass = ops.cumsum(ops.softmax(ascending, axis=-1), axis=-1)  # this token and every less likely one
        drop = ops.cast(mass <= 1 - top_p, "int32")
        drop = ops.concatenate([drop[:, :-1], ops.zeros_like(drop[:, -1:])], axis=-1)  # the most likely stays
        drop = ops.take_along_axis(drop, ops.argsort(order, axis=-1), axis=-1)  # back to vocabulary order
        logits = ops.where(drop == 1, float("-inf"), logits)
    return logits


def next_token(logits, temperature: float, top_k: int | None, top_p: float | None, seed):
    """(B, V) float32 logits -> (B,) int32 token ids: argmax when ``temperature == 0``, else a draw."""
    if temperature == 0.0:
        return ops.cast(ops.argmax(logits, axis=-1), "int32")
    filtered = filter_logits(logits, temperature, top_k, top_p)
    return ops.cast(keras.random.categorical(filtered, 1, seed=seed)[:, 0], "int32")
