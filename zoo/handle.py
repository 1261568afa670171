"""One handle for every framework: numpy in, numpy out, canonical names and layouts.

Each framework package ``dlzoo.zoo.<framework>`` is a *backend*: a module with the functions
below. The handle holds the framework's own object (``.native``) and routes through them, so
conversion, conformance, the CLI and the agents work the same for every framework.

Backend contract (module-level functions of ``dlzoo.zoo.<framework>``):

    build(arch, config, *, seed, compute_dtype) -> native
    state_dict(arch, config, native) -> dict[str, np.ndarray]          canonical, float32
    load_state_dict(arch, config, native, tensors) -> native           tensors already validated
    apply(arch, config, native, inputs, *, train, seed) -> (outputs, native)
    vjp(arch, config, native, inputs, cotangents, *, train, seed) -> dict[str, np.ndarray]
    adamw_step(arch, config, native, inputs, cotangents, *, lr, betas, eps, weight_decay, seed) -> native
    block_outputs(arch, config, native, inputs) -> dict[str, np.ndarray]

``apply`` returns the native object again because functional frameworks (equinox, haiku, and
batch-norm state in general) hand back updated state in train mode. ``vjp`` returns the
gradients of ``sum_k sum(outputs[k] * cotangents[k])`` for every trainable canonical tensor;
``adamw_step`` takes one step of the framework's own AdamW on that same scalar.
``block_outputs`` returns, in eval mode, the output of every residual block by canonical block
name ("blocks.3", "stages.1.blocks.0"; feature maps NHWC), read with the framework's own way of
observing a forward pass (torch hooks, ``nnx.capture``, haiku method interceptors, an equinox
pytree swap, a keras ``call`` shadowed on the instance).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from . import weights as _weights
from .configs import ZooError, check_arch, check_generation, get_config
from .frameworks import FRAMEWORKS, backend, check_framework, installed_frameworks  # noqa: F401  (re-exported)

# Inputs each architecture accepts, and which of them are required.
INPUTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "bert": (("input_ids",), ("input_ids", "token_type_ids", "attention_mask")),
    "gpt": (("input_ids",), ("input_ids", "attention_mask")),
    "vit": (("pixel_values",), ("pixel_values", "interpolate_pos_encoding")),
    "resnet": (("pixel_values",), ("pixel_values",)),
}
# Inputs that are Python bools, not arrays: backends pass them to the model as static options
# (a jitted function is compiled per value).
FLAGS = ("interpolate_pos_encoding",)


def _check_inputs(arch: str, config, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
    required, allowed = INPUTS[arch]
    if not isinstance(inputs, dict):
        raise ZooError(f"{arch} inputs must be a dict with keys {', '.join(allowed)}, got {type(inputs).__name__}")
    missing = [k for k in required if k not in inputs]
    unknown = [k for k in inputs if k not in allowed]
    if missing or unknown:
        raise ZooError(
            f"{arch} inputs: expected keys {', '.join(allowed)} "
            f"(required: {', '.join(required)}); missing {missing or 'none'}, unknown {unknown or 'none'}"
        )
    out = {}
    for key in FLAGS:
        if key in inputs:
            if not isinstance(inputs[key], (bool, np.bool_)):
                raise ZooError(f"{arch} {key} must be True or False, got {inputs[key]!r}")
            out[key] = bool(inputs[key])
    for key, value in inputs.items():
        if key in FLAGS:
            continue
        value = np.asarray(value)
        if key == "pixel_values":
            resizable = arch == "vit" and out.get("interpolate_pos_encoding", False)
            want = (config.image_size, config.image_size) if arch == "vit" and not resizable else None
            if value.ndim != 4 or value.shape[-1] != config.num_channels or (want and value.shape[1:3] != want):
                size = f"{want[0]}, {want[1]}" if want else "H, W"
                raise ZooError(
                    f"{arch} pixel_values must be NHWC [B, {size}, {config.num_channels}], "
                    f"got shape {list(value.shape)}" + ("; pass interpolate_pos_encoding=True to run other sizes" if arch == "vit" else "")
                )
            if resizable and min(value.shape[1:3]) < config.patch_size:
                raise ZooError(
                    f"vit pixel_values of {value.shape[1]}x{value.shape[2]} hold no "
                    f"{config.patch_size}x{config.patch_size} patch; use larger images"
                )
            out[key] = value.astype(np.float32)
        else:
            if value.ndim != 2 or not np.issubdtype(value.dtype, np.integer):
                raise ZooError(f"{arch} {key} must be an integer array [B, T], got {value.dtype} {list(value.shape)}")
            limit = config.context_length if arch == "gpt" else getattr(config, "max_positions", None)
            if limit is not None and value.shape[1] > limit:
                raise ZooError(f"{arch} {key} has {value.shape[1]} positions; the model supports at most {limit}")
            if key == "input_ids" and (value.min(initial=0) < 0 or value.max(initial=0) >= config.vocab_size):
                raise ZooError(f"{arch} input_ids must be in [0, {config.vocab_size}), got values in [{value.min()}, {value.max()}]")
            if key == "attention_mask" and not np.isin(value, (0, 1)).all():
                raise ZooError(
                    f"{arch} attention_mask must hold 1 (real token) or 0 (padding), "
                    f"got values {sorted(set(np.unique(value).tolist()) - {0, 1})[:5]}"
                )
            out[key] = value.astype(np.int32)
    shapes = {k: v.shape for k, v in out.items() if k != "pixel_values" and k not in FLAGS}
    if len(set(shapes.values())) > 1:
        raise ZooError(f"{arch} inputs must share one [B, T] shape, got {shapes}")
    return out


def output_shapes(arch: str, config, inputs: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """The shape of every output ``apply`` returns for these (checked) inputs."""
    if arch in ("vit", "resnet"):
        return {"logits": (len(inputs["pixel_values"]), config.num_classes)}
    B, T = inputs["input_ids"].shape
    if arch == "gpt":
        return {"logits": (B, T, config.vocab_size)}
    shapes = {"last_hidden_state": (B, T, config.hidden_size)}
    if config.pooler:
        shapes["pooler_output"] = (B, config.hidden_size)
    if config.mlm_head:
        shapes["mlm_logits"] = (B, T, config.vocab_size)
    if config.num_classes:
        shapes["logits"] = (B, config.num_classes)
    return shapes


def _check_cotangents(arch: str, config, inputs: dict[str, np.ndarray], cotangents) -> dict[str, np.ndarray]:
    expected = output_shapes(arch, config, inputs)
    if not isinstance(cotangents, dict) or not cotangents:
        raise ZooError(
            f"cotangents must be a non-empty dict of output name -> array; {arch} outputs: "
            + ", ".join(f"{k} {list(v)}" for k, v in expected.items())
        )
    out = {}
    for name, value in cotangents.items():
        if name not in expected:
            raise ZooError(f"cotangent {name!r} names no output of this {arch}; outputs: {', '.join(expected)}")
        try:
            value = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            raise ZooError(f"cotangent {name!r} must be a numeric array, got {type(value).__name__}") from None
        if value.shape != expected[name]:
            raise ZooError(f"cotangent {name!r} has shape {list(value.shape)}, expected {list(expected[name])} (the output's shape)")
        out[name] = value
    return out


class Handle:
    """A model in one framework, seen through canonical numpy tensors.

    ``native`` is the framework's own object: a torch ``nn.Module``, an ``nnx.Module``, an
    equinox ``(module, state)`` pair, a haiku ``(transformed, params, state)`` triple, or a
    ``keras.Model``. Every method takes and returns numpy arrays in the canonical layouts of
    DESIGN.md (images NHWC float32, token ids int32 [B, T]) and raises ``dlzoo.ZooError`` (or a
    subclass) for input it cannot use, before the framework sees it.

    Inputs by architecture (keys of ``inputs``): gpt ``input_ids`` [B, T]; bert ``input_ids`` and
    optional ``token_type_ids``, ``attention_mask`` [B, T] (1 = attend, 0 = padding); vit
    ``pixel_values`` [B, image_size, image_size, C]; resnet ``pixel_values`` [B, H, W, C]. T is at
    most the context length (gpt) or ``max_positions`` (bert); ids lie in [0, vocab_size).
    """

    def __init__(self, arch: str, framework: str, config, native, *, compute_dtype: str = "float32"):
        self.arch, self.framework, self.config = arch, framework, config
        self.native = native
        self.compute_dtype = compute_dtype
        self._backend = backend(framework)
        # what from_pretrained did with each tensor (checkpoints.LoadReport); None otherwise
        self.load_report = None

    def __repr__(self) -> str:
        return f"Handle(arch={self.arch!r}, framework={self.framework!r}, config={self.config})"

    def apply(self, inputs: dict[str, np.ndarray], train: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
        """Run the model: ``inputs`` (see the class docstring) -> outputs, float32 numpy arrays.

        Outputs: gpt ``logits`` [B, T, vocab]; bert ``last_hidden_state`` [B, T, D], plus
        ``pooler_output`` [B, D], ``mlm_logits`` [B, T, vocab] and ``logits`` [B, num_classes] when
        the config has those heads; vit and resnet ``logits`` [B, num_classes] (unnormalised).
        ``train=True`` applies dropout drawn from ``seed`` and, for ResNet, normalises with the
        batch's statistics and updates the running ones (momentum per the config). Raises ZooError
        for missing or unknown keys, wrong ranks, shapes or dtypes, ids out of range, too many
        positions.
        """
        inputs = _check_inputs(self.arch, self.config, inputs)
        outputs, self.native = self._backend.apply(self.arch, self.config, self.native, inputs, train=train, seed=seed)
        return {k: np.asarray(v) for k, v in outputs.items()}

    def state_dict(self) -> dict[str, np.ndarray]:
        """Every tensor under its canonical name (DESIGN.md), float32 copies in canonical layouts:
        dense kernels [in, out], conv kernels [kh, kw, in, out], embeddings [rows, dim], fused
        ``qkv.kernel`` [D, 3D] (q | k | v); batch-norm running ``mean``/``var`` included."""
        return self._backend.state_dict(self.arch, self.config, self.native)

    def load_state_dict(self, tensors: dict[str, np.ndarray]) -> "Handle":
        """Replace every weight with ``tensors`` (canonical names and layouts, float32, as
        ``state_dict`` returns them); returns the handle. Raises WeightsError listing every
        missing, unexpected, mis-shaped and wrongly typed tensor; the model is unchanged then."""
        tensors = _weights.validate(self.arch, self.config, tensors)
        self.native = self._backend.load_state_dict(self.arch, self.config, self.native, tensors)
        return self

    def save(self, path: str | os.PathLike, *, overwrite: bool = False):
        """Write the weights as a canonical ``.safetensors`` file (the config rides in its
        metadata) and return its Path. Written atomically: a temporary file renamed into place.

        Raises PathError when ``path`` is a folder, does not end in ``.safetensors`` or its folder
        does not exist; OutputExistsError when the file exists and ``overwrite`` is false (the
        policy of ``dlzoo.zoo.files``, shared with the CLI's ``--overwrite``).
        """
        return _weights.save(path, self.arch, self.config, self.state_dict(), overwrite=overwrite)

    def vjp(self, inputs, cotangents, train: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
        """Gradients of ``sum_k sum(outputs[k] * cotangents[k])`` with respect to every trainable
        canonical tensor: name -> float32 array of that tensor's shape (batch-norm statistics
        excluded and left unchanged). ``cotangents`` maps output names (a subset of ``apply``'s)
        to arrays of exactly those outputs' shapes. Raises ZooError for bad inputs, an unknown
        output name, a wrong shape or a non-numeric cotangent."""
        inputs = _check_inputs(self.arch, self.config, inputs)
        cotangents = _check_cotangents(self.arch, self.config, inputs, cotangents)
        return self._backend.vjp(self.arch, self.config, self.native, inputs, cotangents, train=train, seed=seed)

    def adamw_step(
        self, inputs, cotangents, *, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01, seed: int = 0
    ) -> "Handle":
        """One step of the framework's own AdamW (fresh optimizer state, so step 1 with bias
        correction) on the ``vjp`` objective, in eval mode; updates the weights in place and returns
        the handle. Decoupled weight decay as torch: p -= lr * weight_decay * p, then the Adam
        update. Raises ZooError as ``vjp`` does, and for lr < 0, betas outside [0, 1), eps <= 0 or
        weight_decay < 0."""
        inputs = _check_inputs(self.arch, self.config, inputs)
        cotangents = _check_cotangents(self.arch, self.config, inputs, cotangents)
        betas = tuple(betas)
        if not (lr >= 0 and len(betas) == 2 and all(0 <= b < 1 for b in betas) and eps > 0 and weight_decay >= 0):
            raise ZooError(
                f"AdamW needs lr >= 0, two betas in [0, 1), eps > 0 and weight_decay >= 0; got "
                f"lr={lr}, betas={betas}, eps={eps}, weight_decay={weight_decay}"
            )
        self.native = self._backend.adamw_step(
            self.arch,
            self.config,
            self.native,
            inputs,
            cotangents,
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            seed=seed,
        )
        return self

    def block_outputs(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The residual stream after every block, in eval mode: canonical block name -> array
        ([B, T, D] for the transformers, NHWC for ResNet), in the order the blocks run."""
        inputs = _check_inputs(self.arch, self.config, inputs)
        outputs = self._backend.block_outputs(self.arch, self.config, self.native, inputs)
        names = self.config.block_names()
        if sorted(outputs) != sorted(names):
            raise ZooError(f"the {self.framework} backend returned outputs for blocks {sorted(outputs)}, the config has {names}")
        return {name: np.asarray(outputs[name]) for name in names}

    def generate(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray | None = None,
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
    ) -> np.ndarray:
        """GPT only: prompts ``input_ids`` int [B, T], left-padded where ``attention_mask`` [B, T]
        is 0, -> int32 [B, T + max_new_tokens], the prompts followed by the new tokens (as
        transformers' ``generate`` returns them). ``temperature=0`` (the default) is greedy; a
        positive temperature samples from softmax(logits / temperature), restricted to the
        ``top_k`` most likely tokens and then to the smallest set whose probability reaches
        ``top_p`` (transformers' order). ``seed`` feeds the framework's own random generator, so
        sampled tokens are reproducible within a framework, not across frameworks. Runs the
        framework's native ``generate`` (a key/value cache: one forward pass per new token) in
        eval mode. Raises ZooError on bad arguments, right padding or a result longer than the
        context."""
        if self.arch != "gpt":
            raise ZooError(f"generate is for gpt; this handle holds {self.arch}")
        inputs = {"input_ids": input_ids} if attention_mask is None else {"input_ids": input_ids, "attention_mask": attention_mask}
        inputs = _check_inputs(self.arch, self.config, inputs)
        mask = inputs.get("attention_mask")
        check_generation(
            self.config, inputs["input_ids"].shape[1], max_new_tokens, temperature, top_k, top_p, None if mask is None else mask[:, -1]
        )
        return self._backend.generate(
            self.arch,
            self.config,
            self.native,
            inputs["input_ids"],
            mask,
            max_new_tokens=max_new_tokens,
            temperature=float(temperature),
            top_k=top_k,
            top_p=None if top_p is None else float(top_p),
            seed=seed,
        )

    @property
    def num_params(self) -> int:
        return _weights.count_params(self.arch, self.config)


