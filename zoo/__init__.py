"""dlzoo.zoo: configs, canonical weights, hub import/export, and one backend per framework."""

from .configs import (ARCHS, ALIASES, CONFIGS, PRESETS, BertConfig, ConfigError, GPTConfig,
                      ResNetConfig, ViTConfig, ZooError, get_config, preset_names)
from .handle import FRAMEWORKS, Handle, installed_frameworks, load
from .weights import WeightsError, canonical_spec, count_params


def from_pretrained(name_or_path, framework: str = "torch", **kwargs) -> Handle:
    """A handle from a hub id or a local directory in the published (transformers) layout."""
    from .hub import from_pretrained as _from_pretrained

    return _from_pretrained(name_or_path, framework=framework, **kwargs)


__all__ = ["ARCHS", "ALIASES", "CONFIGS", "FRAMEWORKS", "PRESETS", "BertConfig", "ConfigError",
           "GPTConfig", "Handle", "ResNetConfig", "ViTConfig", "WeightsError", "ZooError",
           "canonical_spec", "count_params", "from_pretrained", "get_config", "installed_frameworks",
           "load", "preset_names"]
