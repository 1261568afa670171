"""Reference checkpoints, inputs and comparisons shared by the conformance tests.

Every reference is a `transformers` model built from a small config, with every parameter and
batch-norm statistic perturbed away from its initial value (so a swapped layer-norm scale or a
skipped running variance cannot hide behind ones and zeros), written with ``save_pretrained``:
the published hub layout that dlzoo must load.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from dlzoo.zoo import installed_frameworks

# fp32 tolerances (DESIGN.md): forward max abs diff relative to the output scale when it
# exceeds 1; gradients relative to each tensor's scale; one AdamW step absolute.
FORWARD_TOL = 1e-5
GRAD_RTOL = 1e-4
ADAMW_TOL = 1e-5
# bfloat16 keeps 8 bits of mantissa (relative step 2**-8 = 3.9e-3); through two tiny layers the
# error stays within a few of those steps. Stated tolerance: 5e-2 of the output scale.
BF16_RTOL = 5e-2

FRAMEWORKS = installed_frameworks()
OTHER_FRAMEWORKS = [f for f in FRAMEWORKS if f != "torch"]


def framework_id(framework: str) -> str:
    if framework == "keras":
        return f"keras-{os.environ.get('KERAS_BACKEND', 'auto')}"
    return framework


@dataclass(frozen=True)
class Case:
    name: str
    arch: str
    build: Callable[[], object]  # -> transformers model (eval mode)
    inputs: Callable[[int], dict]  # seed -> numpy inputs
    reference: Callable[[object, dict], dict]  # (hf model, numpy inputs) -> numpy outputs


def _token_inputs(vocab: int, batch: int = 3, length: int = 12, bert: bool = False):
    def make(seed: int) -> dict:
        rng = np.random.default_rng(seed)
        out = {"input_ids": rng.integers(0, vocab, (batch, length)).astype(np.int32)}
        if bert:
            mask = np.ones((batch, length), np.int32)
            for row in range(1, batch):  # ragged padding on every row but the first
                mask[row, length - 2 * row - 1 :] = 0
            out["attention_mask"] = mask
            out["token_type_ids"] = (np.arange(length)[None, :] >= length // 2).astype(np.int32).repeat(batch, 0)
        return out

    return make


def _image_inputs(size: int, batch: int = 3, channels: int = 3):
    def make(seed: int) -> dict:
        rng = np.random.default_rng(seed)
        return {"pixel_values": rng.standard_normal((batch, size, size, channels)).astype(np.float32)}

    return make


def _perturb(model, seed: int = 0):
    """Move every parameter and buffer away from its initial value, reproducibly."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=gen)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=gen))
            elif name.endswith("running_mean"):
                tensor.copy_(0.2 * noise)
            elif (
                tensor.ndim == 1
                and ("LayerNorm" in name or "layernorm" in name or "ln_" in name or "normalization" in name)
                and name.endswith("weight")
            ):
                tensor.copy_(1.0 + 0.1 * noise)
            else:  # large enough that activations reach GELU's curved region (tanh vs erf differ there)
                tensor.add_(0.1 * noise)
    return model.eval()


def _torch_in(inputs: dict):
    import torch

    out = {}
    for key, value in inputs.items():
        if key == "pixel_values":
            out[key] = torch.from_numpy(value).permute(0, 3, 1, 2).contiguous()
        else:
            out[key] = torch.from_numpy(value.astype(np.int64))
    return out


def _bert():
    import transformers as T

    config = T.BertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        type_vocab_size=2,
    )
    return _perturb(T.BertForPreTraining(config))


def _bert_reference(model, inputs):
    import torch

    with torch.no_grad():
        out = model.bert(**_torch_in(inputs))
        mlm = model.cls.predictions(out.last_hidden_state)
    result = {"last_hidden_state": out.last_hidden_state.numpy(), "mlm_logits": mlm.numpy()}
    if out.pooler_output is not None:  # BertForMaskedLM has no pooler
        result["pooler_output"] = out.pooler_output.numpy()
    return result


def _bert_mlm_untied():
    """BertForMaskedLM whose decoder is its own matrix, not the word embedding."""
    import transformers as T

    config = T.BertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    return _perturb(T.BertForMaskedLM(config), seed=2)


def _bert_cls():
    import transformers as T

    config = T.BertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        num_labels=5,
    )
    return _perturb(T.BertForSequenceClassification(config), seed=1)


