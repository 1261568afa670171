"""ResNet v1.5 in Keras 3: basic or bottleneck residual blocks, stride on the 3x3 conv.

He et al., 2016, "Deep Residual Learning for Image Recognition"; v1.5 (stride on the 3x3 conv of
the bottleneck) as in torchvision. Images are NHWC.

Args:
    config: a ``ResNetConfig`` (or its dict form, as stored by ``get_config``).
    seed: seed for initialization.
    dtype: keras dtype policy, e.g. ``"mixed_bfloat16"`` (float32 variables, bfloat16 compute).

Example:
    >>> import os; _ = os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is imported
    >>> import numpy as np
    >>> from dlzoo.zoo.configs import get_config
    >>> from dlzoo.zoo.keras.resnet import ResNet
    >>> model = ResNet(get_config("resnet", "tiny"), seed=0)
    >>> tuple(model({"pixel_values": np.zeros((2, 32, 32, 3), "float32")})["logits"].shape)
    (2, 10)
"""

from __future__ import annotations

import keras
from keras import layers, ops

from ..configs import ResNetConfig
from .layers import MASK_MIN, BatchNorm, Conv2D, Seeds, normal_init, pad_hw, run_block


def conv(filters: int, size: int, stride: int, seed: int, name: str, dtype) -> Conv2D:
    """Bias-free conv, padding "valid": callers pad explicitly with pad_hw (symmetric, as torch)."""
    # Kaiming normal, fan-out mode (torchvision): std = sqrt(2 / (k * k * filters)).
    init = normal_init(seed, (2.0 / (size * size * filters)) ** 0.5, truncated=False)  # theory: initialization
    return Conv2D(filters, size, strides=stride, padding="valid", use_bias=False, kernel_initializer=init, name=name, dtype=dtype)


def batch_norm(config: ResNetConfig, name: str, dtype, *, zero: bool = False) -> BatchNorm:
    # keras' momentum weights the OLD statistic; ResNetConfig.bn_momentum is torch's (the new batch).
    return BatchNorm(
        momentum=1.0 - config.bn_momentum, epsilon=config.bn_eps, gamma_initializer="zeros" if zero else "ones", name=name, dtype=dtype
    )


def strided(size, stride: int):
    """Output size of a "same"-sized window (odd kernel, padding k // 2) with this stride."""
    return None if size is None else (size - 1) // stride + 1


def layout(config: ResNetConfig) -> list[list[tuple[int, int, int, int]]]:
    """Per stage, per block: (in channels, inner width, out channels, stride). The first block
    of every stage but the first halves the map."""
    stages, n_in = [], config.stem_width
    for s, (depth, width) in enumerate(zip(config.depths, config.widths)):
        n_out = width * config.expansion
        stages.append([(n_in if b == 0 else n_out, width, n_out, 2 if (b == 0 and s > 0) else 1) for b in range(depth)])
        n_in = n_out
    return stages


