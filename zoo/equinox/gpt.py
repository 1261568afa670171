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
from .layers import Block, Embedding, LayerNorm, cast_floating, normal, split_key


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
        d, std = config.hidden_size, 0.02
        self.wte = Embedding(config.vocab_size, d, init=normal(std), key=keys[0])
        # theory: position-embeddings
        self.wpe = Embedding(config.context_length, d, init=normal(std), key=keys[1])
        self.drop = eqx.nn.Dropout(config.dropout)  # theory: dropout
        # The residual projections (attn.out, mlp.out) start smaller the deeper the model: each
        # block adds two branches to the residual stream, whose variance would otherwise grow.
        out_init = normal(std / math.sqrt(2 * config.num_layers))  # theory: initialization
        # theory: pre-ln-vs-post-ln
        self.blocks = [Block(d, config.num_heads, config.mlp_dim, eps=config.layer_norm_eps,
                             is_causal=True,  # theory: causal-masking
                             # GPT-2's "gelu_new" is the tanh approximation.
                             approximate=True,  # theory: gelu
                             dropout=config.dropout, attention_dropout=config.attention_dropout,
                             init=normal(std), out_init=out_init, key=k)
                       for k in keys[2:]]
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
