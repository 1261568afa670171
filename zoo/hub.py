"""Published checkpoints (the transformers hub layout) <-> canonical weights.

Reads what people actually have: ``config.json`` plus ``model.safetensors``, a sharded
``model.safetensors.index.json``, or ``pytorch_model.bin`` (single or sharded), loaded only with
``torch.load(weights_only=True)`` so no pickle code ever runs. Every key generation those files
use is accepted (``bert.``/``transformer.``/``vit.``/``resnet.`` prefixes or none,
``LayerNorm.gamma/beta``), half-precision storage is upcast to float32, non-parameter buffers
(GPT-2's causal-mask ``attn.bias``, ``position_ids``, ``num_batches_tracked``) are ignored, and
the heads present (BERT pooler, MLM head, classifier) are detected from the tensors.

The mapping is one table of rules per architecture, used in both directions, so import and
export cannot drift apart.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .configs import BertConfig, GPTConfig, ResNetConfig, ViTConfig, ZooError, check_arch
from .files import check_output_folder, looks_like_path
from .weights import validate


class HubError(ZooError):
    pass


WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json", "pytorch_model.bin")
MODEL_TYPES = {"bert": "bert", "gpt2": "gpt", "vit": "vit", "resnet": "resnet"}

# Published tensors that are not parameters of the model: buffers, a tied copy, the
# next-sentence head of BertForPreTraining and ViTModel's unused pooler.
_IGNORED = re.compile(
    r"(^|\.)(attn\.bias|attn\.masked_bias|position_ids|token_type_ids|num_batches_tracked)$"
    r"|^lm_head\.weight$|^cls\.predictions\.decoder\.(weight|bias)$"
    r"|^cls\.seq_relationship\.|^pooler\.dense\.(weight|bias)$"
)


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Rule:
    canonical: str  # canonical module name, e.g. "blocks.0.attn.qkv"
    published: str  # published module name (prefix stripped), e.g. "h.0.attn.c_attn"
    kind: str  # linear | head (linear without bias) | conv1d | qkv | ln | emb | conv | bn | raw


def _bert_rules(c: BertConfig) -> list[Rule]:
    rules = [
        Rule("embeddings.word", "embeddings.word_embeddings", "emb"),
        Rule("embeddings.position", "embeddings.position_embeddings", "emb"),
        Rule("embeddings.token_type", "embeddings.token_type_embeddings", "emb"),
        Rule("embeddings.ln", "embeddings.LayerNorm", "ln"),
    ]
    for i in range(c.num_layers):
        b, h = f"blocks.{i}", f"encoder.layer.{i}"
        rules += [
            Rule(f"{b}.attn.qkv", f"{h}.attention.self", "qkv"),
            Rule(f"{b}.attn.out", f"{h}.attention.output.dense", "linear"),
            Rule(f"{b}.ln1", f"{h}.attention.output.LayerNorm", "ln"),
            Rule(f"{b}.mlp.fc", f"{h}.intermediate.dense", "linear"),
            Rule(f"{b}.mlp.out", f"{h}.output.dense", "linear"),
            Rule(f"{b}.ln2", f"{h}.output.LayerNorm", "ln"),
        ]
    if c.pooler:
        rules.append(Rule("pooler", "pooler.dense", "linear"))
    if c.mlm_head:
        rules += [
            Rule("mlm.transform", "cls.predictions.transform.dense", "linear"),
            Rule("mlm.ln", "cls.predictions.transform.LayerNorm", "ln"),
            Rule("mlm.bias", "cls.predictions.bias", "raw"),
        ]
        if not c.tie_word_embeddings:
            rules.append(Rule("mlm.decoder", "cls.predictions.decoder", "head"))
    if c.num_classes:
        rules.append(Rule("classifier", "classifier", "linear"))
    return rules


def _gpt_rules(c: GPTConfig) -> list[Rule]:
    rules = [Rule("wte", "wte", "emb"), Rule("wpe", "wpe", "emb")]
    for i in range(c.num_layers):
        b, h = f"blocks.{i}", f"h.{i}"
        rules += [
            Rule(f"{b}.ln1", f"{h}.ln_1", "ln"),
            Rule(f"{b}.attn.qkv", f"{h}.attn.c_attn", "conv1d"),
            Rule(f"{b}.attn.out", f"{h}.attn.c_proj", "conv1d"),
            Rule(f"{b}.ln2", f"{h}.ln_2", "ln"),
            Rule(f"{b}.mlp.fc", f"{h}.mlp.c_fc", "conv1d"),
            Rule(f"{b}.mlp.out", f"{h}.mlp.c_proj", "conv1d"),
        ]
    rules.append(Rule("ln_f", "ln_f", "ln"))
    if not c.tie_word_embeddings:
        rules.append(Rule("lm_head", "lm_head", "head"))
    return rules


def _vit_rules(c: ViTConfig) -> list[Rule]:
    rules = [
        Rule("patch_embed", "embeddings.patch_embeddings.projection", "conv"),
        Rule("cls_token", "embeddings.cls_token", "raw"),
        Rule("pos_embed", "embeddings.position_embeddings", "raw"),
    ]
    for i in range(c.num_layers):
        b, h = f"blocks.{i}", f"encoder.layer.{i}"
        rules += [
            Rule(f"{b}.ln1", f"{h}.layernorm_before", "ln"),
            Rule(f"{b}.attn.qkv", f"{h}.attention.attention", "qkv"),
            Rule(f"{b}.attn.out", f"{h}.attention.output.dense", "linear"),
            Rule(f"{b}.ln2", f"{h}.layernorm_after", "ln"),
            Rule(f"{b}.mlp.fc", f"{h}.intermediate.dense", "linear"),
            Rule(f"{b}.mlp.out", f"{h}.output.dense", "linear"),
        ]
    return rules + [Rule("ln_f", "layernorm", "ln"), Rule("head", "classifier", "linear")]


def _resnet_rules(c: ResNetConfig) -> list[Rule]:
    rules = [Rule("stem.conv", "embedder.embedder.convolution", "conv"), Rule("stem.bn", "embedder.embedder.normalization", "bn")]
    n_convs = 3 if c.block == "bottleneck" else 2
    for s, blocks in enumerate(c.layout()):
        for b, (n_in, _, n_out, stride) in enumerate(blocks):
            p, h = f"stages.{s}.blocks.{b}", f"encoder.stages.{s}.layers.{b}"
            for k in range(n_convs):
                rules += [
                    Rule(f"{p}.conv{k + 1}", f"{h}.layer.{k}.convolution", "conv"),
                    Rule(f"{p}.bn{k + 1}", f"{h}.layer.{k}.normalization", "bn"),
                ]
            if stride != 1 or n_in != n_out:
                rules += [
                    Rule(f"{p}.downsample.conv", f"{h}.shortcut.convolution", "conv"),
                    Rule(f"{p}.downsample.bn", f"{h}.shortcut.normalization", "bn"),
                ]
    return rules + [Rule("head", "classifier.1", "linear")]


RULES = {"bert": _bert_rules, "gpt": _gpt_rules, "vit": _vit_rules, "resnet": _resnet_rules}

# Published head modules live outside the backbone prefix ("bert.", "transformer.", ...).
_PREFIX = {"bert": "bert.", "gpt": "transformer.", "vit": "vit.", "resnet": "resnet."}
_HEAD_MODULES = ("cls.", "classifier", "lm_head")
# Output heads that transformers ties to the input embedding unless tie_word_embeddings is false:
# (published head, published embedding) by arch, names after the backbone prefix is stripped.
_TIED_HEADS = {"gpt": ("lm_head.weight", "wte.weight"), "bert": ("cls.predictions.decoder.weight", "embeddings.word_embeddings.weight")}


def _to_canonical(rule: Rule, get, spec) -> dict[str, np.ndarray]:
    c, p = rule.canonical, rule.published
    if rule.kind == "raw":
        return {c: get(p)}
    if rule.kind == "emb":
        return {f"{c}.embedding": get(f"{p}.weight")}
    if rule.kind == "ln":
        return {f"{c}.scale": get(f"{p}.weight"), f"{c}.bias": get(f"{p}.bias")}
    if rule.kind == "bn":
        return {
            f"{c}.scale": get(f"{p}.weight"),
            f"{c}.bias": get(f"{p}.bias"),
            f"{c}.mean": get(f"{p}.running_mean"),
            f"{c}.var": get(f"{p}.running_var"),
        }
    if rule.kind == "linear":
        return {f"{c}.kernel": get(f"{p}.weight").T, f"{c}.bias": get(f"{p}.bias")}
    if rule.kind == "conv1d":  # GPT-2's Conv1D already stores [in, out]
        return {f"{c}.kernel": get(f"{p}.weight"), f"{c}.bias": get(f"{p}.bias")}
    if rule.kind == "head":
        return {f"{c}.kernel": get(f"{p}.weight").T}
    if rule.kind == "conv":  # OIHW -> HWIO
        out = {f"{c}.kernel": get(f"{p}.weight").transpose(2, 3, 1, 0)}
        if f"{c}.bias" in spec:
            out[f"{c}.bias"] = get(f"{p}.bias")
        return out
    if rule.kind == "qkv":  # separate q, k, v [out, in] -> fused [in, 3 * out], columns q | k | v
        names = ("query", "key", "value")
        return {
            f"{c}.kernel": np.concatenate([get(f"{p}.{n}.weight").T for n in names], axis=1),
            f"{c}.bias": np.concatenate([get(f"{p}.{n}.bias") for n in names]),
        }
    raise AssertionError(rule.kind)


def _to_published(rule: Rule, t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    c, p = rule.canonical, rule.published
    if rule.kind == "raw":
        return {p: t[c]}
    if rule.kind == "emb":
        return {f"{p}.weight": t[f"{c}.embedding"]}
    if rule.kind == "ln":
        return {f"{p}.weight": t[f"{c}.scale"], f"{p}.bias": t[f"{c}.bias"]}
    if rule.kind == "bn":
        return {
            f"{p}.weight": t[f"{c}.scale"],
            f"{p}.bias": t[f"{c}.bias"],
            f"{p}.running_mean": t[f"{c}.mean"],
            f"{p}.running_var": t[f"{c}.var"],
        }
    if rule.kind == "linear":
        return {f"{p}.weight": t[f"{c}.kernel"].T, f"{p}.bias": t[f"{c}.bias"]}
    if rule.kind == "conv1d":
        return {f"{p}.weight": t[f"{c}.kernel"], f"{p}.bias": t[f"{c}.bias"]}
    if rule.kind == "head":
        return {f"{p}.weight": t[f"{c}.kernel"].T}
    if rule.kind == "conv":
        out = {f"{p}.weight": t[f"{c}.kernel"].transpose(3, 2, 0, 1)}
        if f"{c}.bias" in t:
            out[f"{p}.bias"] = t[f"{c}.bias"]
        return out
    if rule.kind == "qkv":
        q, k, v = np.split(t[f"{c}.kernel"], 3, axis=1)
        qb, kb, vb = np.split(t[f"{c}.bias"], 3)
        return {
            f"{p}.query.weight": q.T,
            f"{p}.key.weight": k.T,
            f"{p}.value.weight": v.T,
            f"{p}.query.bias": qb,
            f"{p}.key.bias": kb,
            f"{p}.value.bias": vb,
        }
    raise AssertionError(rule.kind)


# --------------------------------------------------------------------------- configs


def _expect(hf: dict, key: str, allowed, what: str) -> None:
    value = hf.get(key, allowed[0])
    if value not in allowed:
        raise HubError(
            f"{what}: {key}={value!r} is not supported (expected {allowed[0]!r}); dlzoo implements the published architecture only"
        )


def _tied(hf: dict) -> bool:
    value = hf.get("tie_word_embeddings", True)  # transformers' default
    if not isinstance(value, bool):
        raise HubError(f"config.json: tie_word_embeddings must be true or false, got {value!r}")
    return value


# transformers' activation names (transformers/activations.py, ACT2CLS) for the two GELU forms
# dlzoo implements. "exact" is x * Phi(x) with erf; "tanh" is 0.5 x (1 + tanh(sqrt(2/pi) (x +
# 0.044715 x^3))). gelu_fast writes sqrt(2/pi) as 0.7978845608 and factors x out of the cube;
# gelu_accurate precomputes sqrt(2/pi): both are the tanh form to float32 rounding.
GELU_FORMS = {
    "gelu": "exact",
    "gelu_python": "exact",
    "gelu_new": "tanh",
    "gelu_pytorch_tanh": "tanh",
    "gelu_python_tanh": "tanh",
    "gelu_fast": "tanh",
    "gelu_accurate": "tanh",
}
_NOT_GELU = {"quick_gelu": "x * sigmoid(1.702 x), a different curve", "gelu_10": "GELU clipped to [-10, 10]"}


# The name written back on export: transformers' canonical spelling of each form.
_GELU_NAMES = {"exact": "gelu", "tanh": "gelu_new"}


def _gelu(hf: dict, key: str, default: str, what: str) -> str:
    """The config's ``gelu`` field ("exact" or "tanh") from any spelling of either GELU form;
    absent, transformers' default for the architecture (``default``). Anything else is refused."""
    name = hf.get(key, _GELU_NAMES[default])
    if not isinstance(name, str) or name not in GELU_FORMS:
        detail = f" ({_NOT_GELU[name]})" if isinstance(name, str) and name in _NOT_GELU else ""
        raise HubError(
            f"{what}: {key}={name!r}{detail} is not supported; dlzoo implements the exact GELU "
            f"({', '.join(k for k, v in GELU_FORMS.items() if v == 'exact')}) and the tanh GELU "
            f"({', '.join(k for k, v in GELU_FORMS.items() if v == 'tanh')})"
        )
    return GELU_FORMS[name]


