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
        if isinstance(value, bool):  # an option such as interpolate_pos_encoding
            out[key] = value
            continue
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


def apply(
    arch: str, config, native: nn.Module, inputs: dict[str, np.ndarray], *, train: bool = False, seed: int = 0
) -> tuple[dict[str, np.ndarray], nn.Module]:
    with _mode(native, train=train, seed=seed) as device, torch.no_grad():
        outputs = native(**_torch_inputs(arch, inputs, device))
    return {k: v.float().cpu().numpy() for k, v in outputs.items()}, native


def block_outputs(arch: str, config, native: nn.Module, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The output of every residual block in eval mode, by canonical block name, in canonical
    layout (feature maps NHWC): the residual stream that depth acts on, read with forward hooks."""
    captured: dict[str, torch.Tensor] = {}
    blocks = set(config.block_names())
    hooks = [
        module.register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out.detach()))
        for name, module in native.named_modules()
        if name in blocks
    ]
    try:
        with _mode(native, train=False, seed=0) as device, torch.no_grad():
            native(**_torch_inputs(arch, inputs, device))
    finally:
        for hook in hooks:
            hook.remove()
    return {name: (t.permute(0, 2, 3, 1) if t.ndim == 4 else t).float().cpu().numpy() for name, t in captured.items()}


def _objective(native: nn.Module, arch: str, inputs, cotangents, device) -> torch.Tensor:
    """sum_k sum(outputs[k] * cotangents[k]): its gradient is the vjp with those cotangents."""
    outputs = native(**_torch_inputs(arch, inputs, device))
    unknown = sorted(set(cotangents) - set(outputs))
    if unknown:
        raise ZooError(f"cotangents for {unknown} match no {arch} output; outputs are {sorted(outputs)}")
    return sum((outputs[k].float() * torch.as_tensor(np.asarray(c, np.float32), device=device)).sum() for k, c in cotangents.items())


def vjp(
    arch: str,
    config,
    native: nn.Module,
    inputs: dict[str, np.ndarray],
    cotangents: dict[str, np.ndarray],
    *,
    train: bool = False,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    # A gradient is a question about the model, not a step: keep batch-norm running statistics.
    buffers = {name: b.clone() for name, b in native.named_buffers()}
    native.zero_grad(set_to_none=True)
    try:
        with _mode(native, train=train, seed=seed) as device:
            loss = _objective(native, arch, inputs, cotangents, device)
        # activation checkpointing (config.remat) reruns blocks in the backward pass: they must be
        # in the forward's mode (torch's checkpoint replays the RNG and autocast state itself)
        was_training = native.training
        native.train(train)
        try:
            loss.backward()
        finally:
            native.train(was_training)
        grads = {
            name: _to_canonical(t.grad if t.grad is not None else torch.zeros_like(t), layout)
            for name, t, layout in _leaves(native)
            if isinstance(t, nn.Parameter)
        }
    finally:
        native.zero_grad(set_to_none=True)
        with torch.no_grad():
            for name, b in native.named_buffers():
                b.copy_(buffers[name])
    return grads


def adamw_step(
    arch: str,
    config,
    native: nn.Module,
    inputs: dict[str, np.ndarray],
    cotangents: dict[str, np.ndarray],
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    seed: int = 0,
) -> nn.Module:
    """One torch.optim.AdamW step (fresh state) on the vjp objective, in eval mode."""
    # theory: adamw
    # fused: one kernel over all parameters instead of a Python loop of small ops (the loop
    # dominates a tiny model's step; the math is the same).
    optimizer = torch.optim.AdamW(native.parameters(), lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=True)
    optimizer.zero_grad(set_to_none=True)
    with _mode(native, train=False, seed=seed) as device:
        loss = _objective(native, arch, inputs, cotangents, device)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return native


def generate(
    arch: str,
    config,
    native: nn.Module,
    input_ids: np.ndarray,
    attention_mask: np.ndarray | None,
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    seed: int,
) -> np.ndarray:
    """GPT.generate in eval mode; sampling draws from a torch.Generator seeded with ``seed``."""
    with _mode(native, train=False, seed=seed) as device:
        ids = torch.from_numpy(input_ids).long().to(device)
        mask = None if attention_mask is None else torch.from_numpy(attention_mask).long().to(device)
        out = native.generate(
            ids,
            mask,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            generator=torch.Generator(device).manual_seed(seed),
        )
    return out.cpu().numpy().astype(np.int32)


__all__ = ["MODELS", "adamw_step", "apply", "benchmark_step", "block_outputs", "build", "generate", "load_state_dict", "state_dict", "vjp"]


def benchmark_step(
    arch: str, config, native: nn.Module, inputs: dict[str, np.ndarray], cotangents: dict[str, np.ndarray], *, mode: str, seed: int = 0
):
    """A function that runs one step and returns once it is done: ``mode="forward"`` an
    inference forward pass; ``"train"`` forward + backward + a fused torch.optim.AdamW update
    (lr 1e-4) in train mode (dropout on, batch statistics) on the objective
    ``sum(outputs * cotangents)``, returning the objective before the update (a 0-d value). The
    module's weights change with every train step. Used by ``dlzoo bench``."""
    device = next(native.parameters()).device
    tensors = _torch_inputs(arch, inputs, device)
    cots = {k: torch.as_tensor(np.asarray(v, np.float32), device=device) for k, v in cotangents.items()}
    torch.manual_seed(seed)
    if mode == "forward":
        native.eval()

        @torch.no_grad()
        def step():
            native(**tensors)

        return step
    native.train()
    optimizer = torch.optim.AdamW(native.parameters(), lr=1e-4, fused=True)

    def step():
        optimizer.zero_grad(set_to_none=True)
        outputs = native(**tensors)
        loss = sum((outputs[k] * c).sum() for k, c in cots.items())
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step
