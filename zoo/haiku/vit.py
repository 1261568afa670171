"""Vision Transformer in Haiku: patches -> pre-LN transformer encoder -> head on [CLS].

Paper: Dosovitskiy et al., 2021, "An Image is Worth 16x16 Words: Transformers for Image
Recognition at Scale".

Args (``ViTConfig``): image_size, patch_size, num_channels, hidden_size, num_layers, num_heads,
mlp_dim, num_classes, layer_norm_eps, dropout, attention_dropout. ``dtype="bfloat16"`` runs
activations and matmuls in bfloat16 while the parameters stay float32. ``is_training=True``
turns dropout on and needs an rng key in ``apply``. Images are NHWC.

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
"""

from __future__ import annotations

import haiku as hk
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..configs import ViTConfig
from .layers import Conv2D, Dense, LayerNorm, attention, cast_params, dropout, truncated_normal

_INIT = truncated_normal(0.02)  # theory: initialization


class Attention(hk.Module):
    def __init__(self, config: ViTConfig, *, name: str = "attn"):
        super().__init__(name=name)
        d = config.hidden_size
        self.qkv = Dense(3 * d, init=_INIT, name="qkv")  # fused: columns q | k | v
        self.out = Dense(d, init=_INIT, name="out")
        self.num_heads = config.num_heads
        self.attention_dropout, self.dropout = config.attention_dropout, config.dropout

    def __call__(self, x: Float[Array, "B T D"], *, is_training: bool) -> Float[Array, "B T D"]:
        B, T, D = x.shape
        # theory: multi-head-attention
        q, k, v = (t.reshape(B, T, self.num_heads, D // self.num_heads)
                   for t in jnp.split(self.qkv(x), 3, axis=-1))  # (B, T, N, H), heads contiguous
        # Bidirectional: every patch attends to every other patch and to [CLS].
        # theory: scaled-dot-product-attention
        y = attention(q, k, v, dropout_rate=self.attention_dropout, is_training=is_training)
        return dropout(self.out(y.reshape(B, T, D)), self.dropout, is_training)


class MLP(hk.Module):
    def __init__(self, config: ViTConfig, *, name: str = "mlp"):
        super().__init__(name=name)
        self.fc = Dense(config.mlp_dim, init=_INIT, name="fc")
        self.out = Dense(config.hidden_size, init=_INIT, name="out")
        self.dropout = config.dropout

    def __call__(self, x: Float[Array, "B T D"], *, is_training: bool) -> Float[Array, "B T D"]:
        # ViT (like BERT) uses the exact (erf) GELU.
        h = jax.nn.gelu(self.fc(x), approximate=False)  # (B, T, F)  # theory: gelu
        return dropout(self.out(h), self.dropout, is_training)


class Block(hk.Module):
    def __init__(self, config: ViTConfig, *, name: str):
        super().__init__(name=name)
        self.ln1 = LayerNorm(eps=config.layer_norm_eps, name="ln1")
        self.attn = Attention(config)
        self.ln2 = LayerNorm(eps=config.layer_norm_eps, name="ln2")
        self.mlp = MLP(config)

    def __call__(self, x: Float[Array, "B T D"], *, is_training: bool) -> Float[Array, "B T D"]:
        # theory: pre-ln-vs-post-ln
        x = x + self.attn(self.ln1(x), is_training=is_training)  # theory: residual-connections
        x = x + self.mlp(self.ln2(x), is_training=is_training)
        return x


class ViT(hk.Module):
    def __init__(self, config: ViTConfig, *, dtype: str = "float32", name: str = "vit"):
        super().__init__(name=name)
        self.config, self.dtype = config, dtype
        d, p = config.hidden_size, config.patch_size
        # A conv whose stride is its size cuts the image into patches and projects each one.
        # theory: patch-embedding
        self.patch_embed = Conv2D(d, p, stride=p, use_bias=True, init=_INIT, name="patch_embed")
        self.blocks = [Block(config, name=f"blocks_{i}") for i in range(config.num_layers)]
        self.ln_f = LayerNorm(eps=config.layer_norm_eps, name="ln_f")  # theory: layer-norm
        self.head = Dense(config.num_classes, init=_INIT, name="head")

    def forward_features(self, pixel_values: Float[Array, "B H W C_in"], *,
                         is_training: bool = False) -> Float[Array, "B T D"]:
        """``pixel_values`` (B, H, W, C_in) -> hidden states (B, 1 + N, D) after ln_f."""
        d = self.config.hidden_size
        cls_token = hk.get_parameter("cls_token", (1, 1, d), init=_INIT)
        # theory: position-embeddings
        pos_embed = hk.get_parameter("pos_embed", (1, self.config.num_patches + 1, d), init=_INIT)
        x = self.patch_embed(pixel_values.astype(self.dtype))  # (B, H/P, W/P, D)
        x = x.reshape(x.shape[0], -1, d)  # (B, N, D), patches in row-major order
        cls = jnp.broadcast_to(cls_token, (x.shape[0], 1, d))  # (B, 1, D)
        x = jnp.concatenate([cls, x], axis=1) + pos_embed  # (B, 1 + N, D)
        x = dropout(x, self.config.dropout, is_training)  # theory: dropout
        for block in self.blocks:
            x = block(x, is_training=is_training)
        return self.ln_f(x)

    def forward_head(self, x: Float[Array, "B T D"]) -> Float[Array, "B classes"]:
        # theory: cls-pooling
        return self.head(x[:, 0])  # (B, num_classes)

    def __call__(self, pixel_values: Float[Array, "B H W C_in"], *, is_training: bool = False) -> dict[str, Array]:
        """``pixel_values`` (B, H, W, C_in) -> {"logits": (B, num_classes)} float32."""
        with cast_params(self.dtype):
            logits = self.forward_head(self.forward_features(pixel_values, is_training=is_training))
        return {"logits": logits.astype(jnp.float32)}


def transform(config: ViTConfig, *, dtype: str = "float32") -> hk.TransformedWithState:
    """ViT as Haiku's pure pair: ``init(rng, pixel_values)``, ``apply(params, state, rng,
    pixel_values, is_training=False)``; the state is empty (kept for one signature across models)."""
    def forward(pixel_values: Float[Array, "B H W C_in"], is_training: bool = False) -> dict[str, Array]:
        return ViT(config, dtype=dtype)(pixel_values, is_training=is_training)
    return hk.transform_with_state(forward)