def _head_size(arch: str, tensors: dict, name: str, num_classes: int | None, model: str) -> int:
    if num_classes is not None:
        return num_classes
    if name in tensors:
        return int(tensors[name].shape[0])
    raise HubError(
        f"{arch} checkpoint without a classifier (a bare {model}): pass num_classes=N to add a freshly initialised head of N classes"
    )


def config_from_hf(arch: str, hf: dict, tensors: dict[str, np.ndarray], num_classes: int | None = None):
    """Our config from a published config.json and the (normalised) tensor names present.

    The heads present are read from the tensors; ``num_classes`` (when given) sets the size of
    the classification head instead, whatever the checkpoint holds."""
    try:
        if arch == "bert":
            gelu = _gelu(hf, "hidden_act", "exact", "BERT")
            _expect(hf, "position_embedding_type", ("absolute",), "BERT")
            return BertConfig(
                vocab_size=hf["vocab_size"],
                max_positions=hf["max_position_embeddings"],
                type_vocab_size=hf.get("type_vocab_size", 2),
                hidden_size=hf["hidden_size"],
                num_layers=hf["num_hidden_layers"],
                num_heads=hf["num_attention_heads"],
                mlp_dim=hf["intermediate_size"],
                layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
                dropout=hf.get("hidden_dropout_prob", 0.1),
                attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
                pooler="pooler.dense.weight" in tensors or bool(num_classes),
                # a classification start drops the MLM head, as BertForSequenceClassification does
                mlm_head="cls.predictions.transform.dense.weight" in tensors and not num_classes,
                num_classes=(
                    num_classes
                    if num_classes is not None
                    else int(tensors["classifier.weight"].shape[0])
                    if "classifier.weight" in tensors
                    else 0
                ),
                # Only the MLM decoder can be untied; without it the flag means nothing.
                tie_word_embeddings=_tied(hf) or "cls.predictions.transform.dense.weight" not in tensors or bool(num_classes),
                gelu=gelu,
            )
        if arch == "gpt":
            gelu = _gelu(hf, "activation_function", "tanh", "GPT-2")
            for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
                _expect(hf, flag, (False,), "GPT-2")
            _expect(hf, "scale_attn_weights", (True,), "GPT-2")
            return GPTConfig(
                vocab_size=hf["vocab_size"],
                context_length=hf["n_positions"],
                hidden_size=hf["n_embd"],
                num_layers=hf["n_layer"],
                num_heads=hf["n_head"],
                mlp_dim=hf.get("n_inner") or 4 * hf["n_embd"],
                layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                dropout=hf.get("resid_pdrop", 0.1),
                attention_dropout=hf.get("attn_pdrop", 0.1),
                tie_word_embeddings=_tied(hf),
                gelu=gelu,
            )
        if arch == "vit":
            gelu = _gelu(hf, "hidden_act", "exact", "ViT")
            _expect(hf, "qkv_bias", (True,), "ViT")
            return ViTConfig(
                image_size=hf["image_size"],
                patch_size=hf["patch_size"],
                num_channels=hf.get("num_channels", 3),
                hidden_size=hf["hidden_size"],
                num_layers=hf["num_hidden_layers"],
                num_heads=hf["num_attention_heads"],
                mlp_dim=hf["intermediate_size"],
                num_classes=_head_size(arch, tensors, "classifier.weight", num_classes, "ViTModel"),
                layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
                dropout=hf.get("hidden_dropout_prob", 0.0),
                attention_dropout=hf.get("attention_probs_dropout_prob", 0.0),
                gelu=gelu,
            )
        if arch == "resnet":
            _expect(hf, "hidden_act", ("relu",), "ResNet")
            _expect(hf, "downsample_in_bottleneck", (False,), "ResNet (v1.5 puts the stride on the 3x3 conv)")
            _expect(hf, "downsample_in_first_stage", (False,), "ResNet")
            block = hf.get("layer_type", "bottleneck")
            expansion = 4 if block == "bottleneck" else 1
            return ResNetConfig(
                block=block,
                depths=tuple(hf["depths"]),
                widths=tuple(h // expansion for h in hf["hidden_sizes"]),
                stem_width=hf["embedding_size"],
                num_channels=hf.get("num_channels", 3),
                num_classes=_head_size(arch, tensors, "classifier.1.weight", num_classes, "ResNetModel"),
            )
    except KeyError as error:
        raise HubError(f"config.json lacks {error.args[0]!r}, which a {arch} config needs") from None
    raise AssertionError(arch)


def config_to_hf(arch: str, c) -> dict:
    if arch == "bert":
        archs = ["BertForSequenceClassification"] if c.num_classes else ["BertForMaskedLM"] if c.mlm_head else ["BertModel"]
        hf = {
            "model_type": "bert",
            "architectures": archs,
            "vocab_size": c.vocab_size,
            "max_position_embeddings": c.max_positions,
            "type_vocab_size": c.type_vocab_size,
            "hidden_size": c.hidden_size,
            "num_hidden_layers": c.num_layers,
            "num_attention_heads": c.num_heads,
            "intermediate_size": c.mlp_dim,
            "hidden_act": _GELU_NAMES[c.gelu],
            "layer_norm_eps": c.layer_norm_eps,
            "hidden_dropout_prob": c.dropout,
            "attention_probs_dropout_prob": c.attention_dropout,
            "position_embedding_type": "absolute",
            "pad_token_id": 0,
            "tie_word_embeddings": c.tie_word_embeddings,
        }
        if c.num_classes:
            hf["id2label"] = {str(i): f"LABEL_{i}" for i in range(c.num_classes)}
            hf["label2id"] = {f"LABEL_{i}": i for i in range(c.num_classes)}
        return hf
    if arch == "gpt":
        return {
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "vocab_size": c.vocab_size,
            "n_positions": c.context_length,
            "n_embd": c.hidden_size,
            "n_layer": c.num_layers,
            "n_head": c.num_heads,
            "n_inner": c.mlp_dim,
            "activation_function": _GELU_NAMES[c.gelu],
            "layer_norm_epsilon": c.layer_norm_eps,
            "resid_pdrop": c.dropout,
            "embd_pdrop": c.dropout,
            "attn_pdrop": c.attention_dropout,
            "tie_word_embeddings": c.tie_word_embeddings,
        }
    if arch == "vit":
        return {
            "model_type": "vit",
            "architectures": ["ViTForImageClassification"],
            "image_size": c.image_size,
            "patch_size": c.patch_size,
            "num_channels": c.num_channels,
            "hidden_size": c.hidden_size,
            "num_hidden_layers": c.num_layers,
            "num_attention_heads": c.num_heads,
            "intermediate_size": c.mlp_dim,
            "hidden_act": _GELU_NAMES[c.gelu],
            "layer_norm_eps": c.layer_norm_eps,
            "hidden_dropout_prob": c.dropout,
            "attention_probs_dropout_prob": c.attention_dropout,
            "qkv_bias": True,
            "id2label": {str(i): f"LABEL_{i}" for i in range(c.num_classes)},
            "label2id": {f"LABEL_{i}": i for i in range(c.num_classes)},
        }
    if arch == "resnet":
        return {
            "model_type": "resnet",
            "architectures": ["ResNetForImageClassification"],
            "num_channels": c.num_channels,
            "embedding_size": c.stem_width,
            "hidden_sizes": list(c.out_widths),
            "depths": list(c.depths),
            "layer_type": c.block,
            "hidden_act": "relu",
            "downsample_in_first_stage": False,
            "downsample_in_bottleneck": False,
            "id2label": {str(i): f"LABEL_{i}" for i in range(c.num_classes)},
            "label2id": {f"LABEL_{i}": i for i in range(c.num_classes)},
        }
    raise AssertionError(arch)


# --------------------------------------------------------------------------- files


def resolve(name_or_path: str | os.PathLike, revision: str | None = None) -> Path:
    """A local folder for a local path or a hub id (downloaded through huggingface_hub)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise HubError(f"{path} is a file; expected a checkpoint folder (config.json + weights) or a hub id")
    if looks_like_path(name_or_path):  # the path rule of dlzoo.zoo.files: never looked up on the hub
        raise HubError(f"{name_or_path}: no such file or folder")
    name = str(name_or_path)
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name):
        raise HubError(f"{name!r} is neither an existing folder nor a hub id like 'openai-community/gpt2'")
    from huggingface_hub import snapshot_download

    patterns = [
        "config.json",
        "*.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model*.bin",
        "pytorch_model.bin.index.json",
    ]
    try:
        return Path(snapshot_download(name, revision=revision, allow_patterns=patterns))
    except Exception as error:  # huggingface_hub raises many types: offline, 404, auth, ...
        raise HubError(
            f"could not download {name!r} from the hub ({type(error).__name__}: "
            f"{_first_line(error)}); pass a local checkpoint folder instead"
        ) from None


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    out = {}
    try:
        with safe_open(str(path), framework="np") as f:
            names = list(f.keys())
            bf16 = []
            for name in names:
                try:
                    out[name] = f.get_tensor(name)
                except (TypeError, ValueError):  # numpy has no bfloat16
                    bf16.append(name)
        if bf16:
            out.update(_read_bf16(path, bf16))
    except HubError:
        raise
    except Exception as error:
        raise HubError(f"{path}: corrupt or truncated safetensors file ({_first_line(error)})") from None
    return out


def _read_bf16(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    # safetensors layout: u64 header length, JSON header with data_offsets, then the data.
    # bfloat16 is the upper half of a float32, so widening is a 16-bit shift.
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
        data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + size)
    out = {}
    for name in names:
        entry = header[name]
        if entry["dtype"] != "BF16":
            raise HubError(f"{path}: tensor {name} has dtype {entry['dtype']}, which dlzoo cannot read")
        start, end = entry["data_offsets"]
        raw = np.frombuffer(data[start:end].tobytes(), dtype="<u2").astype(np.uint32) << 16
        out[name] = raw.view(np.float32).reshape(entry["shape"])
    return out


def _read_bin(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise HubError(
            f"{path.name} is a PyTorch pickle file; reading it needs torch "
            "(pip install 'dlzoo[torch]'), or use a model.safetensors checkpoint"
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise HubError(
            f"{path}: refused or unreadable with torch.load(weights_only=True) ({_first_line(error)}); dlzoo never executes pickled code"
        ) from None
    # Training scripts wrap the weights: {"state_dict": ...} (timm, lightning), {"model": ...}
    # (torchvision's reference scripts), beside optimizer state that is not read.
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    return {
        k: v.detach().float().numpy() if v.is_floating_point() else v.detach().numpy()
        for k, v in state.items()
        if isinstance(v, torch.Tensor)
    }


def _is_float(dtype: np.dtype) -> bool:
    # With ml_dtypes loaded (jax imports it), safetensors hands back bfloat16 arrays directly;
    # numpy does not count that dtype as floating.
    return np.issubdtype(dtype, np.floating) or dtype.name == "bfloat16"


def read_checkpoint(folder: str | os.PathLike, upcast: bool = True) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json as a dict, tensors by published name) from a folder in the published layout.

    Floating tensors stored in half precision are upcast to float32 unless ``upcast=False``.
    """
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise HubError(
            f"{folder}: no config.json; expected a checkpoint folder in the published "
            "layout (config.json + model.safetensors or pytorch_model.bin)"
        )
    try:
        hf = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise HubError(f"{config_path}: not valid JSON ({error})") from None
    found = next((name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if found is None:
        raise HubError(f"{folder}: no weights; expected one of {', '.join(WEIGHT_FILES)}")
    tensors: dict[str, np.ndarray] = {}
    if found.endswith(".index.json"):
        try:
            weight_map = json.loads((folder / found).read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise HubError(f"{folder / found}: not a valid shard index (needs a 'weight_map')") from None
        for shard in sorted(set(weight_map.values())):
            if not (folder / shard).is_file():
                raise HubError(f"{folder}: shard {shard} named in {found} is missing")
            reader = _read_safetensors if shard.endswith(".safetensors") else _read_bin
            tensors.update(reader(folder / shard))
    else:
        tensors = (_read_safetensors if found.endswith(".safetensors") else _read_bin)(folder / found)
    if upcast:
        tensors = {k: v.astype(np.float32) if _is_float(v.dtype) else v for k, v in tensors.items()}
    return hf, tensors


def detect_arch(hf: dict) -> str:
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
        raise HubError(f"model_type {model_type!r} is not supported; dlzoo reads {', '.join(sorted(MODEL_TYPES))} checkpoints")
    return MODEL_TYPES[model_type]


# transformers 5 names ViT's modules differently in memory (ViTModel().state_dict()) than in the
# files save_pretrained writes (which keep the published names): a raw state dict uses these.
_VIT_IN_MEMORY = [
    (r"^layers\.(\d+)\.attention\.q_proj\.", r"encoder.layer.\1.attention.attention.query."),
    (r"^layers\.(\d+)\.attention\.k_proj\.", r"encoder.layer.\1.attention.attention.key."),
    (r"^layers\.(\d+)\.attention\.v_proj\.", r"encoder.layer.\1.attention.attention.value."),
    (r"^layers\.(\d+)\.attention\.o_proj\.", r"encoder.layer.\1.attention.output.dense."),
    (r"^layers\.(\d+)\.mlp\.fc1\.", r"encoder.layer.\1.intermediate.dense."),
    (r"^layers\.(\d+)\.mlp\.fc2\.", r"encoder.layer.\1.output.dense."),
    (r"^layers\.(\d+)\.(layernorm_before|layernorm_after)\.", r"encoder.layer.\1.\2."),
]


def _normalise(arch: str, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    prefix = _PREFIX[arch]
    out = {}
    for name, value in tensors.items():
        if name.startswith(prefix):
            name = name[len(prefix) :]
        if arch == "vit":
            for pattern, published in _VIT_IN_MEMORY:
                name = re.sub(pattern, published, name)
        # TF-converted BERT checkpoints (bert-base-uncased's first upload) say gamma/beta.
        name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name)
        name = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)
        out[name] = value
    return out


def resolve_heads(arch: str, config, tensors: dict[str, np.ndarray], published: list[str]) -> dict[str, np.ndarray]:
    """Output heads, before the rules run (``tensors`` normalised, ``published`` the names as
    stored). A checkpoint that says its head is tied but stores a different head matrix is
    ambiguous (transformers would silently keep one of the two): refused, naming both tensors.
    An untied BERT decoder brings its own bias: transformers >= 5 unties it along with the
    weight and applies the decoder's (before 5 both names held one tensor)."""
    if arch in _TIED_HEADS and config.tie_word_embeddings:
        head, embedding = _TIED_HEADS[arch]
        if head in tensors and embedding in tensors and not np.array_equal(tensors[head], tensors[embedding]):
            head, embedding = (next((n for n in published if n == short or n.endswith("." + short)), short) for short in (head, embedding))
            raise HubError(
                f"config.json says tie_word_embeddings=true, but {head} differs from "
                f'{embedding}; set "tie_word_embeddings": false in config.json if the '
                "head is meant to be separate, or remove the stale head tensor"
            )
    if arch == "bert" and not config.tie_word_embeddings and "cls.predictions.decoder.bias" in tensors:
        tensors = {**tensors, "cls.predictions.bias": tensors["cls.predictions.decoder.bias"]}
    return tensors


def to_canonical(arch: str, hf: dict, tensors: dict[str, np.ndarray], num_classes: int | None = None, seed: int = 0):
    """(config, canonical tensors, ignored published names) from a published checkpoint; a head
    the checkpoint lacks, or holds at another size than ``num_classes``, is drawn fresh from
    ``seed`` (see ``checkpoints.map_tensors``)."""
    from .checkpoints import LoadReport, map_tensors

    check_arch(arch)
    published = list(tensors)
    tensors = _normalise(arch, tensors)
    config = config_from_hf(arch, hf, tensors, num_classes)
    tensors = resolve_heads(arch, config, tensors, published)
    report = LoadReport(source="tensors", layout="transformers", arch=arch)
    canonical = map_tensors(arch, config, RULES[arch](config), tensors, "transformers", seed=seed, ignorable=_IGNORED, report=report)
    return config, canonical, report.ignored


def from_published(arch: str, config, tensors: dict[str, np.ndarray]) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json dict, tensors by published name) for canonical tensors: the inverse mapping."""
    tensors = validate(arch, config, tensors)
    out: dict[str, np.ndarray] = {}
    for rule in RULES[arch](config):
        out.update(_to_published(rule, tensors))
    if arch == "bert" and config.mlm_head and not config.tie_word_embeddings:
        out["cls.predictions.decoder.bias"] = tensors["mlm.bias"]  # read by transformers >= 5 when untied
    hf = config_to_hf(arch, config)
    head_model = hf["architectures"][0] not in ("BertModel",)
    if head_model:  # the backbone lives under a prefix; heads sit beside it
        prefix = _PREFIX[arch]
        out = {(k if k.startswith(_HEAD_MODULES) else prefix + k): v for k, v in out.items()}
    return hf, {k: np.ascontiguousarray(v) for k, v in out.items()}


def load_checkpoint(name_or_path, revision: str | None = None, **options):
    """(arch, config, canonical tensors, ignored names) from a hub id, a published folder, a
    torchvision/timm state dict or a canonical file; ``options`` as ``checkpoints.read_pretrained``."""
    from .checkpoints import read_pretrained

    arch, config, canonical, report = read_pretrained(name_or_path, revision, **options)
    return arch, config, canonical, report.ignored


def export(arch: str, config, tensors: dict[str, np.ndarray], folder: str | os.PathLike) -> Path:
    """Write a folder in the published layout (config.json + model.safetensors) that transformers
    loads. The folder must be new or empty and its parent must exist (``files.check_output_folder``);
    writes into a temporary sibling, then renames."""
    from safetensors.numpy import save_file

    folder = check_output_folder(folder)
    hf, published = from_published(arch, config, tensors)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        (tmp / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
        save_file(published, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if folder.exists():
            folder.rmdir()
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def from_pretrained(
    name_or_path,
    framework: str = "torch",
    revision: str | None = None,
    seed: int = 0,
    compute_dtype: str = "float32",
    *,
    arch: str | None = None,
    preset: str | None = None,
    **overrides,
):
    """A Handle for a hub id, a published folder, a torchvision/timm state dict or a canonical
    file, in ``framework``. ``arch``/``preset`` name what a state dict holds (else inferred);
    ``overrides`` are config fields, e.g. ``num_classes=N`` for a fresh head of N classes or
    ``image_size`` for a ViT at another resolution. ``handle.load_report`` (a
    ``checkpoints.LoadReport``) lists loaded, freshly initialised and ignored tensors."""
    from .checkpoints import read_pretrained
    from .handle import load

    arch, config, tensors, report = read_pretrained(name_or_path, revision, arch=arch, preset=preset, seed=seed, **overrides)
    handle = load(arch, framework, config=config, weights=tensors, seed=seed, compute_dtype=compute_dtype)
    handle.load_report = report
    return handle
