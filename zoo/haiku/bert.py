"""BERT in Haiku: a post-LN bidirectional transformer encoder, with an optional pooler,
masked-LM head (decoder tied to the word embedding) and sequence classifier.

Paper: Devlin et al., 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding".

Args (``BertConfig``): vocab_size, max_positions, type_vocab_size, hidden_size, num_layers,
num_heads, mlp_dim, layer_norm_eps, dropout (embedding, residual and classifier),
attention_dropout, pooler, mlm_head, num_labels, gelu, remat, scan_layers (the blocks as one
``jax.lax.scan``, ``layers.run_blocks``). ``transform(config, dtype="bfloat16")`` runs
activations and matmuls in bfloat16 while the parameters stay float32. ``is_training=True``
turns dropout on and needs an rng key in ``apply``.

Module paths map onto dlzoo's canonical names ("bert/~/blocks_0/~/attn/~/qkv" + "kernel" ->
"blocks.0.attn.qkv.kernel", see ``layers.canonical_name``). Example::

    import jax, jax.numpy as jnp
    from dlzoo.zoo.configs import get_config
    from dlzoo.zoo.haiku.bert import transform

    model = transform(get_config("bert", "tiny", mlm_head=True))
    ids = jnp.ones((2, 16), dtype=jnp.int32)
    mask = jnp.ones((2, 16), dtype=jnp.int32).at[1, 8:].set(0)          # row 1 is padded
    params, state = model.init(jax.random.key(0), ids)
    out, _ = jax.jit(model.apply)(params, state, None, ids, attention_mask=mask)
    out["last_hidden_state"], out["pooler_output"], out["mlm_logits"]  # (2, 16, 128) (2, 128) (2, 16, 30522)
"""

from __future__ import annotations

from functools import partial

import haiku as hk
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from ..configs import BertConfig
from .layers import MLP, Attention, Dense, Embedding, LayerNorm, dropout, run_blocks, transform_model, truncated_normal

_INIT = truncated_normal(0.02)  # theory: initialization


class Embeddings(hk.Module):
    def __init__(self, config: BertConfig, *, name: str = "embeddings"):
        super().__init__(name=name)
        d = config.hidden_size
        self.word = Embedding(config.vocab_size, d, init=_INIT, name="word")
        # theory: position-embeddings
        self.position = Embedding(config.max_positions, d, init=_INIT, name="position")
        self.token_type = Embedding(config.type_vocab_size, d, init=_INIT, name="token_type")
        self.ln = LayerNorm(eps=config.layer_norm_eps, name="ln")  # theory: layer-norm
        self.dropout = config.dropout

    def __call__(self, input_ids: Int[Array, "B T"], token_type_ids: Int[Array, "B T"], *, is_training: bool) -> Float[Array, "B T D"]:
        positions = jnp.arange(input_ids.shape[1])  # (T,)
        x = self.word(input_ids) + self.position(positions) + self.token_type(token_type_ids)  # (B, T, D)
        return dropout(self.ln(x), self.dropout, is_training)  # theory: dropout


class Block(hk.Module):
    """Post-LN transformer block (BERT's own; GPT-2 and ViT share layers.Block, which is pre-LN):
    ln1(x + attn(x)), then ln2(x + mlp(x))."""

    def __init__(self, config: BertConfig, *, name: str):
        super().__init__(name=name)
        d = config.hidden_size
        self.attn = Attention(
            d, config.num_heads, dropout=config.dropout, attention_dropout=config.attention_dropout, init=_INIT, out_init=_INIT
        )
        self.ln1 = LayerNorm(eps=config.layer_norm_eps, name="ln1")
        self.mlp = MLP(
            d,
            config.mlp_dim,
            approximate=config.gelu == "tanh",  # BERT: exact (erf) GELU
            dropout=config.dropout,
            init=_INIT,
            out_init=_INIT,
        )
        self.ln2 = LayerNorm(eps=config.layer_norm_eps, name="ln2")

    def __call__(self, x: Float[Array, "B T D"], attn_bias: Float[Array, "B 1 1 T"] | None, *, is_training: bool) -> Float[Array, "B T D"]:
        # theory: pre-ln-vs-post-ln
        x = self.ln1(x + self.attn(x, attn_bias=attn_bias, is_training=is_training))  # theory: residual-connections
        x = self.ln2(x + self.mlp(x, is_training=is_training))
        return x


