"""Vision Transformer in Flax NNX: patches embedded by a strided conv, a [CLS] token and learned
position embeddings, a pre-LN transformer encoder, and a linear head on the [CLS] token.

Paper: Dosovitskiy et al., 2021, "An Image is Worth 16x16 Words: Transformers for Image
Recognition at Scale".

Args (``ViTConfig``): image_size, patch_size, num_channels, hidden_size, num_layers, num_heads,
mlp_dim, num_classes, layer_norm_eps, dropout (embedding and residual), attention_dropout, gelu, remat,
scan_layers (the blocks as one ``jax.lax.scan``, ``layers.run_blocks``).
Keywords: ``rngs`` (``nnx.Rngs``) draws the initial weights; ``dtype`` is the compute dtype
(``jnp.bfloat16`` for mixed precision: parameters stay float32, logits are returned in float32).
Images are NHWC, JAX's layout. At call time ``train=True`` turns dropout on, drawing from the
``rngs`` passed to the call; ``interpolate_pos_encoding=True`` runs images of another size, the
patch position embeddings resized bicubically to the new grid (transformers' scheme).

Example::

    import jax
    import jax.numpy as jnp
    from flax import nnx
    from dlzoo.zoo.configs import get_config
    from dlzoo.zoo.flax.vit import ViT

    model = ViT(get_config("vit", "tiny"), rngs=nnx.Rngs(0))
    images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    logits = model(images)["logits"]                                      # (2, 10)
    larger = model(jnp.zeros((2, 48, 64, 3)), interpolate_pos_encoding=True)["logits"]  # (2, 10)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from ..configs import ViTConfig, ZooError, bicubic_resize_matrix
from .layers import Block, Dropout, layer_norm, run_blocks, truncated_normal

# theory: initialization
INIT = truncated_normal(0.02)  # patch conv, dense kernels, [CLS] and position embeddings; biases 0


class ViT(nnx.Module):
    def __init__(self, config: ViTConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config, self.dtype = config, dtype
        d, p = config.hidden_size, config.patch_size
        # A conv whose stride is its size cuts the image into patches and projects each one.
        # theory: patch-embedding
        self.patch_embed = nnx.Conv(
            config.num_channels, d, kernel_size=(p, p), strides=(p, p), padding=((0, 0), (0, 0)), kernel_init=INIT, dtype=dtype, rngs=rngs
        )
        self.cls_token = nnx.Param(INIT(rngs.params(), (1, 1, d), jnp.float32))
        # theory: position-embeddings
        self.pos_embed = nnx.Param(INIT(rngs.params(), (1, config.num_patches + 1, d), jnp.float32))
        self.drop = Dropout(config.dropout)  # theory: dropout
        self.blocks = nnx.List(
            [
                Block(
                    d,
                    config.num_heads,
                    config.mlp_dim,
                    layer_norm_eps=config.layer_norm_eps,
                    approximate=config.gelu == "tanh",  # published ViTs: exact (erf)
                    dropout=config.dropout,
                    attention_dropout=config.attention_dropout,
                    kernel_init=INIT,
                    out_init=INIT,
                    dtype=dtype,
                    rngs=rngs,
                )
                for _ in range(config.num_layers)
            ]
        )
        self.ln_f = layer_norm(d, config.layer_norm_eps, dtype=dtype, rngs=rngs)  # theory: layer-norm
        self.head = nnx.Linear(d, config.num_classes, kernel_init=INIT, dtype=dtype, rngs=rngs)

    def position_embeddings(self, h: int, w: int) -> Float[Array, "1 T C"]:
        """Position embeddings [1, 1 + h*w, C] for a grid of h x w patches: the learned table at
        the training grid, else its patch part resized bicubically exactly as torch's
        F.interpolate(mode="bicubic", align_corners=False) (transformers'
        ``interpolate_pos_encoding``), the [CLS] position kept as is."""
        n = self.config.image_size // self.config.patch_size
        table = self.pos_embed[...]  # [1, 1 + n*n, C]
        if (h, w) == (n, n):
            return table
        rows = jnp.asarray(bicubic_resize_matrix(n, h), jnp.float32)  # [h, n]
        cols = jnp.asarray(bicubic_resize_matrix(n, w), jnp.float32)  # [w, n]
        grid = table[0, 1:].reshape(n, n, -1)  # [n, n, C]
        grid = jnp.einsum("hi,ijc,wj->hwc", rows, grid, cols, precision=jax.lax.Precision.HIGHEST)  # [h, w, C]
        return jnp.concatenate([table[:, :1], grid.reshape(1, h * w, -1)], axis=1)

    def forward_features(
        self,
        pixel_values: Float[Array, "B H W C_in"],
        *,
        train: bool = False,
        rngs: nnx.Rngs | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> Float[Array, "B T C"]:
        """``pixel_values`` [B, H, W, C_in] -> hidden states [B, 1 + N, C] after ln_f."""
        size, channels = self.config.image_size, self.config.num_channels
        if pixel_values.shape[-1] != channels or (not interpolate_pos_encoding and tuple(pixel_values.shape[1:3]) != (size, size)):
            raise ZooError(
                f"ViT expects NHWC images [B, {size}, {size}, {channels}], got "
                f"{list(pixel_values.shape)}; pass interpolate_pos_encoding=True to run other sizes"
            )
        x = self.patch_embed(pixel_values.astype(self.dtype))  # [B, H/P, W/P, C]
        B, h, w, C = x.shape
        pos = self.position_embeddings(h, w)  # [1, 1 + N, C]
        x = x.reshape(B, h * w, C)  # [B, N, C], patches in row-major order
        cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (B, 1, C))  # [B, 1, C]
        x = jnp.concatenate([cls, x], axis=1) + pos.astype(x.dtype)  # [B, 1 + N, C]
        x = self.drop(x, deterministic=not train, rngs=rngs)
        # Bidirectional (not causal): every patch attends to every other patch and to [CLS].
        x = run_blocks(self.blocks, x, remat=self.config.remat, scan=self.config.scan_layers, train=train, rngs=rngs)
        return self.ln_f(x)

    def forward_head(self, x: Float[Array, "B T C"]) -> Float[Array, "B K"]:
        # theory: cls-pooling
        return self.head(x[:, 0])  # [B, num_classes]

    def __call__(
        self,
        pixel_values: Float[Array, "B H W C_in"],
        *,
        train: bool = False,
        rngs: nnx.Rngs | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> dict[str, Float[Array, "B K"]]:
        """``pixel_values`` [B, H, W, C_in] -> {"logits": [B, num_classes]} (float32)."""
        logits = self.forward_head(
            self.forward_features(pixel_values, train=train, rngs=rngs, interpolate_pos_encoding=interpolate_pos_encoding)
        )
        return {"logits": logits.astype(jnp.float32)}
