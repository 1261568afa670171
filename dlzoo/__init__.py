"""dlzoo: one model, five frameworks, the same numbers.

    >>> import dlzoo
    >>> model = dlzoo.create_model("gpt", framework="torch", config="tiny")   # a torch nn.Module
    >>> handle = dlzoo.load("vit", "flax", config="B/16")                   # numpy in, numpy out

Errors: everything dlzoo raises for input it cannot use is a ``dlzoo.ZooError`` (a ValueError)
whose message is one line saying what was expected and what to do; the subclasses narrow it down
(see docs/errors.md):

    ZooError
      ConfigError         unknown preset, invalid config field
      WeightsError        a canonical weights file or dict that does not fit the model
      HubError            a published checkpoint or hub id that cannot be read
      PathError           a path that cannot be read or written as asked
        OutputExistsError the destination exists and overwrite=True was not given
      MetricsError        a malformed metrics.jsonl (dlzoo diagnose)
      UnknownTopicError   a concept the knowledge base does not hold (dlzoo explain)
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
# name -> module that defines it, resolved on first use to keep `import dlzoo` light
_LAZY = {
    "ARCHS": "zoo",
    "FRAMEWORKS": "zoo",
    "Handle": "zoo",
    "get_config": "zoo",
    "installed_frameworks": "zoo",
    "load": "zoo",
    "ZooError": "zoo.configs",
    "ConfigError": "zoo.configs",
    "WeightsError": "zoo.spec",
    "HubError": "zoo.hub",
    "PathError": "zoo.files",
    "OutputExistsError": "zoo.files",
    "MetricsError": "agents.metrics",
    "UnknownTopicError": "agents.theory",
}
__all__ = sorted([*_LAZY, "create_model", "from_pretrained", "save"])


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'dlzoo' has no attribute {name!r}")


def create_model(arch: str, framework: str = "torch", config: Any = "tiny", *, seed: int = 0, weights: Any = None, **overrides: Any):
    """The framework's own model object (``Handle.native``) for ``arch``; fields of the config
    can be overridden by keyword, e.g. ``create_model("vit", "torch", "B/16", num_classes=10)``."""
    from .zoo.handle import load

    return load(arch, framework, config=config, weights=weights, seed=seed, **overrides).native


def from_pretrained(name_or_path: str, framework: str = "torch", **kwargs: Any):
    """The framework's own model object loaded from a hub id or a published checkpoint folder."""
    from .zoo.hub import from_pretrained as _from_pretrained

    return _from_pretrained(name_or_path, framework=framework, **kwargs).native


def save(handle, path, *, overwrite: bool = False) -> Any:
    """Write a handle's weights as a canonical ``.safetensors`` file (``Handle.save``): refused
    with OutputExistsError when the file exists, unless ``overwrite=True``."""
    return handle.save(path, overwrite=overwrite)