class MLMHead(hk.Module):
    """transform -> GELU -> layer norm -> decoder tied to the word embedding (or its own
    ``decoder`` when ``tie_word_embeddings=False``), plus its own bias."""

    def __init__(self, config: BertConfig, *, name: str = "mlm"):
        super().__init__(name=name)
        self.transform = Dense(config.hidden_size, init=_INIT, name="transform")
        self.ln = LayerNorm(eps=config.layer_norm_eps, name="ln")
        self.decoder = None if config.tie_word_embeddings else Dense(config.vocab_size, init=_INIT, use_bias=False, name="decoder")
        self.vocab_size = config.vocab_size
        self.approximate = config.gelu == "tanh"  # transformers: hidden_act here too

    def __call__(self, x: Float[Array, "B T D"], word_embedding: Float[Array, "V D"]) -> Float[Array, "B T V"]:
        h = self.ln(jax.nn.gelu(self.transform(x), approximate=self.approximate))  # (B, T, D)
        bias = hk.get_parameter("bias", (self.vocab_size,), init=jnp.zeros)
        # theory: weight-tying
        decoded = h @ word_embedding.T if self.decoder is None else self.decoder(h)  # (B, T, V)
        return decoded + bias.astype(h.dtype)  # theory: masked-lm


class BERT(hk.Module):
    def __init__(self, config: BertConfig, *, name: str = "bert"):
        super().__init__(name=name)
        self.config = config
        d = config.hidden_size
        self.embeddings = Embeddings(config)
        self.make_block = partial(Block, config)  # one factory: scan_layers relies on identical blocks
        self.blocks = [self.make_block(name=f"blocks_{i}") for i in range(config.num_layers)]
        self.pooler = Dense(d, init=_INIT, name="pooler") if config.pooler else None
        self.mlm = MLMHead(config) if config.mlm_head else None
        self.classifier = Dense(config.num_labels, init=_INIT, name="classifier") if config.num_labels else None

    def forward_features(
        self,
        input_ids: Int[Array, "B T"],
        token_type_ids: Int[Array, "B T"] | None = None,
        attention_mask: Int[Array, "B T"] | None = None,
        *,
        is_training: bool = False,
    ) -> Float[Array, "B T D"]:
        """``input_ids`` (B, T) -> last hidden state (B, T, D). ``token_type_ids`` default to 0,
        ``attention_mask`` (1 = attend, 0 = padding) to all ones."""
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids, is_training=is_training)  # (B, T, D)
        attn_bias = None
        if attention_mask is not None:
            # A large finite negative of the compute dtype, not -inf: a fully padded row stays
            # finite (uniform attention) instead of turning into NaN.
            dtype = x.dtype
            # theory: attention-mask
            attn_bias = (1 - attention_mask.astype(dtype))[:, None, None, :] * jnp.finfo(dtype).min  # (B, 1, 1, T)
        x = run_blocks(
            self.blocks,
            self.make_block,
            x,
            remat=self.config.remat,
            scan=self.config.scan_layers,
            attn_bias=attn_bias,
            is_training=is_training,
        )
        return x

    def forward_head(self, x: Float[Array, "B T D"], *, is_training: bool = False) -> dict[str, Array]:
        out = {"last_hidden_state": x}
        if self.pooler is not None:
            # theory: cls-pooling
            out["pooler_output"] = jnp.tanh(self.pooler(x[:, 0]))  # (B, D)
        if self.mlm is not None:
            out["mlm_logits"] = self.mlm(x, self.embeddings.word.embedding)  # (B, T, V)
        if self.classifier is not None:
            # transformers' BertForSequenceClassification drops out the pooled output first.
            pooled = dropout(out["pooler_output"], self.config.dropout, is_training)
            out["logits"] = self.classifier(pooled)  # (B, num_labels)
        return out

    def __call__(
        self,
        input_ids: Int[Array, "B T"],
        token_type_ids: Int[Array, "B T"] | None = None,
        attention_mask: Int[Array, "B T"] | None = None,
        *,
        is_training: bool = False,
    ) -> dict[str, Array]:
        """-> {"last_hidden_state": (B, T, D), "pooler_output": (B, D) if config.pooler,
        "mlm_logits": (B, T, V) if config.mlm_head, "logits": (B, num_labels) if num_labels}."""
        x = self.forward_features(input_ids, token_type_ids, attention_mask, is_training=is_training)
        return self.forward_head(x, is_training=is_training)


def transform(config: BertConfig, *, dtype: str = "float32") -> hk.TransformedWithState:
    """BERT as Haiku's pure pair (``layers.transform_model``): ``init(rng, input_ids, ...)``,
    ``apply(params, state, rng, input_ids, token_type_ids=None, attention_mask=None,
    is_training=False)``; the state is empty (kept for one signature across models)."""
    return transform_model(BERT, config, dtype=dtype)
