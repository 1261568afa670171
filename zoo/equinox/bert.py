"""BERT in Equinox: a post-LN transformer encoder with optional pooler, masked-LM head (decoder
tied to the word embedding) and sequence classifier.

Paper: Devlin et al., 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding".

Args (``BertConfig``): vocab_size, max_positions, type_vocab_size, hidden_size, num_layers,
num_heads, mlp_dim, layer_norm_eps, dropout, attention_dropout, pooler, mlm_head, num_labels, gelu, remat,
scan_layers (the blocks as one ``jax.lax.scan``, ``layers.run_blocks``).
``dtype="bfloat16"`` runs activations and matmuls in bfloat16; parameters stay float32.

The model maps ONE sequence, as Equinox layers do; ``jax.vmap`` it over the batch. Example::

    import jax, jax.numpy as jnp
    from dlzoo.zoo.configs import get_config
    from dlzoo.zoo.equinox.bert import Bert

    model = Bert(get_config("bert", "tiny", mlm_head=True), key=jax.random.key(0))
    ids = jnp.ones((2, 16), dtype=jnp.int32)
    mask = jnp.ones((2, 16), dtype=jnp.int32).at[1, 8:].set(0)           # row 1 is padded
    out = jax.vmap(lambda i, m: model(i, attention_mask=m))(ids, mask)
    out["last_hidden_state"].shape, out["mlm_logits"].shape             # (2, 16, 128), (2, 16, 30522)
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ..configs import BertConfig
from .layers import MLP, Attention, Dense, Dropout, Embedding, LayerNorm, cast_floating, run_blocks, split_key, truncated_normal

_INIT = truncated_normal(0.02)  # theory: initialization


class Embeddings(eqx.Module):
    word: Embedding
    position: Embedding
    token_type: Embedding
    ln: LayerNorm
    drop: Dropout

    def __init__(self, config: BertConfig, *, key: PRNGKeyArray):
        k1, k2, k3 = jax.random.split(key, 3)
        d = config.hidden_size
        self.word = Embedding(config.vocab_size, d, init=_INIT, key=k1)
        self.position = Embedding(config.max_positions, d, init=_INIT, key=k2)  # theory: position-embeddings
        self.token_type = Embedding(config.type_vocab_size, d, init=_INIT, key=k3)
        self.ln = LayerNorm(d, eps=config.layer_norm_eps)  # theory: layer-norm
        self.drop = Dropout(config.dropout)  # theory: dropout

    def __call__(
        self, input_ids: Int[Array, " T"], token_type_ids: Int[Array, " T"], *, key: PRNGKeyArray | None, inference: bool
    ) -> Float[Array, "T D"]:
        positions = jnp.arange(input_ids.shape[0])
        x = self.word(input_ids) + self.position(positions) + self.token_type(token_type_ids)
        return self.drop(self.ln(x), key=key, inference=inference)


class Block(eqx.Module):
    """Post-LN transformer block: ln1(x + attn(x)), then ln2(x + mlp(x)); attention and MLP are
    the ones GPT-2 and ViT use (layers.py), attention taking the padding mask as a bias."""

    attn: Attention
    ln1: LayerNorm
    mlp: MLP
    ln2: LayerNorm

    def __init__(self, config: BertConfig, *, key: PRNGKeyArray):
        k1, k2 = jax.random.split(key)
        d, eps = config.hidden_size, config.layer_norm_eps
        self.attn = Attention(d, config.num_heads, dropout=config.dropout, attention_dropout=config.attention_dropout, init=_INIT, key=k1)
        self.ln1 = LayerNorm(d, eps=eps)
        # Exact (erf) GELU, as in the published checkpoints.
        self.mlp = MLP(
            d,
            config.mlp_dim,
            approximate=config.gelu == "tanh",  # theory: gelu
            dropout=config.dropout,
            init=_INIT,
            key=k2,
        )
        self.ln2 = LayerNorm(d, eps=eps)

    def __call__(
        self, x: Float[Array, "T D"], bias: Float[Array, "1 1 T"], *, key: PRNGKeyArray | None, inference: bool
    ) -> Float[Array, "T D"]:
        k1, k2 = split_key(key, 2)
        # theory: pre-ln-vs-post-ln
        x = self.ln1(x + self.attn(x, bias, key=k1, inference=inference))  # theory: residual-connections
        x = self.ln2(x + self.mlp(x, key=k2, inference=inference))
        return x


class MLMHead(eqx.Module):
    """transform -> GELU -> layer norm -> decoder tied to the word embedding (or its own
    ``decoder`` when ``tie_word_embeddings=False``), plus its own bias."""

    transform: Dense
    ln: LayerNorm
    decoder: Dense | None
    bias: Float[Array, " V"]
    approximate: bool = eqx.field(static=True)

    def __init__(self, config: BertConfig, *, key: PRNGKeyArray):
        self.approximate = config.gelu == "tanh"  # transformers: hidden_act here too
        self.transform = Dense(config.hidden_size, config.hidden_size, init=_INIT, key=key)
        self.ln = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = (
            None
            if config.tie_word_embeddings
            else Dense(config.hidden_size, config.vocab_size, init=_INIT, use_bias=False, key=jax.random.fold_in(key, 1))
        )
        self.bias = jnp.zeros((config.vocab_size,))

    def __call__(self, x: Float[Array, "T D"], word: Float[Array, "V D"]) -> Float[Array, "T V"]:
        x = self.ln(jax.nn.gelu(self.transform(x), approximate=self.approximate))
        decoded = x @ word.T if self.decoder is None else self.decoder(x)  # theory: weight-tying
        return decoded + self.bias


class Bert(eqx.Module):
    embeddings: Embeddings
    blocks: list[Block]
    pooler: Dense | None
    mlm: MLMHead | None
    drop: Dropout
    classifier: Dense | None
    config: BertConfig = eqx.field(static=True)
    dtype: str = eqx.field(static=True)

    def __init__(self, config: BertConfig, *, key: PRNGKeyArray, dtype: str = "float32"):
        keys = jax.random.split(key, config.num_layers + 4)
        d = config.hidden_size
        self.embeddings = Embeddings(config, key=keys[0])
        self.blocks = [Block(config, key=k) for k in keys[4:]]
        self.pooler = Dense(d, d, init=_INIT, key=keys[1]) if config.pooler else None
        self.mlm = MLMHead(config, key=keys[2]) if config.mlm_head else None
        self.drop = Dropout(config.dropout)
        self.classifier = Dense(d, config.num_labels, init=_INIT, key=keys[3]) if config.num_labels else None
        self.config, self.dtype = config, dtype

    def forward_features(
        self,
        input_ids: Int[Array, " T"],
        token_type_ids: Int[Array, " T"] | None = None,
        attention_mask: Int[Array, " T"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
        inference: bool = True,
    ) -> Float[Array, "T D"]:
        keys = split_key(key, len(self.blocks) + 1)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        dtype = self.embeddings.word.embedding.dtype
        # Padding keys get the most negative finite value: -inf would give NaN on padded rows.
        bias = (1 - attention_mask.astype(dtype))[None, None, :] * jnp.finfo(dtype).min  # theory: attention-mask
        x = self.embeddings(input_ids, token_type_ids, key=keys[0], inference=inference)
        x = run_blocks(self.blocks, x, bias, remat=self.config.remat, scan=self.config.scan_layers, keys=keys[1:], inference=inference)
        return x

    def forward_head(
        self, x: Float[Array, "T D"], *, key: PRNGKeyArray | None = None, inference: bool = True
    ) -> dict[str, Float[Array, "..."]]:
        outputs = {"last_hidden_state": x}
        if self.pooler is not None:
            # theory: cls-pooling
            pooled = jnp.tanh(self.pooler(x[0]))
            outputs["pooler_output"] = pooled
            if self.classifier is not None:
                outputs["logits"] = self.classifier(self.drop(pooled, key=key, inference=inference))
        if self.mlm is not None:
            outputs["mlm_logits"] = self.mlm(x, self.embeddings.word.embedding)  # theory: masked-lm
        return outputs

    def __call__(
        self,
        input_ids: Int[Array, " T"],
        token_type_ids: Int[Array, " T"] | None = None,
        attention_mask: Int[Array, " T"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
        inference: bool = True,
    ) -> dict[str, Float[Array, "..."]]:
        """``input_ids`` (T,), optional ``token_type_ids`` (T,) (zeros) and ``attention_mask``
        (T,) (ones; 0 marks padding) -> dict of float32 outputs (see the module docstring)."""
        k_features, k_head = split_key(key, 2)
        # theory: mixed-precision
        model = cast_floating(self, self.dtype)
        x = model.forward_features(input_ids, token_type_ids, attention_mask, key=k_features, inference=inference)
        outputs = model.forward_head(x, key=k_head, inference=inference)
        return {k: v.astype(jnp.float32) for k, v in outputs.items()}
