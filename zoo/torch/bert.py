"""BERT in PyTorch: a post-LN bidirectional transformer encoder, with an optional pooler,
masked-LM head (decoder tied to the word embedding) and sequence classifier.

Paper: Devlin et al., 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding".

Args (``BertConfig``): vocab_size, max_positions, type_vocab_size, hidden_size, num_layers,
num_heads, mlp_dim, layer_norm_eps, dropout (embedding, residual and classifier),
attention_dropout, pooler, mlm_head, num_labels, gelu, remat. ``generator`` (keyword) draws the initial
weights without touching torch's global random state. Dropout follows ``model.train()`` /
``model.eval()``.

Example::

    import torch
    from dlzoo.zoo.configs import get_config
    from dlzoo.zoo.torch.bert import BERT

    config = get_config("bert", "tiny", mlm_head=True)
    model = BERT(config, generator=torch.Generator().manual_seed(0)).eval()
    ids = torch.randint(0, config.vocab_size, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.long)
    out = model(ids, attention_mask=mask)
    out["last_hidden_state"], out["pooler_output"], out["mlm_logits"]   # (2, 16, 128) (2, 128) (2, 16, 30522)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import BertConfig
from .layers import MLP, Attention, compute_dtype, init_linear_, run_block, truncated_normal_


class Embeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word = nn.Embedding(config.vocab_size, config.hidden_size)
        # theory: position-embeddings
        self.position = nn.Embedding(config.max_positions, config.hidden_size)
        self.token_type = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # theory: layer-norm
        self.drop = nn.Dropout(config.dropout)  # theory: dropout

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (T,)
        x = self.word(input_ids) + self.position(positions) + self.token_type(token_type_ids)  # (B, T, C)
        return self.drop(self.ln(x))


class Block(nn.Module):
    """Post-LN transformer block (BERT): ln1(x + attn(x)), then ln2(x + mlp(x)). The attention
    and MLP are the ones GPT-2 and ViT use; only the place of the layer norms differs."""

    def __init__(self, config: BertConfig):
        super().__init__()
        d = config.hidden_size
        self.attn = Attention(d, config.num_heads, dropout=config.dropout, attention_dropout=config.attention_dropout)
        self.ln1 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        # BERT uses the exact (erf) GELU, not GPT-2's tanh approximation (config.gelu says which).
        self.mlp = MLP(d, config.mlp_dim, approximate="tanh" if config.gelu == "tanh" else "none", dropout=config.dropout)
        self.ln2 = nn.LayerNorm(d, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        # theory: pre-ln-vs-post-ln
        x = self.ln1(x + self.attn(x, attn_bias=attn_bias))  # theory: residual-connections
        x = self.ln2(x + self.mlp(x))
        return x  # (B, T, C)


class MLMHead(nn.Module):
    """transform -> GELU -> layer norm -> decoder tied to the word embedding (or its own
    ``decoder`` when ``tie_word_embeddings=False``), plus its own bias."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.transform = nn.Linear(config.hidden_size, config.hidden_size)
        self.ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.approximate = "tanh" if config.gelu == "tanh" else "none"  # transformers: hidden_act here too

    def forward(self, x: torch.Tensor, word_embedding: torch.Tensor) -> torch.Tensor:
        h = self.ln(F.gelu(self.transform(x), approximate=self.approximate))  # (B, T, C)
        # theory: weight-tying
        decoded = h @ word_embedding.T if self.decoder is None else self.decoder(h)  # (B, T, V)
        return decoded + self.bias  # (B, T, V)  # theory: masked-lm


class BERT(nn.Module):
    def __init__(self, config: BertConfig, *, generator: torch.Generator | None = None):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size) if config.pooler else None
        self.mlm = MLMHead(config) if config.mlm_head else None
        # transformers' BertForSequenceClassification drops out the pooled output first.
        self.classifier_drop = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels else None
        self.init_weights(generator)

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Truncated normal(0.02) for every dense kernel and embedding, zero biases; layer norms
        keep torch's scale 1, bias 0."""
        # theory: initialization
        for module in self.modules():
            if isinstance(module, nn.Linear):
                init_linear_(module, 0.02, generator, truncated=True)
            elif isinstance(module, nn.Embedding):
                truncated_normal_(module.weight, 0.02, generator)
        if self.mlm is not None:
            nn.init.zeros_(self.mlm.bias)

    def forward_features(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``input_ids`` (B, T) -> last hidden state (B, T, C). ``token_type_ids`` default to 0,
        ``attention_mask`` (1 = attend, 0 = padding) to all ones."""
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, C)
        attn_bias = None
        if attention_mask is not None:
            # A large finite negative of the compute dtype, not -inf: a fully padded row stays
            # finite (uniform attention) instead of turning into NaN.
            dtype = compute_dtype(x)
            # theory: attention-mask
            attn_bias = (1.0 - attention_mask.to(dtype))[:, None, None, :] * torch.finfo(dtype).min  # (B, 1, 1, T)
        for block in self.blocks:
            x = run_block(block, x, attn_bias, remat=self.config.remat)
        return x

    def forward_head(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"last_hidden_state": x}
        if self.pooler is not None:
            # theory: cls-pooling
            out["pooler_output"] = torch.tanh(self.pooler(x[:, 0]))  # (B, C)
        if self.mlm is not None:
            out["mlm_logits"] = self.mlm(x, self.embeddings.word.weight)  # (B, T, V)
        if self.classifier is not None:
            out["logits"] = self.classifier(self.classifier_drop(out["pooler_output"]))  # (B, num_labels)
        return out

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """-> {"last_hidden_state": (B, T, C), "pooler_output": (B, C) if config.pooler,
        "mlm_logits": (B, T, V) if config.mlm_head, "logits": (B, num_labels) if num_labels}."""
        return self.forward_head(self.forward_features(input_ids, token_type_ids, attention_mask))
