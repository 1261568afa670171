"""Pieces shared by the PyTorch models: explicit-generator initialisers and the compute dtype.

The leaf layers are torch's own (nn.Linear, nn.LayerNorm, nn.Embedding, nn.Conv2d,
nn.BatchNorm2d); the models name them after the canonical names of dlzoo's weight format
(``blocks.0.attn.qkv``), so converting to and from canonical tensors is mechanical: rename the
leaf, transpose the layout. Every initialiser takes an explicit ``generator`` so that building a
model never depends on, or disturbs, torch's global random state.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# A normal truncated at +-2 standard deviations has std 0.8796 of the untruncated one; divide it
# out so `std` means the std (the JAX backends draw the same distribution).
_TRUNCATED_STD = 0.87962566103423978


def normal_(tensor: torch.Tensor, std: float, generator: torch.Generator | None) -> torch.Tensor:
    return nn.init.normal_(tensor, 0.0, std, generator=generator)


def truncated_normal_(tensor: torch.Tensor, std: float, generator: torch.Generator | None) -> torch.Tensor:
    s = std / _TRUNCATED_STD
    return nn.init.trunc_normal_(tensor, 0.0, s, -2.0 * s, 2.0 * s, generator=generator)


def uniform_fan_in_(linear: nn.Linear, generator: torch.Generator | None) -> None:
    """torch.nn.Linear's default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), with an explicit generator."""
    bound = 1.0 / math.sqrt(linear.in_features)
    nn.init.uniform_(linear.weight, -bound, bound, generator=generator)
    if linear.bias is not None:
        nn.init.uniform_(linear.bias, -bound, bound, generator=generator)


def init_linear_(linear: nn.Linear, std: float, generator: torch.Generator | None, *,
                 truncated: bool) -> None:
    (truncated_normal_ if truncated else normal_)(linear.weight, std, generator)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matmuls run in: autocast's when it is on, else the tensor's own."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
