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
from pathlib import Path

import numpy as np

from .configs import check_arch, config_from_json
from .files import write_atomic
from .spec import TensorSpec, WeightsError, canonical_spec, count_params  # noqa: F401  (re-exported)

FORMAT = "dlzoo"
FORMAT_VERSION = "1"
DTYPE = np.dtype(np.float32)


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
            parts.append(
                f"missing {len(missing)}: "
                + ", ".join(f"{n} {_shape(spec[n].shape)}" for n in missing[:8])
                + (" ..." if len(missing) > 8 else "")
            )
        if unexpected:
            parts.append(
                f"unexpected {len(unexpected)}: "
                + ", ".join(f"{n} {_shape(np.shape(tensors[n]))}" for n in unexpected[:8])
                + (" ..." if len(unexpected) > 8 else "")
            )
        if problems:
            parts.append(f"mismatched {len(problems)}: " + "; ".join(problems[:8]) + (" ..." if len(problems) > 8 else ""))
        raise WeightsError(f"{source} do not fit {arch} {type(config).__name__}: " + " | ".join(parts))
    return {name: np.asarray(tensors[name]) for name in spec}


def save(path: str | os.PathLike, arch: str, config, tensors: dict[str, np.ndarray], *, overwrite: bool = False) -> Path:
    """Write a canonical ``.safetensors`` file atomically (temp file + rename): never a
    half-written file. The write policy of ``dlzoo.zoo.files``: the folder must exist, and an
    existing file is replaced only with ``overwrite=True``.

    Raises WeightsError when ``tensors`` do not fit ``arch``/``config``; PathError (or
    OutputExistsError) when ``path`` cannot be written as asked.
    """
    from safetensors.numpy import save_file

    tensors = validate(arch, config, tensors)
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "arch": arch, "config": config.to_json()}
    return write_atomic(
        path,
        lambda tmp: save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp, metadata=metadata),
        overwrite=overwrite,
        suffixes=(".safetensors",),
        what="canonical weights file",
    )


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        raise WeightsError(
            f"{path} is a folder; expected a canonical .safetensors file "
            "(a folder in the published layout loads with dlzoo.zoo.from_pretrained)"
        )
    if not path.is_file():
        raise WeightsError(f"{path}: no such file; expected a canonical .safetensors file")
    try:
        with safe_open(str(path), framework="np") as f:
            return dict(f.metadata() or {})
    except Exception as error:  # safetensors raises its own error types for corrupt headers
        raise WeightsError(f"{path}: corrupt, truncated or not a safetensors file ({_first_line(error)})") from None


# Config fields that change how a model runs (training memory, compile time), not its weights.
RUN_OPTIONS = ("remat", "scan_layers")


def without_run_options(config):
    """``config`` with every ``RUN_OPTIONS`` field it has set to False, for comparing weights."""
    return config.replace(**{name: False for name in RUN_OPTIONS if hasattr(config, name)})


def load(path: str | os.PathLike, arch: str | None = None, config=None):
    """Read and validate a canonical file. Returns (arch, config, tensors).

    ``arch`` and ``config``, when given, must match the file's (``remat`` and ``scan_layers``
    aside, ``RUN_OPTIONS``: they change how the model runs, not the weights); the config
    defaults to the file's.
    """
    from safetensors.numpy import load_file

    path = Path(path)
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise WeightsError(
            f"{path}: not a dlzoo canonical file (metadata format={meta.get('format')!r}); "
            "convert published checkpoints with `dlzoo convert SRC DST`"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise WeightsError(
            f"{path}: canonical format version {meta.get('format_version')!r} is not supported; this dlzoo reads version {FORMAT_VERSION}"
        )
    file_arch = meta.get("arch", "")
    if arch is not None and file_arch != arch:
        raise WeightsError(f"{path}: holds {file_arch!r} weights, expected {arch!r}")
    file_config = config_from_json(check_arch(file_arch), meta.get("config", "{}"))
    if config is not None and type(config) is type(file_config) and without_run_options(config) == without_run_options(file_config):
        # remat and scan_layers change how the model runs, not the weights: either file loads into either
        file_config = config
    if config is not None and config != file_config:
        raise WeightsError(
            f"{path}: was saved with config {file_config}, which differs from the "
            f"requested {config}; load without a config to use the file's"
        )
    try:
        tensors = load_file(str(path))
    except Exception as error:
        raise WeightsError(f"{path}: corrupt or truncated safetensors file ({_first_line(error)})") from None
    return file_arch, file_config, validate(file_arch, file_config, tensors, source=str(path))


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def random_tensors(arch: str, config, seed: int = 0) -> dict[str, np.ndarray]:
    """Canonical float32 tensors drawn with numpy from ``seed`` alone, so they are the same
    whatever frameworks are installed (``dlzoo verify``'s weights). Every tensor is non-trivial,
    so a mix-up of any leaf shows in the outputs: kernels N(0, 1/fan_in) (fan_in = all axes but
    the last), embeddings and tokens N(0, 0.02^2), biases N(0, 0.02^2), norm scales 1 + N(0, 0.1^2),
    batch-norm means N(0, 0.1^2) and variances U(0.5, 1.5)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, spec in canonical_spec(arch, config).items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "kernel":
            value = rng.standard_normal(spec.shape) / np.sqrt(np.prod(spec.shape[:-1]))
        elif leaf == "scale":
            value = 1.0 + 0.1 * rng.standard_normal(spec.shape)
        elif leaf == "mean":
            value = 0.1 * rng.standard_normal(spec.shape)
        elif leaf == "var":
            value = rng.uniform(0.5, 1.5, spec.shape)
        else:  # embedding, bias, cls_token, pos_embed
            value = 0.02 * rng.standard_normal(spec.shape)
        out[name] = value.astype(DTYPE)
    return out
