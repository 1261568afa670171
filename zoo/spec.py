"""Canonical tensor names and shapes for every architecture, derived from its config.

The single source of truth for the canonical layout (see ``weights.py`` for the file format):
every framework's state dict is checked against it and parameter counts come from it. Free of
numpy and of any framework, so the CLI can count parameters without importing either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .configs import CONFIGS, BertConfig, GPTConfig, ResNetConfig, ViTConfig, ZooError, check_arch


class WeightsError(ZooError):
    pass


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    trainable: bool = True  # False for batch-norm running statistics


def _dense(spec: dict, name: str, n_in: int, n_out: int, bias: bool = True) -> None:
    spec[f"{name}.kernel"] = TensorSpec((n_in, n_out))
    if bias:
        spec[f"{name}.bias"] = TensorSpec((n_out,))


def _norm(spec: dict, name: str, dim: int) -> None:
    spec[f"{name}.scale"] = TensorSpec((dim,))
    spec[f"{name}.bias"] = TensorSpec((dim,))


def _conv(spec: dict, name: str, size: int, n_in: int, n_out: int, bias: bool = False) -> None:
    spec[f"{name}.kernel"] = TensorSpec((size, size, n_in, n_out))
    if bias:
        spec[f"{name}.bias"] = TensorSpec((n_out,))


def _batch_norm(spec: dict, name: str, dim: int) -> None:
    _norm(spec, name, dim)
    spec[f"{name}.mean"] = TensorSpec((dim,), trainable=False)
    spec[f"{name}.var"] = TensorSpec((dim,), trainable=False)


def _transformer_block(spec: dict, prefix: str, dim: int, mlp: int) -> None:
    _norm(spec, f"{prefix}.ln1", dim)
    _dense(spec, f"{prefix}.attn.qkv", dim, 3 * dim)
    _dense(spec, f"{prefix}.attn.out", dim, dim)
    _norm(spec, f"{prefix}.ln2", dim)
    _dense(spec, f"{prefix}.mlp.fc", dim, mlp)
    _dense(spec, f"{prefix}.mlp.out", mlp, dim)


def _bert_spec(c: BertConfig) -> dict[str, TensorSpec]:
    spec: dict[str, TensorSpec] = {}
    d = c.hidden_size
    spec["embeddings.word.embedding"] = TensorSpec((c.vocab_size, d))
    spec["embeddings.position.embedding"] = TensorSpec((c.max_positions, d))
    spec["embeddings.token_type.embedding"] = TensorSpec((c.type_vocab_size, d))
    _norm(spec, "embeddings.ln", d)
    for i in range(c.num_layers):
        _transformer_block(spec, f"blocks.{i}", d, c.mlp_dim)
    if c.pooler:
        _dense(spec, "pooler", d, d)
    if c.mlm_head:
        _dense(spec, "mlm.transform", d, d)
        _norm(spec, "mlm.ln", d)
        if not c.tie_word_embeddings:
            _dense(spec, "mlm.decoder", d, c.vocab_size, bias=False)
        spec["mlm.bias"] = TensorSpec((c.vocab_size,))
    if c.num_classes:
        _dense(spec, "classifier", d, c.num_classes)
    return spec


def _gpt_spec(c: GPTConfig) -> dict[str, TensorSpec]:
    spec: dict[str, TensorSpec] = {}
    d = c.hidden_size
    spec["wte.embedding"] = TensorSpec((c.vocab_size, d))
    spec["wpe.embedding"] = TensorSpec((c.context_length, d))
    for i in range(c.num_layers):
        _transformer_block(spec, f"blocks.{i}", d, c.mlp_dim)
    _norm(spec, "ln_f", d)
    if not c.tie_word_embeddings:
        _dense(spec, "lm_head", d, c.vocab_size, bias=False)
    return spec


def _vit_spec(c: ViTConfig) -> dict[str, TensorSpec]:
    spec: dict[str, TensorSpec] = {}
    d = c.hidden_size
    _conv(spec, "patch_embed", c.patch_size, c.num_channels, d, bias=True)
    spec["cls_token"] = TensorSpec((1, 1, d))
    spec["pos_embed"] = TensorSpec((1, c.num_patches + 1, d))
    for i in range(c.num_layers):
        _transformer_block(spec, f"blocks.{i}", d, c.mlp_dim)
    _norm(spec, "ln_f", d)
    _dense(spec, "head", d, c.num_classes)
    return spec


def _resnet_spec(c: ResNetConfig) -> dict[str, TensorSpec]:
    spec: dict[str, TensorSpec] = {}
    _conv(spec, "stem.conv", 7, c.num_channels, c.stem_width)
    _batch_norm(spec, "stem.bn", c.stem_width)
    for s, blocks in enumerate(c.layout()):
        for b, (n_in, width, n_out, stride) in enumerate(blocks):
            p = f"stages.{s}.blocks.{b}"
            if c.block == "bottleneck":
                convs = [(1, n_in, width), (3, width, width), (1, width, n_out)]
            else:
                convs = [(3, n_in, width), (3, width, n_out)]
            for k, (size, a, z) in enumerate(convs, start=1):
                _conv(spec, f"{p}.conv{k}", size, a, z)
                _batch_norm(spec, f"{p}.bn{k}", z)
            if stride != 1 or n_in != n_out:
                _conv(spec, f"{p}.downsample.conv", 1, n_in, n_out)
                _batch_norm(spec, f"{p}.downsample.bn", n_out)
    _dense(spec, "head", c.out_widths[-1], c.num_classes)
    return spec


_SPECS = {"bert": _bert_spec, "gpt": _gpt_spec, "resnet": _resnet_spec, "vit": _vit_spec}


def canonical_spec(arch: str, config) -> dict[str, TensorSpec]:
    check_arch(arch)
    if not isinstance(config, CONFIGS[arch]):
        raise WeightsError(f"expected a {CONFIGS[arch].__name__} for arch {arch!r}, got {type(config).__name__}")
    return _SPECS[arch](config)


def count_params(arch: str, config) -> int:
    """Trainable parameters (batch-norm running statistics excluded), as published counts are."""
    return sum(math.prod(s.shape) for s in canonical_spec(arch, config).values() if s.trainable)
