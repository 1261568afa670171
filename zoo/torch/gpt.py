"""GPT-2 in PyTorch: a pre-LN causal transformer decoder with an LM head tied to the token
embedding.

Paper: Radford et al., 2019, "Language Models are Unsupervised Multitask Learners".

Args (``GPTConfig``): vocab_size, context_length, hidden_size, num_layers, num_heads, mlp_dim,
layer_norm_eps, dropout (embedding and residual), attention_dropout. ``generator`` (keyword)
draws the initial weights; torch's global random state is neither read nor changed by it.
Dropout follows ``model.train()`` / ``model.eval()``, as everywhere in torch.

Example::

    import torch
    from dlzoo.zoo.configs import get_config
    from dlzoo.zoo.torch.gpt import GPT

    model = GPT(get_config("gpt", "tiny"), generator=torch.Generator().manual_seed(0)).eval()
    ids = torch.zeros(2, 16, dtype=torch.long)
    logits = model(ids)["logits"]                                         # (2, 16, 256)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..configs import GPTConfig
from .layers import Block, init_linear_, normal_


class GPT(nn.Module):
    def __init__(self, config: GPTConfig, *, generator: torch.Generator | None = None):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        # theory: position-embeddings
        self.wpe = nn.Embedding(config.context_length, config.hidden_size)
        self.drop = nn.Dropout(config.dropout)  # theory: dropout
        self.blocks = nn.ModuleList(
            Block(config.hidden_size, config.num_heads, config.mlp_dim, layer_norm_eps=config.layer_norm_eps,
                  approximate="tanh",  # GPT-2's "gelu_new": the tanh approximation of GELU
                  dropout=config.dropout, attention_dropout=config.attention_dropout)
            for _ in range(config.num_layers))
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # theory: layer-norm
        self.init_weights(generator)

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """GPT-2: normal(0.02) everywhere; the projections that write into the residual stream
        get 0.02 / sqrt(2 * num_layers), so its variance does not grow with depth. Layer norms
        keep torch's scale 1, bias 0."""
        std = 0.02
        normal_(self.wte.weight, std, generator)
        normal_(self.wpe.weight, std, generator)
        for block in self.blocks:
            init_linear_(block.attn.qkv, std, generator, truncated=False)
            # theory: initialization
            init_linear_(block.attn.out, std / math.sqrt(2 * self.config.num_layers), generator, truncated=False)
            init_linear_(block.mlp.fc, std, generator, truncated=False)
            init_linear_(block.mlp.out, std / math.sqrt(2 * self.config.num_layers), generator, truncated=False)

    def forward_features(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``input_ids`` (B, T) -> final hidden states (B, T, C), after ln_f."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (T,)
        x = self.drop(self.wte(input_ids) + self.wpe(positions))  # (B, T, C)
        for block in self.blocks:
            x = block(x, is_causal=True)  # theory: causal-masking
        return self.ln_f(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        # theory: weight-tying
        return x @ self.wte.weight.T  # (B, T, V)  # theory: next-token-prediction

    def forward(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """``input_ids`` (B, T) int -> {"logits": (B, T, V)}."""
        return {"logits": self.forward_head(self.forward_features(input_ids))}
