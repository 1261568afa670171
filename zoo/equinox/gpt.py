"""GPT-2 in Equinox: a pre-LN causal transformer decoder with an LM head tied to the token
embedding.

Paper: Radford et al., 2019, "Language Models are Unsupervised Multitask Learners".

Args (``GPTConfig``): vocab_size, context_length, hidden_size, num_layers, num_heads, mlp_dim,
layer_norm_eps, dropout (embedding and residual), attention_dropout. ``dtype="bfloat16"`` runs
activations and matmuls in bfloat16 while the parameters stay float32.

The model maps ONE sequence, as Equinox layers do; ``jax.vmap`` it over the batch and give each
row its own dropout key. Example::

    import jax, jax.numpy as jnp
    from dlzoo.zoo.configs import get_config
    from dlzoo.zoo.equinox.gpt import GPT

    model = GPT(get_config("gpt", "tiny"), key=jax.random.key(0))
    ids = jnp.zeros((2, 16), dtype=jnp.int32)
    logits = jax.vmap(lambda x: model(x)["logits"])(ids)                  # (2, 16, 256)
    keys = jax.random.split(jax.random.key(1), 2)                         # training: dropout on
    logits = jax.vmap(lambda x, k: model(x, key=k, inference=False)["logits"])(ids, keys)
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ..configs import GPTConfig
from .layers import Dense, Embedding, LayerNorm, attention, cast_floating, normal, split_key


class Attention(eqx.Module):
    qkv: Dense
    out: Dense
    attn_drop: eqx.nn.Dropout
    resid_drop: eqx.nn.Dropout
    num_heads: int = eqx.field(static=True)

    def __init__(self, config: GPTConfig, *, key: PRNGKeyArray):
        d, std = config.hidden_size, 0.02
        k1, k2 = jax.random.split(key)
        self.qkv = Dense(d, 3 * d, init=normal(std), key=k1)  # fused: columns q | k | v
        # theory: initialization
        self.out = Dense(d, d, init=normal(std / math.sqrt(2 * config.num_layers)), key=k2)
        self.attn_drop = eqx.nn.Dropout(config.attention_dropout)
        self.resid_drop = eqx.nn.Dropout(config.dropout)
        self.num_heads = config.num_heads

    def __call__(self, x: Float[Array, "T D"], *, key: PRNGKeyArray | None,
                 inference: bool) -> Float[Array, "T D"]:
        k_attn, k_resid = split_key(key, 2)
        T, D = x.shape
        # theory: multi-head-attention
        q, k, v = (t.reshape(T, self.num_heads, D // self.num_heads)
                   for t in jnp.split(self.qkv(x), 3, axis=-1))  # (T, N, H), heads contiguous
        # theory: scaled-dot-product-attention
        y = attention(q, k, v, is_causal=True,  # theory: causal-masking
                      dropout=self.attn_drop, key=k_attn, inference=inference)
        return self.resid_drop(self.out(y.reshape(T, D)), key=k_resid, inference=inference)


class MLP(eqx.Module):
    fc: Dense
    out: Dense
    drop: eqx.nn.Dropout

    def __init__(self, config: GPTConfig, *, key: PRNGKeyArray):
        k1, k2 = jax.random.split(key)
        self.fc = Dense(config.hidden_size, config.mlp_dim, init=normal(0.02), key=k1)
        self.out = Dense(config.mlp_dim, config.hidden_size,
                         init=normal(0.02 / math.sqrt(2 * config.num_layers)), key=k2)
        self.drop = eqx.nn.Dropout(config.dropout)

    def __call__(self, x: Float[Array, "T D"], *, key: PRNGKeyArray | None,
                 inference: bool) -> Float[Array, "T D"]:
        # GPT-2's "gelu_new" is the tanh approximation.
        h = jax.nn.gelu(self.fc(x), approximate=True)  # theory: gelu
        return self.drop(self.out(h), key=key, inference=inference)


class Block(eqx.Module):
    ln1: LayerNorm
    attn: Attention
    ln2: LayerNorm
    mlp: MLP

    def __init__(self, config: GPTConfig, *, key: PRNGKeyArray):
        k1, k2 = jax.random.split(key)
        self.ln1 = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = Attention(config, key=k1)
        self.ln2 = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MLP(config, key=k2)

    def __call__(self, x: Float[Array, "T D"], *, key: PRNGKeyArray | None,
                 inference: bool) -> Float[Array, "T D"]:
        k1, k2 = split_key(key, 2)
        # theory: pre-ln-vs-post-ln
        x = x + self.attn(self.ln1(x), key=k1, inference=inference)  # theory: residual-connections
        x = x + self.mlp(self.ln2(x), key=k2, inference=inference)
        return x


class GPT(eqx.Module):
    wte: Embedding
    wpe: Embedding
    drop: eqx.nn.Dropout
    blocks: list[Block]
    ln_f: LayerNorm
    config: GPTConfig = eqx.field(static=True)
    dtype: str = eqx.field(static=True)

    def __init__(self, config: GPTConfig, *, key: PRNGKeyArray, dtype: str = "float32"):
        keys = jax.random.split(key, config.num_layers + 2)
        self.wte = Embedding(config.vocab_size, config.hidden_size, init=normal(0.02), key=keys[0])
        # theory: position-embeddings
        self.wpe = Embedding(config.context_length, config.hidden_size, init=normal(0.02), key=keys[1])
        self.drop = eqx.nn.Dropout(config.dropout)  # theory: dropout
        self.blocks = [Block(config, key=k) for k in keys[2:]]
        self.ln_f = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # theory: layer-norm
        self.config, self.dtype = config, dtype

    def forward_features(self, input_ids: Int[Array, " T"], *, key: PRNGKeyArray | None = None,
                         inference: bool = True) -> Float[Array, "T D"]:
        keys = split_key(key, len(self.blocks) + 1)
        positions = jnp.arange(input_ids.shape[0])
        x = self.drop(self.wte(input_ids) + self.wpe(positions), key=keys[0], inference=inference)
        for block, k in zip(self.blocks, keys[1:]):
            x = block(x, key=k, inference=inference)
        return self.ln_f(x)

    def forward_head(self, x: Float[Array, "T D"]) -> Float[Array, "T V"]:
        # theory: weight-tying
        return x @ self.wte.embedding.T  # theory: next-token-prediction

    def __call__(self, input_ids: Int[Array, " T"], *, key: PRNGKeyArray | None = None,
                 inference: bool = True) -> dict[str, Float[Array, "..."]]:
        """``input_ids`` (T,) -> {"logits": (T, V)} float32; ``key`` is needed when
        ``inference=False`` and dropout is non-zero."""
        # theory: mixed-precision
        model = cast_floating(self, self.dtype)
        logits = model.forward_head(model.forward_features(input_ids, key=key, inference=inference))
        return {"logits": logits.astype(jnp.float32)}
