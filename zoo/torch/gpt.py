"""GPT-2 in PyTorch: a pre-LN causal transformer decoder with an LM head tied to the token
embedding (or its own, ``tie_word_embeddings=False``), a key/value cache and ``generate``.

Paper: Radford et al., 2019, "Language Models are Unsupervised Multitask Learners".

Args (``GPTConfig``): vocab_size, context_length, hidden_size, num_layers, num_heads, mlp_dim,
layer_norm_eps, dropout (embedding and residual), attention_dropout, tie_word_embeddings, gelu, remat.
``generator`` (keyword) draws the initial weights; torch's global random state is neither read
nor changed by it. Dropout follows ``model.train()`` / ``model.eval()``, as everywhere in torch.

``attention_mask`` (B, T), 1 for real tokens and 0 for padding, hides padded keys and sets the
position ids (transformers' GPT-2 convention: ``cumsum(mask) - 1``, 0 on padding), so a
left-padded prompt gives the same logits on its real tokens as the unpadded prompt.

Example::

    import torch
    from dlzoo.zoo.configs import get_config
    from dlzoo.zoo.torch.gpt import GPT

    model = GPT(get_config("gpt", "tiny"), generator=torch.Generator().manual_seed(0)).eval()
    ids = torch.zeros(2, 16, dtype=torch.long)
    logits = model(ids)["logits"]                                         # (2, 16, 256)
    mask = torch.ones(2, 16, dtype=torch.long); mask[1, :4] = 0           # row 1 left-padded
    out = model.generate(ids, mask, max_new_tokens=8)                     # (2, 24), greedy
    out = model.generate(ids, mask, max_new_tokens=8, temperature=0.8, top_p=0.9,
                         generator=torch.Generator().manual_seed(1))      # sampled
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..configs import GPTConfig, ZooError, check_generation
from .layers import Block, LayerCache, compute_dtype, init_linear_, normal_, run_block


class KVCache:
    """Every layer's keys and values for the tokens seen so far, and their attention mask
    ``mask`` (B, S). A forward call with ``cache=`` appends its tokens; start with an empty one."""

    def __init__(self, num_layers: int):
        self.layers = [LayerCache() for _ in range(num_layers)]
        self.mask: torch.Tensor | None = None  # (B, S): 1 = real token, 0 = padding

    @property
    def length(self) -> int:
        return 0 if self.mask is None else self.mask.shape[1]


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """(B, S) mask -> (B, S) positions: real tokens count from 0, padding sits at 0."""
    # theory: position-embeddings
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)


def attention_bias(mask: torch.Tensor, num_queries: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, S) key mask -> additive bias (B, 1, T, S) for the last T = ``num_queries`` tokens:
    0 where a query may attend (an earlier or the same token, not padding), else the dtype's
    most negative finite value (-inf would turn a fully masked padding row into NaN)."""
    S = mask.shape[1]
    # theory: causal-masking
    causal = torch.ones(num_queries, S, dtype=torch.bool, device=mask.device).tril(S - num_queries)  # (T, S)
    allowed = causal & mask[:, None, None, :].bool()  # (B, 1, T, S)  # theory: attention-mask
    return torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill(~allowed, torch.finfo(dtype).min)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig, *, generator: torch.Generator | None = None):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        # theory: position-embeddings
        self.wpe = nn.Embedding(config.context_length, config.hidden_size)
        self.drop = nn.Dropout(config.dropout)  # theory: dropout
        self.blocks = nn.ModuleList(
            Block(
                config.hidden_size,
                config.num_heads,
                config.mlp_dim,
                layer_norm_eps=config.layer_norm_eps,
                approximate="tanh" if config.gelu == "tanh" else "none",  # GPT-2's "gelu_new" is the tanh form
                dropout=config.dropout,
                attention_dropout=config.attention_dropout,
            )
            for _ in range(config.num_layers)
        )
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # theory: layer-norm
        # theory: weight-tying
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
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
        if self.lm_head is not None:
            init_linear_(self.lm_head, std, generator, truncated=False)

    def forward_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> torch.Tensor:
        """``input_ids`` (B, T) -> final hidden states (B, T, C), after ln_f. With ``cache``,
        the T tokens follow the cached ones and are appended to the cache."""
        B, T = input_ids.shape
        past = 0 if cache is None else cache.length
        if past + T > self.config.context_length:
            raise ZooError(
                f"GPT input reaches position {past + T}, more than context_length {self.config.context_length}; truncate the sequence"
            )
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask  # (B, T)
        if cache is not None:
            mask = mask if cache.mask is None else torch.cat([cache.mask, mask], dim=1)  # (B, S)
            cache.mask = mask
        attn_bias = None  # no padding, no cache: the fused kernel's own causal mask
        if attention_mask is not None or cache is not None:
            attn_bias = attention_bias(mask, T, compute_dtype(self.wte.weight))  # (B, 1, T, S)
        x = self.drop(self.wte(input_ids) + self.wpe(position_ids(mask)[:, past:]))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = run_block(
                block,
                x,
                remat=self.config.remat and cache is None,
                is_causal=attn_bias is None,
                attn_bias=attn_bias,  # theory: causal-masking
                cache=None if cache is None else cache.layers[i],
            )
        return self.ln_f(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        if self.lm_head is not None:
            return self.lm_head(x)  # (B, T, V)
        # theory: weight-tying
        return x @ self.wte.weight.T  # (B, T, V)  # theory: next-token-prediction

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> dict[str, torch.Tensor]:
        """``input_ids`` (B, T) int, ``attention_mask`` (B, T) or None -> {"logits": (B, T, V)}."""
        return {"logits": self.forward_head(self.forward_features(input_ids, attention_mask, cache))}

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Prompts ``input_ids`` (B, T), left-padded where ``attention_mask`` (B, T) is 0, ->
        (B, T + max_new_tokens): the prompts followed by the new tokens. ``temperature=0`` is
        greedy; otherwise tokens are drawn (with ``generator``) from the softmax of the logits
        divided by ``temperature``, then restricted to the ``top_k`` most likely and to the
        smallest set whose mass reaches ``top_p``. One forward pass per token, over the new
        token only: every layer's keys and values are kept in a ``KVCache``. Call ``eval()``
        first unless dropout is wanted."""
        check_generation(
            self.config,
            input_ids.shape[1],
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            None if attention_mask is None else attention_mask[:, -1],
        )
        cache = KVCache(len(self.blocks))  # theory: kv-cache
        logits = self(input_ids, attention_mask, cache=cache)["logits"][:, -1]  # (B, V): left padding ends real
        new = []
        for step in range(max_new_tokens):
            token = next_token(logits.float(), temperature, top_k, top_p, generator)  # (B,)
            new.append(token)
            if step + 1 < max_new_tokens:
                logits = self(token[:, None], torch.ones_like(token[:, None]), cache=cache)["logits"][:, -1]
        return torch.cat([input_ids, torch.stack(new, dim=1).to(input_ids.dtype)], dim=1)


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """(B, V) logits -> (B, V): divided by ``temperature`` (> 0), then every token outside the
    ``top_k`` largest (ties with the k-th kept) and outside the smallest most-likely set whose
    probability reaches ``top_p`` (at least one token) set to -inf. transformers' order and rules
    (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)."""
    # theory: sampling-strategies
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p is not None:
        ascending, order = torch.sort(logits, dim=-1)  # (B, V)
        mass = ascending.softmax(-1).cumsum(-1)  # mass of this token and every less likely one
        drop = mass <= 1 - top_p
        drop[:, -1] = False  # the most likely token always stays
        logits = logits.masked_fill(drop.scatter(1, order, drop), -math.inf)
    return logits


def next_token(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None, generator: torch.Generator | None
) -> torch.Tensor:
    """(B, V) float32 logits -> (B,) token ids: argmax when ``temperature == 0``, else a draw."""
    if temperature == 0.0:
        return logits.argmax(-1)
    probs = filter_logits(logits, temperature, top_k, top_p).softmax(-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
