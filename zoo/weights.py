"""Canonical weights: one framework-neutral layout shared by every implementation.

A canonical file is safetensors with metadata ``format=dlzoo``, ``format_version``, ``arch`` and
``config`` (the config dataclass as JSON). Names and layouts (see DESIGN.md): dense ``kernel``
[in, out] and ``bias``; layer norm ``scale``/``bias``; embedding ``embedding`` [rows, dim]; conv
``kernel`` [kh, kw, in, out]; batch norm ``scale``/``bias``/``mean``/``var``; fused attention
``qkv.kernel`` [D, 3D] with columns q | k | v, heads contiguous within each.

``canonical_spec`` is the single source of truth for those names and shapes: every framework's
state dict is checked against it, and parameter counts are computed from it.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .configs import (CONFIGS, BertConfig, GPTConfig, ResNetConfig, ViTConfig, ZooError,
                      check_arch, config_from_json)

FORMAT = "dlzoo"
FORMAT_VERSION = "1"
DTYPE = np.dtype(np.float32)


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
        spec["mlm.bias"] = TensorSpec((c.vocab_size,))
    if c.num_labels:
        _dense(spec, "classifier", d, c.num_labels)
    return spec


def _gpt_spec(c: GPTConfig) -> dict[str, TensorSpec]:
    spec: dict[str, TensorSpec] = {}
    d = c.hidden_size
    spec["wte.embedding"] = TensorSpec((c.vocab_size, d))
    spec["wpe.embedding"] = TensorSpec((c.context_length, d))
    for i in range(c.num_layers):
        _transformer_block(spec, f"blocks.{i}", d, c.mlp_dim)
    _norm(spec, "ln_f", d)
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
    return sum(int(np.prod(s.shape)) for s in canonical_spec(arch, config).values() if s.trainable)


def _shape(shape) -> str:
    return "[" + ", ".join(str(n) for n in shape) + "]"


def validate(arch: str, config, tensors: dict[str, np.ndarray], *, source: str = "weights") -> dict[str, np.ndarray]:
    """Check names, shapes and dtypes against the spec. Raises one WeightsError listing every
    missing, unexpected, mis-shaped and wrongly typed tensor; returns float32 arrays."""
    spec = canonical_spec(arch, config)
    missing = [n for n in spec if n not in tensors]
    unexpected = sorted(n for n in tensors if n not in spec)
    problems = []
    for name, want in spec.items():
        if name not in tensors:
            continue
        value = np.asarray(tensors[name])
        if tuple(value.shape) != want.shape:
            problems.append(f"{name} has shape {_shape(value.shape)}, expected {_shape(want.shape)}")
        elif value.dtype != DTYPE:
            problems.append(f"{name} has dtype {value.dtype}, expected float32")
    if missing or unexpected or problems:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: " + ", ".join(
                f"{n} {_shape(spec[n].shape)}" for n in missing[:8]) + (" ..." if len(missing) > 8 else ""))
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: " + ", ".join(
                f"{n} {_shape(np.shape(tensors[n]))}" for n in unexpected[:8]) + (" ..." if len(unexpected) > 8 else ""))
        if problems:
            parts.append(f"mismatched {len(problems)}: " + "; ".join(problems[:8]) + (" ..." if len(problems) > 8 else ""))
        raise WeightsError(f"{source} do not fit {arch} {type(config).__name__}: " + " | ".join(parts))
    return {name: np.asarray(tensors[name]) for name in spec}


def save(path: str | os.PathLike, arch: str, config, tensors: dict[str, np.ndarray]) -> Path:
    """Write a canonical file atomically (temp file + rename): never a half-written file."""
    from safetensors.numpy import save_file

    tensors = validate(arch, config, tensors)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "arch": arch, "config": config.to_json()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file; expected a canonical .safetensors file")
    try:
        with safe_open(str(path), framework="np") as f:
            return dict(f.metadata() or {})
    except Exception as error:  # safetensors raises its own error types for corrupt headers
        raise WeightsError(f"{path}: corrupt, truncated or not a safetensors file ({_first_line(error)})") from None


def load(path: str | os.PathLike, arch: str | None = None, config=None):
    """Read and validate a canonical file. Returns (arch, config, tensors).

    ``arch`` and ``config``, when given, must match the file's; the config defaults to the file's.
    """
    from safetensors.numpy import load_file

    path = Path(path)
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{path}: not a dlzoo canonical file (metadata format={meta.get('format')!r}); "
                           "convert published checkpoints with `dlzoo convert SRC DST`")
    if meta.get("format_version") != FORMAT_VERSION:
        raise WeightsError(f"{path}: canonical format version {meta.get('format_version')!r} is not "
                           f"supported; this dlzoo reads version {FORMAT_VERSION}")
    file_arch = meta.get("arch", "")
    if arch is not None and file_arch != arch:
        raise WeightsError(f"{path}: holds {file_arch!r} weights, expected {arch!r}")
    file_config = config_from_json(check_arch(file_arch), meta.get("config", "{}"))
    if config is not None and config != file_config:
        raise WeightsError(f"{path}: was saved with config {file_config}, which differs from the "
                           f"requested {config}; load without a config to use the file's")
    try:
        tensors = load_file(str(path))
    except Exception as error:
        raise WeightsError(f"{path}: corrupt or truncated safetensors file ({_first_line(error)})") from None
    return file_arch, file_config, validate(file_arch, file_config, tensors, source=str(path))


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