def load(
    arch: str,
    framework: str = "torch",
    config: Any = "tiny",
    weights: Any = None,
    seed: int = 0,
    compute_dtype: str = "float32",
    **overrides: Any,
) -> Handle:
    """Build ``arch`` in ``framework``; optionally load canonical weights (a path or a dict).

    With a path and ``config`` left at its default, the file's own config is used.
    """
    check_arch(arch)
    check_framework(framework)
    if compute_dtype not in ("float32", "bfloat16"):
        raise ZooError(f"compute_dtype must be 'float32' or 'bfloat16', got {compute_dtype!r}")
    tensors = None
    if isinstance(weights, (str, os.PathLike)):
        explicit = None if (isinstance(config, str) and config == "tiny" and not overrides) else get_config(arch, config, **overrides)
        _, config, tensors = _weights.load(weights, arch=arch, config=explicit)
    else:
        config = get_config(arch, config, **overrides)
        if weights is not None:
            tensors = _weights.validate(arch, config, weights)
    module = backend(framework)
    native = module.build(arch, config, seed=seed, compute_dtype=compute_dtype)
    handle = Handle(arch, framework, config, native, compute_dtype=compute_dtype)
    if tensors is not None:
        handle.native = module.load_state_dict(arch, config, native, tensors)
    return handle
