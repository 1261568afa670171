"""Loading the checkpoints people actually have, with a report of what happened to every tensor.

Layouts (docs/checkpoints.md has the table):

- ``transformers``: a folder (or hub id) with ``config.json`` and the published weights
  (``hub.py`` holds its rules, shared with export);
- ``torchvision``: a ResNet state dict named as torchvision's ``resnet*`` (``conv1``, ``bn1``,
  ``layer1.0.conv1``, ``downsample.0/1``, ``fc``); timm's ResNet uses the same names;
- ``timm``: a ViT state dict named as timm's ``vit_*_patch*`` (``patch_embed.proj``,
  ``cls_token``, ``pos_embed``, ``blocks.N.attn.qkv``, ``norm``, ``head``);
- ``dlzoo``: a canonical file.

State dicts come as ``.safetensors`` or as ``.pth``/``.pt``/``.bin``/``.ckpt`` read with
``torch.load(weights_only=True)``; their config is inferred from the tensor shapes, or taken
from a preset and checked against them. Prefixes that wrappers add to every name
(``_orig_mod.`` from torch.compile, ``module.`` from DDP/DataParallel) are stripped.

Fine-tuning starts: ``num_classes`` sets the head size; a head that the checkpoint lacks (a
backbone: ViTModel, BertModel, ResNetModel, timm ``num_classes=0``) or holds at another size is
freshly initialised, seeded, from the architecture's own init. A ViT loaded into a config with
another ``image_size`` gets its position embeddings resized once, bicubically, as transformers'
``interpolate_pos_encoding`` resizes them. ``LoadReport`` lists loaded, initialised and ignored
tensors, like transformers' loading info.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import hub
from .configs import _VIT_SIZES, ResNetConfig, ViTConfig, _rename_fields, bicubic_resize_matrix, check_arch, get_config
from .hub import HubError, Rule
from .spec import canonical_spec

STATE_DICT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
# Prefixes a wrapper puts before every name: torch.compile's OptimizedModule, DDP/DataParallel.
WRAPPER_PREFIXES = ("_orig_mod.", "module.")
# Canonical modules a checkpoint may lack (or hold at another size): they are initialised fresh.
HEADS = {"vit": ("head",), "resnet": ("head",), "bert": ("classifier", "pooler", "mlm"), "gpt": ()}
# Published names of heads: when unused (a head replaced or dropped), they are ignored, not unexpected.
_HEAD_NAMES = {
    "transformers": re.compile(r"^(classifier|cls\.predictions|pooler)\."),
    "torchvision": re.compile(r"^fc\."),
    "timm": re.compile(r"^head\."),
    "dlzoo": re.compile(r"^(head|classifier|pooler|mlm)\."),
}
# One tensor every transformers checkpoint of the architecture holds (prefix stripped).
_SIGNATURE = {
    "bert": "embeddings.word_embeddings.weight",
    "gpt": "wte.weight",
    "vit": "embeddings.patch_embeddings.projection.weight",
    "resnet": "embedder.embedder.convolution.weight",
}
# timm's ViTs use layer-norm epsilon 1e-6 (timm vision_transformer.py, partial(nn.LayerNorm, eps=1e-6)).
TIMM_LAYER_NORM_EPS = 1e-6
# A normal truncated at +-2 std has 0.8796 of the untruncated std; the model files divide it out.
_TRUNCATED_STD = 0.87962566103423978


@dataclass
class LoadReport:
    """What loading did with every tensor (``Handle.load_report``; printed by ``dlzoo convert``).

    ``loaded``/``initialised`` are canonical names; ``ignored`` are the checkpoint's own names
    (buffers, heads replaced or dropped); ``resized`` maps a canonical name to its
    [checkpoint shape, model shape]; ``notes`` say what was inferred."""

    source: str
    layout: str
    arch: str
    loaded: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    stripped_prefixes: list[str] = field(default_factory=list)
    resized: dict[str, list[list[int]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        lines = [f"{self.source}: {self.layout} {self.arch} checkpoint, {len(self.loaded)} tensors loaded"]
        if self.stripped_prefixes:
            lines.append("stripped wrapper prefix " + " then ".join(repr(p) for p in self.stripped_prefixes))
        if self.initialised:
            lines.append(f"freshly initialised (seeded, the architecture's init): {', '.join(self.initialised)}")
        for name, (old, new) in self.resized.items():
            lines.append(f"resized {name} {old} -> {new} (bicubic, as interpolate_pos_encoding)")
        if self.ignored:
            lines.append(f"ignored {len(self.ignored)}: {_shorten(self.ignored)}")
        lines += self.notes
        return "\n".join(lines)

    __str__ = summary


def _shorten(names: list[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f" ... (+{len(names) - limit})" if len(names) > limit else "")


# --------------------------------------------------------------------------- names


def strip_wrappers(tensors: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Strip ``_orig_mod.`` / ``module.`` while every name carries one (they nest: DDP around
    torch.compile). Returns the renamed tensors and the prefixes stripped, in order."""
    stripped = []
    while tensors and (prefix := next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in tensors)), None)):
        tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
        stripped.append(prefix)
    return tensors, stripped


