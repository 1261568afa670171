"""ResNet v1.5 in Flax NNX: a conv stem, stages of residual blocks (basic or bottleneck) with
batch norm, global average pooling and a linear head.

Papers: He et al., 2016, "Deep Residual Learning for Image Recognition"; v1.5 (stride on the
3x3 conv of the bottleneck, as torchvision and transformers) from NVIDIA's DeepLearningExamples;
zero-init of the last BN scale from Goyal et al., 2017, "Accurate, Large Minibatch SGD".

Args (``ResNetConfig``): block ("basic" or "bottleneck"), depths and widths (per stage),
stem_width, num_channels, num_classes, bn_eps, bn_momentum (torch's convention, the weight of
the new batch; translated here to flax's weight of the old statistic), zero_init_residual, remat.
Keywords: ``rngs`` (``nnx.Rngs``) draws the initial weights; ``dtype`` is the compute dtype
(``jnp.bfloat16`` for mixed precision: parameters and batch statistics stay float32, logits are
returned in float32). Images are NHWC. ``train=True`` at call time normalises with batch
statistics and updates the running ones (``nnx.BatchStat`` variables) in place.

Example::

    import jax
    from flax import nnx
    from dlzoo.zoo.configs import get_config
    from dlzoo.zoo.flax.resnet import ResNet

    model = ResNet(get_config("resnet", "tiny"), rngs=nnx.Rngs(0))
    images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    logits = model(images)["logits"]                                      # (2, 10)
    logits = model(images, train=True)["logits"]                          # updates running stats
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from ..configs import ResNetConfig, ZooError
from .layers import BatchNorm, run_block, uniform_fan_in

# theory: initialization
# Kaiming normal over fan-out (ReLU gain); the head keeps torch's default, U(+-1/sqrt(fan_in)).
CONV_INIT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(n_in: int, n_out: int, size: int, stride: int = 1, *, dtype, rngs: nnx.Rngs) -> nnx.Conv:
    # Symmetric padding k // 2 on both sides, never "SAME" (which pads bottom/right more when strided).
    pad = size // 2
    return nnx.Conv(
        n_in,
        n_out,
        (size, size),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        kernel_init=CONV_INIT,
        dtype=dtype,
        rngs=rngs,
    )


def batch_norm(config: ResNetConfig, channels: int, *, dtype) -> BatchNorm:
    # theory: batch-norm
    # config.bn_momentum weights the NEW batch (torch); flax's momentum weights the old statistic.
    return BatchNorm(channels, momentum=1.0 - config.bn_momentum, epsilon=config.bn_eps, dtype=dtype)


class Stem(nnx.Module):
    def __init__(self, config: ResNetConfig, *, dtype, rngs: nnx.Rngs):
        self.conv = nnx.Conv(
            config.num_channels,
            config.stem_width,
            (7, 7),
            strides=(2, 2),
            padding=((3, 3), (3, 3)),
            use_bias=False,
            kernel_init=CONV_INIT,
            dtype=dtype,
            rngs=rngs,
        )
        self.bn = batch_norm(config, config.stem_width, dtype=dtype)

    def __call__(self, x: Float[Array, "B H W C_in"], *, train: bool) -> Float[Array, "B h w C"]:
        x = jax.nn.relu(self.bn(self.conv(x), train=train))  # [B, H/2, W/2, C]
        # flax's max-pool pads with -inf (its reduction's identity), so padding never wins the max.
        return nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # [B, H/4, W/4, C]


class Downsample(nnx.Module):
    """Projection shortcut: 1x1 conv (carrying the stride) + BN, where the shape changes."""

    def __init__(self, config: ResNetConfig, n_in: int, n_out: int, stride: int, *, dtype, rngs: nnx.Rngs):
        self.conv = conv(n_in, n_out, 1, stride, dtype=dtype, rngs=rngs)
        self.bn = batch_norm(config, n_out, dtype=dtype)

    def __call__(self, x: Float[Array, "B H W C_in"], *, train: bool) -> Float[Array, "B h w C"]:
        return self.bn(self.conv(x), train=train)


class BasicBlock(nnx.Module):
    """3x3 -> 3x3 (ResNet-18/34)."""

    def __init__(self, config: ResNetConfig, n_in: int, width: int, n_out: int, stride: int, *, dtype, rngs: nnx.Rngs):
        self.conv1, self.bn1 = conv(n_in, width, 3, stride, dtype=dtype, rngs=rngs), batch_norm(config, width, dtype=dtype)
        self.conv2, self.bn2 = conv(width, n_out, 3, dtype=dtype, rngs=rngs), batch_norm(config, n_out, dtype=dtype)
        needs_projection = stride != 1 or n_in != n_out
        self.downsample = Downsample(config, n_in, n_out, stride, dtype=dtype, rngs=rngs) if needs_projection else None
        if config.zero_init_residual:  # the block starts as the identity
            self.bn2.scale[...] = jnp.zeros_like(self.bn2.scale[...])

    def __call__(self, x: Float[Array, "B H W C_in"], *, train: bool) -> Float[Array, "B h w C"]:
        shortcut = x if self.downsample is None else self.downsample(x, train=train)  # [B, H', W', C_out]
        h = jax.nn.relu(self.bn1(self.conv1(x), train=train))  # [B, H', W', width]
        h = self.bn2(self.conv2(h), train=train)  # [B, H', W', C_out]
        return jax.nn.relu(h + shortcut)  # theory: residual-connections


class Bottleneck(nnx.Module):
    """1x1 reduce -> 3x3 (carrying the stride: v1.5) -> 1x1 expand (ResNet-50 and deeper)."""

    def __init__(self, config: ResNetConfig, n_in: int, width: int, n_out: int, stride: int, *, dtype, rngs: nnx.Rngs):
        # theory: bottleneck-block
        self.conv1, self.bn1 = conv(n_in, width, 1, dtype=dtype, rngs=rngs), batch_norm(config, width, dtype=dtype)
        self.conv2, self.bn2 = conv(width, width, 3, stride, dtype=dtype, rngs=rngs), batch_norm(config, width, dtype=dtype)
        self.conv3, self.bn3 = conv(width, n_out, 1, dtype=dtype, rngs=rngs), batch_norm(config, n_out, dtype=dtype)
        needs_projection = stride != 1 or n_in != n_out
        self.downsample = Downsample(config, n_in, n_out, stride, dtype=dtype, rngs=rngs) if needs_projection else None
        if config.zero_init_residual:  # the block starts as the identity
            self.bn3.scale[...] = jnp.zeros_like(self.bn3.scale[...])

    def __call__(self, x: Float[Array, "B H W C_in"], *, train: bool) -> Float[Array, "B h w C"]:
        shortcut = x if self.downsample is None else self.downsample(x, train=train)  # [B, H', W', C_out]
        h = jax.nn.relu(self.bn1(self.conv1(x), train=train))  # [B, H, W, width]
        h = jax.nn.relu(self.bn2(self.conv2(h), train=train))  # [B, H', W', width]
        h = self.bn3(self.conv3(h), train=train)  # [B, H', W', C_out]
        return jax.nn.relu(h + shortcut)  # theory: residual-connections


class Stage(nnx.Module):
    def __init__(self, config: ResNetConfig, blocks: list[tuple[int, int, int, int]], *, dtype, rngs: nnx.Rngs):
        block = Bottleneck if config.block == "bottleneck" else BasicBlock
        self.blocks = nnx.List([block(config, *spec, dtype=dtype, rngs=rngs) for spec in blocks])
        self.remat = config.remat

    def __call__(self, x: Float[Array, "B H W C_in"], *, train: bool) -> Float[Array, "B h w C"]:
        for block in self.blocks:
            x = run_block(block, x, remat=self.remat, train=train)
        return x


class ResNet(nnx.Module):
    def __init__(self, config: ResNetConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config, self.dtype = config, dtype
        self.stem = Stem(config, dtype=dtype, rngs=rngs)
        self.stages = nnx.List([Stage(config, blocks, dtype=dtype, rngs=rngs) for blocks in config.layout()])
        n_in = config.out_widths[-1]
        self.head = nnx.Linear(
            n_in, config.num_classes, kernel_init=uniform_fan_in(n_in), bias_init=uniform_fan_in(n_in), dtype=dtype, rngs=rngs
        )

    def forward_features(self, pixel_values: Float[Array, "B H W C_in"], *, train: bool = False) -> Float[Array, "B h w C"]:
        """``pixel_values`` [B, H, W, C_in] -> the last stage's feature map [B, H/32, W/32, C]
        (H/2^(S+1) for S stages)."""
        if pixel_values.ndim != 4 or pixel_values.shape[-1] != self.config.num_channels:
            raise ZooError(
                f"ResNet expects NHWC images [B, H, W, {self.config.num_channels}], got "
                f"{list(pixel_values.shape)}; NCHW arrays need x.transpose(0, 2, 3, 1)"
            )
        x = self.stem(pixel_values.astype(self.dtype), train=train)  # [B, H/4, W/4, stem_width]
        for stage in self.stages:
            x = stage(x, train=train)
        return x

    def forward_head(self, x: Float[Array, "B h w C"]) -> Float[Array, "B K"]:
        return self.head(x.mean(axis=(1, 2)))  # global average pool -> [B, num_classes]

    def __call__(self, pixel_values: Float[Array, "B H W C_in"], *, train: bool = False) -> dict[str, Float[Array, "B K"]]:
        """``pixel_values`` [B, H, W, C_in] -> {"logits": [B, num_classes]} (float32)."""
        logits = self.forward_head(self.forward_features(pixel_values, train=train))
        return {"logits": logits.astype(jnp.float32)}
