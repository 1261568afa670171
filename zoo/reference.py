"""The reference implementations in `transformers`, run on canonical weights.

Used by ``dlzoo verify`` (the user-facing face of conformance) and by the conformance tests:
canonical tensors are exported to the published layout and loaded by transformers itself, so the
comparison exercises the same path a user's checkpoint takes. Needs torch and transformers.
"""

from __future__ import annotations

import tempfile

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
