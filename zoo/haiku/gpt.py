"""GPT-2 in Haiku: a pre-LN causal transformer decoder with an LM head tied to the token
embedding.

Paper: Radford et al., 2019, "Language Models are Unsupervised Multitask Learners".

Args (``GPTConfig``): vocab_size, context_length, hidden_size, num_layers, num_heads, mlp_dim,
layer_norm_eps, dropout (embedding and residual), attention_dropout. ``dtype="bfloat16"`` runs
activations and matmuls in bfloat16 while the parameters stay float32. ``is_training=True``
turns dropout on and needs an rng key in ``apply``.

Module paths map onto dlzoo's canonical names ("gpt/~/blocks_0/~/attn/~/qkv" + "kernel" ->
"blocks.0.attn.qkv.kernel", see ``layers.canonical_name``). Example::

    import jax, jax.numpy as jnp
    from dlzoo.zoo.configs import get_config
    from dlzoo.zoo.haiku.gpt import transform

    model = transform(get_config("gpt", "tiny"))                 # hk.TransformedWithState
    ids = jnp.zeros((2, 16), dtype=jnp.int32)
    params, state = model.init(jax.random.key(0), ids)
    out, state = jax.jit(model.apply)(params, state, None, ids)
    out["logits"]                                                 # (2, 16, 256)
    out, state = model.apply(params, state, jax.random.key(1), ids, is_training=True)  # dropout on
"""

from __future__ import annotations

import math

import haiku as hk
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from ..configs import GPTConfig
from .layers import Dense, Embedding, LayerNorm, attention, cast_params, dropout, normal


class Attention(hk.Module):
    def __init__(self, config: GPTConfig, *, name: str = "attn"):
        super().__init__(name=name)
        d, std = config.hidden_size, 0.02
        self.qkv = Dense(3 * d, init=normal(std), name="qkv")  # fused: columns q | k | v
        # theory: initialization
        self.out = Dense(d, init=normal(std / math.sqrt(2 * config.num_layers)), name="out")
        self.num_heads = config.num_heads
        self.attention_dropout, self.dropout = config.attention_dropout, config.dropout

    def __call__(self, x: Float[Array, "B T D"], *, is_training: bool) -> Float[Array, "B T D"]:
        B, T, D = x.shape
        # theory: multi-head-attention
        q, k, v = (t.reshape(B, T, self.num_heads, D // self.num_heads)
                   for t in jnp.split(self.qkv(x), 3, axis=-1))  # (B, T, N, H), heads contiguous
        # theory: scaled-dot-product-attention
        y = attention(q, k, v, is_causal=True,  # theory: causal-masking
                      dropout_rate=self.attention_dropout, is_training=is_training)
        return dropout(self.out(y.reshape(B, T, D)), self.dropout, is_training)


class MLP(hk.Module):
    def __init__(self, config: GPTConfig, *, name: str = "mlp"):
        super().__init__(name=name)
        self.fc = Dense(config.mlp_dim, init=normal(0.02), name="fc")
        self.out = Dense(config.hidden_size, init=normal(0.02 / math.sqrt(2 * config.num_layers)), name="out")
        self.dropout = config.dropout

    def __call__(self, x: Float[Array, "B T D"], *, is_training: bool) -> Float[Array, "B T D"]:
        # GPT-2's "gelu_new" is the tanh approximation.
        h = jax.nn.gelu(self.fc(x), approximate=True)  # (B, T, F)  # theory: gelu
        return dropout(self.out(h), self.dropout, is_training)


class Block(hk.Module):
    def __init__(self, config: GPTConfig, *, name: str):
        super().__init__(name=name)
        self.ln1 = LayerNorm(eps=config.layer_norm_eps, name="ln1")
        self.attn = Attention(config)
        self.ln2 = LayerNorm(eps=config.layer_norm_eps, name="ln2")
        self.mlp = MLP(config)

    def __call__(self, x: Float[Array, "B T D"], *, is_training: bool) -> Float[Array, "B T D"]:
        # theory: pre-ln-vs-post-ln
        x = x + self.attn(self.ln1(x), is_training=is_training)  # theory: residual-connections
        x = x + self.mlp(self.ln2(x), is_training=is_training)
        return x


class GPT(hk.Module):
    def __init__(self, config: GPTConfig, *, dtype: str = "float32", name: str = "gpt"):
        super().__init__(name=name)
        self.config, self.dtype = config, dtype
        d = config.hidden_size
        self.wte = Embedding(config.vocab_size, d, init=normal(0.02), name="wte")
        # theory: position-embeddings
        self.wpe = Embedding(config.context_length, d, init=normal(0.02), name="wpe")
        self.blocks = [Block(config, name=f"blocks_{i}") for i in range(config.num_layers)]
        self.ln_f = LayerNorm(eps=config.layer_norm_eps, name="ln_f")  # theory: layer-norm

    def forward_features(self, input_ids: Int[Array, "B T"], *, is_training: bool = False) -> Float[Array, "B T D"]:
        positions = jnp.arange(input_ids.shape[1])  # (T,)
        x = self.wte(input_ids) + self.wpe(positions)  # (B, T, D)
        x = dropout(x, self.config.dropout, is_training)  # theory: dropout
        for block in self.blocks:
            x = block(x, is_training=is_training)
        return self.ln_f(x)

    def forward_head(self, x: Float[Array, "B T D"]) -> Float[Array, "B T V"]:
        # theory: weight-tying
        return x @ self.wte.embedding.T  # theory: next-token-prediction

    def __call__(self, input_ids: Int[Array, "B T"], *, is_training: bool = False) -> dict[str, Array]:
        """``input_ids`` (B, T) -> {"logits": (B, T, V)} float32."""
        with cast_params(self.dtype):
            logits = self.forward_head(self.forward_features(input_ids, is_training=is_training))
        return {"logits": logits.astype(jnp.float32)}


def transform(config: GPTConfig, *, dtype: str = "float32") -> hk.TransformedWithState:
    """GPT as Haiku's pure pair: ``init(rng, input_ids)``, ``apply(params, state, rng,
    input_ids, is_training=False)``; the state is empty (kept for one signature across models)."""
    def forward(input_ids: Int[Array, "B T"], is_training: bool = False) -> dict[str, Array]:
        return GPT(config, dtype=dtype)(input_ids, is_training=is_training)
    return hk.transform_with_state(forward)