@keras.saving.register_keras_serializable(package="dlzoo")
class Stem(layers.Layer):
    """7x7 stride-2 conv, batch norm, ReLU, 3x3 stride-2 max-pool: a 4x smaller map."""

    def __init__(self, config: ResNetConfig | dict, *, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.config = config = ResNetConfig.from_dict(config) if isinstance(config, dict) else config
        self.seed = seed
        self.conv = conv(config.stem_width, 7, 2, seed, "conv", self.dtype_policy)
        self.bn = batch_norm(config, "bn", self.dtype_policy)
        self.pool = layers.MaxPooling2D(3, strides=2, padding="valid", name="pool", dtype=self.dtype_policy)

    def call(self, x, training=False):
        x = ops.relu(self.bn(self.conv(pad_hw(x, 3)), training=training))  # (B, H/2, W/2, C)
        # torch pads the max-pool with -inf: padding never wins the max.
        return self.pool(pad_hw(x, 1, MASK_MIN[self.compute_dtype]))  # (B, H/4, W/4, C)

    def compute_output_shape(self, input_shape):
        B, H, W, _ = input_shape
        return (B, strided(strided(H, 2), 2), strided(strided(W, 2), 2), self.config.stem_width)

    def get_config(self):
        return {**super().get_config(), "config": self.config.to_dict(), "seed": self.seed}


@keras.saving.register_keras_serializable(package="dlzoo")
class Downsample(layers.Layer):
    """1x1 conv with the block's stride + batch norm: projects the shortcut to the block's output."""

    def __init__(self, config: ResNetConfig | dict, n_out: int, stride: int, *, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.config = config = ResNetConfig.from_dict(config) if isinstance(config, dict) else config
        self.args = dict(n_out=n_out, stride=stride, seed=seed)
        self.conv = conv(n_out, 1, stride, seed, "conv", self.dtype_policy)
        self.bn = batch_norm(config, "bn", self.dtype_policy)

    def call(self, x, training=False):
        return self.bn(self.conv(x), training=training)

    def compute_output_shape(self, input_shape):
        B, H, W, _ = input_shape
        return (B, strided(H, self.args["stride"]), strided(W, self.args["stride"]), self.args["n_out"])

    def get_config(self):
        return {**super().get_config(), "config": self.config.to_dict(), **self.args}


@keras.saving.register_keras_serializable(package="dlzoo")
class ResidualBlock(layers.Layer):
    """conv-bn-relu x2 (basic) or x3 (bottleneck: 1x1 reduce, 3x3 with the stride, 1x1 expand),
    added to the input, which a 1x1 conv + bn projects when the shape changes."""

    def __init__(self, config: ResNetConfig | dict, n_in: int, width: int, n_out: int, stride: int, *, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.config = config = ResNetConfig.from_dict(config) if isinstance(config, dict) else config
        self.args = dict(n_in=n_in, width=width, n_out=n_out, stride=stride, seed=seed)
        seeds, policy = Seeds(seed), self.dtype_policy
        if config.block == "bottleneck":  # theory: bottleneck-block
            shapes = [(width, 1, 1), (width, 3, stride), (n_out, 1, 1)]  # (filters, size, stride)
        else:
            shapes = [(width, 3, stride), (n_out, 3, 1)]
        self.sizes = [size for _, size, _ in shapes]
        self.convs = [conv(f, size, s, seeds(), f"conv{k}", policy) for k, (f, size, s) in enumerate(shapes, 1)]
        # Zero-init of the last BN scale makes each block start as the identity (Goyal et al., 2017).
        self.bns = [
            batch_norm(config, f"bn{k}", policy, zero=config.zero_init_residual and k == len(shapes)) for k in range(1, len(shapes) + 1)
        ]
        self.downsample = None
        if stride != 1 or n_in != n_out:
            self.downsample = Downsample(config, n_out, stride, seed=seeds(), name="downsample", dtype=policy)

    def call(self, x, training=False):
        shortcut = x if self.downsample is None else self.downsample(x, training=training)
        for k, (size, conv_k, bn_k) in enumerate(zip(self.sizes, self.convs, self.bns), start=1):
            x = bn_k(conv_k(pad_hw(x, size // 2)), training=training)
            if k < len(self.convs):
                x = ops.relu(x)
        return ops.relu(x + shortcut)  # (B, H, W, C_out)  # theory: residual-connections

    def compute_output_shape(self, input_shape):
        B, H, W, _ = input_shape
        return (B, strided(H, self.args["stride"]), strided(W, self.args["stride"]), self.args["n_out"])

    def get_config(self):
        return {**super().get_config(), "config": self.config.to_dict(), **self.args}


@keras.saving.register_keras_serializable(package="dlzoo")
class ResNet(keras.Model):
    def __init__(self, config: ResNetConfig | dict = ResNetConfig(), *, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.config = config = ResNetConfig.from_dict(config) if isinstance(config, dict) else config
        self.seed = seed
        seeds, policy = Seeds(seed), self.dtype_policy
        self.stem = Stem(config, seed=seeds(), name="stem", dtype=policy)
        # Stage s, block b is named stages_s_blocks_b: keras' torch backend forbids dots in variable
        # paths, and canonical_name turns the name into stages.s.blocks.b.
        self.blocks = [
            ResidualBlock(config, *shape, seed=seeds(), name=f"stages_{s}_blocks_{b}", dtype=policy)
            for s, stage in enumerate(layout(config))
            for b, shape in enumerate(stage)
        ]
        # The std of torch.nn.Linear's default init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        head_std = (3.0 * config.out_widths[-1]) ** -0.5
        self.head = layers.Dense(
            config.num_classes, kernel_initializer=normal_init(seeds(), head_std, truncated=False), name="head", dtype=policy
        )

    def call(self, inputs, training=False):
        h = self.forward_features(inputs["pixel_values"], training=training)
        return {"logits": self.forward_head(h)}

    def forward_features(self, pixel_values, training=False):
        x = self.stem(pixel_values, training=training)
        for block in self.blocks:
            x = run_block(block, x, remat=self.config.remat, training=training)
        return x  # (B, H/32, W/32, C_last) for four stages

    def forward_head(self, h):
        return ops.cast(self.head(ops.mean(h, axis=(1, 2))), "float32")  # (B, classes): global average pool

    def get_config(self):
        return {**super().get_config(), "config": self.config.to_dict(), "seed": self.seed}
