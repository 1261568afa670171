"""ResNet v1.5 in PyTorch: a conv stem, stages of residual blocks (basic or bottleneck) with
batch norm, global average pooling and a linear head.

Papers: He et al., 2016, "Deep Residual Learning for Image Recognition"; v1.5 (stride on the
3x3 conv of the bottleneck, as torchvision and transformers) from NVIDIA's DeepLearningExamples;
zero-init of the last BN scale from Goyal et al., 2017, "Accurate, Large Minibatch SGD".

Args (``ResNetConfig``): block ("basic" or "bottleneck"), depths and widths (per stage),
stem_width, num_channels, num_classes, bn_eps, bn_momentum (torch's convention, the weight of
the new batch, which nn.BatchNorm2d takes as is), zero_init_residual, remat. ``generator`` (keyword)
draws the initial weights without touching torch's global random state. Images are NCHW.
Batch norm uses batch statistics under ``model.train()`` and running ones under ``model.eval()``.

Example::

    import torch
    from dlzoo.zoo.configs import get_config
    from dlzoo.zoo.torch.resnet import ResNet

    model = ResNet(get_config("resnet", "tiny"), generator=torch.Generator().manual_seed(0)).eval()
    images = torch.randn(2, 3, 32, 32)
    logits = model(images)["logits"]                                      # (2, 10)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import ResNetConfig
from .layers import run_block, uniform_fan_in_


def conv(n_in: int, n_out: int, size: int, stride: int = 1) -> nn.Conv2d:
    # Symmetric padding k // 2 on both sides, never "SAME" (which pads bottom/right more when strided).
    return nn.Conv2d(n_in, n_out, size, stride=stride, padding=size // 2, bias=False)


def batch_norm(config: ResNetConfig, channels: int) -> nn.BatchNorm2d:
    # theory: batch-norm
    return nn.BatchNorm2d(channels, eps=config.bn_eps, momentum=config.bn_momentum)


# The activations are rewritten in place (relu_, +=), as torchvision's ResNet does: a batch-norm
# output is not needed by its backward pass, and the copies cost ~2% of a ResNet-50 training
# step on CPU (docs/bench.md).


class Stem(nn.Module):
    def __init__(self, config: ResNetConfig):
        super().__init__()
        self.conv = nn.Conv2d(config.num_channels, config.stem_width, 7, stride=2, padding=3, bias=False)
        self.bn = batch_norm(config, config.stem_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)), inplace=True)  # (B, C, H/2, W/2)
        # torch's max-pool pads with -inf, so padding never wins the max.
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)  # (B, C, H/4, W/4)


class Downsample(nn.Module):
    """Projection shortcut: 1x1 conv (carrying the stride) + BN, where the shape changes."""

    def __init__(self, config: ResNetConfig, n_in: int, n_out: int, stride: int):
        super().__init__()
        self.conv = conv(n_in, n_out, 1, stride)
        self.bn = batch_norm(config, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class BasicBlock(nn.Module):
    """3x3 -> 3x3 (ResNet-18/34)."""

    def __init__(self, config: ResNetConfig, n_in: int, width: int, n_out: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = conv(n_in, width, 3, stride), batch_norm(config, width)
        self.conv2, self.bn2 = conv(width, n_out, 3), batch_norm(config, n_out)
        needs_projection = stride != 1 or n_in != n_out
        self.downsample = Downsample(config, n_in, n_out, stride) if needs_projection else None

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)  # (B, C_out, H', W')
        h = F.relu(self.bn1(self.conv1(x)), inplace=True)  # (B, width, H', W')
        h = self.bn2(self.conv2(h))  # (B, C_out, H', W')
        h += shortcut  # theory: residual-connections
        return F.relu(h, inplace=True)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carrying the stride: v1.5) -> 1x1 expand (ResNet-50 and deeper)."""

    def __init__(self, config: ResNetConfig, n_in: int, width: int, n_out: int, stride: int):
        super().__init__()
        # theory: bottleneck-block
        self.conv1, self.bn1 = conv(n_in, width, 1), batch_norm(config, width)
        self.conv2, self.bn2 = conv(width, width, 3, stride), batch_norm(config, width)
        self.conv3, self.bn3 = conv(width, n_out, 1), batch_norm(config, n_out)
        needs_projection = stride != 1 or n_in != n_out
        self.downsample = Downsample(config, n_in, n_out, stride) if needs_projection else None

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)  # (B, C_out, H', W')
        h = F.relu(self.bn1(self.conv1(x)), inplace=True)  # (B, width, H, W)
        h = F.relu(self.bn2(self.conv2(h)), inplace=True)  # (B, width, H', W')
        h = self.bn3(self.conv3(h))  # (B, C_out, H', W')
        h += shortcut  # theory: residual-connections
        return F.relu(h, inplace=True)


class Stage(nn.Module):
    """Residual blocks at one resolution; ``blocks`` is one stage of ``ResNetConfig.layout()``:
    per block (in_channels, inner width, out_channels, stride)."""

    def __init__(self, config: ResNetConfig, blocks: list[tuple[int, int, int, int]]):
        super().__init__()
        block = Bottleneck if config.block == "bottleneck" else BasicBlock
        self.blocks = nn.ModuleList(block(config, *spec) for spec in blocks)
        self.remat = config.remat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = run_block(block, x, remat=self.remat)
        return x


class ResNet(nn.Module):
    def __init__(self, config: ResNetConfig, *, generator: torch.Generator | None = None):
        super().__init__()
        self.config = config
        self.stem = Stem(config)
        self.stages = nn.ModuleList(Stage(config, blocks) for blocks in config.layout())
        self.head = nn.Linear(config.out_widths[-1], config.num_classes)
        self.init_weights(generator)

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Kaiming normal (fan-out, ReLU) convs, BN scale 1 and bias 0, torch's default head;
        with ``zero_init_residual`` each block starts as the identity (its last BN scale 0)."""
        # theory: initialization
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=generator)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
                module.reset_running_stats()
        uniform_fan_in_(self.head, generator)
        if self.config.zero_init_residual:
            for stage in self.stages:
                for block in stage.blocks:
                    nn.init.zeros_(block.last_bn.weight)

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values`` (B, C_in, H, W) -> the last stage's feature map (B, C, H/32, W/32)
        (H/2^(S+1) for S stages)."""
        x = self.stem(pixel_values)  # (B, stem_width, H/4, W/4)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean(dim=(2, 3)))  # global average pool -> (B, num_classes)

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """``pixel_values`` (B, C_in, H, W) -> {"logits": (B, num_classes)}."""
        return {"logits": self.forward_head(self.forward_features(pixel_values))}
