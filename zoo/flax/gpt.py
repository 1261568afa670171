"""GPT-2 in Flax NNX: a pre-LN causal transformer decoder with an LM head tied to the token
embedding.

Paper: Radford et al., 2019, "Language Models are Unsupervised Multitask Learners".

Args (``GPTConfig``): vocab_size, context_length, hidden_size, num_layers, num_heads, mlp_dim,
layer_norm_eps, dropout (embedding and residual), attention_dropout. Keywords: ``rngs``
(``nnx.Rngs``) draws the initial weights; ``dtype`` is the compute dtype (``jnp.bfloat16`` for
mixed precision: parameters stay float32, logits are returned in float32). At call time
``train=True`` turns dropout on, drawing from the ``rngs`` passed to the call.

Example::

    import jax.numpy as jnp
    from flax import nnx
    from dlzoo.zoo.configs import get_config
    from dlzoo.zoo.flax.gpt import GPT

    model = GPT(get_config("gpt", "tiny"), rngs=nnx.Rngs(0))
    ids = jnp.zeros((2, 16), jnp.int32)
    logits = model(ids)["logits"]                                         # (2, 16, 256)
    logits = model(ids, train=True, rngs=nnx.Rngs(dropout=1))["logits"]   # with dropout
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from ..configs import GPTConfig, ZooError
from .layers import Block, layer_norm, normal


class GPT(nnx.Module):
    """Initialisation (GPT-2): normal(0.02) everywhere; the projections that write into the
    residual stream (``attn.out``, ``mlp.out``) get 0.02 / sqrt(2 * num_layers), so its variance
    does not grow with depth. Biases 0, layer norms scale 1, bias 0."""

    def __init__(self, config: GPTConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config, self.dtype = config, dtype
        # theory: initialization
        self.wte = nnx.Embed(config.vocab_size, config.hidden_size, embedding_init=normal(0.02),
                             dtype=dtype, rngs=rngs)
        # theory: position-embeddings
        self.wpe = nnx.Embed(config.context_length, config.hidden_size, embedding_init=normal(0.02),
                             dtype=dtype, rngs=rngs)
        self.drop = nnx.Dropout(config.dropout)  # theory: dropout
        out_std = 0.02 / math.sqrt(2 * config.num_layers)  # attn.out and mlp.out, see above
        self.blocks = nnx.List([
            Block(config.hidden_size, config.num_heads, config.mlp_dim, layer_norm_eps=config.layer_norm_eps,
                  approximate=True,  # GPT-2's "gelu_new": the tanh approximation of GELU
                  dropout=config.dropout, attention_dropout=config.attention_dropout,
                  kernel_init=normal(0.02), out_init=normal(out_std), dtype=dtype, rngs=rngs)
            for _ in range(config.num_layers)])
        self.ln_f = layer_norm(config.hidden_size, config.layer_norm_eps, dtype=dtype, rngs=rngs)  # theory: layer-norm

    def forward_features(self, input_ids: Int[Array, "B T"], *, train: bool = False,
                         rngs: nnx.Rngs | None = None) -> Float[Array, "B T C"]:
        """``input_ids`` [B, T] -> final hidden states [B, T, C], after ln_f."""
        if input_ids.shape[1] > self.config.context_length:
            raise ZooError(f"GPT input has {input_ids.shape[1]} positions, more than context_length "
                           f"{self.config.context_length}; truncate the sequence")
        positions = jnp.arange(input_ids.shape[1])  # [T]
        x = self.wte(input_ids) + self.wpe(positions)  # [B, T, C]
        x = self.drop(x, deterministic=not train, rngs=rngs)
        for block in self.blocks:
            x = block(x, is_causal=True, train=train, rngs=rngs)  # theory: causal-masking
        return self.ln_f(x)

    def forward_head(self, x: Float[Array, "B T C"]) -> Float[Array, "B T V"]:
        # theory: weight-tying
        return self.wte.attend(x)  # x @ wte.T  # theory: next-token-prediction

    def __call__(self, input_ids: Int[Array, "B T"], *, train: bool = False,
                 rngs: nnx.Rngs | None = None) -> dict[str, Float[Array, "B T V"]]:
        """``input_ids`` [B, T] int -> {"logits": [B, T, V]} (float32 whatever the compute dtype)."""
        logits = self.forward_head(self.forward_features(input_ids, train=train, rngs=rngs))
        return {"logits": logits.astype(jnp.float32)}
