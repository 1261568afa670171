"""Vision Transformer in Haiku: patches -> pre-LN transformer encoder -> head on [CLS].

Paper: Dosovitskiy et al., 2021, "An Image is Worth 16x16 Words: Transformers for Image
Recognition at Scale".

Args (``ViTConfig``): image_size, patch_size, num_channels, hidden_size, num_layers, num_heads,
mlp_dim, num_classes, layer_norm_eps, dropout, attention_dropout, gelu, remat,
scan_layers (the blocks as one ``jax.lax.scan``, ``layers.run_blocks``).
``transform(config, dtype="bfloat16")`` runs activations and matmuls in bfloat16 while the
parameters stay float32. ``is_training=True`` turns dropout on and needs an rng key in ``apply``;
``interpolate_pos_encoding=True`` runs images of another size, the patch position embeddings
resized bicubically to the new grid (transformers' scheme). Images are NHWC.

Module paths map onto dlzoo's canonical names ("vit/~/blocks_0/~/attn/~/qkv" + "kernel" ->
"blocks.0.attn.qkv.kernel"; the root's own "cls_token" -> "cls_token", see
``layers.canonical_name``). Example::

    import jax, jax.numpy as jnp
    from dlzoo.zoo.configs import get_config
    from dlzoo.zoo.haiku.vit import transform

    model = transform(get_config("vit", "tiny"))
    images = jnp.zeros((2, 32, 32, 3))
    params, state = model.init(jax.random.key(0), images)
    out, _ = jax.jit(model.apply)(params, state, None, images)
    out["logits"]                                                 # (2, 10)
    larger, _ = model.apply(params, state, None, jnp.zeros((2, 48, 64, 3)), interpolate_pos_encoding=True)
"""

from __future__ import annotations

from functools import partial

import haiku as hk
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..configs import ViTConfig, ZooError, bicubic_resize_matrix
from .layers import Block, Conv2D, Dense, LayerNorm, dropout, run_blocks, transform_model, truncated_normal

_INIT = truncated_normal(0.02)  # theory: initialization


class ViT(hk.Module):
    def __init__(self, config: ViTConfig, *, name: str = "vit"):
        super().__init__(name=name)
        self.config = config
        d, p = config.hidden_size, config.patch_size
        # A conv whose stride is its size cuts the image into patches and projects each one.
        # theory: patch-embedding
        self.patch_embed = Conv2D(d, p, stride=p, use_bias=True, init=_INIT, name="patch_embed")
        # one factory: the blocks are identical, which scan_layers relies on (layers.run_blocks)
        self.make_block = partial(
            Block,
            d,
            config.num_heads,
            config.mlp_dim,
            layer_norm_eps=config.layer_norm_eps,
            approximate=config.gelu == "tanh",  # published ViTs: exact (erf)
            dropout=config.dropout,
            attention_dropout=config.attention_dropout,
            init=_INIT,
            out_init=_INIT,
        )
        self.blocks = [self.make_block(name=f"blocks_{i}") for i in range(config.num_layers)]
        self.ln_f = LayerNorm(eps=config.layer_norm_eps, name="ln_f")  # theory: layer-norm
        self.head = Dense(config.num_classes, init=_INIT, name="head")

    def position_embeddings(self, pos_embed: Float[Array, "1 T D"], h: int, w: int) -> Float[Array, "1 T2 D"]:
        """Position embeddings (1, 1 + h*w, D) for a grid of h x w patches: the learned table at
        the training grid, else its patch part resized bicubically exactly as torch's
        F.interpolate(mode="bicubic", align_corners=False) (transformers'
        ``interpolate_pos_encoding``), the [CLS] position kept as is."""
        n = self.config.image_size // self.config.patch_size
        if (h, w) == (n, n):
            return pos_embed
        rows = jnp.asarray(bicubic_resize_matrix(n, h), jnp.float32)  # (h, n)
        cols = jnp.asarray(bicubic_resize_matrix(n, w), jnp.float32)  # (w, n)
        grid = pos_embed[0, 1:].reshape(n, n, -1)  # (n, n, D)
        grid = jnp.einsum("hi,ijd,wj->hwd", rows, grid, cols, precision=jax.lax.Precision.HIGHEST)  # (h, w, D)
        return jnp.concatenate([pos_embed[:, :1], grid.reshape(1, h * w, -1)], axis=1)

    def forward_features(
        self, pixel_values: Float[Array, "B H W C_in"], *, is_training: bool = False, interpolate_pos_encoding: bool = False
    ) -> Float[Array, "B T D"]:
        """``pixel_values`` (B, H, W, C_in) -> hidden states (B, 1 + N, D) after ln_f."""
        d, size = self.config.hidden_size, self.config.image_size
        if not interpolate_pos_encoding and tuple(pixel_values.shape[1:3]) != (size, size):
            raise ZooError(
                f"ViT expects images of {size}x{size}, got {list(pixel_values.shape)}; pass "
                "interpolate_pos_encoding=True to run other sizes"
            )
        cls_token = hk.get_parameter("cls_token", (1, 1, d), init=_INIT)
        # theory: position-embeddings
        pos_embed = hk.get_parameter("pos_embed", (1, self.config.num_patches + 1, d), init=_INIT)
        x = self.patch_embed(pixel_values)  # (B, H/P, W/P, D)
        pos = self.position_embeddings(pos_embed, x.shape[1], x.shape[2])  # (1, 1 + N, D)
        x = x.reshape(x.shape[0], -1, d)  # (B, N, D), patches in row-major order
        cls = jnp.broadcast_to(cls_token, (x.shape[0], 1, d))  # (B, 1, D)
        x = jnp.concatenate([cls, x], axis=1) + pos.astype(x.dtype)  # (B, 1 + N, D)
        x = dropout(x, self.config.dropout, is_training)  # theory: dropout
        # Bidirectional (is_causal=False): every patch attends to every other patch and to [CLS].
        x = run_blocks(self.blocks, self.make_block, x, remat=self.config.remat, scan=self.config.scan_layers, is_training=is_training)
        return self.ln_f(x)

    def forward_head(self, x: Float[Array, "B T D"]) -> Float[Array, "B classes"]:
        # theory: cls-pooling
        return self.head(x[:, 0])  # (B, num_classes)

    def __call__(
        self, pixel_values: Float[Array, "B H W C_in"], *, is_training: bool = False, interpolate_pos_encoding: bool = False
    ) -> dict[str, Array]:
        """``pixel_values`` (B, H, W, C_in) -> {"logits": (B, num_classes)}."""
        return {
            "logits": self.forward_head(
                self.forward_features(pixel_values, is_training=is_training, interpolate_pos_encoding=interpolate_pos_encoding)
            )
        }


def transform(config: ViTConfig, *, dtype: str = "float32") -> hk.TransformedWithState:
    """ViT as Haiku's pure pair (``layers.transform_model``) on NHWC images: ``apply(params,
    state, rng, pixel_values)`` -> ({"logits": (B, num_classes)} float32, state); the state is
    empty, ``rng`` is needed only for dropout (``is_training=True``)."""
    return transform_model(ViT, config, dtype=dtype)
