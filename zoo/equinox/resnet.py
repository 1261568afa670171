"""ResNet v1.5 in Equinox: stem (7x7/2 conv, batch norm, 3x3/2 max-pool), stages of basic or
bottleneck residual blocks with the stride on the 3x3 conv, global average pool, dense head.

Paper: He et al., 2016, "Deep Residual Learning for Image Recognition" (v1.5: the stride sits on
the 3x3 conv of the bottleneck, as in torchvision and NVIDIA's reference).

Args (``ResNetConfig``): block ("basic" | "bottleneck"), depths, widths, stem_width,
num_channels, num_classes, bn_eps, bn_momentum (PyTorch's convention: weight of the new batch),
zero_init_residual, remat. ``dtype="bfloat16"`` runs convolutions in bfloat16; parameters and
batch-norm statistics stay float32.

The model maps ONE channels-last image (H, W, C) and threads an ``eqx.nn.State`` holding the
batch-norm running statistics. Training needs the batch: ``jax.vmap`` it with
``axis_name="batch"`` (batch norm averages over that axis). Example::

    import equinox as eqx, jax, jax.numpy as jnp
    from dlzoo.zoo.configs import get_config
    from dlzoo.zoo.equinox.resnet import ResNet

    model, state = eqx.nn.make_with_state(ResNet)(get_config("resnet", "tiny"), key=jax.random.key(0))
    images = jnp.zeros((4, 32, 32, 3))                                    # NHWC
    train = jax.vmap(lambda x, s: model(x, s, inference=False), axis_name="batch",
                     in_axes=(0, None), out_axes=(0, None))
    outputs, state = train(images, state)                   # state: the new running statistics
    outputs, _ = jax.vmap(model, in_axes=(0, None), out_axes=(0, None))(images, state)  # (4, 10)
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ..configs import ResNetConfig
from .layers import BatchNorm, Conv2d, Dense, cast_floating, run_block, uniform_fan_in

State = eqx.nn.State


def _bn(config: ResNetConfig, channels: int, zero_scale: bool = False) -> BatchNorm:
    # dlzoo's bn_momentum weights the NEW batch (torch); Equinox's momentum weights the OLD statistic.
    bn = BatchNorm(channels, momentum=1 - config.bn_momentum, eps=config.bn_eps)  # theory: batch-norm
    # Zero-init of a block's last BN scale starts every residual branch at zero (Goyal et al., 2017).
    return eqx.tree_at(lambda b: b.scale, bn, jnp.zeros((channels,))) if zero_scale else bn


class Stem(eqx.Module):
    conv: Conv2d
    bn: BatchNorm

    def __init__(self, config: ResNetConfig, *, key: PRNGKeyArray):
        self.conv = Conv2d(config.num_channels, config.stem_width, 7, stride=2, padding=3, key=key)
        self.bn = _bn(config, config.stem_width)

    def __call__(self, x: Float[Array, "H W C"], state: State, *, inference: bool) -> tuple[Float[Array, "h w c"], State]:
        x, state = self.bn(self.conv(x), state, inference=inference)
        x = jax.nn.relu(x)
        # Explicit padding 1 filled with -inf: "SAME" would pad bottom/right only.
        x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (3, 3, 1), (2, 2, 1), ((1, 1), (1, 1), (0, 0)))
        return x, state


class Downsample(eqx.Module):
    conv: Conv2d
    bn: BatchNorm

    def __init__(self, config: ResNetConfig, n_in: int, n_out: int, stride: int, *, key: PRNGKeyArray):
        self.conv = Conv2d(n_in, n_out, 1, stride=stride, key=key)
        self.bn = _bn(config, n_out)

    def __call__(self, x: Float[Array, "H W c_in"], state: State, *, inference: bool) -> tuple[Float[Array, "h w c_out"], State]:
        return self.bn(self.conv(x), state, inference=inference)


class BasicBlock(eqx.Module):
    """3x3 -> 3x3 (ResNet-18/34)."""

    conv1: Conv2d
    bn1: BatchNorm
    conv2: Conv2d
    bn2: BatchNorm
    downsample: Downsample | None

    def __init__(self, config: ResNetConfig, n_in: int, width: int, n_out: int, stride: int, *, key: PRNGKeyArray):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv1 = Conv2d(n_in, width, 3, stride=stride, padding=1, key=k1)
        self.bn1 = _bn(config, width)
        self.conv2 = Conv2d(width, n_out, 3, padding=1, key=k2)
        self.bn2 = _bn(config, n_out, zero_scale=config.zero_init_residual)
        needed = stride != 1 or n_in != n_out
        self.downsample = Downsample(config, n_in, n_out, stride, key=k3) if needed else None

    def __call__(self, x: Float[Array, "H W c_in"], state: State, *, inference: bool) -> tuple[Float[Array, "h w c_out"], State]:
        shortcut = x
        h, state = self.bn1(self.conv1(x), state, inference=inference)
        h, state = self.bn2(self.conv2(jax.nn.relu(h)), state, inference=inference)
        if self.downsample is not None:
            shortcut, state = self.downsample(x, state, inference=inference)
        return jax.nn.relu(h + shortcut), state  # theory: residual-connections


class Bottleneck(eqx.Module):
    """1x1 reduce -> 3x3 (carrying the stride: v1.5) -> 1x1 expand (ResNet-50 and deeper)."""

    conv1: Conv2d
    bn1: BatchNorm
    conv2: Conv2d
    bn2: BatchNorm
    conv3: Conv2d
    bn3: BatchNorm
    downsample: Downsample | None

    def __init__(self, config: ResNetConfig, n_in: int, width: int, n_out: int, stride: int, *, key: PRNGKeyArray):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        # theory: bottleneck-block
        self.conv1 = Conv2d(n_in, width, 1, key=k1)
        self.bn1 = _bn(config, width)
        self.conv2 = Conv2d(width, width, 3, stride=stride, padding=1, key=k2)  # v1.5: stride here
        self.bn2 = _bn(config, width)
        self.conv3 = Conv2d(width, n_out, 1, key=k3)
        self.bn3 = _bn(config, n_out, zero_scale=config.zero_init_residual)
        needed = stride != 1 or n_in != n_out
        self.downsample = Downsample(config, n_in, n_out, stride, key=k4) if needed else None

    def __call__(self, x: Float[Array, "H W c_in"], state: State, *, inference: bool) -> tuple[Float[Array, "h w c_out"], State]:
        shortcut = x
        h, state = self.bn1(self.conv1(x), state, inference=inference)
        h, state = self.bn2(self.conv2(jax.nn.relu(h)), state, inference=inference)
        h, state = self.bn3(self.conv3(jax.nn.relu(h)), state, inference=inference)
        if self.downsample is not None:
            shortcut, state = self.downsample(x, state, inference=inference)
        return jax.nn.relu(h + shortcut), state  # theory: residual-connections


class Stage(eqx.Module):
    blocks: list[BasicBlock | Bottleneck]
    remat: bool = eqx.field(static=True)

    def __init__(self, config: ResNetConfig, layout: list[tuple[int, int, int, int]], *, key: PRNGKeyArray):
        # layout: (in_channels, width, out_channels, stride) per block, from config.layout(). Only
        # the first block changes resolution (stride) and width (downsample shortcut).
        block = Bottleneck if config.block == "bottleneck" else BasicBlock
        self.remat = config.remat
        self.blocks = [
            block(config, n_in, width, n_out, stride, key=k)
            for (n_in, width, n_out, stride), k in zip(layout, jax.random.split(key, len(layout)))
        ]

    def __call__(self, x: Float[Array, "H W C"], state: State, *, inference: bool) -> tuple[Float[Array, "h w c"], State]:
        for block in self.blocks:
            x, state = run_block(block, x, state, remat=self.remat, inference=inference)
        return x, state


class ResNet(eqx.Module):
    stem: Stem
    stages: list[Stage]
    head: Dense
    config: ResNetConfig = eqx.field(static=True)
    dtype: str = eqx.field(static=True)

    def __init__(self, config: ResNetConfig, *, key: PRNGKeyArray, dtype: str = "float32"):
        keys = jax.random.split(key, len(config.depths) + 2)
        # theory: initialization
        self.stem = Stem(config, key=keys[0])  # convs: kaiming normal, fan-out (He et al., 2015)
        self.stages = [Stage(config, layout, key=k) for layout, k in zip(config.layout(), keys[2:])]
        self.head = Dense(config.out_widths[-1], config.num_classes, init=uniform_fan_in, key=keys[1])
        self.config, self.dtype = config, dtype

    def forward_features(
        self, pixel_values: Float[Array, "H W C"], state: State, *, inference: bool = True
    ) -> tuple[Float[Array, "h w c"], State]:
        x, state = self.stem(pixel_values, state, inference=inference)
        for stage in self.stages:
            x, state = stage(x, state, inference=inference)
        return x, state

    def forward_head(self, x: Float[Array, "h w c"]) -> Float[Array, " classes"]:
        return self.head(x.mean(axis=(0, 1)))  # global average pool

    def __call__(
        self, pixel_values: Float[Array, "H W C"], state: State, *, key: PRNGKeyArray | None = None, inference: bool = True
    ) -> tuple[dict[str, Float[Array, " classes"]], State]:
        """``pixel_values`` (H, W, C), ``state`` -> ({"logits": (num_classes,)} float32, new
        state). ``key`` is unused (ResNet has no dropout), accepted as every Equinox layer does."""
        # theory: mixed-precision
        model = cast_floating(self, self.dtype)
        x, state = model.forward_features(pixel_values.astype(self.dtype), state, inference=inference)
        return {"logits": model.forward_head(x).astype(jnp.float32)}, state
