"""The reference implementations in `transformers`, run on canonical weights; and torchvision's
ResNet and timm's ViT, the references of the checkpoints named as theirs.

Used by ``dlzoo verify`` (the user-facing face of conformance), ``dlzoo bench`` and the
conformance tests: canonical tensors are exported to the published layout and loaded by
transformers itself, so the comparison exercises the same path a user's checkpoint takes. Needs
torch and transformers (torchvision and timm for theirs).

PyPI's torchvision wheels link the CUDA build of torch. Beside torch's CPU build (the one CI pins)
their C extension cannot load, and ``import torchvision`` then fails in its
``_meta_registrations`` with "operator torchvision::nms does not exist". The model definitions
used here (``torchvision.models.resnet``; timm's ResNet and ViT, which import torchvision) are
pure Python and call none of those ops, so when the extension is unusable the two op schemas that
torchvision's import registers fake kernels for are declared first. No torchvision op ever runs.
Both packages may live outside site-packages, in the folder ``DLZOO_VISION_REFS`` names, because
transformers imports torchvision whenever it is importable and would fail the same way in every
other process:

    pip install --no-deps --target FOLDER torchvision==0.28.0 timm==1.0.31
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from . import hub

_CLASSES = {"gpt": "GPT2LMHeadModel", "vit": "ViTForImageClassification", "resnet": "ResNetForImageClassification"}


def sample_inputs(arch: str, config, batch: int = 2, length: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic inputs: token ids with ragged padding and two segments for BERT, images
    for the vision models (ResNet at 64x64 so that every stage keeps a spatial extent)."""
    rng = np.random.default_rng(seed)
    if arch in ("bert", "gpt"):
        limit = config.context_length if arch == "gpt" else config.max_positions
        length = min(length, limit)
        inputs = {"input_ids": rng.integers(0, config.vocab_size, (batch, length)).astype(np.int32)}
        if arch == "bert":
            mask = np.ones((batch, length), np.int32)
            for row in range(1, batch):
                mask[row, max(1, length - 3 * row) :] = 0
            inputs["attention_mask"] = mask
            inputs["token_type_ids"] = (np.arange(length) >= length // 2).astype(np.int32)[None].repeat(batch, 0)
        return inputs
    size = config.image_size if arch == "vit" else 64
    return {"pixel_values": rng.standard_normal((batch, size, size, config.num_channels)).astype(np.float32)}


def transformers_model(arch: str, config, tensors: dict[str, np.ndarray]):
    """A transformers model (eval mode) holding exactly these canonical weights."""
    import transformers

    transformers.logging.set_verbosity_error()  # its load report would drown the comparison
    transformers.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        folder = hub.export(arch, config, tensors, f"{tmp}/model")
        name = _CLASSES.get(arch) or _bert_class(config)
        model = getattr(transformers, name).from_pretrained(folder)
    return model.eval()


def transformers_model_from_folder(arch: str, config, folder) -> object:
    """The transformers model (eval mode, float32) that the published checkpoint ``folder``
    itself holds: the reference for ``dlzoo verify --weights FOLDER``, which must not be rebuilt
    from dlzoo's own reading of the folder (a mis-read head would then agree with itself)."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    name = _CLASSES.get(arch) or _bert_class(config)
    return getattr(transformers, name).from_pretrained(str(folder), dtype=torch.float32).eval()


def _bert_class(config) -> str:
    if config.num_classes:
        return "BertForSequenceClassification"
    if config.mlm_head:
        # BertForPreTraining holds both the pooler and the MLM head; its next-sentence head is
        # absent from dlzoo checkpoints, initialised at random by transformers, and never read.
        return "BertForPreTraining" if config.pooler else "BertForMaskedLM"
    return "BertModel"


def transformers_outputs(arch: str, model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model's outputs under dlzoo's names, as numpy in the model's own dtype (images are cast
    to it, so a model converted with ``.double()`` gives the float64 evaluation)."""
    import torch

    dtype = next(model.parameters()).dtype
    tin = {
        k: (torch.from_numpy(v).permute(0, 3, 1, 2).contiguous().to(dtype) if k == "pixel_values" else torch.from_numpy(v.astype(np.int64)))
        for k, v in inputs.items()
    }
    if arch == "gpt" and "attention_mask" in tin:  # positions from the mask, as transformers' generate does
        mask = tin["attention_mask"]
        tin["position_ids"] = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    with torch.no_grad():
        if arch != "bert":
            return {"logits": model(**tin).logits.numpy()}
        backbone = getattr(model, "bert", model)
        out = backbone(**tin)
        result = {"last_hidden_state": out.last_hidden_state.numpy()}
        if out.pooler_output is not None:
            result["pooler_output"] = out.pooler_output.numpy()
        if hasattr(model, "cls"):
            result["mlm_logits"] = model.cls.predictions(out.last_hidden_state).numpy()
        if hasattr(model, "classifier"):
            result["logits"] = model.classifier(out.pooler_output).numpy()
        return result


# --------------------------------------------------------------------------- torchvision and timm

VISION_REFS_ENV = "DLZOO_VISION_REFS"


def _vision_folder(folder) -> Path | None:
    folder = folder or os.environ.get(VISION_REFS_ENV)
    return Path(folder) if folder and Path(folder).is_dir() else None


def vision_references_installed(folder: str | os.PathLike | None = None) -> bool:
    """Whether torchvision and timm can be imported (from ``folder``, default
    ``$DLZOO_VISION_REFS``, or site-packages); imports neither and leaves ``sys.path`` alone."""
    import importlib.machinery

    where = _vision_folder(folder)

    def found(name: str) -> bool:
        if where is not None and importlib.machinery.PathFinder.find_spec(name, [str(where)]) is not None:
            return True
        return importlib.util.find_spec(name) is not None

    return found("torchvision") and found("timm")


def _declare_torchvision_ops_if_unloadable(package: Path) -> None:
    import torch

    if hasattr(torch.ops.torchvision, "nms"):
        return
    try:
        torch.ops.load_library(str(next(package.glob("_C*.so"))))
        return
    except (StopIteration, OSError, RuntimeError):
        pass
    library = torch.library.Library("torchvision", "DEF")  # kept alive by the module global below
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    globals()["_LIBRARY"] = library


def vision_references(folder: str | os.PathLike | None = None):
    """(torchvision, timm), imported as the module docstring describes. Raises ImportError when
    either is missing."""
    if not vision_references_installed(folder):
        raise ImportError(
            f"torchvision and timm are not installed (looked in {folder or os.environ.get(VISION_REFS_ENV) or 'site-packages'})"
        )
    where = _vision_folder(folder)
    if where is not None and str(where) not in sys.path:
        if importlib.util.find_spec("transformers") is not None:
            # transformers asks once (lru_cache) whether torchvision is importable and, if so,
            # imports it with every vision model: let it record site-packages' answer first
            from transformers.utils import import_utils

            import_utils.is_torchvision_available()
            import_utils.is_timm_available()
        sys.path.insert(0, str(where))
    if "torchvision" not in sys.modules:
        _declare_torchvision_ops_if_unloadable(Path(importlib.util.find_spec("torchvision").origin).parent)
    import timm
    import torchvision

    return torchvision, timm


def vision_model(arch: str, config, tensors: dict[str, np.ndarray]):
    """torchvision's ResNet (``arch="resnet"``) or timm's ViT (``arch="vit"``), eval mode, holding
    exactly these canonical weights (named by ``checkpoints``' torchvision/timm rules, strict)."""
    import torch

    from .checkpoints import timm_vit_rules, torchvision_resnet_rules

    torchvision, _ = vision_references()
    state: dict[str, np.ndarray] = {}
    if arch == "resnet":
        from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

        if tuple(config.widths) != (64, 128, 256, 512) or config.stem_width != 64 or config.num_channels != 3:
            raise ValueError("torchvision's ResNet has widths (64, 128, 256, 512), a 64-wide stem and 3 input channels")
        block = Bottleneck if config.block == "bottleneck" else BasicBlock
        model = ResNet(block, list(config.depths), num_classes=config.num_classes)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eps, module.momentum = config.bn_eps, config.bn_momentum
        rules = torchvision_resnet_rules(config)
    elif arch == "vit":
        from functools import partial

        from timm.models.vision_transformer import VisionTransformer

        model = VisionTransformer(
            img_size=config.image_size,
            patch_size=config.patch_size,
            in_chans=config.num_channels,
            num_classes=config.num_classes,
            embed_dim=config.hidden_size,
            depth=config.num_layers,
            num_heads=config.num_heads,
            mlp_ratio=config.mlp_dim / config.hidden_size,
            qkv_bias=True,
            drop_rate=config.dropout,
            proj_drop_rate=config.dropout,
            attn_drop_rate=config.attention_dropout,
            norm_layer=partial(torch.nn.LayerNorm, eps=config.layer_norm_eps),
            act_layer=partial(torch.nn.GELU, approximate="tanh" if config.gelu == "tanh" else "none"),
        )
        rules = timm_vit_rules(config)
    else:
        raise ValueError(f"torchvision and timm hold no {arch}; its reference is transformers")
    for rule in rules:
        state.update(hub._to_published(rule, tensors))
    if arch == "resnet":
        state.update({k: torch.zeros((), dtype=torch.long) for k in model.state_dict() if k.endswith("num_batches_tracked")})
    model.load_state_dict({k: torch.as_tensor(np.ascontiguousarray(v)) for k, v in state.items()}, strict=True)
    return model.eval()
