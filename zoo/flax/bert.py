"""BERT in Flax NNX: a post-LN bidirectional transformer encoder, with an optional pooler,
masked-LM head (decoder tied to the word embedding) and sequence classifier.

Paper: Devlin et al., 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding".

Args (``BertConfig``): vocab_size, max_positions, type_vocab_size, hidden_size, num_layers,
num_heads, mlp_dim, layer_norm_eps, dropout (embedding, residual and classifier),
attention_dropout, pooler, mlm_head, num_labels, gelu, remat, scan_layers (the blocks as one
``jax.lax.scan``, ``layers.run_blocks``). Keywords: ``rngs`` (``nnx.Rngs``) draws the initial
weights; ``dtype`` is the compute dtype (``jnp.bfloat16`` for mixed precision: parameters stay
float32, outputs are returned in float32). At call time ``train=True`` turns
dropout on, drawing from the ``rngs`` passed to the call.

Example::

    import jax
    import jax.numpy as jnp
    from flax import nnx
    from dlzoo.zoo.configs import get_config
    from dlzoo.zoo.flax.bert import BERT

    config = get_config("bert", "tiny", mlm_head=True)
    model = BERT(config, rngs=nnx.Rngs(0))
    ids = jax.random.randint(jax.random.key(0), (2, 16), 0, config.vocab_size)
    mask = jnp.ones((2, 16), jnp.int32)
    out = model(ids, attention_mask=mask)
    out["last_hidden_state"], out["pooler_output"], out["mlm_logits"]   # (2, 16, 128) (2, 128) (2, 16, 30522)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from ..configs import BertConfig, ZooError
from .layers import MLP, Attention, Dropout, layer_norm, run_blocks, truncated_normal

# theory: initialization
INIT = truncated_normal(0.02)  # every dense kernel and embedding; biases 0, layer norms 1 and 0


class Embeddings(nnx.Module):
    def __init__(self, config: BertConfig, *, dtype, rngs: nnx.Rngs):
        d = config.hidden_size
        self.word = nnx.Embed(config.vocab_size, d, embedding_init=INIT, dtype=dtype, rngs=rngs)
        # theory: position-embeddings
        self.position = nnx.Embed(config.max_positions, d, embedding_init=INIT, dtype=dtype, rngs=rngs)
        self.token_type = nnx.Embed(config.type_vocab_size, d, embedding_init=INIT, dtype=dtype, rngs=rngs)
        self.ln = layer_norm(d, config.layer_norm_eps, dtype=dtype, rngs=rngs)  # theory: layer-norm
        self.drop = Dropout(config.dropout)  # theory: dropout

    def __call__(
        self, input_ids: Int[Array, "B T"], token_type_ids: Int[Array, "B T"], *, train: bool, rngs: nnx.Rngs | None
    ) -> Float[Array, "B T C"]:
        positions = jnp.arange(input_ids.shape[1])  # [T]
        x = self.word(input_ids) + self.position(positions) + self.token_type(token_type_ids)  # [B, T, C]
        return self.drop(self.ln(x), deterministic=not train, rngs=rngs)


class Block(nnx.Module):
    """Post-LN transformer block (BERT): ln1(x + attn(x)), then ln2(x + mlp(x)). The attention
    and MLP are the ones GPT-2 and ViT use; only the place of the layer norms differs."""

    def __init__(self, config: BertConfig, *, dtype, rngs: nnx.Rngs):
        d = config.hidden_size
        self.attn = Attention(
            d,
            config.num_heads,
            dropout=config.dropout,
            attention_dropout=config.attention_dropout,
            kernel_init=INIT,
            out_init=INIT,
            dtype=dtype,
            rngs=rngs,
        )
        self.ln1 = layer_norm(d, config.layer_norm_eps, dtype=dtype, rngs=rngs)
        # BERT uses the exact (erf) GELU, not GPT-2's tanh approximation (jax's default).
        self.mlp = MLP(
            d,
            config.mlp_dim,
            approximate=config.gelu == "tanh",
            dropout=config.dropout,
            kernel_init=INIT,
            out_init=INIT,
            dtype=dtype,
            rngs=rngs,
        )
        self.ln2 = layer_norm(d, config.layer_norm_eps, dtype=dtype, rngs=rngs)

    def __call__(
        self, x: Float[Array, "B T C"], attn_bias: Float[Array, "B 1 1 T"] | None, *, train: bool, rngs: nnx.Rngs | None
    ) -> Float[Array, "B T C"]:
        # theory: pre-ln-vs-post-ln
        x = self.ln1(x + self.attn(x, attn_bias=attn_bias, train=train, rngs=rngs))  # theory: residual-connections
        x = self.ln2(x + self.mlp(x, train=train, rngs=rngs))
        return x


class MLMHead(nnx.Module):
    """transform -> GELU -> layer norm -> decoder tied to the word embedding (or its own
    ``decoder`` when ``tie_word_embeddings=False``), plus its own bias."""

    def __init__(self, config: BertConfig, *, dtype, rngs: nnx.Rngs):
        d = config.hidden_size
        self.transform = nnx.Linear(d, d, kernel_init=INIT, dtype=dtype, rngs=rngs)
        self.ln = layer_norm(d, config.layer_norm_eps, dtype=dtype, rngs=rngs)
        self.decoder = (
            None
            if config.tie_word_embeddings
            else nnx.Linear(d, config.vocab_size, use_bias=False, kernel_init=INIT, dtype=dtype, rngs=rngs)
        )
        self.bias = nnx.Param(jnp.zeros((config.vocab_size,), jnp.float32))
        self.approximate = config.gelu == "tanh"  # transformers: hidden_act here too

    def __call__(self, x: Float[Array, "B T C"], word: nnx.Embed) -> Float[Array, "B T V"]:
        h = self.ln(jax.nn.gelu(self.transform(x), approximate=self.approximate))  # [B, T, C]
        # theory: weight-tying
        logits = word.attend(h) if self.decoder is None else self.decoder(h)  # h @ word.embedding.T, in the compute dtype
        return logits + self.bias[...].astype(logits.dtype)  # [B, T, V]  # theory: masked-lm


class BERT(nnx.Module):
    def __init__(self, config: BertConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        d = config.hidden_size
        self.config, self.dtype = config, dtype
        self.embeddings = Embeddings(config, dtype=dtype, rngs=rngs)
        self.blocks = nnx.List([Block(config, dtype=dtype, rngs=rngs) for _ in range(config.num_layers)])
        self.pooler = nnx.Linear(d, d, kernel_init=INIT, dtype=dtype, rngs=rngs) if config.pooler else None
        self.mlm = MLMHead(config, dtype=dtype, rngs=rngs) if config.mlm_head else None
        # transformers' BertForSequenceClassification drops out the pooled output first.
        self.classifier_drop = Dropout(config.dropout)
        self.classifier = nnx.Linear(d, config.num_labels, kernel_init=INIT, dtype=dtype, rngs=rngs) if config.num_labels else None

    def forward_features(
        self,
        input_ids: Int[Array, "B T"],
        token_type_ids: Int[Array, "B T"] | None = None,
        attention_mask: Int[Array, "B T"] | None = None,
        *,
        train: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> Float[Array, "B T C"]:
        """``input_ids`` [B, T] -> last hidden state [B, T, C]. ``token_type_ids`` default to 0,
        ``attention_mask`` (1 = attend, 0 = padding) to all ones."""
        if input_ids.shape[1] > self.config.max_positions:
            raise ZooError(
                f"BERT input has {input_ids.shape[1]} positions, more than max_positions {self.config.max_positions}; truncate the sequence"
            )
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids, train=train, rngs=rngs)  # [B, T, C]
        attn_bias = None
        if attention_mask is not None:
            # A large finite negative of the compute dtype, not -inf: a fully padded row stays
            # finite (uniform attention) instead of turning into NaN.
            mask = attention_mask.astype(self.dtype)
            # theory: attention-mask
            attn_bias = (1.0 - mask)[:, None, None, :] * jnp.finfo(self.dtype).min  # [B, 1, 1, T]
        x = run_blocks(self.blocks, x, remat=self.config.remat, scan=self.config.scan_layers, attn_bias=attn_bias, train=train, rngs=rngs)
        return x

    def forward_head(self, x: Float[Array, "B T C"], *, train: bool = False, rngs: nnx.Rngs | None = None) -> dict[str, Array]:
        out = {"last_hidden_state": x}
        if self.pooler is not None:
            # theory: cls-pooling
            out["pooler_output"] = jnp.tanh(self.pooler(x[:, 0]))  # [B, C]
        if self.mlm is not None:
            out["mlm_logits"] = self.mlm(x, self.embeddings.word)  # [B, T, V]
        if self.classifier is not None:
            pooled = self.classifier_drop(out["pooler_output"], deterministic=not train, rngs=rngs)
            out["logits"] = self.classifier(pooled)  # [B, num_labels]
        return out

    def __call__(
        self,
        input_ids: Int[Array, "B T"],
        token_type_ids: Int[Array, "B T"] | None = None,
        attention_mask: Int[Array, "B T"] | None = None,
        *,
        train: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> dict[str, Float[Array, "..."]]:
        """-> {"last_hidden_state": [B, T, C], "pooler_output": [B, C] if config.pooler,
        "mlm_logits": [B, T, V] if config.mlm_head, "logits": [B, num_labels] if num_labels},
        float32 whatever the compute dtype."""
        x = self.forward_features(input_ids, token_type_ids, attention_mask, train=train, rngs=rngs)
        out = self.forward_head(x, train=train, rngs=rngs)
        return {k: v.astype(jnp.float32) for k, v in out.items()}