def _bert_cls_reference(model, inputs):
    import torch

    with torch.no_grad():
        out = model.bert(**_torch_in(inputs))
        logits = model.classifier(out.pooler_output)
    return {"last_hidden_state": out.last_hidden_state.numpy(), "pooler_output": out.pooler_output.numpy(), "logits": logits.numpy()}


def _gpt():
    import transformers as T

    config = T.GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0)
    return _perturb(T.GPT2LMHeadModel(config))


def _gpt_untied():
    """GPT-2 with tie_word_embeddings=false: lm_head.weight is its own matrix."""
    import transformers as T

    config = T.GPT2Config(
        vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0, tie_word_embeddings=False
    )
    return _perturb(T.GPT2LMHeadModel(config), seed=3)


def _logits_reference(model, inputs):
    import torch

    with torch.no_grad():
        return {"logits": model(**_torch_in(inputs)).logits.numpy()}


def _vit():
    import transformers as T

    config = T.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, num_labels=10
    )
    return _perturb(T.ViTForImageClassification(config))


def _resnet(block: str):
    def build():
        import transformers as T

        widths = [16, 32] if block == "bottleneck" else [8, 16]
        config = T.ResNetConfig(embedding_size=8, hidden_sizes=widths, depths=[1, 2], layer_type=block, num_labels=10)
        return _perturb(T.ResNetForImageClassification(config))

    return build


CASES = {
    "bert": Case("bert", "bert", _bert, _token_inputs(99, bert=True), _bert_reference),
    "bert-cls": Case("bert-cls", "bert", _bert_cls, _token_inputs(99, bert=True), _bert_cls_reference),
    "bert-mlm-untied": Case("bert-mlm-untied", "bert", _bert_mlm_untied, _token_inputs(99, bert=True), _bert_reference),
    "gpt": Case("gpt", "gpt", _gpt, _token_inputs(99), _logits_reference),
    "gpt-untied": Case("gpt-untied", "gpt", _gpt_untied, _token_inputs(99), _logits_reference),
    "vit": Case("vit", "vit", _vit, _image_inputs(32), _logits_reference),
    "resnet": Case("resnet", "resnet", _resnet("bottleneck"), _image_inputs(40), _logits_reference),
    "resnet-basic": Case("resnet-basic", "resnet", _resnet("basic"), _image_inputs(40), _logits_reference),
}


def save_reference(case: Case, folder: Path):
    """Build the case's transformers model from a seed of its own and save it (hub layout).

    The initial weights come from torch's global generator, so without a seed of their own they
    would depend on which tests ran first in the worker. That made a test fail on one ordering
    only: ReLU's derivative jumps at 0, and one draw put a ResNet pre-activation at 1.9e-6, where
    fp32 rounding gave it the opposite sign in XLA; that one gradient mask element moved the
    train-mode gradients of everything below it by 3% (torch agrees with a float64 run)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(zlib.crc32(case.name.encode()))
        model = case.build()
    model.save_pretrained(folder)
    return model


def max_abs(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, f"shapes differ: {a.shape} vs {b.shape}"
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def assert_outputs_close(got: dict, want: dict, tol: float = FORWARD_TOL, what: str = "") -> dict:
    """Max abs diff per output, relative to the output's scale where that exceeds 1."""
    assert set(got) == set(want), f"{what} outputs {sorted(got)} != reference {sorted(want)}"
    diffs = {}
    for key in want:
        scale = max(1.0, float(np.max(np.abs(want[key]))))
        diffs[key] = max_abs(got[key], want[key])
        assert diffs[key] <= tol * scale, f"{what} {key}: max abs diff {diffs[key]:.3g} > {tol * scale:.3g}"
    return diffs


def cotangents(outputs: dict, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in sorted(outputs.items())}


def assert_grads_close(got: dict, want: dict, rtol: float = GRAD_RTOL, what: str = "") -> float:
    """Every tensor's max abs diff, relative to that tensor's gradient scale (floored at 1e-3 of
    the largest gradient, so fp32 noise in a near-zero gradient is not mistaken for an error)."""
    assert set(got) == set(want), (
        f"{what} gradient names differ: missing {sorted(set(want) - set(got))[:5]}, extra {sorted(set(got) - set(want))[:5]}"
    )
    floor = 1e-3 * max(float(np.max(np.abs(g))) for g in want.values())
    worst = 0.0
    for name, g in want.items():
        rel = max_abs(got[name], g) / max(float(np.max(np.abs(g))), floor)
        assert rel <= rtol, f"{what} grad {name}: relative diff {rel:.3g} > {rtol}"
        worst = max(worst, rel)
    return worst
