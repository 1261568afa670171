"""Analytic cost of a model: parameters, forward FLOPs per example, memory.

FLOPs count a multiply-add as two operations and include every matmul and convolution (the
terms that dominate); normalisations, activations and softmax are left out, as in Kaplan et al.
(2020) and the published ResNet/ViT figures (ResNet-50 at 224px: 4.1 GMACs = 8.2 GFLOPs).
Training costs about three forward passes (forward + backward twice the forward).

Activation memory for transformers follows Korthikanti et al. (2022), "Reducing Activation
Recomputation in Large Transformer Models": per layer s*b*h*(34 + 5*a*s/h) bytes in 16-bit,
doubled here for float32. For ResNet it is the stored conv/BN/ReLU outputs, three tensors per
conv, float32.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .configs import BertConfig, GPTConfig, ResNetConfig, ViTConfig
from .spec import count_params

BYTES_FP32 = 4
ADAMW_BYTES_PER_PARAM = 16  # fp32 weights, gradients and AdamW's two moments


@dataclass(frozen=True)
class Estimate:
    params: int
    flops_forward: int            # per example
    flops_train_step: int         # per example, forward + backward
    tokens_or_pixels: str         # what one example is
    weights_bytes: int
    training_state_bytes: int     # weights + grads + AdamW moments, fp32
    activation_bytes_per_example: int

    def as_dict(self) -> dict:
        return asdict(self)


def _transformer_layers(n_layers: int, t: int, d: int, mlp: int) -> int:
    per_layer = 2 * t * d * 3 * d + 2 * 2 * t * t * d + 2 * t * d * d + 2 * 2 * t * d * mlp
    return n_layers * per_layer


def _transformer_activations(n_layers: int, t: int, d: int, heads: int) -> int:
    return int(2 * n_layers * t * d * (34 + 5 * heads * t / d))


def estimate(arch: str, config, *, seq_len: int | None = None, image_size: int | None = None) -> Estimate:
    params = count_params(arch, config)
    c = config
    if isinstance(c, GPTConfig):
        t = seq_len or c.context_length
        flops = _transformer_layers(c.num_layers, t, c.hidden_size, c.mlp_dim) + 2 * t * c.hidden_size * c.vocab_size
        acts = _transformer_activations(c.num_layers, t, c.hidden_size, c.num_heads)
        unit = f"{t} tokens"
    elif isinstance(c, BertConfig):
        t = seq_len or c.max_positions
        flops = _transformer_layers(c.num_layers, t, c.hidden_size, c.mlp_dim)
        if c.pooler:
            flops += 2 * c.hidden_size * c.hidden_size
        if c.mlm_head:
            flops += 2 * t * c.hidden_size * (c.hidden_size + c.vocab_size)
        acts = _transformer_activations(c.num_layers, t, c.hidden_size, c.num_heads)
        unit = f"{t} tokens"
    elif isinstance(c, ViTConfig):
        n = c.num_patches
        t = n + 1
        flops = (2 * n * c.patch_size ** 2 * c.num_channels * c.hidden_size
                 + _transformer_layers(c.num_layers, t, c.hidden_size, c.mlp_dim)
                 + 2 * c.hidden_size * c.num_classes)
        acts = _transformer_activations(c.num_layers, t, c.hidden_size, c.num_heads)
        unit = f"{c.image_size}x{c.image_size} image"
    elif isinstance(c, ResNetConfig):
        size = image_size or 224
        h = (size + 2 * 3 - 7) // 2 + 1           # stem conv 7x7/2, pad 3
        flops = 2 * h * h * 49 * c.num_channels * c.stem_width
        elements = 3 * h * h * c.stem_width
        h = (h + 2 - 3) // 2 + 1                  # max-pool 3x3/2, pad 1
        for blocks in c.layout():
            for n_in, width, n_out, stride in blocks:
                h_out = (h - 1) // stride + 1
                if c.block == "bottleneck":
                    convs = [(1, n_in, width, h), (3, width, width, h_out), (1, width, n_out, h_out)]
                else:
                    convs = [(3, n_in, width, h_out), (3, width, n_out, h_out)]
                if stride != 1 or n_in != n_out:
                    convs.append((1, n_in, n_out, h_out))
                for k, a, z, hw in convs:
                    flops += 2 * hw * hw * k * k * a * z
                    elements += 3 * hw * hw * z
                h = h_out
        flops += 2 * c.out_widths[-1] * c.num_classes
        acts = elements * BYTES_FP32
        unit = f"{size}x{size} image"
    else:
        raise TypeError(type(c).__name__)
    return Estimate(params=params, flops_forward=int(flops), flops_train_step=int(3 * flops),
                    tokens_or_pixels=unit, weights_bytes=params * BYTES_FP32,
                    training_state_bytes=params * ADAMW_BYTES_PER_PARAM,
                    activation_bytes_per_example=int(acts))
