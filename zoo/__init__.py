"""dlzoo.zoo: configs, canonical weights, hub import/export, and one backend per framework.

Names are resolved on first use, so importing the package (or the CLI) costs no numpy and no
framework import until something needs them.
"""

import importlib

_EXPORTS = {
    "ARCHS": "configs",
    "ALIASES": "configs",
    "CONFIGS": "configs",
    "PRESETS": "configs",
    "BertConfig": "configs",
    "ConfigError": "configs",
    "GPTConfig": "configs",
    "ResNetConfig": "configs",
    "ViTConfig": "configs",
    "ZooError": "configs",
    "get_config": "configs",
    "preset_names": "configs",
    "FRAMEWORKS": "frameworks",
    "Handle": "handle",
    "installed_frameworks": "frameworks",
    "load": "handle",
    "WeightsError": "spec",
    "canonical_spec": "spec",
    "count_params": "spec",
}
__all__ = sorted([*_EXPORTS, "from_pretrained"])


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def from_pretrained(name_or_path, framework: str = "torch", **kwargs):
    """A handle from a hub id or a local directory in the published (transformers) layout."""
    from .hub import from_pretrained as _from_pretrained

    return _from_pretrained(name_or_path, framework=framework, **kwargs)
