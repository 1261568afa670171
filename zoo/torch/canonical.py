"""PyTorch model <-> canonical tensors (DESIGN.md "Canonical weights").

Models are plain ``nn.Module`` s whose module names are the canonical names, so the mapping is
decided by module type alone: nn.Linear weight [out, in] -> ``kernel`` [in, out]; nn.Conv2d
weight OIHW -> ``kernel`` HWIO; nn.LayerNorm weight -> ``scale``; nn.BatchNorm2d weight, bias,
running_mean, running_var -> ``scale``, ``bias``, ``mean``, ``var``; nn.Embedding weight ->
``embedding``; any other parameter (``cls_token``, ``pos_embed``, ``mlm.bias``) keeps its name.
Imports only torch, numpy and the zoo's configs, so generated projects copy this file beside
their model.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from ..configs import ZooError


def _leaves(model: nn.Module) -> Iterator[tuple[str, torch.Tensor, str]]:
    """(canonical name, tensor, layout) of every canonical tensor; layout is "linear", "conv"
    or "same". Tied weights (the GPT and MLM decoders) are no modules, so they appear once."""
    for prefix, module in model.named_modules():
        p = f"{prefix}." if prefix else ""
        if isinstance(module, nn.Linear):
            yield f"{p}kernel", module.weight, "linear"
            if module.bias is not None:
                yield f"{p}bias", module.bias, "same"
        elif isinstance(module, nn.Conv2d):
            yield f"{p}kernel", module.weight, "conv"
            if module.bias is not None:
                yield f"{p}bias", module.bias, "same"
        elif isinstance(module, nn.LayerNorm):
            yield f"{p}scale", module.weight, "same"
            yield f"{p}bias", module.bias, "same"
        elif isinstance(module, nn.BatchNorm2d):
            yield f"{p}scale", module.weight, "same"
            yield f"{p}bias", module.bias, "same"
            yield f"{p}mean", module.running_mean, "same"
            yield f"{p}var", module.running_var, "same"
        elif isinstance(module, nn.Embedding):
            yield f"{p}embedding", module.weight, "same"
        else:
            for name, param in module.named_parameters(recurse=False):
                yield f"{p}{name}", param, "same"


def _to_canonical(tensor: torch.Tensor, layout: str) -> np.ndarray:
    t = tensor.detach().to("cpu", torch.float32)
    if layout == "linear":
        t = t.T  # [out, in] -> [in, out]
    elif layout == "conv":
        t = t.permute(2, 3, 1, 0)  # OIHW -> HWIO
    return np.array(t.numpy(), dtype=np.float32, order="C")  # a copy, never a view of the model


def _from_canonical(array: np.ndarray, layout: str) -> torch.Tensor:
    if layout == "linear":
        array = array.T
    elif layout == "conv":
        array = array.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    return torch.from_numpy(np.ascontiguousarray(array))


def state_dict(arch: str, config, native: nn.Module) -> dict[str, np.ndarray]:
    """Every canonical tensor (parameters and batch-norm statistics) as float32 numpy."""
    return {name: _to_canonical(t, layout) for name, t, layout in _leaves(native)}


@torch.no_grad()
def load_state_dict(arch: str, config, native: nn.Module, tensors: dict[str, np.ndarray]) -> nn.Module:
    """Copy ``tensors`` into ``native`` in place and return it. Raises ZooError listing missing
    and unexpected names, or the first name whose shape differs from the model's."""
    leaves = {name: (t, layout) for name, t, layout in _leaves(native)}
    if set(leaves) != set(tensors):
        raise ZooError(
            f"the torch {arch} model does not match its config: missing "
            f"{sorted(set(tensors) - set(leaves))[:8]}, extra {sorted(set(leaves) - set(tensors))[:8]}; "
            "build the model from the weights' config"
        )
    for name, (t, layout) in leaves.items():
        value = _from_canonical(np.asarray(tensors[name], dtype=np.float32), layout)
        if tuple(value.shape) != tuple(t.shape):
            raise ZooError(
                f"{name} has canonical shape {list(np.shape(tensors[name]))}, which does not fit the "
                f"model's {list(t.shape)} ({layout} layout); build the model from the weights' config"
            )
        t.copy_(value)
    return native
