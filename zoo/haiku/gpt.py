"""GPT-2 in Haiku: a pre-LN causal transformer decoder with an LM head tied to the token
embedding.

Paper: Radford et al., 2019, "Language Models are Unsupervised Multitask Learners".

Args (``GPTConfig``): vocab_size, context_length, hidden_size, num_layers, num_heads, mlp_dim,
layer_norm_eps, dropout (embedding and residual), attention_dropout.
``transform(config, dtype="bfloat16")`` runs activations and matmuls in bfloat16 while the
parameters stay float32. ``is_training=True`` turns dropout on and needs an rng key in ``apply``.

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
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from ..configs import GPTConfig
from .layers import Block, Embedding, LayerNorm, dropout, normal, transform_model


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
        self.blocks = [
            Block(d, config.num_heads, config.mlp_dim, layer_norm_eps=config.layer_norm_eps,
                  approximate=True,  # GPT-2's "gelu_new": the tanh approximation of GELU
                  dropout=config.dropout, attention_dropout=config.attention_dropout,
                  init=normal(0.02), out_init=normal(out_std), name=f"blocks_{i}")
            for i in range(config.num_layers)]
        self.ln_f = LayerNorm(eps=config.layer_norm_eps, name="ln_f")  # theory: layer-norm

    def forward_features(self, input_ids: Int[Array, "B T"], *, is_training: bool = False) -> Float[Array, "B T D"]:
        positions = jnp.arange(input_ids.shape[1])  # (T,)
        x = self.wte(input_ids) + self.wpe(positions)  # (B, T, D)
        x = dropout(x, self.config.dropout, is_training)  # theory: dropout
        for block in self.blocks:
            x = block(x, is_causal=True, is_training=is_training)  # theory: causal-masking
        return self.ln_f(x)

    def forward_head(self, x: Float[Array, "B T D"]) -> Float[Array, "B T V"]:
        # theory: weight-tying
        return x @ self.wte.embedding.T  # theory: next-token-prediction

    def __call__(self, input_ids: Int[Array, "B T"], *, is_training: bool = False) -> dict[str, Array]:
        """``input_ids`` (B, T) -> {"logits": (B, T, V)}."""
        return {"logits": self.forward_head(self.forward_features(input_ids, is_training=is_training))}


def transform(config: GPTConfig, *, dtype: str = "float32") -> hk.TransformedWithState:
    """GPT as Haiku's pure pair (``layers.transform_model``): ``apply(params, state, rng,
    input_ids)`` -> ({"logits": (B, T, V)} float32, state). The state is empty, kept so that every
    model has one signature; ``rng`` feeds dropout and may be None unless ``is_training=True``."""
    return transform_model(GPT, config, dtype=dtype)