def common_prefix(names) -> str:
    """The longest dotted prefix shared by every name ("" if none)."""
    names = sorted(names)
    if not names:
        return ""
    prefix = os.path.commonprefix([names[0], names[-1]])
    return prefix[: prefix.rfind(".") + 1]


def detect_layout(tensors: dict[str, np.ndarray]) -> str | None:
    """ "torchvision" (ResNet, also timm's ResNet), "timm" (ViT), or None (not recognised here:
    the transformers layout, which needs its config.json)."""
    if "conv1.weight" in tensors and any(k.startswith("layer1.0.") for k in tensors):
        return "torchvision"
    if "patch_embed.proj.weight" in tensors and "pos_embed" in tensors:
        return "timm"
    return None


def _names_problem(names, what: str) -> str:
    prefix = common_prefix(names)
    shown = _shorten(sorted(names), 4)
    if prefix and len(names) > 1:
        return (
            f"{what}: all {len(names)} tensor names start with {prefix!r} (e.g. {shown}); a wrapper "
            f"prefix? dlzoo strips {', '.join(repr(p) for p in WRAPPER_PREFIXES)} itself; save the "
            f"inner model's state_dict or strip {prefix!r}"
        )
    return f"{what}: {len(names)} tensors, e.g. {shown}"


# --------------------------------------------------------------------------- torchvision / timm rules


def torchvision_resnet_rules(c: ResNetConfig) -> list[Rule]:
    """torchvision's ``resnet*`` (and timm's ``resnet*``) names -> canonical names."""
    rules = [Rule("stem.conv", "conv1", "conv"), Rule("stem.bn", "bn1", "bn")]
    n_convs = 3 if c.block == "bottleneck" else 2
    for s, blocks in enumerate(c.layout()):
        for b, (n_in, _, n_out, stride) in enumerate(blocks):
            p, t = f"stages.{s}.blocks.{b}", f"layer{s + 1}.{b}"
            for k in range(1, n_convs + 1):
                rules += [Rule(f"{p}.conv{k}", f"{t}.conv{k}", "conv"), Rule(f"{p}.bn{k}", f"{t}.bn{k}", "bn")]
            if stride != 1 or n_in != n_out:
                rules += [Rule(f"{p}.downsample.conv", f"{t}.downsample.0", "conv"), Rule(f"{p}.downsample.bn", f"{t}.downsample.1", "bn")]
    return rules + [Rule("head", "fc", "linear")]


def timm_vit_rules(c: ViTConfig) -> list[Rule]:
    """timm's ``vit_*_patch*`` names -> canonical names. timm fuses q, k, v into one
    ``attn.qkv`` Linear whose rows are q | k | v, heads contiguous: the canonical order."""
    rules = [Rule("patch_embed", "patch_embed.proj", "conv"), Rule("cls_token", "cls_token", "raw"), Rule("pos_embed", "pos_embed", "raw")]
    for i in range(c.num_layers):
        b = f"blocks.{i}"
        rules += [
            Rule(f"{b}.ln1", f"{b}.norm1", "ln"),
            Rule(f"{b}.attn.qkv", f"{b}.attn.qkv", "linear"),
            Rule(f"{b}.attn.out", f"{b}.attn.proj", "linear"),
            Rule(f"{b}.ln2", f"{b}.norm2", "ln"),
            Rule(f"{b}.mlp.fc", f"{b}.mlp.fc1", "linear"),
            Rule(f"{b}.mlp.out", f"{b}.mlp.fc2", "linear"),
        ]
    return rules + [Rule("ln_f", "norm", "ln"), Rule("head", "head", "linear")]


