"""ResNet v1.5 in Haiku: a conv stem, stages of residual blocks (basic or bottleneck) with
batch norm, global average pooling and a linear head.

Papers: He et al., 2016, "Deep Residual Learning for Image Recognition"; v1.5 (stride on the
3x3 conv of the bottleneck, as torchvision and transformers) from NVIDIA's DeepLearningExamples;
zero-init of the last BN scale from Goyal et al., 2017, "Accurate, Large Minibatch SGD".

Args (``ResNetConfig``): block ("basic" or "bottleneck"), depths and widths (per stage),
stem_width, num_channels, num_classes, bn_eps, bn_momentum (torch's convention, the weight of
the new batch; Haiku's ``decay_rate`` is 1 - bn_momentum), zero_init_residual, remat.
``transform(config, dtype="bfloat16")`` runs activations and convs in bfloat16 while the
parameters and batch-norm statistics stay float32. Images are NHWC. ``is_training=True`` normalises with batch statistics
and writes the running ones to the returned state (``hk.transform_with_state``); otherwise the
running statistics are used and the state comes back unchanged.

Module paths map onto dlzoo's canonical names ("resnet/~/stages_1/~/blocks_0/~/downsample/~/bn"
+ "var" -> "stages.1.blocks.0.downsample.bn.var", see ``layers.canonical_name``). Example::

    import jax, jax.numpy as jnp
    from dlzoo.zoo.configs import get_config
    from dlzoo.zoo.haiku.resnet import transform

    model = transform(get_config("resnet", "tiny"))
    images = jnp.zeros((2, 32, 32, 3))
    params, state = model.init(jax.random.key(0), images)
    out, _ = jax.jit(model.apply)(params, state, None, images)
    out["logits"]                                                 # (2, 10)
    out, state = model.apply(params, state, None, images, is_training=True)  # new running stats
"""

from __future__ import annotations

import math

import haiku as hk
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..configs import ResNetConfig
from .layers import BatchNorm, Conv2D, Dense, run_block, transform_model, uniform_fan_in


