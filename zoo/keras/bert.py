"""BERT in Keras 3: a post-LN transformer encoder with optional pooler, MLM head and classifier.

Devlin et al., 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding".

Args:
    config: a ``BertConfig`` (or its dict form, as stored by ``get_config``).
    seed: seed for initialization and dropout.
    dtype: keras dtype policy, e.g. ``"mixed_bfloat16"`` (float32 variables, bfloat16 compute).

Example:
    >>> import os; _ = os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is imported
    >>> import numpy as np
    >>> from dlzoo.zoo.configs import get_config
    >>> from dlzoo.zoo.keras.bert import Bert
    >>> model = Bert(get_config("bert", "tiny"), seed=0)
    >>> tuple(model({"input_ids": np.zeros((2, 8), "int32")})["last_hidden_state"].shape)
    (2, 8, 128)
"""

from __future__ import annotations

import keras
from keras import layers, ops

from ..configs import BertConfig
from .layers import MASK_MIN, MLP, Attention, Dropout, Seeds, normal_init, run_blocks


@keras.saving.register_keras_serializable(package="dlzoo")
class Embeddings(layers.Layer):
    """word + position + token type embeddings, then layer norm and dropout."""

    def __init__(self, config: BertConfig | dict, *, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.config = config = BertConfig.from_dict(config) if isinstance(config, dict) else config
        self.seed = seed
        seeds, policy, d = Seeds(seed), self.dtype_policy, config.hidden_size
        self.word = layers.Embedding(config.vocab_size, d, embeddings_initializer=normal_init(seeds()), name="word", dtype=policy)
        self.position = layers.Embedding(
            config.max_positions, d, embeddings_initializer=normal_init(seeds()), name="position", dtype=policy
        )  # theory: position-embeddings
        self.token_type = layers.Embedding(
            config.type_vocab_size, d, embeddings_initializer=normal_init(seeds()), name="token_type", dtype=policy
        )
        self.ln = layers.LayerNormalization(epsilon=config.layer_norm_eps, name="ln", dtype=policy)
        self.drop = Dropout(config.dropout, seed=seeds(), name="drop", dtype=policy)  # theory: dropout

    def call(self, input_ids, token_type_ids, training=False):
        T = ops.shape(input_ids)[1]
        x = self.word(input_ids) + self.position(ops.arange(T))[None] + self.token_type(token_type_ids)  # (B, T, C)
        return self.drop(self.ln(x), training=training)

    def compute_output_shape(self, input_shape):
        return (*input_shape, self.config.hidden_size)

    def get_config(self):
        return {**super().get_config(), "config": self.config.to_dict(), "seed": self.seed}


@keras.saving.register_keras_serializable(package="dlzoo")
class BertBlock(layers.Layer):
    """Post-LN encoder block: x = ln1(x + attn(x)), then x = ln2(x + mlp(x))."""

    def __init__(self, config: BertConfig | dict, *, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.config = config = BertConfig.from_dict(config) if isinstance(config, dict) else config
        self.seed = seed
        seeds, policy, d = Seeds(seed), self.dtype_policy, config.hidden_size
        self.attn = Attention(
            d, config.num_heads, dropout=config.dropout, attention_dropout=config.attention_dropout, seed=seeds(), name="attn", dtype=policy
        )
        self.ln1 = layers.LayerNormalization(epsilon=config.layer_norm_eps, name="ln1", dtype=policy)
        self.mlp = MLP(
            d, config.mlp_dim, approximate_gelu=config.gelu == "tanh", dropout=config.dropout, seed=seeds(), name="mlp", dtype=policy
        )
        self.ln2 = layers.LayerNormalization(epsilon=config.layer_norm_eps, name="ln2", dtype=policy)

    def call(self, x, bias, training=False):
        x = self.ln1(x + self.attn(x, bias=bias, training=training))  # theory: pre-ln-vs-post-ln
        x = self.ln2(x + self.mlp(x, training=training))  # theory: residual-connections
        return x  # (B, T, C)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "config": self.config.to_dict(), "seed": self.seed}


@keras.saving.register_keras_serializable(package="dlzoo")
class MLMHead(layers.Layer):
    """transform -> GELU (exact unless config.gelu == "tanh") -> layer norm -> decoder tied to the word embeddings (or its own
    ``decoder`` when ``tie_word_embeddings=False``), plus a bias."""

    def __init__(self, config: BertConfig | dict, *, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.config = config = BertConfig.from_dict(config) if isinstance(config, dict) else config
        self.seed = seed
        seeds, policy = Seeds(seed), self.dtype_policy
        self.transform = layers.Dense(config.hidden_size, kernel_initializer=normal_init(seeds()), name="transform", dtype=policy)
        self.ln = layers.LayerNormalization(epsilon=config.layer_norm_eps, name="ln", dtype=policy)
        self.decoder = None
        if not config.tie_word_embeddings:  # its own decoder kernel instead of the word embeddings
            self.decoder = layers.Dense(
                config.vocab_size, use_bias=False, kernel_initializer=normal_init(seeds()), name="decoder", dtype=policy
            )
        self.bias = self.add_weight(shape=(config.vocab_size,), initializer="zeros", name="bias")

    def call(self, h, word_embeddings):
        h = self.ln(ops.gelu(self.transform(h), approximate=self.config.gelu == "tanh"))  # (B, T, C)
        if self.decoder is None:
            logits = ops.matmul(h, ops.transpose(ops.cast(word_embeddings, h.dtype)))  # theory: weight-tying
        else:
            logits = self.decoder(h)  # (B, T, V)
        return logits + ops.cast(self.bias, h.dtype)  # (B, T, V)  # theory: masked-lm

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.config.vocab_size)

    def get_config(self):
        return {**super().get_config(), "config": self.config.to_dict(), "seed": self.seed}


@keras.saving.register_keras_serializable(package="dlzoo")
class Bert(keras.Model):
    def __init__(self, config: BertConfig | dict = BertConfig(), *, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.config = config = BertConfig.from_dict(config) if isinstance(config, dict) else config
        self.seed = seed
        seeds, policy, d = Seeds(seed), self.dtype_policy, config.hidden_size
        self.embeddings = Embeddings(config, seed=seeds(), name="embeddings", dtype=policy)
        self.blocks = [BertBlock(config, seed=seeds(), name=f"blocks_{i}", dtype=policy) for i in range(config.num_layers)]
        if config.pooler:
            self.pooler = layers.Dense(d, activation="tanh", kernel_initializer=normal_init(seeds()), name="pooler", dtype=policy)
        if config.mlm_head:
            self.mlm = MLMHead(config, seed=seeds(), name="mlm", dtype=policy)
        if config.num_labels:
            self.classifier_drop = Dropout(config.dropout, seed=seeds(), name="classifier_drop", dtype=policy)
            self.classifier = layers.Dense(config.num_labels, kernel_initializer=normal_init(seeds()), name="classifier", dtype=policy)

    def call(self, inputs, training=False):
        h = self.forward_features(inputs["input_ids"], inputs.get("token_type_ids"), inputs.get("attention_mask"), training=training)
        return self.forward_head(h, training=training)

    def forward_features(self, input_ids, token_type_ids=None, attention_mask=None, training=False):
        if token_type_ids is None:
            token_type_ids = ops.zeros_like(input_ids)
        bias = None
        if attention_mask is not None:
            # Padding keys get a large negative added before the softmax, broadcast over heads
            # and queries: (B, 1, 1, T), in the compute dtype (finfo.min of float32 overflows bfloat16).
            keep = ops.cast(attention_mask, self.compute_dtype)
            bias = (1.0 - keep)[:, None, None, :] * ops.cast(MASK_MIN[self.compute_dtype], self.compute_dtype)  # theory: attention-mask
        x = self.embeddings(input_ids, token_type_ids, training=training)
        x = run_blocks(self.blocks, x, remat=self.config.remat, scan=self.config.scan_layers, bias=bias, training=training)
        return x  # (B, T, C)

    def forward_head(self, h, training=False):
        out = {"last_hidden_state": h}
        if self.config.pooler:
            out["pooler_output"] = self.pooler(h[:, 0])  # (B, C): the [CLS] token  # theory: cls-pooling
        if self.config.mlm_head:
            out["mlm_logits"] = self.mlm(h, self.embeddings.word.embeddings)
        if self.config.num_labels:
            out["logits"] = self.classifier(self.classifier_drop(out["pooler_output"], training=training))
        return {k: ops.cast(v, "float32") for k, v in out.items()}

    def get_config(self):
        return {**super().get_config(), "config": self.config.to_dict(), "seed": self.seed}
