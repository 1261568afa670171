"""GPT-2 in Flax NNX: a pre-LN causal transformer decoder with a tied language-model head.

Paper: Radford et al., 2019, "Language Models are Unsupervised Multitask Learners".
Structure after karpathy/nanoGPT ``model.py``; numerically identical to transformers' GPT2Model
(tanh GELU, layer-norm epsilon from the config, q | k | v fused, LM head tied to ``wte``).

Args:
    config: a ``GPTConfig`` (``get_config("gpt", "124M")`` is GPT-2 small).
    dtype: compute dtype of activations and matmuls (``jnp.bfloat16`` for mixed precision);
        parameters stay float32 and the logits are returned in float32.
    rngs: ``nnx.Rngs`` for parameter initialisation.

Call: ``model(input_ids, train=False, rngs=None) -> {"logits": [B, T, V]}``; with
``train=True`` dropout is active and draws from ``rngs`` (``nnx.Rngs(dropout=seed)``).

Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from dlzoo.zoo.configs import get_config
    >>> from dlzoo.zoo.flax.gpt import GPT
    >>> model = GPT(get_config("gpt", "tiny"), rngs=nnx.Rngs(0))
    >>> model(jnp.zeros((2, 8), jnp.int32))["logits"].shape
    (2, 8, 256)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from ..configs import GPTConfig, ZooError
from .layers import attention


class CausalSelfAttention(nnx.Module):
    def __init__(self, config: GPTConfig, *, dtype, rngs: nnx.Rngs):
        d = config.hidden_size
        # theory: initialization
        init = nnx.initializers.normal(0.02)
        # Residual projections are scaled down so the residual stream's variance does not grow
        # with depth (GPT-2 paper, section 2.3).
        out_init = nnx.initializers.normal(0.02 / math.sqrt(2 * config.num_layers))
        # theory: multi-head-attention
        self.qkv = nnx.Linear(d, 3 * d, kernel_init=init, dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(d, d, kernel_init=out_init, dtype=dtype, rngs=rngs)
        self.resid_dropout = nnx.Dropout(config.dropout)
        self.num_heads = config.num_heads
        self.attention_dropout = config.attention_dropout

    def __call__(self, x: Float[Array, "B T D"], *, train: bool,
                 rngs: nnx.Rngs | None) -> Float[Array, "B T D"]:
        B, T, D = x.shape
        q, k, v = jnp.split(self.qkv(x), 3, axis=-1)
        # Heads are contiguous column blocks of q, k and v: [B, T, D] -> [B, T, N, H].
        q, k, v = (t.reshape(B, T, self.num_heads, D // self.num_heads) for t in (q, k, v))
        # theory: causal-masking
        y = attention(q, k, v, is_causal=True,
                      dropout_rate=self.attention_dropout if train else 0.0, rngs=rngs)
        y = y.reshape(B, T, D)
        return self.resid_dropout(self.out(y), deterministic=not train, rngs=rngs)


class MLP(nnx.Module):
    def __init__(self, config: GPTConfig, *, dtype, rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.02)
        out_init = nnx.initializers.normal(0.02 / math.sqrt(2 * config.num_layers))
        self.fc = nnx.Linear(config.hidden_size, config.mlp_dim, kernel_init=init, dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(config.mlp_dim, config.hidden_size, kernel_init=out_init, dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(config.dropout)

    def __call__(self, x: Float[Array, "B T D"], *, train: bool,
                 rngs: nnx.Rngs | None) -> Float[Array, "B T D"]:
        # GPT-2 uses the tanh approximation ("gelu_new"); jax's default, but say so.
        x = jax.nn.gelu(self.fc(x), approximate=True)  # theory: gelu
        return self.dropout(self.out(x), deterministic=not train, rngs=rngs)


class Block(nnx.Module):
    def __init__(self, config: GPTConfig, *, dtype, rngs: nnx.Rngs):
        eps = config.layer_norm_eps
        d = config.hidden_size
        self.ln1 = nnx.LayerNorm(d, epsilon=eps, use_fast_variance=False, dtype=dtype, rngs=rngs)
        self.attn = CausalSelfAttention(config, dtype=dtype, rngs=rngs)
        self.ln2 = nnx.LayerNorm(d, epsilon=eps, use_fast_variance=False, dtype=dtype, rngs=rngs)
        self.mlp = MLP(config, dtype=dtype, rngs=rngs)

    def __call__(self, x: Float[Array, "B T D"], *, train: bool,
                 rngs: nnx.Rngs | None) -> Float[Array, "B T D"]:
        # theory: pre-ln-vs-post-ln
        x = x + self.attn(self.ln1(x), train=train, rngs=rngs)  # theory: residual-connections
        x = x + self.mlp(self.ln2(x), train=train, rngs=rngs)
        return x


class GPT(nnx.Module):
    def __init__(self, config: GPTConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.02)
        d = config.hidden_size
        self.config = config
        self.wte = nnx.Embed(config.vocab_size, d, embedding_init=init, dtype=dtype, rngs=rngs)
        # theory: position-embeddings
        self.wpe = nnx.Embed(config.context_length, d, embedding_init=init, dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(config.dropout)
        self.blocks = nnx.List([Block(config, dtype=dtype, rngs=rngs) for _ in range(config.num_layers)])
        self.ln_f = nnx.LayerNorm(d, epsilon=config.layer_norm_eps, use_fast_variance=False,
                                  dtype=dtype, rngs=rngs)

    def forward_features(self, input_ids: Int[Array, "B T"], *, train: bool = False,
                         rngs: nnx.Rngs | None = None) -> Float[Array, "B T D"]:
        T = input_ids.shape[1]
        if T > self.config.context_length:
            raise ZooError(f"sequence of length {T} is longer than the context length "
                             f"{self.config.context_length}; truncate the input")
        x = self.wte(input_ids) + self.wpe(jnp.arange(T))
        x = self.dropout(x, deterministic=not train, rngs=rngs)
        for block in self.blocks:
            x = block(x, train=train, rngs=rngs)
        return self.ln_f(x)

    def forward_head(self, x: Float[Array, "B T D"]) -> dict[str, Float[Array, "B T V"]]:
        # theory: weight-tying
        logits = self.wte.attend(x)  # x @ wte.T: the LM head shares the token embedding
        return {"logits": logits.astype(jnp.float32)}  # theory: next-token-prediction

    def __call__(self, input_ids: Int[Array, "B T"], *, train: bool = False,
                 rngs: nnx.Rngs | None = None) -> dict[str, Float[Array, "B T V"]]:
        return self.forward_head(self.forward_features(input_ids, train=train, rngs=rngs))