def _canonical_rules(arch: str, config) -> list[Rule]:
    return [Rule(name, name, "raw") for name in canonical_spec(arch, config)]


def _layer_indices(tensors, pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in tensors if (m := re.match(pattern, k))})


def _head_rows(tensors, name: str, num_classes: int | None, arch: str, what: str) -> int:
    if num_classes is not None:
        return num_classes
    if name in tensors:
        return int(tensors[name].shape[0])
    raise HubError(f"{arch} checkpoint without a classifier ({what}): pass num_classes=N to add a freshly initialised head of N classes")


def _check_preset(arch: str, inferred, preset: str | None):
    """The preset's config (head size and epsilon from the checkpoint), refused if its sizes
    disagree with the tensors."""
    if preset is None:
        return inferred
    # the head, epsilon and training resolution are the checkpoint's; the preset gives the rest
    keep = {k: getattr(inferred, k) for k in ("num_classes", "layer_norm_eps", "image_size") if hasattr(inferred, k)}
    wanted = get_config(arch, preset, **keep)
    differ = [
        f"{k} {getattr(inferred, k)!r} (preset {getattr(wanted, k)!r})"
        for k in inferred.to_dict()
        if getattr(inferred, k) != getattr(wanted, k) and k != "num_heads"
    ]
    if differ:
        raise HubError(
            f"the checkpoint does not match {arch} preset {preset!r}: it has {', '.join(differ)}; "
            "drop the preset to infer the config from the tensors"
        )
    return wanted


def resnet_config_from_torchvision(tensors, num_classes: int | None = None, preset: str | None = None) -> ResNetConfig:
    """A ResNet config from torchvision-named tensor shapes: block type (conv3 present), depth
    and width of each stage, stem width, input channels, head size (``fc``)."""
    stem = tensors["conv1.weight"]  # (stem, C_in, 7, 7)
    if tuple(stem.shape[2:]) != (7, 7):
        raise HubError(
            f"conv1.weight is {list(stem.shape)}: a ResNet with a {stem.shape[2]}x{stem.shape[3]} "
            "stem is not the published ResNet (7x7 stem; deep-stem variants are not supported)"
        )
    stages = _layer_indices(tensors, r"layer(\d+)\.")
    if stages != list(range(1, len(stages) + 1)):
        raise HubError(f"torchvision ResNet stages must be layer1..layerN, found layer{stages}")
    depths = tuple(1 + max(_layer_indices(tensors, rf"layer{s}\.(\d+)\.")) for s in stages)
    block = "bottleneck" if "layer1.0.conv3.weight" in tensors else "basic"
    widths = tuple(int(tensors[f"layer{s}.0.conv1.weight"].shape[0]) for s in stages)
    config = ResNetConfig(
        block=block,
        depths=depths,
        widths=widths,
        stem_width=int(stem.shape[0]),
        num_channels=int(stem.shape[1]),
        num_classes=_head_rows(tensors, "fc.weight", num_classes, "resnet", "no fc"),
    )
    return _check_preset("resnet", config, preset)


