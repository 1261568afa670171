"""Pieces shared by the PyTorch models: the transformer's attention, MLP and pre-LN block,
explicit-generator initialisers and the compute dtype.

The leaf layers are torch's own (nn.Linear, nn.LayerNorm, nn.Embedding, nn.Conv2d,
nn.BatchNorm2d); the models name them after the canonical names of dlzoo's weight format
(``blocks.0.attn.qkv``), so converting to and from canonical tensors is mechanical: rename the
leaf, transpose the layout. GPT-2, ViT and BERT share ``Attention`` and ``MLP``; GPT-2 and ViT
also share the pre-LN ``Block`` (BERT keeps its own post-LN block). What differs between them
is an argument: causal or not, an additive mask bias, the GELU flavour, the dropout rates.
Initialisation stays with each model (``init_weights``), which knows its scheme. Every
initialiser takes an explicit ``generator`` so that building a model never depends on, or
disturbs, torch's global random state.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..configs import ZooError

# A normal truncated at +-2 standard deviations has std 0.8796 of the untruncated one; divide it
# out so `std` means the std (the JAX backends draw the same distribution).
_TRUNCATED_STD = 0.87962566103423978


def normal_(tensor: torch.Tensor, std: float, generator: torch.Generator | None) -> torch.Tensor:
    return nn.init.normal_(tensor, 0.0, std, generator=generator)


def truncated_normal_(tensor: torch.Tensor, std: float, generator: torch.Generator | None) -> torch.Tensor:
    s = std / _TRUNCATED_STD
    return nn.init.trunc_normal_(tensor, 0.0, s, -2.0 * s, 2.0 * s, generator=generator)


def uniform_fan_in_(linear: nn.Linear, generator: torch.Generator | None) -> None:
    """torch.nn.Linear's default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), with an explicit generator."""
    bound = 1.0 / math.sqrt(linear.in_features)
    nn.init.uniform_(linear.weight, -bound, bound, generator=generator)
    if linear.bias is not None:
        nn.init.uniform_(linear.bias, -bound, bound, generator=generator)


def init_linear_(linear: nn.Linear, std: float, generator: torch.Generator | None, *, truncated: bool) -> None:
    (truncated_normal_ if truncated else normal_)(linear.weight, std, generator)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matmuls run in: autocast's when it is on, else the tensor's own."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def run_block(block: nn.Module, x: torch.Tensor, *args, remat: bool, **kwargs) -> torch.Tensor:
    """``block(x, *args, **kwargs)``; with ``remat`` (the config's flag), while training with
    autograd on, its activations are not kept for the backward pass but recomputed there
    (``torch.utils.checkpoint``, non-reentrant). The recomputation replays torch's RNG state
    (``preserve_rng_state``), so dropout draws the same masks, and batch norms do not update
    their running statistics a second time. Gradients equal those without remat."""
    if not (remat and block.training and torch.is_grad_enabled()):
        return block(x, *args, **kwargs)
    return checkpoint(block, x, *args, use_reentrant=False, context_fn=lambda: _frozen_statistics(block), **kwargs)


def _frozen_statistics(block: nn.Module):
    """(forward context, recompute context) for ``checkpoint``: the recomputation runs every
    batch norm exactly as the forward did (batch statistics, the same saved tensors), then puts
    back the running statistics it updated a second time."""

    @contextlib.contextmanager
    def recompute():
        norms = [m for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        saved = [[b.clone() for b in m.buffers()] for m in norms]
        try:
            yield
        finally:
            with torch.no_grad():
                for m, buffers in zip(norms, saved):
                    for b, before in zip(m.buffers(), buffers):
                        b.copy_(before)

    return contextlib.nullcontext(), recompute()


# --------------------------------------------------------------------------- transformer layers


class LayerCache:
    """One attention layer's keys and values (B, N, S, H) for every token seen so far, grown by
    each call (torch's eager idiom, as transformers' DynamicCache: no preallocated length)."""

    def __init__(self):
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # theory: kv-cache
        if self.keys is not None:
            k, v = torch.cat([self.keys, k], dim=2), torch.cat([self.values, v], dim=2)
        self.keys, self.values = k, v
        return k, v


class Attention(nn.Module):
    """Multi-head self-attention with a fused q|k|v projection (heads contiguous within each).

    ``forward(x, is_causal=..., attn_bias=..., cache=...)``: ``is_causal`` hides the future
    (GPT-2); ``attn_bias``, broadcastable to the scores (B, N, T, S), is added to them before the
    softmax (BERT's padding mask (B, 1, 1, T); GPT-2's causal and padding mask (B, 1, T, S)).
    ``cache`` (a ``LayerCache``) holds the keys and values of earlier tokens: this call's are
    appended to it and the queries attend over all S of them.
    """

    def __init__(self, dim: int, num_heads: int, *, dropout: float, attention_dropout: float):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)  # fused: output rows q | k | v
        self.out = nn.Linear(dim, dim)
        self.resid_drop = nn.Dropout(dropout)
        self.num_heads, self.attention_dropout = num_heads, attention_dropout

    def forward(
        self, x: torch.Tensor, *, is_causal: bool = False, attn_bias: torch.Tensor | None = None, cache: LayerCache | None = None
    ) -> torch.Tensor:
        B, T, C = x.shape
        # theory: multi-head-attention
        q, k, v = (
            t.view(B, T, self.num_heads, C // self.num_heads).transpose(1, 2) for t in self.qkv(x).split(C, dim=-1)
        )  # (B, N, T, H), heads contiguous
        if cache is not None:
            k, v = cache.update(k, v)  # (B, N, S, H): earlier tokens' keys and values, then these
        # theory: scaled-dot-product-attention
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_bias, is_causal=is_causal, dropout_p=self.attention_dropout if self.training else 0.0
        )
        return self.resid_drop(self.out(y.transpose(1, 2).reshape(B, T, C)))  # (B, T, C)


class MLP(nn.Module):
    """Position-wise feed-forward: fc -> GELU -> out -> dropout. ``approximate`` is torch's GELU
    flavour, always passed: "tanh" (GPT-2's "gelu_new") or "none" (the exact erf GELU of BERT
    and ViT)."""

    def __init__(self, dim: int, hidden: int, *, approximate: str, dropout: float):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ZooError(f'MLP approximate={approximate!r}: expected "tanh" (GPT-2) or "none" (exact GELU)')
        self.fc = nn.Linear(dim, hidden)
        self.out = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.fc(x), approximate=self.approximate)  # (B, T, F)  # theory: gelu
        return self.drop(self.out(h))  # (B, T, C)


class Block(nn.Module):
    """Pre-LN transformer block (GPT-2, ViT): x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(
        self, dim: int, num_heads: int, mlp_dim: int, *, layer_norm_eps: float, approximate: str, dropout: float, attention_dropout: float
    ):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.attn = Attention(dim, num_heads, dropout=dropout, attention_dropout=attention_dropout)
        self.ln2 = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.mlp = MLP(dim, mlp_dim, approximate=approximate, dropout=dropout)

    def forward(
        self, x: torch.Tensor, *, is_causal: bool = False, attn_bias: torch.Tensor | None = None, cache: LayerCache | None = None
    ) -> torch.Tensor:
        # theory: pre-ln-vs-post-ln
        x = x + self.attn(self.ln1(x), is_causal=is_causal, attn_bias=attn_bias, cache=cache)  # theory: residual-connections
        x = x + self.mlp(self.ln2(x))
        return x  # (B, T, C)
