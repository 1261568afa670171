"""GPT-2 in Keras 3: a pre-LN causal transformer decoder with the LM head tied to the token embedding.

Radford et al., 2019, "Language Models are Unsupervised Multitask Learners".

Args:
    config: a ``GPTConfig`` (or its dict form, as stored by ``get_config``).
    seed: seed for initialization and dropout.
    dtype: keras dtype policy, e.g. ``"mixed_bfloat16"`` (float32 variables, bfloat16 compute).

Example:
    >>> import os; _ = os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is imported
    >>> import numpy as np
    >>> from dlzoo.zoo.configs import get_config
    >>> from dlzoo.zoo.keras.gpt import GPT
    >>> model = GPT(get_config("gpt", "tiny"), seed=0)
    >>> tuple(model({"input_ids": np.zeros((2, 8), "int32")})["logits"].shape)
    (2, 8, 256)
"""

from __future__ import annotations

import keras
from keras import layers, ops

from ..configs import GPTConfig
from .layers import Block, Seeds, normal_init


@keras.saving.register_keras_serializable(package="dlzoo")
class GPT(keras.Model):
    def __init__(self, config: GPTConfig | dict = GPTConfig(), *, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.config = config = GPTConfig.from_dict(config) if isinstance(config, dict) else config
        self.seed = seed
        seeds, policy, d = Seeds(seed), self.dtype_policy, config.hidden_size
        self.wte = layers.Embedding(config.vocab_size, d, embeddings_initializer=normal_init(seeds(), truncated=False),
                                    name="wte", dtype=policy)
        self.wpe = layers.Embedding(config.context_length, d,  # theory: position-embeddings
                                    embeddings_initializer=normal_init(seeds(), truncated=False), name="wpe", dtype=policy)
        self.drop = layers.Dropout(config.dropout, seed=seeds(), name="drop", dtype=policy)  # theory: dropout
        # GPT-2 scales the residual projections by 1/sqrt(2 * layers): each block adds two of them.
        out_std = 0.02 / (2 * config.num_layers) ** 0.5  # theory: initialization
        self.blocks = [Block(d, config.num_heads, config.mlp_dim, layer_norm_eps=config.layer_norm_eps,
                             approximate_gelu=True, dropout=config.dropout,
                             attention_dropout=config.attention_dropout, out_std=out_std, truncated=False,
                             seed=seeds(), name=f"blocks_{i}", dtype=policy)
                       for i in range(config.num_layers)]
        self.ln_f = layers.LayerNormalization(epsilon=config.layer_norm_eps, name="ln_f", dtype=policy)  # theory: layer-norm

    def call(self, inputs, training=False):
        h = self.forward_features(inputs["input_ids"], training=training)
        return {"logits": self.forward_head(h)}

    def forward_features(self, input_ids, training=False):
        T = ops.shape(input_ids)[1]
        x = self.wte(input_ids) + self.wpe(ops.arange(T))[None]  # (B, T, C)
        x = self.drop(x, training=training)
        for block in self.blocks:
            x = block(x, is_causal=True, training=training)  # theory: causal-masking
        return self.ln_f(x)  # (B, T, C)

    def forward_head(self, h):
        # The LM head reuses the token embedding matrix (no separate weights).
        wte = ops.cast(self.wte.embeddings, h.dtype)  # theory: weight-tying
        logits = ops.matmul(h, ops.transpose(wte))  # (B, T, V)  # theory: next-token-prediction
        return ops.cast(logits, "float32")

    def get_config(self):
        return {**super().get_config(), "config": self.config.to_dict(), "seed": self.seed}