def vit_config_from_timm(tensors, num_classes: int | None = None, preset: str | None = None) -> tuple[ViTConfig, list[str]]:
    """A ViT config from timm-named tensor shapes, and notes on what could not be read from them.

    Patch size, width, channels, depth, MLP width and the training grid (pos_embed) come from
    shapes; the number of heads does not: it comes from the preset, else from the ViT size with
    that width and MLP (Ti/S/B/L/H), else width / 64 (every published ViT but H has 64-wide heads)."""
    proj = tensors["patch_embed.proj.weight"]  # (D, C_in, P, P)
    width, channels, patch = (int(n) for n in proj.shape[:3])
    tokens = int(tensors["pos_embed"].shape[1])
    grid = math.isqrt(tokens - 1)
    if grid * grid != tokens - 1:
        raise HubError(
            f"pos_embed holds {tokens} positions, not a [CLS] position plus a square grid "
            "(timm's no_embed_class or register-token ViTs are not the published ViT)"
        )
    layers = _layer_indices(tensors, r"blocks\.(\d+)\.")
    mlp = int(tensors["blocks.0.mlp.fc1.weight"].shape[0])
    notes = []
    if preset is not None:
        heads = get_config("vit", preset).num_heads
    elif size := next((s for s, (h, _, _, m) in _VIT_SIZES.items() if (h, m) == (width, mlp)), None):
        heads = _VIT_SIZES[size][2]
        notes.append(f"num_heads {heads} taken from ViT-{size} (width {width}); pass preset= to choose")
    else:
        heads = max(1, width // 64)
        notes.append(f"num_heads {heads} inferred as width / 64; pass preset= (or num_heads=) if it differs")
    config = ViTConfig(
        image_size=grid * patch,
        patch_size=patch,
        num_channels=channels,
        hidden_size=width,
        num_layers=len(layers),
        num_heads=heads,
        mlp_dim=mlp,
        num_classes=_head_rows(tensors, "head.weight", num_classes, "vit", "timm num_classes=0"),
        layer_norm_eps=TIMM_LAYER_NORM_EPS,
    )
    return _check_preset("vit", config, preset), notes


# --------------------------------------------------------------------------- fresh heads, resizing


def fresh_tensors(arch: str, config, names, seed: int = 0) -> dict[str, np.ndarray]:
    """Canonical tensors drawn from the architecture's own init (as its model files'
    ``init_weights``): ResNet's head torch's default U(+-1/sqrt(fan_in)); every other dense
    kernel a normal(0.02) truncated at 2 std; biases 0; layer-norm scales 1. Drawn in numpy
    from ``seed`` in name order, so every framework gets the same fresh head."""
    spec = canonical_spec(arch, config)
    rng = np.random.default_rng(seed)
    out = {}
    for name in sorted(names):
        shape = spec[name].shape
        if arch == "resnet" and name.startswith("head."):
            bound = 1.0 / math.sqrt(spec["head.kernel"].shape[0])
            value = rng.uniform(-bound, bound, shape)
        elif name.endswith(".kernel"):
            value = rng.standard_normal(shape)
            while (outside := np.abs(value) > 2.0).any():  # truncate at 2 std by redrawing
                value[outside] = rng.standard_normal(int(outside.sum()))
            value *= 0.02 / _TRUNCATED_STD
        elif name.endswith(".scale"):
            value = np.ones(shape)
        else:
            value = np.zeros(shape)
        out[name] = value.astype(np.float32)
    return out


def resize_pos_embed(pos_embed: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """[1, 1 + n*n, D] -> [1, 1 + h*w, D]: the patch positions resized bicubically as
    transformers' ``interpolate_pos_encoding`` (torch's kernel, align_corners=False), the [CLS]
    position kept. Computed in float64, returned float32."""
    tokens = pos_embed.shape[1] - 1
    n = math.isqrt(tokens)
    if n * n != tokens:
        raise HubError(f"pos_embed has {tokens} patch positions, not a square grid; cannot resize it")
    rows = np.asarray(bicubic_resize_matrix(n, grid[0]))  # (h, n)
    cols = np.asarray(bicubic_resize_matrix(n, grid[1]))  # (w, n)
    patches = pos_embed[0, 1:].astype(np.float64).reshape(n, n, -1)  # (n, n, D)
    patches = np.einsum("hi,ijd,wj->hwd", rows, patches, cols).reshape(1, grid[0] * grid[1], -1)
    return np.concatenate([pos_embed[:, :1], patches.astype(np.float32)], axis=1)


# --------------------------------------------------------------------------- mapping


class _Missing(Exception):
    pass


def map_tensors(
    arch: str,
    config,
    rules: list[Rule],
    tensors: dict[str, np.ndarray],
    layout: str,
    *,
    seed: int = 0,
    ignorable: re.Pattern | None = None,
    report: LoadReport,
) -> dict[str, np.ndarray]:
    """Canonical tensors for ``config`` from published ones through ``rules``.

    Heads the checkpoint lacks or holds at another size are drawn fresh (``fresh_tensors``); a
    ViT position table of another grid is resized; anything else missing, mis-shaped or left
    over is one HubError naming it (or the prefix all the names share). Fills ``report``."""
    spec = canonical_spec(arch, config)
    heads = HEADS[arch]
    used: set[str] = set()
    canonical: dict[str, np.ndarray] = {}
    missing: list[str] = []
    fresh_modules: list[str] = []
    for rule in rules:
        requested: list[str] = []

        def get(name: str) -> np.ndarray:
            requested.append(name)
            if name not in tensors:
                raise _Missing
            return np.asarray(tensors[name])

        is_head = rule.canonical.split(".")[0] in heads
        try:
            mapped = hub._to_canonical(rule, get, spec)
        except _Missing:
            if is_head:
                fresh_modules.append(rule.canonical)
            else:
                missing += [n for n in requested if n not in tensors]
            continue
        if is_head and any(tuple(v.shape) != spec[k].shape for k, v in mapped.items()):
            fresh_modules.append(rule.canonical)  # another number of classes: a new head
            continue
        used.update(requested)
        canonical.update(mapped)
    leftover = [n for n in tensors if n not in used]
    unexpected = sorted(n for n in leftover if not (ignorable and ignorable.search(n)) and not _HEAD_NAMES[layout].search(n))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(_names_problem(missing, "missing") if len(missing) > 8 else f"missing {len(missing)}: {', '.join(missing)}")
        if unexpected:
            parts.append(
                _names_problem(unexpected, "unexpected")
                if len(unexpected) > 8
                else f"unexpected {len(unexpected)}: {', '.join(unexpected)}"
            )
        raise HubError(f"checkpoint ({layout} layout) does not match a {arch} model with {config}: " + " | ".join(parts))
    if arch == "vit" and canonical["pos_embed"].shape != spec["pos_embed"].shape:
        old = canonical["pos_embed"]
        n = config.image_size // config.patch_size
        canonical["pos_embed"] = resize_pos_embed(old, (n, n))
        report.resized["pos_embed"] = [list(old.shape), list(spec["pos_embed"].shape)]
    fresh = [n for n in spec if any(n.startswith(m + ".") or n == m for m in fresh_modules)]
    canonical.update(fresh_tensors(arch, config, fresh, seed))
    canonical = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in canonical.items()}
    report.loaded = sorted(n for n in spec if n not in fresh)
    report.initialised = fresh
    report.ignored = sorted(leftover)
    from .weights import validate

    return validate(arch, config, canonical, source=f"checkpoint ({layout} layout)")


# --------------------------------------------------------------------------- reading


def _upcast(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.astype(np.float32) if hub._is_float(v.dtype) else v for k, v in tensors.items()}


def _read_state_dict(path: Path) -> dict[str, np.ndarray]:
    reader = hub._read_safetensors if path.suffix == ".safetensors" else hub._read_bin
    return _upcast(reader(path))


def _state_dict_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in STATE_DICT_SUFFIXES)