def conv(n_out: int, size: int, stride: int = 1, *, name: str) -> Conv2D:
    # Symmetric padding k // 2 on both sides, never "SAME" (which pads bottom/right more when strided).
    return Conv2D(n_out, size, stride=stride, padding=size // 2, name=name)


def batch_norm(config: ResNetConfig, *, zero_init: bool = False, name: str) -> BatchNorm:
    # theory: batch-norm
    return BatchNorm(decay_rate=1.0 - config.bn_momentum, eps=config.bn_eps, scale_init=jnp.zeros if zero_init else jnp.ones, name=name)


class Stem(hk.Module):
    def __init__(self, config: ResNetConfig, *, name: str = "stem"):
        super().__init__(name=name)
        self.conv = Conv2D(config.stem_width, 7, stride=2, padding=3, name="conv")
        self.bn = batch_norm(config, name="bn")

    def __call__(self, x: Float[Array, "B H W C_in"], *, is_training: bool) -> Float[Array, "B h w C"]:
        x = jax.nn.relu(self.bn(self.conv(x), is_training=is_training))  # (B, H/2, W/2, C)
        # reduce_window pads with its init value, -inf, so padding never wins the max.
        return jax.lax.reduce_window(
            x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
        )  # (B, H/4, W/4, C)


class Downsample(hk.Module):
    """Projection shortcut: 1x1 conv (carrying the stride) + BN, where the shape changes."""

    def __init__(self, config: ResNetConfig, n_out: int, stride: int, *, name: str = "downsample"):
        super().__init__(name=name)
        self.conv = conv(n_out, 1, stride, name="conv")
        self.bn = batch_norm(config, name="bn")

    def __call__(self, x: Float[Array, "B H W C_in"], *, is_training: bool) -> Float[Array, "B h w C_out"]:
        return self.bn(self.conv(x), is_training=is_training)


class BasicBlock(hk.Module):
    """3x3 -> 3x3 (ResNet-18/34)."""

    def __init__(self, config: ResNetConfig, n_in: int, width: int, n_out: int, stride: int, *, name: str):
        super().__init__(name=name)
        zero = config.zero_init_residual
        self.conv1, self.bn1 = conv(width, 3, stride, name="conv1"), batch_norm(config, name="bn1")
        self.conv2, self.bn2 = conv(n_out, 3, name="conv2"), batch_norm(config, zero_init=zero, name="bn2")
        needs_projection = stride != 1 or n_in != n_out
        self.downsample = Downsample(config, n_out, stride) if needs_projection else None

    def __call__(self, x: Float[Array, "B H W C_in"], *, is_training: bool) -> Float[Array, "B h w C_out"]:
        shortcut = x if self.downsample is None else self.downsample(x, is_training=is_training)  # (B, H', W', C_out)
        h = jax.nn.relu(self.bn1(self.conv1(x), is_training=is_training))  # (B, H', W', width)
        h = self.bn2(self.conv2(h), is_training=is_training)  # (B, H', W', C_out)
        return jax.nn.relu(h + shortcut)  # theory: residual-connections


class Bottleneck(hk.Module):
    """1x1 reduce -> 3x3 (carrying the stride: v1.5) -> 1x1 expand (ResNet-50 and deeper)."""

    def __init__(self, config: ResNetConfig, n_in: int, width: int, n_out: int, stride: int, *, name: str):
        super().__init__(name=name)
        zero = config.zero_init_residual
        # theory: bottleneck-block
        self.conv1, self.bn1 = conv(width, 1, name="conv1"), batch_norm(config, name="bn1")
        self.conv2, self.bn2 = conv(width, 3, stride, name="conv2"), batch_norm(config, name="bn2")
        self.conv3, self.bn3 = conv(n_out, 1, name="conv3"), batch_norm(config, zero_init=zero, name="bn3")
        needs_projection = stride != 1 or n_in != n_out
        self.downsample = Downsample(config, n_out, stride) if needs_projection else None

    def __call__(self, x: Float[Array, "B H W C_in"], *, is_training: bool) -> Float[Array, "B h w C_out"]:
        shortcut = x if self.downsample is None else self.downsample(x, is_training=is_training)  # (B, H', W', C_out)
        h = jax.nn.relu(self.bn1(self.conv1(x), is_training=is_training))  # (B, H, W, width)
        h = jax.nn.relu(self.bn2(self.conv2(h), is_training=is_training))  # (B, H', W', width)
        h = self.bn3(self.conv3(h), is_training=is_training)  # (B, H', W', C_out)
        return jax.nn.relu(h + shortcut)  # theory: residual-connections


class Stage(hk.Module):
    """The blocks of one stage; ``blocks`` is that stage's row of ``ResNetConfig.layout()``:
    (in_channels, inner width, out_channels, stride) per block."""

    def __init__(self, config: ResNetConfig, blocks: list[tuple[int, int, int, int]], *, name: str):
        super().__init__(name=name)
        block = Bottleneck if config.block == "bottleneck" else BasicBlock
        self.blocks = [block(config, *spec, name=f"blocks_{b}") for b, spec in enumerate(blocks)]
        self.remat = config.remat

    def __call__(self, x: Float[Array, "B H W C_in"], *, is_training: bool) -> Float[Array, "B h w C_out"]:
        for block in self.blocks:
            x = run_block(block, x, remat=self.remat, is_training=is_training)
        return x


class ResNet(hk.Module):
    def __init__(self, config: ResNetConfig, *, name: str = "resnet"):
        super().__init__(name=name)
        self.config = config
        self.stem = Stem(config)
        self.stages = [Stage(config, blocks, name=f"stages_{s}") for s, blocks in enumerate(config.layout())]
        # theory: initialization
        # Convs: kaiming normal fan-out (layers.Conv2D's default); head: torch.nn.Linear's default.
        bound = 1.0 / math.sqrt(config.out_widths[-1])
        self.head = Dense(config.num_classes, init=uniform_fan_in, bias_init=hk.initializers.RandomUniform(-bound, bound), name="head")

    def forward_features(self, pixel_values: Float[Array, "B H W C_in"], *, is_training: bool = False) -> Float[Array, "B h w C"]:
        """``pixel_values`` (B, H, W, C_in) -> the last stage's feature map (B, H/32, W/32, C)
        (H/2^(S+1) for S stages)."""
        x = self.stem(pixel_values, is_training=is_training)  # (B, H/4, W/4, stem_width)
        for stage in self.stages:
            x = stage(x, is_training=is_training)
        return x

    def forward_head(self, x: Float[Array, "B h w C"]) -> Float[Array, "B classes"]:
        return self.head(x.mean(axis=(1, 2)))  # global average pool -> (B, num_classes)

    def __call__(self, pixel_values: Float[Array, "B H W C_in"], *, is_training: bool = False) -> dict[str, Array]:
        """``pixel_values`` (B, H, W, C_in) -> {"logits": (B, num_classes)}."""
        return {"logits": self.forward_head(self.forward_features(pixel_values, is_training=is_training))}


def transform(config: ResNetConfig, *, dtype: str = "float32") -> hk.TransformedWithState:
    """ResNet as Haiku's pure pair (``layers.transform_model``): ``init(rng, pixel_values)``,
    ``apply(params, state, rng, pixel_values, is_training=False)``; the state holds every batch
    norm's running mean/var, and ``rng`` may be None (ResNet has no dropout)."""
    return transform_model(ResNet, config, dtype=dtype)
