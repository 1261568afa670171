"""Vision Transformer in PyTorch: patches embedded by a strided conv, a [CLS] token and learned
position embeddings, a pre-LN transformer encoder, and a linear head on the [CLS] token.

Paper: Dosovitskiy et al., 2021, "An Image is Worth 16x16 Words: Transformers for Image
Recognition at Scale".

Args (``ViTConfig``): image_size, patch_size, num_channels, hidden_size, num_layers, num_heads,
mlp_dim, num_classes, layer_norm_eps, dropout (embedding and residual), attention_dropout, gelu, remat.
``generator`` (keyword) draws the initial weights without touching torch's global random state.
Images are NCHW, torch's layout. Dropout follows ``model.train()`` / ``model.eval()``.
``interpolate_pos_encoding=True`` (call keyword) runs images of another size: the position
embeddings of the patches are resized bicubically to the new patch grid, as transformers does.

Example::

    import torch
    from dlzoo.zoo.configs import get_config
    from dlzoo.zoo.torch.vit import ViT

    model = ViT(get_config("vit", "tiny"), generator=torch.Generator().manual_seed(0)).eval()
    images = torch.randn(2, 3, 32, 32)
    logits = model(images)["logits"]                                      # (2, 10)
    larger = model(torch.randn(2, 3, 48, 64), interpolate_pos_encoding=True)["logits"]  # (2, 10)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import ViTConfig, ZooError
from .layers import Block, init_linear_, run_block, truncated_normal_


class ViT(nn.Module):
    def __init__(self, config: ViTConfig, *, generator: torch.Generator | None = None):
        super().__init__()
        self.config = config
        d = config.hidden_size
        # A conv whose stride is its size cuts the image into patches and projects each one.
        # theory: patch-embedding
        self.patch_embed = nn.Conv2d(config.num_channels, d, config.patch_size, stride=config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        # theory: position-embeddings
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_patches + 1, d))
        self.drop = nn.Dropout(config.dropout)  # theory: dropout
        self.blocks = nn.ModuleList(
            Block(
                d,
                config.num_heads,
                config.mlp_dim,
                layer_norm_eps=config.layer_norm_eps,
                approximate="tanh" if config.gelu == "tanh" else "none",  # published ViTs: exact (erf)
                dropout=config.dropout,
                attention_dropout=config.attention_dropout,
            )
            for _ in range(config.num_layers)
        )
        self.ln_f = nn.LayerNorm(d, eps=config.layer_norm_eps)  # theory: layer-norm
        self.head = nn.Linear(d, config.num_classes)
        self.init_weights(generator)

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Truncated normal(0.02) for the patch conv, dense kernels, [CLS] and position
        embeddings; zero biases; layer norms keep torch's scale 1, bias 0."""
        # theory: initialization
        for module in self.modules():
            if isinstance(module, nn.Linear):
                init_linear_(module, 0.02, generator, truncated=True)
        truncated_normal_(self.patch_embed.weight, 0.02, generator)
        nn.init.zeros_(self.patch_embed.bias)
        truncated_normal_(self.cls_token, 0.02, generator)
        truncated_normal_(self.pos_embed, 0.02, generator)

    def position_embeddings(self, h: int, w: int) -> torch.Tensor:
        """Position embeddings (1, 1 + h*w, C) for a grid of h x w patches: the learned table at
        the training grid, else its patch part resized bicubically (transformers'
        ``interpolate_pos_encoding``: F.interpolate to size (h, w), align_corners=False), the
        [CLS] position kept as is."""
        n = self.config.image_size // self.config.patch_size
        if (h, w) == (n, n):
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]  # (1, 1, C), (1, n*n, C)
        patch_pos = patch_pos.reshape(1, n, n, -1).permute(0, 3, 1, 2)  # (1, C, n, n)
        patch_pos = F.interpolate(patch_pos, size=(h, w), mode="bicubic", align_corners=False)  # (1, C, h, w)
        return torch.cat([cls_pos, patch_pos.flatten(2).transpose(1, 2)], dim=1)  # (1, 1 + h*w, C)

    def forward_features(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """``pixel_values`` (B, C_in, H, W) -> hidden states (B, 1 + N, C) after ln_f."""
        size = self.config.image_size
        if not interpolate_pos_encoding and tuple(pixel_values.shape[2:]) != (size, size):
            raise ZooError(
                f"ViT expects images of {size}x{size}, got {list(pixel_values.shape)}; pass "
                "interpolate_pos_encoding=True to run other sizes"
            )
        x = self.patch_embed(pixel_values)  # (B, C, H/P, W/P)
        pos = self.position_embeddings(x.shape[2], x.shape[3])  # (1, 1 + N, C)
        x = x.flatten(2).transpose(1, 2)  # (B, N, C), patches in row-major order
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, C)
        x = self.drop(torch.cat([cls, x], dim=1) + pos)  # (B, 1 + N, C)
        for block in self.blocks:
            x = run_block(block, x, remat=self.config.remat)  # bidirectional: every patch attends to every other patch and to [CLS]
        return self.ln_f(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        # theory: cls-pooling
        return self.head(x[:, 0])  # (B, num_classes)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> dict[str, torch.Tensor]:
        """``pixel_values`` (B, C_in, H, W) -> {"logits": (B, num_classes)}."""
        return {"logits": self.forward_head(self.forward_features(pixel_values, interpolate_pos_encoding))}