def _read(name_or_path, revision) -> tuple[dict | None, dict[str, np.ndarray], str]:
    """(config.json or None, tensors by their own names, source) for a file, folder or hub id."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        if path.suffix not in STATE_DICT_SUFFIXES:
            raise HubError(f"{path}: expected a state dict ({', '.join(STATE_DICT_SUFFIXES)}) or a checkpoint folder")
        return None, _read_state_dict(path), str(path)
    folder = hub.resolve(name_or_path, revision)
    has_config = (folder / "config.json").is_file()
    if has_config and any((folder / name).is_file() for name in hub.WEIGHT_FILES):
        hf, tensors = hub.read_checkpoint(folder)
        return hf, tensors, str(name_or_path)
    files = _state_dict_files(folder)
    if len(files) != 1:
        found = "no weights" if not files else f"{len(files)} state-dict files"
        raise HubError(
            f"{folder}: {'no config.json and ' if not has_config else ''}{found}; expected config.json "
            f"with one of {', '.join(hub.WEIGHT_FILES)}, or a single state-dict file "
            f"({', '.join(STATE_DICT_SUFFIXES)}); with several, pass the file itself"
        )
    hf = json.loads((folder / "config.json").read_text()) if has_config else None
    return hf, _read_state_dict(files[0]), str(files[0])


def read_pretrained(
    name_or_path, revision: str | None = None, *, arch: str | None = None, preset: str | None = None, seed: int = 0, **overrides
):
    """(arch, config, canonical tensors, LoadReport) from a hub id, a published folder, a
    torchvision/timm state dict or a canonical file.

    ``arch``/``preset`` name what a state dict holds (inferred from the names and shapes when
    omitted); ``overrides`` are config fields (``num_classes`` for a new head, ``image_size`` to
    resize a ViT's position embeddings, ...); ``seed`` draws fresh heads."""
    overrides = _rename_fields("from_pretrained", overrides, warn=True)
    num_classes = overrides.pop("num_classes", None)
    if arch is not None:
        check_arch(arch)
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix == ".safetensors" and _is_canonical(path):
        return _read_canonical(path, arch, preset, seed, num_classes, overrides)
    hf, tensors, source = _read(name_or_path, revision)
    tensors, stripped = strip_wrappers(tensors)
    layout = detect_layout(tensors) or "transformers"
    notes: list[str] = []
    found = {"torchvision": "resnet", "timm": "vit"}.get(layout) or (hub.detect_arch(hf) if hf else None)
    preset_config = False
    if found is None and layout == "transformers":
        found = _transformers_arch(tensors)
        if found is not None:
            hf, preset_config = _config_from_preset(source, found, arch, preset), True
            notes.append(f"no config.json: the config is dlzoo's {found} preset {preset!r}, checked against the tensors' shapes")
    if found is None:
        raise HubError(
            f"{source}: no config.json and the tensor names are neither torchvision's ResNet nor timm's "
            f"ViT ({_names_problem(list(tensors), 'names')}); transformers-named weights need their config.json"
        )
    if arch is not None and arch != found:
        raise HubError(f"{source} holds {layout}-named {found} weights, not {arch!r}")
    if layout != "transformers" and hf is not None:
        notes.append(
            f"config.json ({hf.get('model_type')!r}) ignored: the tensors carry {layout} names, so the config comes from their shapes"
        )
    if layout == "torchvision":
        config = resnet_config_from_torchvision(tensors, num_classes, preset)
        rules, ignorable = torchvision_resnet_rules(config.replace(**overrides)), hub._IGNORED
    elif layout == "timm":
        config, inferred = vit_config_from_timm(tensors, num_classes, preset)
        notes += inferred
        rules, ignorable = timm_vit_rules(config.replace(**overrides)), None
    else:
        if preset is not None and not preset_config:
            raise HubError(f"{source} has a config.json, which defines the config; drop preset={preset!r}")
        published, tensors = list(tensors), hub._normalise(found, tensors)
        if _SIGNATURE[found] not in tensors:  # say so before the config asks for a head
            raise HubError(
                f"{source}: config.json says {hf.get('model_type')!r} but the tensors lack transformers' "
                f"{_SIGNATURE[found]} ({_names_problem(list(tensors), 'names')})"
            )
        config = hub.config_from_hf(found, hf, tensors, num_classes)
        tensors = hub.resolve_heads(found, config, tensors, published)
        rules, ignorable = hub.RULES[found](config.replace(**overrides)), hub._IGNORED
    config = config.replace(**overrides)
    report = LoadReport(source=source, layout=layout, arch=found, stripped_prefixes=stripped, notes=notes)
    tensors = map_tensors(found, config, rules, tensors, layout, seed=seed, ignorable=ignorable, report=report)
    return found, config, tensors, report


def _transformers_arch(tensors: dict) -> str | None:
    """The architecture whose transformers signature tensor the names hold (after the model's
    own prefix: ``vit.``, ``bert.``, ``transformer.``, ``resnet.``), or None."""
    for arch, signature in _SIGNATURE.items():
        if signature in hub._normalise(arch, {name: None for name in tensors}):
            return arch
    return None


def _config_from_preset(source: str, found: str, arch: str | None, preset: str | None) -> dict:
    """A published config.json for a transformers-named state dict saved without one (a bare
    ``model.state_dict()``): the shapes do not record everything (attention heads, epsilons),
    so the preset names it."""
    if arch is not None and arch != found:
        raise HubError(f"{source} holds transformers-named {found} weights, not {arch!r}")
    if preset is None:
        raise HubError(
            f"{source}: transformers-named {found} weights and no config.json; name the preset they follow "
            f"(preset=..., dlzoo convert --arch {found} --preset P): the tensors do not record the number of attention heads"
        )
    return hub.config_to_hf(found, get_config(found, preset))


def _is_canonical(path: Path) -> bool:
    from .weights import read_metadata

    return read_metadata(path).get("format") == "dlzoo"


def _read_canonical(path: Path, arch, preset, seed, num_classes, overrides):
    from .weights import load as load_canonical

    if preset is not None:
        raise HubError(f"{path} is a canonical file, which holds its config; drop preset={preset!r}")
    file_arch, file_config, tensors = load_canonical(path, arch=arch)
    config = file_config.replace(**overrides, **({} if num_classes is None else {"num_classes": num_classes}))
    report = LoadReport(source=str(path), layout="dlzoo", arch=file_arch)
    tensors = map_tensors(file_arch, config, _canonical_rules(file_arch, file_config), tensors, "dlzoo", seed=seed, report=report)
    return file_arch, config, tensors, report
