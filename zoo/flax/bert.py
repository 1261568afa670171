"""BERT in Flax NNX: a post-LN bidirectional transformer encoder with optional pooler, MLM head
and sequence classifier.

Paper: Devlin et al., 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding". Numerically identical to transformers' BertModel / BertForMaskedLM (exact GELU,
layer-norm epsilon from the config, padding mask as an additive finfo.min bias).

Args:
    config: a ``BertConfig`` (``get_config("bert", "base")`` is BERT-base).
    dtype: compute dtype of activations and matmuls (``jnp.bfloat16`` for mixed precision);
        parameters stay float32 and the outputs are returned in float32.
    rngs: ``nnx.Rngs`` for parameter initialisation.

Call: ``model(input_ids, token_type_ids=None, attention_mask=None, train=False, rngs=None)``
-> ``{"last_hidden_state": [B, T, D], "pooler_output": [B, D], "mlm_logits": [B, T, V],
"logits": [B, num_labels]}`` (the last three when the config has them). ``token_type_ids``
default to zeros and ``attention_mask`` (1 = real token, 0 = padding) to ones.

Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from dlzoo.zoo.configs import get_config
    >>> from dlzoo.zoo.flax.bert import Bert
    >>> model = Bert(get_config("bert", "tiny", mlm_head=True), rngs=nnx.Rngs(0))
    >>> model(jnp.zeros((2, 8), jnp.int32))["mlm_logits"].shape
    (2, 8, 30522)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from ..configs import BertConfig, ZooError
from .layers import attention

# theory: initialization
INIT = nnx.initializers.truncated_normal(0.02)


def _layer_norm(config: BertConfig, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps, use_fast_variance=False,
                         dtype=dtype, rngs=rngs)


class Embeddings(nnx.Module):
    def __init__(self, config: BertConfig, *, dtype, rngs: nnx.Rngs):
        d = config.hidden_size
        self.word = nnx.Embed(config.vocab_size, d, embedding_init=INIT, dtype=dtype, rngs=rngs)
        # theory: position-embeddings
        self.position = nnx.Embed(config.max_positions, d, embedding_init=INIT, dtype=dtype, rngs=rngs)
        self.token_type = nnx.Embed(config.type_vocab_size, d, embedding_init=INIT, dtype=dtype, rngs=rngs)
        self.ln = _layer_norm(config, dtype, rngs)
        self.dropout = nnx.Dropout(config.dropout)

    def __call__(self, input_ids: Int[Array, "B T"], token_type_ids: Int[Array, "B T"], *,
                 train: bool, rngs: nnx.Rngs | None) -> Float[Array, "B T D"]:
        T = input_ids.shape[1]
        x = self.word(input_ids) + self.position(jnp.arange(T)) + self.token_type(token_type_ids)
        return self.dropout(self.ln(x), deterministic=not train, rngs=rngs)


class SelfAttention(nnx.Module):
    def __init__(self, config: BertConfig, *, dtype, rngs: nnx.Rngs):
        d = config.hidden_size
        # theory: multi-head-attention
        self.qkv = nnx.Linear(d, 3 * d, kernel_init=INIT, dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(d, d, kernel_init=INIT, dtype=dtype, rngs=rngs)
        self.resid_dropout = nnx.Dropout(config.dropout)
        self.num_heads = config.num_heads
        self.attention_dropout = config.attention_dropout

    def __call__(self, x: Float[Array, "B T D"], mask_bias: Float[Array, "B 1 1 T"], *,
                 train: bool, rngs: nnx.Rngs | None) -> Float[Array, "B T D"]:
        B, T, D = x.shape
        q, k, v = jnp.split(self.qkv(x), 3, axis=-1)
        # Heads are contiguous column blocks of q, k and v: [B, T, D] -> [B, T, N, H].
        q, k, v = (t.reshape(B, T, self.num_heads, D // self.num_heads) for t in (q, k, v))
        y = attention(q, k, v, bias=mask_bias,
                      dropout_rate=self.attention_dropout if train else 0.0, rngs=rngs)
        y = y.reshape(B, T, D)
        return self.resid_dropout(self.out(y), deterministic=not train, rngs=rngs)


class MLP(nnx.Module):
    def __init__(self, config: BertConfig, *, dtype, rngs: nnx.Rngs):
        self.fc = nnx.Linear(config.hidden_size, config.mlp_dim, kernel_init=INIT, dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(config.mlp_dim, config.hidden_size, kernel_init=INIT, dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(config.dropout)

    def __call__(self, x: Float[Array, "B T D"], *, train: bool,
                 rngs: nnx.Rngs | None) -> Float[Array, "B T D"]:
        # BERT uses the exact erf GELU; jax's default is the tanh approximation.
        x = jax.nn.gelu(self.fc(x), approximate=False)  # theory: gelu
        return self.dropout(self.out(x), deterministic=not train, rngs=rngs)


class Block(nnx.Module):
    def __init__(self, config: BertConfig, *, dtype, rngs: nnx.Rngs):
        self.attn = SelfAttention(config, dtype=dtype, rngs=rngs)
        self.ln1 = _layer_norm(config, dtype, rngs)
        self.mlp = MLP(config, dtype=dtype, rngs=rngs)
        self.ln2 = _layer_norm(config, dtype, rngs)

    def __call__(self, x: Float[Array, "B T D"], mask_bias: Float[Array, "B 1 1 T"], *,
                 train: bool, rngs: nnx.Rngs | None) -> Float[Array, "B T D"]:
        # theory: pre-ln-vs-post-ln
        x = self.ln1(x + self.attn(x, mask_bias, train=train, rngs=rngs))  # theory: residual-connections
        x = self.ln2(x + self.mlp(x, train=train, rngs=rngs))
        return x


class MLMHead(nnx.Module):
    def __init__(self, config: BertConfig, *, dtype, rngs: nnx.Rngs):
        self.transform = nnx.Linear(config.hidden_size, config.hidden_size, kernel_init=INIT,
                                    dtype=dtype, rngs=rngs)
        self.ln = _layer_norm(config, dtype, rngs)
        self.bias = nnx.Param(jnp.zeros((config.vocab_size,), jnp.float32))
        self.dtype = dtype

    def __call__(self, x: Float[Array, "B T D"], word: nnx.Embed) -> Float[Array, "B T V"]:
        x = self.ln(jax.nn.gelu(self.transform(x), approximate=False))
        # theory: weight-tying
        return word.attend(x) + self.bias[...].astype(self.dtype)  # theory: masked-lm


class Bert(nnx.Module):
    def __init__(self, config: BertConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        d = config.hidden_size
        self.config, self.dtype = config, dtype
        self.embeddings = Embeddings(config, dtype=dtype, rngs=rngs)
        self.blocks = nnx.List([Block(config, dtype=dtype, rngs=rngs) for _ in range(config.num_layers)])
        self.pooler = nnx.Linear(d, d, kernel_init=INIT, dtype=dtype, rngs=rngs) if config.pooler else None
        self.mlm = MLMHead(config, dtype=dtype, rngs=rngs) if config.mlm_head else None
        if config.num_labels:
            self.classifier_dropout = nnx.Dropout(config.dropout)
            self.classifier = nnx.Linear(d, config.num_labels, kernel_init=INIT, dtype=dtype, rngs=rngs)

    def forward_features(self, input_ids: Int[Array, "B T"], token_type_ids: Int[Array, "B T"] | None = None,
                         attention_mask: Int[Array, "B T"] | None = None, *, train: bool = False,
                         rngs: nnx.Rngs | None = None) -> Float[Array, "B T D"]:
        T = input_ids.shape[1]
        if T > self.config.max_positions:
            raise ZooError(f"sequence of length {T} is longer than max_positions "
                           f"{self.config.max_positions}; truncate the input")
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        # theory: attention-mask
        # Padding keys get the most negative finite value of the compute dtype (transformers'
        # convention): softmax gives them weight 0 without the NaNs -inf brings to empty rows.
        mask = attention_mask.astype(self.dtype)[:, None, None, :]
        mask_bias = (1.0 - mask) * jnp.finfo(self.dtype).min
        x = self.embeddings(input_ids, token_type_ids, train=train, rngs=rngs)
        for block in self.blocks:
            x = block(x, mask_bias, train=train, rngs=rngs)
        return x

    def forward_head(self, x: Float[Array, "B T D"], *, train: bool = False,
                     rngs: nnx.Rngs | None = None) -> dict[str, Float[Array, "..."]]:
        outputs = {"last_hidden_state": x.astype(jnp.float32)}
        if self.pooler is not None:
            pooled = jnp.tanh(self.pooler(x[:, 0]))  # theory: cls-pooling
            outputs["pooler_output"] = pooled.astype(jnp.float32)
            if self.config.num_labels:
                pooled = self.classifier_dropout(pooled, deterministic=not train, rngs=rngs)
                outputs["logits"] = self.classifier(pooled).astype(jnp.float32)
        if self.mlm is not None:
            outputs["mlm_logits"] = self.mlm(x, self.embeddings.word).astype(jnp.float32)
        return outputs

    def __call__(self, input_ids: Int[Array, "B T"], token_type_ids: Int[Array, "B T"] | None = None,
                 attention_mask: Int[Array, "B T"] | None = None, *, train: bool = False,
                 rngs: nnx.Rngs | None = None) -> dict[str, Float[Array, "..."]]:
        x = self.forward_features(input_ids, token_type_ids, attention_mask, train=train, rngs=rngs)
        return self.forward_head(x, train=train, rngs=rngs)
