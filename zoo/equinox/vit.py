"""Vision Transformer in Equinox: patch embedding, [CLS] token, learned position embeddings,
pre-LN transformer encoder, classification head on the [CLS] token.

Paper: Dosovitskiy et al., 2021, "An Image is Worth 16x16 Words: Transformers for Image
Recognition at Scale".

Args (``ViTConfig``): image_size, patch_size, num_channels, hidden_size, num_layers, num_heads,
mlp_dim, num_classes, layer_norm_eps, dropout, attention_dropout, gelu, remat, scan_layers (the blocks
as one ``jax.lax.scan``, ``layers.run_blocks``). ``dtype="bfloat16"`` runs
activations and matmuls in bfloat16; parameters stay float32.

The model maps ONE channels-last image (H, W, C), as Equinox layers do; ``jax.vmap`` it over
the batch. ``interpolate_pos_encoding=True`` runs images of another size, the patch position
embeddings resized bicubically to the new grid (transformers' scheme). Example::

    import jax, jax.numpy as jnp
    from dlzoo.zoo.configs import get_config
    from dlzoo.zoo.equinox.vit import ViT

    model = ViT(get_config("vit", "tiny"), key=jax.random.key(0))
    images = jnp.zeros((2, 32, 32, 3))                                    # NHWC
    logits = jax.vmap(lambda x: model(x)["logits"])(images)               # (2, 10)
    larger = model(jnp.zeros((48, 64, 3)), interpolate_pos_encoding=True)["logits"]  # (10,)
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ..configs import ViTConfig, ZooError, bicubic_resize_matrix
from .layers import Block, Conv2d, Dense, Dropout, LayerNorm, cast_floating, run_blocks, split_key, truncated_normal

_INIT = truncated_normal(0.02)  # theory: initialization


class ViT(eqx.Module):
    patch_embed: Conv2d
    cls_token: Float[Array, "1 1 D"]
    pos_embed: Float[Array, "1 P D"]
    drop: Dropout
    blocks: list[Block]
    ln_f: LayerNorm
    head: Dense
    config: ViTConfig = eqx.field(static=True)
    dtype: str = eqx.field(static=True)

    def __init__(self, config: ViTConfig, *, key: PRNGKeyArray, dtype: str = "float32"):
        keys = jax.random.split(key, config.num_layers + 4)
        d, p = config.hidden_size, config.patch_size
        # theory: patch-embedding
        self.patch_embed = Conv2d(config.num_channels, d, p, stride=p, use_bias=True, init=_INIT, key=keys[0])
        self.cls_token = _INIT(keys[1], (1, 1, d))
        self.pos_embed = _INIT(keys[2], (1, config.num_patches + 1, d))  # theory: position-embeddings
        self.drop = Dropout(config.dropout)  # theory: dropout
        # theory: pre-ln-vs-post-ln
        self.blocks = [
            Block(
                d,
                config.num_heads,
                config.mlp_dim,
                eps=config.layer_norm_eps,
                # Exact (erf) GELU, as in the published checkpoints.
                approximate=config.gelu == "tanh",  # theory: gelu
                dropout=config.dropout,
                attention_dropout=config.attention_dropout,
                init=_INIT,
                key=k,
            )
            for k in keys[4:]
        ]
        self.ln_f = LayerNorm(d, eps=config.layer_norm_eps)  # theory: layer-norm
        self.head = Dense(d, config.num_classes, init=_INIT, key=keys[3])
        self.config, self.dtype = config, dtype

    def position_embeddings(self, h: int, w: int) -> Float[Array, "P D"]:
        """Position embeddings (1 + h*w, D) for a grid of h x w patches: the learned table at the
        training grid, else its patch part resized bicubically exactly as torch's
        F.interpolate(mode="bicubic", align_corners=False) (transformers'
        ``interpolate_pos_encoding``), the [CLS] position kept as is."""
        n = self.config.image_size // self.config.patch_size
        table = self.pos_embed[0]  # (1 + n*n, D)
        if (h, w) == (n, n):
            return table
        rows = jnp.asarray(bicubic_resize_matrix(n, h), jnp.float32)  # (h, n)
        cols = jnp.asarray(bicubic_resize_matrix(n, w), jnp.float32)  # (w, n)
        grid = table[1:].reshape(n, n, -1)  # (n, n, D)
        grid = jnp.einsum("hi,ijd,wj->hwd", rows, grid.astype(jnp.float32), cols, precision=jax.lax.Precision.HIGHEST)  # (h, w, D)
        return jnp.concatenate([table[:1], grid.reshape(h * w, -1).astype(table.dtype)])

    def forward_features(
        self,
        pixel_values: Float[Array, "H W C"],
        *,
        key: PRNGKeyArray | None = None,
        inference: bool = True,
        interpolate_pos_encoding: bool = False,
    ) -> Float[Array, "P D"]:
        size = self.config.image_size
        if not interpolate_pos_encoding and tuple(pixel_values.shape[:2]) != (size, size):
            raise ZooError(
                f"ViT expects images of {size}x{size}, got {list(pixel_values.shape)}; pass "
                "interpolate_pos_encoding=True to run other sizes"
            )
        keys = split_key(key, len(self.blocks) + 1)
        x = self.patch_embed(pixel_values)  # (H/p, W/p, D)
        pos = self.position_embeddings(x.shape[0], x.shape[1])  # (N + 1, D)
        x = x.reshape(-1, x.shape[-1])  # (N, D), patches in row-major order
        x = jnp.concatenate([self.cls_token[0], x]) + pos  # (N + 1, D)
        x = self.drop(x, key=keys[0], inference=inference)
        x = run_blocks(self.blocks, x, remat=self.config.remat, scan=self.config.scan_layers, keys=keys[1:], inference=inference)
        return self.ln_f(x)

    def forward_head(self, x: Float[Array, "P D"]) -> Float[Array, " classes"]:
        return self.head(x[0])  # theory: cls-pooling

    def __call__(
        self,
        pixel_values: Float[Array, "H W C"],
        *,
        key: PRNGKeyArray | None = None,
        inference: bool = True,
        interpolate_pos_encoding: bool = False,
    ) -> dict[str, Float[Array, "..."]]:
        """``pixel_values`` (H, W, C) -> {"logits": (num_classes,)} float32."""
        # theory: mixed-precision
        model = cast_floating(self, self.dtype)
        x = model.forward_features(
            pixel_values.astype(self.dtype), key=key, inference=inference, interpolate_pos_encoding=interpolate_pos_encoding
        )
        return {"logits": model.forward_head(x).astype(jnp.float32)}
