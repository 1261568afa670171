"""ResNet v1.5 in Flax NNX: basic or bottleneck residual blocks, batch norm, NHWC images.

Paper: He et al., 2016, "Deep Residual Learning for Image Recognition"; v1.5 (torchvision's and
transformers' ResNet) puts the stride on the 3x3 conv of the bottleneck. Numerically identical
to transformers' ResNetForImageClassification in eval and train mode (running statistics
included): every conv is padded symmetrically, never "SAME".

Args:
    config: a ``ResNetConfig`` (``get_config("resnet", "50")`` is ResNet-50).
    dtype: compute dtype of activations and convs (``jnp.bfloat16`` for mixed precision);
        parameters and batch-norm statistics stay float32, the logits are returned in float32.
    rngs: ``nnx.Rngs`` for parameter initialisation.

Call: ``model(pixel_values, train=False) -> {"logits": [B, num_classes]}`` with ``pixel_values``
NHWC [B, H, W, C]. ``train=True`` normalises with batch statistics and updates the running
statistics (``nnx.BatchStat`` variables) in place.

Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from dlzoo.zoo.configs import get_config
    >>> from dlzoo.zoo.flax.resnet import ResNet
    >>> model = ResNet(get_config("resnet", "tiny"), rngs=nnx.Rngs(0))
    >>> model(jnp.zeros((2, 32, 32, 3)))["logits"].shape
    (2, 10)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from ..configs import ResNetConfig, ZooError
from .layers import BatchNorm

# theory: initialization
# Kaiming normal over fan-out keeps activation variance through ReLU convs (He et al., 2015).
CONV_INIT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(n_in: int, n_out: int, size: int, stride: int = 1, *, dtype, rngs: nnx.Rngs) -> nnx.Conv:
    # Symmetric padding k//2 on every side, as torch: "SAME" pads more on the bottom/right of a
    # strided conv and shifts every feature map.
    pad = size // 2
    return nnx.Conv(n_in, n_out, kernel_size=(size, size), strides=(stride, stride),
                    padding=((pad, pad), (pad, pad)), use_bias=False, kernel_init=CONV_INIT,
                    dtype=dtype, rngs=rngs)


def batch_norm(config: ResNetConfig, n: int, *, dtype, rngs: nnx.Rngs) -> BatchNorm:
    # config.bn_momentum weights the NEW batch (torch); BatchNorm takes flax's weight of the old.
    return BatchNorm(n, momentum=1.0 - config.bn_momentum, epsilon=config.bn_eps, dtype=dtype, rngs=rngs)


class Stem(nnx.Module):
    def __init__(self, config: ResNetConfig, *, dtype, rngs: nnx.Rngs):
        self.conv = conv(config.num_channels, config.stem_width, 7, 2, dtype=dtype, rngs=rngs)
        self.bn = batch_norm(config, config.stem_width, dtype=dtype, rngs=rngs)

    def __call__(self, x: Float[Array, "B H W C"], *, train: bool) -> Float[Array, "B H/4 W/4 S"]:
        x = jax.nn.relu(self.bn(self.conv(x), train=train))
        # Padding 1 with -inf (flax's max_pool pads with its init value, -inf), as torch's.
        return nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class Downsample(nnx.Module):
    def __init__(self, config: ResNetConfig, n_in: int, n_out: int, stride: int, *, dtype, rngs: nnx.Rngs):
        self.conv = conv(n_in, n_out, 1, stride, dtype=dtype, rngs=rngs)
        self.bn = batch_norm(config, n_out, dtype=dtype, rngs=rngs)

    def __call__(self, x: Float[Array, "B H W C"], *, train: bool) -> Float[Array, "B h w K"]:
        return self.bn(self.conv(x), train=train)


class BasicBlock(nnx.Module):
    def __init__(self, config: ResNetConfig, n_in: int, width: int, n_out: int, stride: int, *,
                 dtype, rngs: nnx.Rngs):
        self.conv1 = conv(n_in, width, 3, stride, dtype=dtype, rngs=rngs)
        self.bn1 = batch_norm(config, width, dtype=dtype, rngs=rngs)
        self.conv2 = conv(width, n_out, 3, dtype=dtype, rngs=rngs)
        self.bn2 = batch_norm(config, n_out, dtype=dtype, rngs=rngs)
        if config.zero_init_residual:  # each block starts as the identity (Goyal et al., 2017)
            self.bn2.scale[...] = jnp.zeros_like(self.bn2.scale[...])
        self.downsample = (Downsample(config, n_in, n_out, stride, dtype=dtype, rngs=rngs)
                           if stride != 1 or n_in != n_out else None)

    def __call__(self, x: Float[Array, "B H W C"], *, train: bool) -> Float[Array, "B h w K"]:
        shortcut = x if self.downsample is None else self.downsample(x, train=train)
        y = jax.nn.relu(self.bn1(self.conv1(x), train=train))
        y = self.bn2(self.conv2(y), train=train)
        return jax.nn.relu(y + shortcut)  # theory: residual-connections


class Bottleneck(nnx.Module):
    def __init__(self, config: ResNetConfig, n_in: int, width: int, n_out: int, stride: int, *,
                 dtype, rngs: nnx.Rngs):
        # theory: bottleneck-block
        self.conv1 = conv(n_in, width, 1, dtype=dtype, rngs=rngs)
        self.bn1 = batch_norm(config, width, dtype=dtype, rngs=rngs)
        self.conv2 = conv(width, width, 3, stride, dtype=dtype, rngs=rngs)  # v1.5: stride on the 3x3
        self.bn2 = batch_norm(config, width, dtype=dtype, rngs=rngs)
        self.conv3 = conv(width, n_out, 1, dtype=dtype, rngs=rngs)
        self.bn3 = batch_norm(config, n_out, dtype=dtype, rngs=rngs)
        if config.zero_init_residual:  # each block starts as the identity (Goyal et al., 2017)
            self.bn3.scale[...] = jnp.zeros_like(self.bn3.scale[...])
        self.downsample = (Downsample(config, n_in, n_out, stride, dtype=dtype, rngs=rngs)
                           if stride != 1 or n_in != n_out else None)

    def __call__(self, x: Float[Array, "B H W C"], *, train: bool) -> Float[Array, "B h w K"]:
        shortcut = x if self.downsample is None else self.downsample(x, train=train)
        y = jax.nn.relu(self.bn1(self.conv1(x), train=train))
        y = jax.nn.relu(self.bn2(self.conv2(y), train=train))
        y = self.bn3(self.conv3(y), train=train)
        return jax.nn.relu(y + shortcut)  # theory: residual-connections


class Stage(nnx.Module):
    def __init__(self, blocks: list[nnx.Module]):
        self.blocks = nnx.List(blocks)

    def __call__(self, x: Float[Array, "B H W C"], *, train: bool) -> Float[Array, "B h w K"]:
        for block in self.blocks:
            x = block(x, train=train)
        return x


class ResNet(nnx.Module):
    def __init__(self, config: ResNetConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config, self.dtype = config, dtype
        self.stem = Stem(config, dtype=dtype, rngs=rngs)
        Block = Bottleneck if config.block == "bottleneck" else BasicBlock
        stages, n_in = [], config.stem_width
        for s, (depth, width) in enumerate(zip(config.depths, config.widths)):
            n_out, blocks = width * config.expansion, []
            for b in range(depth):
                stride = 2 if (b == 0 and s > 0) else 1
                blocks.append(Block(config, n_in, width, n_out, stride, dtype=dtype, rngs=rngs))
                n_in = n_out
            stages.append(Stage(blocks))
        self.stages = nnx.List(stages)
        self.head = nnx.Linear(n_in, config.num_classes, dtype=dtype, rngs=rngs)

    def forward_features(self, pixel_values: Float[Array, "B H W C"], *,
                         train: bool = False) -> Float[Array, "B h w K"]:
        if pixel_values.ndim != 4 or pixel_values.shape[-1] != self.config.num_channels:
            raise ZooError(f"ResNet expects NHWC images [B, H, W, {self.config.num_channels}], got "
                           f"{list(pixel_values.shape)}; transpose NCHW with x.transpose(0, 2, 3, 1)")
        x = self.stem(pixel_values.astype(self.dtype), train=train)
        for stage in self.stages:
            x = stage(x, train=train)
        return x

    def forward_head(self, x: Float[Array, "B h w K"]) -> dict[str, Float[Array, "B classes"]]:
        x = x.mean(axis=(1, 2))  # global average pool
        return {"logits": self.head(x).astype(jnp.float32)}

    def __call__(self, pixel_values: Float[Array, "B H W C"], *,
                 train: bool = False) -> dict[str, Float[Array, "B classes"]]:
        return self.forward_head(self.forward_features(pixel_values, train=train))
