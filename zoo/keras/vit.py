"""Vision Transformer in Keras 3: patch embedding, [CLS] token, pre-LN encoder, linear head.

Dosovitskiy et al., 2021, "An Image is Worth 16x16 Words: Transformers for Image Recognition at
Scale".

Args:
    config: a ``ViTConfig`` (or its dict form, as stored by ``get_config``).
    seed: seed for initialization and dropout.
    dtype: keras dtype policy, e.g. ``"mixed_bfloat16"`` (float32 variables, bfloat16 compute).

Call with ``interpolate_pos_encoding=True`` to run images of another size: the patch position
embeddings are resized bicubically to the new grid (transformers' scheme).

Example:
    >>> import os; _ = os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is imported
    >>> import numpy as np
    >>> from dlzoo.zoo.configs import get_config
    >>> from dlzoo.zoo.keras.vit import ViT
    >>> model = ViT(get_config("vit", "tiny"), seed=0)
    >>> tuple(model({"pixel_values": np.zeros((2, 32, 32, 3), "float32")})["logits"].shape)
    (2, 10)
    >>> larger = model({"pixel_values": np.zeros((2, 48, 64, 3), "float32")}, interpolate_pos_encoding=True)
    >>> tuple(larger["logits"].shape)
    (2, 10)
"""

from __future__ import annotations

import keras
from keras import layers, ops

from ..configs import ViTConfig, ZooError, bicubic_resize_matrix
from .layers import Block, Dropout, Seeds, normal_init, run_blocks


@keras.saving.register_keras_serializable(package="dlzoo")
class ViT(keras.Model):
    def __init__(self, config: ViTConfig | dict = ViTConfig(), *, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.config = config = ViTConfig.from_dict(config) if isinstance(config, dict) else config
        self.seed = seed
        seeds, policy, d = Seeds(seed), self.dtype_policy, config.hidden_size
        # A conv whose stride equals its size cuts the image into patches and projects each one.
        self.patch_embed = layers.Conv2D(
            d,
            config.patch_size,
            strides=config.patch_size,
            padding="valid",
            kernel_initializer=normal_init(seeds()),
            name="patch_embed",
            dtype=policy,
        )  # theory: patch-embedding
        self.cls_token = self.add_weight(shape=(1, 1, d), initializer=normal_init(seeds()), name="cls_token")
        self.pos_embed = self.add_weight(
            shape=(1, config.num_patches + 1, d), initializer=normal_init(seeds()), name="pos_embed"
        )  # theory: position-embeddings
        self.drop = Dropout(config.dropout, seed=seeds(), name="drop", dtype=policy)  # theory: dropout
        self.blocks = [
            Block(
                d,
                config.num_heads,
                config.mlp_dim,
                layer_norm_eps=config.layer_norm_eps,
                approximate_gelu=config.gelu == "tanh",
                dropout=config.dropout,
                attention_dropout=config.attention_dropout,
                seed=seeds(),
                name=f"blocks_{i}",
                dtype=policy,
            )
            for i in range(config.num_layers)
        ]
        self.ln_f = layers.LayerNormalization(epsilon=config.layer_norm_eps, name="ln_f", dtype=policy)
        self.head = layers.Dense(config.num_classes, kernel_initializer=normal_init(seeds()), name="head", dtype=policy)

    def call(self, inputs, training=False, interpolate_pos_encoding=False):
        h = self.forward_features(inputs["pixel_values"], training=training, interpolate_pos_encoding=interpolate_pos_encoding)
        return {"logits": self.forward_head(h)}

    def position_embeddings(self, h, w):
        """Position embeddings (1, 1 + h*w, C) for a grid of h x w patches: the learned table at
        the training grid, else its patch part resized bicubically exactly as torch's
        F.interpolate(mode="bicubic", align_corners=False) (transformers'
        ``interpolate_pos_encoding``), the [CLS] position kept as is."""
        n = self.config.image_size // self.config.patch_size
        if (h, w) == (n, n):
            return self.pos_embed
        rows = ops.convert_to_tensor(bicubic_resize_matrix(n, h), "float32")  # (h, n)
        cols = ops.convert_to_tensor(bicubic_resize_matrix(n, w), "float32")  # (w, n)
        grid = ops.reshape(self.pos_embed[0, 1:], (n, n, -1))  # (n, n, C)
        grid = ops.einsum("hi,ijc,wj->hwc", rows, grid, cols)  # (h, w, C)
        return ops.concatenate([self.pos_embed[:, :1], ops.reshape(grid, (1, h * w, -1))], axis=1)

    def forward_features(self, pixel_values, training=False, interpolate_pos_encoding=False):
        size = self.config.image_size
        if not interpolate_pos_encoding and tuple(pixel_values.shape[1:3]) != (size, size):
            raise ZooError(
                f"ViT expects images of {size}x{size}, got {list(pixel_values.shape)}; pass "
                "interpolate_pos_encoding=True to run other sizes"
            )
        x = self.patch_embed(pixel_values)  # (B, H/P, W/P, C)
        B, h, w, C = ops.shape(x)
        pos = self.position_embeddings(h, w)  # (1, N+1, C)
        x = ops.reshape(x, (B, -1, C))  # (B, N, C), patches in row-major order
        cls = ops.broadcast_to(ops.cast(self.cls_token, x.dtype), (B, 1, C))
        x = ops.concatenate([cls, x], axis=1) + ops.cast(pos, x.dtype)  # (B, N+1, C)
        x = self.drop(x, training=training)
        x = run_blocks(self.blocks, x, remat=self.config.remat, scan=self.config.scan_layers, training=training)
        return self.ln_f(x)  # (B, N+1, C)

    def forward_head(self, h):
        return ops.cast(self.head(h[:, 0]), "float32")  # (B, classes) from [CLS]  # theory: cls-pooling

    def get_config(self):
        return {**super().get_config(), "config": self.config.to_dict(), "seed": self.seed}
