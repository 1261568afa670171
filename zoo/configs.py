"""Architecture configs and named presets.

Variants are data: one frozen dataclass per architecture whose defaults are a real published
size, validated on construction, and one table of named presets. Nothing here imports a
deep-learning framework, so every framework's model files (and the CLI) can depend on it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar


class ZooError(ValueError):
    """A user-facing error: its message is one line that says what was expected and what to do."""


class ConfigError(ZooError):
    pass


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _positive(config: Any, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        _require(
            isinstance(value, int) and not isinstance(value, bool) and value > 0,
            f"{type(config).__name__}.{name} must be a positive integer, got {value!r}",
        )


def _probability(config: Any, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        _require(isinstance(value, (int, float)) and 0.0 <= value < 1.0, f"{type(config).__name__}.{name} must be in [0, 1), got {value!r}")


GELU_FORMS: tuple[str, ...] = ("exact", "tanh")


def _gelu_form(config: Any) -> None:
    _require(
        config.gelu in GELU_FORMS,
        f'{type(config).__name__}.gelu must be "exact" (erf GELU) or "tanh" (its tanh approximation), got {config.gelu!r}',
    )


def _flag(config: Any, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        _require(isinstance(value, bool), f"{type(config).__name__}.{name} must be true or false, got {value!r}")


def _heads_divide(config: Any) -> None:
    _require(
        config.hidden_size % config.num_heads == 0,
        f"{type(config).__name__}: hidden_size {config.hidden_size} is not divisible by "
        f"num_heads {config.num_heads}; choose num_heads that divides it",
    )


# One name for the size of the classification head in every architecture: ``num_classes``, as
# torchvision, timm, keras-hub and big_vision spell it. transformers' ``num_labels`` (BERT's field
# before) is still accepted: silently from stored configs, with a FutureWarning from user code.
RENAMED_FIELDS = {"num_labels": "num_classes"}


def _rename_fields(cls_name: str, values: dict[str, Any], *, warn: bool) -> dict[str, Any]:
    values = dict(values)
    for old, new in RENAMED_FIELDS.items():
        if old not in values:
            continue
        if new in values and values[new] != values[old]:
            raise ConfigError(
                f"{cls_name}: {old}={values[old]!r} and {new}={values[new]!r} disagree; pass {new} only ({old} is its deprecated name)"
            )
        if warn:
            warnings.warn(
                f"{old} is deprecated in dlzoo; use {new} (one name for the head size in every architecture)", FutureWarning, stacklevel=4
            )
        values[new] = values.pop(old)
    return values


class _Config:
    """Shared behaviour: JSON round trip (canonical weight files store the config as JSON)."""

    arch: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        data = _rename_fields(cls.__name__, data, warn=False)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{cls.__name__} has no field(s) {', '.join(unknown)}; valid fields: {', '.join(sorted(known))}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)

    def block_names(self) -> list[str]:
        """Canonical names of the residual blocks in the order they run: the keys of
        ``Handle.block_outputs``."""
        return [f"blocks.{i}" for i in range(self.num_layers)]

    def replace(self, **overrides: Any):
        overrides = _rename_fields(type(self).__name__, overrides, warn=True)
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"{type(self).__name__} has no field(s) {', '.join(unknown)}; valid fields: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **overrides)


@dataclass(frozen=True)
class BertConfig(_Config):
    """BERT (Devlin et al., 2019), post-LN encoder. Defaults: BERT-base uncased."""

    arch: ClassVar[str] = "bert"
    vocab_size: int = 30522
    max_positions: int = 512
    type_vocab_size: int = 2
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1
    attention_dropout: float = 0.1
    pooler: bool = True  # tanh dense over [CLS] (BertModel's pooler)
    mlm_head: bool = False  # transform + layer norm + decoder (tied to word embeddings by default)
    num_classes: int = 0  # > 0: sequence-classification dense over the pooled output
    tie_word_embeddings: bool = True  # False: the MLM decoder has its own kernel, mlm.decoder.kernel
    gelu: str = "exact"  # the GELU of the MLP and the MLM transform: "exact" (erf, BERT's) or "tanh"
    remat: bool = False  # recompute each block's activations in the backward pass (training memory)
    scan_layers: bool = False  # JAX frameworks: run the identical blocks as one jax.lax.scan (compile time)

    def __post_init__(self):
        _gelu_form(self)
        _flag(self, "remat", "scan_layers")
        _positive(self, "vocab_size", "max_positions", "type_vocab_size", "hidden_size", "num_layers", "num_heads", "mlp_dim")
        _heads_divide(self)
        _probability(self, "dropout", "attention_dropout")
        _require(self.layer_norm_eps > 0, f"BertConfig.layer_norm_eps must be > 0, got {self.layer_norm_eps}")
        _require(
            isinstance(self.num_classes, int) and self.num_classes >= 0,
            f"BertConfig.num_classes must be an integer >= 0, got {self.num_classes!r}",
        )
        _require(self.num_classes == 0 or self.pooler, "BertConfig: a classifier (num_classes > 0) needs the pooler; set pooler=True")
        _require(
            isinstance(self.tie_word_embeddings, bool),
            f"BertConfig.tie_word_embeddings must be true or false, got {self.tie_word_embeddings!r}",
        )

    @property
    def num_labels(self) -> int:
        """Deprecated name of ``num_classes`` (transformers' spelling), kept for readers."""
        return self.num_classes


@dataclass(frozen=True)
class GPTConfig(_Config):
    """GPT-2 (Radford et al., 2019), pre-LN decoder with tied LM head. Defaults: GPT-2 124M.

    ``tie_word_embeddings=False`` gives the LM head its own kernel, ``lm_head.kernel`` [D, V]
    (transformers' ``tie_word_embeddings: false`` with a stored ``lm_head.weight``).
    """

    arch: ClassVar[str] = "gpt"
    vocab_size: int = 50257
    context_length: int = 1024
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    layer_norm_eps: float = 1e-5
    dropout: float = 0.1  # embedding and residual dropout
    attention_dropout: float = 0.1
    tie_word_embeddings: bool = True  # False: a separate LM head kernel, lm_head.kernel
    gelu: str = "tanh"  # the MLP's GELU: "tanh" (GPT-2's "gelu_new") or "exact" (erf)
    remat: bool = False  # recompute each block's activations in the backward pass (training memory)
    scan_layers: bool = False  # JAX frameworks: run the identical blocks as one jax.lax.scan (compile time)

    def __post_init__(self):
        _gelu_form(self)
        _flag(self, "remat", "scan_layers")
        _require(
            isinstance(self.tie_word_embeddings, bool),
            f"GPTConfig.tie_word_embeddings must be true or false, got {self.tie_word_embeddings!r}",
        )
        _positive(self, "vocab_size", "context_length", "hidden_size", "num_layers", "num_heads", "mlp_dim")
        _heads_divide(self)
        _probability(self, "dropout", "attention_dropout")
        _require(self.layer_norm_eps > 0, f"GPTConfig.layer_norm_eps must be > 0, got {self.layer_norm_eps}")


@dataclass(frozen=True)
class ViTConfig(_Config):
    """Vision Transformer (Dosovitskiy et al., 2021), pre-LN, [CLS] head. Defaults: ViT-B/16."""

    arch: ClassVar[str] = "vit"
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    num_classes: int = 1000
    layer_norm_eps: float = 1e-12  # HF/google checkpoints; timm and big_vision use 1e-6
    dropout: float = 0.0
    attention_dropout: float = 0.0
    gelu: str = "exact"  # the MLP's GELU: "exact" (erf, the published ViTs') or "tanh"
    remat: bool = False  # recompute each block's activations in the backward pass (training memory)
    scan_layers: bool = False  # JAX frameworks: run the identical blocks as one jax.lax.scan (compile time)

    def __post_init__(self):
        _gelu_form(self)
        _flag(self, "remat", "scan_layers")
        _positive(self, "image_size", "patch_size", "num_channels", "hidden_size", "num_layers", "num_heads", "mlp_dim", "num_classes")
        _heads_divide(self)
        _require(
            self.image_size % self.patch_size == 0,
            f"ViTConfig: patch_size {self.patch_size} does not divide image_size "
            f"{self.image_size}; choose a patch size that divides the image size",
        )
        _probability(self, "dropout", "attention_dropout")
        _require(self.layer_norm_eps > 0, f"ViTConfig.layer_norm_eps must be > 0, got {self.layer_norm_eps}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def bicubic_resize_matrix(in_size: int, out_size: int) -> tuple[tuple[float, ...], ...]:
    """The [out_size, in_size] matrix of 1-D bicubic resampling exactly as torch's
    ``F.interpolate(mode="bicubic", align_corners=False)`` with an explicit output size (what
    transformers' ``interpolate_pos_encoding`` and timm's ``resample_abs_pos_embed`` call):
    source coordinate ``(dst + 0.5) * in / out - 0.5`` (not clamped), Keys' cubic kernel with
    A = -0.75 (``jax.image.resize``'s "cubic" uses A = -0.5 and renormalises at the borders, so
    it differs), taps outside the input replicate the border. A 2-D resize is ``M_h @ x @ M_w.T``.
    Pure Python: every framework (and the checkpoint importer) builds its constant from it.
    """
    A = -0.75

    def near(x: float) -> float:  # |x| <= 1
        return ((A + 2) * x - (A + 3)) * x * x + 1

    def far(x: float) -> float:  # 1 < |x| < 2
        return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A

    rows = []
    for dst in range(out_size):
        src = (dst + 0.5) * in_size / out_size - 0.5
        base = math.floor(src)
        t = src - base
        row = [0.0] * in_size
        for offset, weight in zip((-1, 0, 1, 2), (far(t + 1), near(t), near(1 - t), far(2 - t))):
            row[min(max(base + offset, 0), in_size - 1)] += weight
        rows.append(tuple(row))
    return tuple(rows)


@dataclass(frozen=True)
class ResNetConfig(_Config):
    """ResNet v1.5 (He et al., 2016; stride on the 3x3 conv). Defaults: ResNet-50.

    ``bn_momentum`` follows one convention everywhere in dlzoo, PyTorch's: the weight of the
    NEW batch statistic, ``running = (1 - bn_momentum) * running + bn_momentum * batch``.
    Frameworks that weight the old statistic (flax, equinox, keras ``momentum``; haiku
    ``decay_rate``) receive ``1 - bn_momentum``.

    No ``scan_layers`` (GPT, BERT and ViT have it): the blocks differ in shape from stage to
    stage (widths, the strided first block and its downsample), so there is no one block to run
    as a ``jax.lax.scan``; ``scan_layers=...`` is refused as an unknown field.
    """

    arch: ClassVar[str] = "resnet"
    block: str = "bottleneck"  # "basic" (ResNet-18/34) or "bottleneck"
    depths: tuple[int, ...] = (3, 4, 6, 3)
    widths: tuple[int, ...] = (64, 128, 256, 512)  # inner width of each stage
    stem_width: int = 64
    num_channels: int = 3
    num_classes: int = 1000
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    zero_init_residual: bool = False  # zero each block's last BN scale at init (Goyal et al., 2017)
    remat: bool = False  # recompute each residual block's activations in the backward pass (training memory)

    def __post_init__(self):
        _flag(self, "remat")
        object.__setattr__(self, "depths", tuple(self.depths))
        object.__setattr__(self, "widths", tuple(self.widths))
        _require(self.block in ("basic", "bottleneck"), f"ResNetConfig.block must be 'basic' or 'bottleneck', got {self.block!r}")
        _require(
            len(self.depths) >= 1 and len(self.depths) == len(self.widths),
            f"ResNetConfig: depths {self.depths} and widths {self.widths} must be non-empty and of equal length (one entry per stage)",
        )
        _require(
            all(isinstance(d, int) and d > 0 for d in self.depths + self.widths),
            f"ResNetConfig: depths and widths must be positive integers, got {self.depths}, {self.widths}",
        )
        _positive(self, "stem_width", "num_channels", "num_classes")
        _require(
            0.0 < self.bn_momentum < 1.0,
            f"ResNetConfig.bn_momentum (weight of the new batch, torch convention) must be in (0, 1), got {self.bn_momentum}",
        )
        _require(self.bn_eps > 0, f"ResNetConfig.bn_eps must be > 0, got {self.bn_eps}")

    @property
    def expansion(self) -> int:
        return 4 if self.block == "bottleneck" else 1

    @property
    def out_widths(self) -> tuple[int, ...]:
        """Output channels of each stage."""
        return tuple(w * self.expansion for w in self.widths)

    def block_names(self) -> list[str]:
        return [f"stages.{s}.blocks.{b}" for s, depth in enumerate(self.depths) for b in range(depth)]

    def layout(self) -> list[list[tuple[int, int, int, int]]]:
        """Per stage, per block: (in_channels, inner width, out_channels, stride). The first block
        of every stage but the first has stride 2 (v1.5 puts it on the 3x3 conv)."""
        stages, n_in = [], self.stem_width
        for s, (depth, width) in enumerate(zip(self.depths, self.widths)):
            n_out = width * self.expansion
            blocks = []
            for b in range(depth):
                blocks.append((n_in, width, n_out, 2 if (b == 0 and s > 0) else 1))
                n_in = n_out
            stages.append(blocks)
        return stages


CONFIGS: dict[str, type] = {"bert": BertConfig, "gpt": GPTConfig, "resnet": ResNetConfig, "vit": ViTConfig}
ARCHS: tuple[str, ...] = tuple(CONFIGS)


def _bert(layers: int, hidden: int) -> BertConfig:
    return BertConfig(hidden_size=hidden, num_layers=layers, num_heads=hidden // 64, mlp_dim=4 * hidden)


def _gpt(layers: int, hidden: int, heads: int) -> GPTConfig:
    return GPTConfig(hidden_size=hidden, num_layers=layers, num_heads=heads, mlp_dim=4 * hidden)


_VIT_SIZES = {  # name: (hidden, layers, heads, mlp) from Dosovitskiy et al. and Touvron et al. (Ti, S)
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "H": (1280, 32, 16, 5120),
}

PRESETS: dict[str, dict[str, Any]] = {
    "bert": {
        # BERT miniatures (Turc et al., 2019) and the two original sizes.
        "tiny": _bert(2, 128),
        "mini": _bert(4, 256),
        "small": _bert(4, 512),
        "medium": _bert(8, 512),
        "base": BertConfig(),
        "large": _bert(24, 1024),
    },
    "gpt": {
        "tiny": GPTConfig(vocab_size=256, context_length=64, hidden_size=64, num_layers=2, num_heads=4, mlp_dim=256),
        "124M": GPTConfig(),
        "medium": _gpt(24, 1024, 16),
        "large": _gpt(36, 1280, 20),
        "xl": _gpt(48, 1600, 25),
    },
    "resnet": {
        "tiny": ResNetConfig(depths=(1, 2), widths=(8, 16), stem_width=8, num_classes=10),
        "18": ResNetConfig(block="basic", depths=(2, 2, 2, 2)),
        "34": ResNetConfig(block="basic", depths=(3, 4, 6, 3)),
        "50": ResNetConfig(depths=(3, 4, 6, 3)),
        "101": ResNetConfig(depths=(3, 4, 23, 3)),
        "152": ResNetConfig(depths=(3, 8, 36, 3)),
    },
    "vit": {
        "tiny": ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_layers=2, num_heads=4, mlp_dim=128, num_classes=10),
        **{
            f"{size}/{patch}": ViTConfig(patch_size=patch, hidden_size=h, num_layers=n, num_heads=k, mlp_dim=m)
            for size, (h, n, k, m) in _VIT_SIZES.items()
            for patch in ((14,) if size == "H" else (16, 32))
        },
    },
}

ALIASES: dict[str, dict[str, str]] = {
    "bert": {"bert-base-uncased": "base", "bert-large-uncased": "large"},
    "gpt": {
        "gpt2": "124M",
        "small": "124M",
        "gpt2-medium": "medium",
        "355M": "medium",
        "gpt2-large": "large",
        "774M": "large",
        "gpt2-xl": "xl",
        "1.5B": "xl",
    },
    "resnet": {f"resnet{d}": d for d in ("18", "34", "50", "101", "152")},
    "vit": {},
}

_VIT_GRAMMAR = re.compile(r"^(Ti|S|B|L|H)/(\d+)$", re.IGNORECASE)


def check_arch(arch: str) -> str:
    if arch not in CONFIGS:
        raise ConfigError(f"unknown architecture {arch!r}; expected one of: {', '.join(ARCHS)}")
    return arch


def preset_names(arch: str) -> list[str]:
    return list(PRESETS[check_arch(arch)])


def get_config(arch: str, preset: str | Any = "tiny", **overrides: Any):
    """A config from a preset name (or a config instance), with field overrides.

    ViT accepts the compact grammar "SIZE/PATCH" for any patch size, e.g. "B/16" or "S/8".
    """
    check_arch(arch)
    cls = CONFIGS[arch]
    if isinstance(preset, cls):
        config = preset
    elif isinstance(preset, str):
        name = ALIASES[arch].get(preset, preset)
        if name in PRESETS[arch]:
            config = PRESETS[arch][name]
        elif arch == "vit" and (match := _VIT_GRAMMAR.match(name)):
            size = next(s for s in _VIT_SIZES if s.lower() == match.group(1).lower())
            hidden, layers, heads, mlp = _VIT_SIZES[size]
            config = ViTConfig(patch_size=int(match.group(2)), hidden_size=hidden, num_layers=layers, num_heads=heads, mlp_dim=mlp)
        else:
            raise ConfigError(f"unknown {arch} preset {preset!r}; expected one of: {', '.join(preset_names(arch))}")
    else:
        raise ConfigError(f"expected a {arch} preset name or a {cls.__name__}, got {type(preset).__name__}")
    return config.replace(**overrides) if overrides else config


def config_from_json(arch: str, text: str):
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"config is not valid JSON ({error})") from None
    return CONFIGS[check_arch(arch)].from_dict(data)


def check_generation(
    config: GPTConfig,
    prompt_length: int,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    last_mask_column=None,
) -> None:
    """The arguments of every framework's GPT ``generate``, checked once. ``last_mask_column``:
    the attention mask's last column (iterable) or None; generation needs left padding, so every
    row's last prompt token must be real."""
    _require(
        isinstance(max_new_tokens, int) and not isinstance(max_new_tokens, bool) and max_new_tokens >= 1,
        f"max_new_tokens must be a positive integer, got {max_new_tokens!r}",
    )
    _require(
        prompt_length + max_new_tokens <= config.context_length,
        f"prompt length {prompt_length} + max_new_tokens {max_new_tokens} exceeds context_length "
        f"{config.context_length}; shorten the prompt or generate fewer tokens",
    )
    _require(
        last_mask_column is None or all(int(v) == 1 for v in last_mask_column),
        "generate needs left padding: every row's last prompt token must be real (attention_mask[:, -1] == 1); pad prompts on the left",
    )
    _require(
        isinstance(temperature, (int, float)) and temperature >= 0.0, f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}"
    )
    _require(
        top_k is None or (isinstance(top_k, int) and not isinstance(top_k, bool) and top_k >= 1),
        f"top_k must be a positive integer or None, got {top_k!r}",
    )
    _require(top_p is None or (isinstance(top_p, (int, float)) and 0.0 < top_p <= 1.0), f"top_p must be in (0, 1] or None, got {top_p!r}")
