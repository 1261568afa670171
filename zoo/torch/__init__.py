"""PyTorch backend: the reference implementation every other framework is compared against.

The seven functions below are the backend contract of ``dlzoo.zoo.handle``; the mapping between
models and canonical tensors (``state_dict``, ``load_state_dict``) lives in ``canonical.py``,
which generated projects copy beside their model.
"""

from __future__ import annotations

import contextlib
import numpy as np
import torch
from torch import nn

from ..configs import ZooError
from .bert import BERT
from .canonical import _leaves, _to_canonical, load_state_dict, state_dict
from .gpt import GPT
from .resnet import ResNet
from .vit import ViT

MODELS: dict[str, type[nn.Module]] = {"bert": BERT, "gpt": GPT, "resnet": ResNet, "vit": ViT}

# The handle's compute dtype lives on the module: apply() takes no dtype, and torch's idiom for
# mixed precision is autocast around an fp32 model rather than a model built in bf16.
_DTYPE_ATTR = "dlzoo_compute_dtype"


def build(arch: str, config, *, seed: int = 0, compute_dtype: str = "float32") -> nn.Module:
    """A model with weights drawn from ``seed``, in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    # nn.Linear & co. run their own default init from the global generator before ours replaces
    # it; fork so that building a model leaves the caller's random state untouched.
    with torch.random.fork_rng(devices=[]):
        model = MODELS[arch](config, generator=generator)
    setattr(model, _DTYPE_ATTR, compute_dtype)
    return model.eval()


# --------------------------------------------------------------------------- running the model

def _torch_inputs(arch: str, inputs: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in inputs.items():
        t = torch.from_numpy(np.asarray(value))
        if key == "pixel_values":
            t = t.float().permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW, torch's layout
        else:
            t = t.long()
        out[key] = t.to(device)
    return out


@contextlib.contextmanager
def _mode(native: nn.Module, *, train: bool, seed: int):
    """Train/eval mode, dropout randomness from ``seed`` and the compute dtype, for one call;
    the module's previous mode and torch's global random state are restored afterwards."""
    was_training = native.training
    device = next(native.parameters()).device
    bf16 = getattr(native, _DTYPE_ATTR, "float32") == "bfloat16"
    native.train(train)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            # theory: mixed-precision
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                yield device
    finally:
        native.train(was_training)


def apply(arch: str, config, native: nn.Module, inputs: dict[str, np.ndarray], *, train: bool = False,
          seed: int = 0) -> tuple[dict[str, np.ndarray], nn.Module]:
    with _mode(native, train=train, seed=seed) as device, torch.no_grad():
        outputs = native(**_torch_inputs(arch, inputs, device))
    return {k: v.float().cpu().numpy() for k, v in outputs.items()}, native


def block_outputs(arch: str, config, native: nn.Module, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The output of every residual block in eval mode, by canonical block name, in canonical
    layout (feature maps NHWC): the residual stream that depth acts on, read with forward hooks."""
    captured: dict[str, torch.Tensor] = {}
    blocks = set(config.block_names())
    hooks = [module.register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out.detach()))
             for name, module in native.named_modules() if name in blocks]
    try:
        with _mode(native, train=False, seed=0) as device, torch.no_grad():
            native(**_torch_inputs(arch, inputs, device))
    finally:
        for hook in hooks:
            hook.remove()
    return {name: (t.permute(0, 2, 3, 1) if t.ndim == 4 else t).float().cpu().numpy()
            for name, t in captured.items()}


def _objective(native: nn.Module, arch: str, inputs, cotangents, device) -> torch.Tensor:
    """sum_k sum(outputs[k] * cotangents[k]): its gradient is the vjp with those cotangents."""
    outputs = native(**_torch_inputs(arch, inputs, device))
    unknown = sorted(set(cotangents) - set(outputs))
    if unknown:
        raise ZooError(f"cotangents for {unknown} match no {arch} output; outputs are {sorted(outputs)}")
    return sum((outputs[k].float() * torch.as_tensor(np.asarray(c, np.float32), device=device)).sum()
               for k, c in cotangents.items())


def vjp(arch: str, config, native: nn.Module, inputs: dict[str, np.ndarray], cotangents: dict[str, np.ndarray],
        *, train: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    # A gradient is a question about the model, not a step: keep batch-norm running statistics.
    buffers = {name: b.clone() for name, b in native.named_buffers()}
    native.zero_grad(set_to_none=True)
    try:
        with _mode(native, train=train, seed=seed) as device:
            loss = _objective(native, arch, inputs, cotangents, device)
        loss.backward()
        grads = {name: _to_canonical(t.grad if t.grad is not None else torch.zeros_like(t), layout)
                 for name, t, layout in _leaves(native) if isinstance(t, nn.Parameter)}
    finally:
        native.zero_grad(set_to_none=True)
        with torch.no_grad():
            for name, b in native.named_buffers():
                b.copy_(buffers[name])
    return grads


def adamw_step(arch: str, config, native: nn.Module, inputs: dict[str, np.ndarray],
               cotangents: dict[str, np.ndarray], *, lr: float, betas: tuple[float, float], eps: float,
               weight_decay: float, seed: int = 0) -> nn.Module:
    """One torch.optim.AdamW step (fresh state) on the vjp objective, in eval mode."""
    # theory: adamw
    optimizer = torch.optim.AdamW(native.parameters(), lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    optimizer.zero_grad(set_to_none=True)
    with _mode(native, train=False, seed=seed) as device:
        loss = _objective(native, arch, inputs, cotangents, device)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return native


__all__ = ["MODELS", "adamw_step", "apply", "block_outputs", "build", "load_state_dict", "state_dict", "vjp"]
