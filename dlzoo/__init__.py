"""dlzoo: one model, five frameworks, the same numbers.

    >>> import dlzoo
    >>> model = dlzoo.create_model("gpt", framework="torch", config="tiny")   # a torch nn.Module
    >>> handle = dlzoo.load("vit", "flax", config="B/16")                   # numpy in, numpy out
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["ARCHS", "FRAMEWORKS", "Handle", "create_model", "from_pretrained", "get_config",
           "installed_frameworks", "load", "save"]


def __getattr__(name):  # the zoo's names, resolved on first use to keep `import dlzoo` light
    if name in ("ARCHS", "FRAMEWORKS", "Handle", "get_config", "installed_frameworks", "load"):
        from . import zoo

        return getattr(zoo, name)
    raise AttributeError(f"module 'dlzoo' has no attribute {name!r}")


def create_model(arch: str, framework: str = "torch", config: Any = "tiny", *, seed: int = 0,
                 weights: Any = None, **overrides: Any):
    """The framework's own model object (``Handle.native``) for ``arch``; fields of the config
    can be overridden by keyword, e.g. ``create_model("vit", "torch", "B/16", num_classes=10)``."""
    from .zoo.handle import load

    return load(arch, framework, config=config, weights=weights, seed=seed, **overrides).native


def from_pretrained(name_or_path: str, framework: str = "torch", **kwargs: Any):
    """The framework's own model object loaded from a hub id or a published checkpoint folder."""
    from .zoo.hub import from_pretrained as _from_pretrained

    return _from_pretrained(name_or_path, framework=framework, **kwargs).native


def save(handle, path) -> Any:
    """Write a handle's weights as a canonical safetensors file."""
    return handle.save(path)
