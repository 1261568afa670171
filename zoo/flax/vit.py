"""Vision Transformer in Flax NNX: patch embedding, [CLS] token, pre-LN encoder, linear head.

Paper: Dosovitskiy et al., 2021, "An Image is Worth 16x16 Words: Transformers for Image
Recognition at Scale". Numerically identical to transformers' ViTForImageClassification (exact
GELU, layer-norm epsilon from the config, head on the final [CLS] token).

Args:
    config: a ``ViTConfig`` (``get_config("vit", "B/16")`` is ViT-B/16).
    dtype: compute dtype of activations and matmuls (``jnp.bfloat16`` for mixed precision);
        parameters stay float32 and the logits are returned in float32.
    rngs: ``nnx.Rngs`` for parameter initialisation.

Call: ``model(pixel_values, train=False, rngs=None) -> {"logits": [B, num_classes]}`` with
``pixel_values`` NHWC [B, H, W, C].

Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from dlzoo.zoo.configs import get_config
    >>> from dlzoo.zoo.flax.vit import ViT
    >>> model = ViT(get_config("vit", "tiny"), rngs=nnx.Rngs(0))
    >>> model(jnp.zeros((2, 32, 32, 3)))["logits"].shape
    (2, 10)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from ..configs import ViTConfig, ZooError
from .layers import attention

# theory: initialization
INIT = nnx.initializers.truncated_normal(0.02)


def _layer_norm(config: ViTConfig, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps, use_fast_variance=False,
                         dtype=dtype, rngs=rngs)


class SelfAttention(nnx.Module):
    def __init__(self, config: ViTConfig, *, dtype, rngs: nnx.Rngs):
        d = config.hidden_size
        # theory: multi-head-attention
        self.qkv = nnx.Linear(d, 3 * d, kernel_init=INIT, dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(d, d, kernel_init=INIT, dtype=dtype, rngs=rngs)
        self.resid_dropout = nnx.Dropout(config.dropout)
        self.num_heads = config.num_heads
        self.attention_dropout = config.attention_dropout

    def __call__(self, x: Float[Array, "B T D"], *, train: bool,
                 rngs: nnx.Rngs | None) -> Float[Array, "B T D"]:
        B, T, D = x.shape
        q, k, v = jnp.split(self.qkv(x), 3, axis=-1)
        # Heads are contiguous column blocks of q, k and v: [B, T, D] -> [B, T, N, H].
        q, k, v = (t.reshape(B, T, self.num_heads, D // self.num_heads) for t in (q, k, v))
        y = attention(q, k, v, dropout_rate=self.attention_dropout if train else 0.0, rngs=rngs)
        y = y.reshape(B, T, D)
        return self.resid_dropout(self.out(y), deterministic=not train, rngs=rngs)


class MLP(nnx.Module):
    def __init__(self, config: ViTConfig, *, dtype, rngs: nnx.Rngs):
        self.fc = nnx.Linear(config.hidden_size, config.mlp_dim, kernel_init=INIT, dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(config.mlp_dim, config.hidden_size, kernel_init=INIT, dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(config.dropout)

    def __call__(self, x: Float[Array, "B T D"], *, train: bool,
                 rngs: nnx.Rngs | None) -> Float[Array, "B T D"]:
        # HF/google ViT uses the exact erf GELU; jax's default is the tanh approximation.
        x = jax.nn.gelu(self.fc(x), approximate=False)  # theory: gelu
        return self.dropout(self.out(x), deterministic=not train, rngs=rngs)


class Block(nnx.Module):
    def __init__(self, config: ViTConfig, *, dtype, rngs: nnx.Rngs):
        self.ln1 = _layer_norm(config, dtype, rngs)
        self.attn = SelfAttention(config, dtype=dtype, rngs=rngs)
        self.ln2 = _layer_norm(config, dtype, rngs)
        self.mlp = MLP(config, dtype=dtype, rngs=rngs)

    def __call__(self, x: Float[Array, "B T D"], *, train: bool,
                 rngs: nnx.Rngs | None) -> Float[Array, "B T D"]:
        # theory: pre-ln-vs-post-ln
        x = x + self.attn(self.ln1(x), train=train, rngs=rngs)  # theory: residual-connections
        x = x + self.mlp(self.ln2(x), train=train, rngs=rngs)
        return x


class ViT(nnx.Module):
    def __init__(self, config: ViTConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        d, p = config.hidden_size, config.patch_size
        self.config, self.dtype = config, dtype
        # theory: patch-embedding
        # A conv whose stride equals its kernel is a linear map of each non-overlapping patch.
        self.patch_embed = nnx.Conv(config.num_channels, d, kernel_size=(p, p), strides=(p, p),
                                    padding="VALID", kernel_init=INIT, dtype=dtype, rngs=rngs)
        self.cls_token = nnx.Param(INIT(rngs.params(), (1, 1, d), jnp.float32))
        # theory: position-embeddings
        self.pos_embed = nnx.Param(INIT(rngs.params(), (1, config.num_patches + 1, d), jnp.float32))
        self.dropout = nnx.Dropout(config.dropout)
        self.blocks = nnx.List([Block(config, dtype=dtype, rngs=rngs) for _ in range(config.num_layers)])
        self.ln_f = _layer_norm(config, dtype, rngs)
        self.head = nnx.Linear(d, config.num_classes, kernel_init=INIT, dtype=dtype, rngs=rngs)

    def forward_features(self, pixel_values: Float[Array, "B H W C"], *, train: bool = False,
                         rngs: nnx.Rngs | None = None) -> Float[Array, "B N+1 D"]:
        size, channels = self.config.image_size, self.config.num_channels
        if pixel_values.shape[1:] != (size, size, channels):
            raise ZooError(f"ViT expects NHWC images [B, {size}, {size}, {channels}], got "
                           f"{list(pixel_values.shape)}; resize the images or change image_size")
        x = self.patch_embed(pixel_values.astype(self.dtype))  # [B, H/p, W/p, D]
        B, h, w, D = x.shape
        x = x.reshape(B, h * w, D)  # patches in row-major order, as torch's flatten(2) of NCHW
        cls = jnp.broadcast_to(self.cls_token[...].astype(self.dtype), (B, 1, D))
        x = jnp.concatenate([cls, x], axis=1) + self.pos_embed[...].astype(self.dtype)
        x = self.dropout(x, deterministic=not train, rngs=rngs)
        for block in self.blocks:
            x = block(x, train=train, rngs=rngs)
        return self.ln_f(x)

    def forward_head(self, x: Float[Array, "B N+1 D"]) -> dict[str, Float[Array, "B K"]]:
        return {"logits": self.head(x[:, 0]).astype(jnp.float32)}  # theory: cls-pooling

    def __call__(self, pixel_values: Float[Array, "B H W C"], *, train: bool = False,
                 rngs: nnx.Rngs | None = None) -> dict[str, Float[Array, "B K"]]:
        return self.forward_head(self.forward_features(pixel_values, train=train, rngs=rngs))
