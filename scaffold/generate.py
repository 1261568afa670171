"""``dlzoo new``: write a self-contained training project for one architecture and framework.

The model source is copied from the zoo (``zoo/configs.py``, ``zoo/<framework>/layers.py``,
``zoo/<framework>/<arch>.py``, ``zoo/<framework>/canonical.py``) with only its relative imports
adapted; everything else is rendered from ``scaffold/templates`` with jinja2's
``SandboxedEnvironment`` and ``StrictUndefined``. The project is rendered into a temporary
directory beside the target and moved into place only when complete, so a failure leaves
nothing behind. Nothing here imports a deep-learning framework.

    >>> from dlzoo.scaffold.generate import new_project
    >>> result = new_project("digits_vit", arch="vit", framework="equinox")    # doctest: +SKIP
    >>> result["next"]                                                          # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import keyword
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..zoo.configs import ZooError, check_arch, get_config
from ..zoo.frameworks import check_framework

SCAFFOLD_DIR = Path(__file__).resolve().parent
TEMPLATES = SCAFFOLD_DIR / "templates"
RESULTS = SCAFFOLD_DIR / "results.json"  # measured by benchmarks/scaffold_quality.py

TASKS = {"vit": ("image-classification",), "resnet": ("image-classification",), "gpt": ("lm",), "bert": ("mlm", "classify")}
TEXT_ARCHS = ("gpt", "bert")
ANNOTATE = ("none", "brief", "full")
DEFAULT_PRESET = "tiny"  # trains to >= 95% on digits in minutes on a laptop CPU (docs/scaffold.md)
DIGITS_CLASSES = 10
RESNET_IMAGE_SIZE = 32  # digits (8x8) upsampled; ResNet's stem and one stride-2 stage leave 4x4

# Dependency ranges of a generated project: what every project needs, then the framework's own.
COMMON_DEPS = ["numpy>=1.26", "safetensors>=0.4", "scikit-learn>=1.3", "pillow>=10", "tqdm>=4.66"]
FRAMEWORK_DEPS = {
    "torch": ["torch>=2.2"],
    "flax": ["jax>=0.4.30", "flax>=0.12", "optax>=0.2", "jaxtyping>=0.2"],
    "equinox": ["jax>=0.4.30", "equinox>=0.11", "optax>=0.2", "jaxtyping>=0.2"],
    "haiku": ["jax>=0.4.30", "dm-haiku>=0.0.13", "optax>=0.2", "jaxtyping>=0.2"],
    "keras": ["keras>=3.5,<4", "jax>=0.4.30"],  # keras runs its jitted stateless step on the jax backend
}
# Import names a package must not shadow: the project's own dependencies and test folder.
_RESERVED = {
    "torch",
    "jax",
    "flax",
    "equinox",
    "haiku",
    "keras",
    "optax",
    "jaxtyping",
    "numpy",
    "safetensors",
    "sklearn",
    "PIL",
    "tqdm",
    "pytest",
    "tests",
    "test",
    "dlzoo",
    "setuptools",
}

# Training defaults per architecture, tuned on digits (benchmarks/scaffold_quality.py).
DEFAULTS = {
    "vit": {
        "lr": 2e-3,
        "weight_decay": 0.05,
        "warmup_fraction": 0.05,
        "label_smoothing": 0.1,
        "epochs": 100,
        "batch_size": 64,
        "max_shift": 2,
    },
    "resnet": {
        "lr": 3e-3,
        "weight_decay": 0.05,
        "warmup_fraction": 0.05,
        "label_smoothing": 0.1,
        "epochs": 20,
        "batch_size": 64,
        "max_shift": 3,
    },
}
# Text: tuned for 5 minutes of training on a 2-core CPU (benchmarks/scaffold_quality.py).
_TEXT = {
    "weight_decay": 0.01,
    "warmup_fraction": 0.05,
    "label_smoothing": 0.0,
    "epochs": 1,
    "val_fraction": 0.05,
    "test_fraction": 0.05,
    "max_bytes": 8_000_000,
    "max_eval_rows": 512,
}
TEXT_DEFAULTS = {
    "lm": {**_TEXT, "lr": 2e-3, "batch_size": 32, "seq_len": 64, "max_steps": 2000},
    "mlm": {**_TEXT, "lr": 1e-3, "batch_size": 32, "seq_len": 64, "max_steps": 2500},
    "classify": {
        **_TEXT,
        "lr": 5e-4,
        "batch_size": 32,
        "seq_len": 128,
        "max_steps": 0,
        "epochs": 15,
        "val_fraction": 0.1,
        "test_fraction": 0.2,
    },
}
TEXT_SPECIALS = {"gpt": ["<|endoftext|>"], "bert": ["[PAD]", "[CLS]", "[SEP]", "[MASK]"]}
# Default classification data: stdlib docstrings labelled by package (enough docstrings in each).
DOCSTRING_PACKAGES = ["asyncio", "email", "http", "importlib", "logging", "multiprocessing", "unittest", "xml"]
FRAMEWORK_TITLES = {"torch": "PyTorch", "flax": "Flax NNX", "equinox": "Equinox", "haiku": "dm-haiku", "keras": "Keras 3"}
ARCH_TITLES = {"vit": "a Vision Transformer", "resnet": "a ResNet", "gpt": "a GPT", "bert": "a BERT"}

_ANNOTATION = "#   | "  # prefix of the one-line theory notes added under --annotate brief/full


def _zoo_dir() -> Path:
    from .. import zoo

    return Path(zoo.__file__).resolve().parent


# --------------------------------------------------------------------------- names


def package_name(name: str) -> tuple[str, str | None]:
    """(Python package name for project folder ``name``, a note when it had to be adjusted)."""
    base = re.sub(r"[^0-9a-zA-Z_]+", "_", name).strip("_").lower()
    note = None
    if not base:
        raise ZooError(f"project name {name!r} has no letter or digit to name a Python package after; choose a name like digits_vit")
    package = base
    if package[0].isdigit():
        package = f"project_{package}"
    if keyword.iskeyword(package) or keyword.issoftkeyword(package) or package in sys.stdlib_module_names or package in _RESERVED:
        package = f"{package}_project"
        note = f"package name {base!r} would shadow a keyword or module of the same name; using {package!r}"
    elif package != name:
        note = f"package name: {package} (project folder {name})"
    return package, note


def check_name(name: str) -> str:
    """Validate NAME: one new path component under the current folder."""
    if not name or not name.strip():
        raise ZooError("project name is empty; pass a folder name like digits_vit")
    if os.path.isabs(name) or "/" in name or "\\" in name or (os.altsep and os.altsep in name):
        raise ZooError(
            f"project name {name!r} contains a path separator; pass a plain folder name and run "
            "dlzoo new from the folder that should contain it"
        )
    if ".." in name or name in (".", "~") or name.startswith("-"):
        raise ZooError(f"project name {name!r} is not a plain folder name (no '..', '.', '~' or leading '-')")
    if any(ord(c) < 32 for c in name) or len(name) > 100:
        raise ZooError(f"project name {name!r} has control characters or is longer than 100 characters")
    return name


# --------------------------------------------------------------------------- copying zoo sources


@dataclass
class Copied:
    target: str  # path inside the project, e.g. "digits_vit/model.py"
    source: str  # path inside dlzoo, e.g. "zoo/torch/vit.py"
    original: str  # the zoo file's text
    text: str = ""  # as written into the project


def copied_sources(arch: str, framework: str) -> list[tuple[str, str]]:
    """(file in the package, file under zoo/) for every zoo file a project copies."""
    return [
        ("configs.py", "configs.py"),
        ("layers.py", f"{framework}/layers.py"),
        ("model.py", f"{framework}/{arch}.py"),
        ("canonical.py", f"{framework}/canonical.py"),
    ]


_IMPORT = re.compile(r"^(?P<indent>\s*)from (?P<dots>\.+)(?P<module>[\w.]*) import ", re.MULTILINE)


def adapt_imports(text: str, arch: str) -> str:
    """Relative imports of a zoo backend file, as seen from the project package: ``..configs``
    -> ``.configs`` (the package holds configs.py), ``.<arch>`` -> ``.model``, ``.layers`` and
    ``.canonical`` unchanged. Any other relative import has no counterpart in the project."""

    def rewrite(match: re.Match) -> str:
        dots, module = match.group("dots"), match.group("module")
        if dots == ".." and module == "configs":
            module = "configs"
        elif dots == "." and module in ("layers", "canonical", "configs"):
            pass
        elif dots == "." and module == arch:
            module = "model"
        else:
            raise ZooError(
                f"zoo import 'from {dots}{module} import' has no counterpart in a generated project; "
                "model files may import only ..configs, .layers and .canonical"
            )
        return f"{match.group('indent')}from .{module} import "

    return _IMPORT.sub(rewrite, text)


def _knowledge():
    from ..agents.theory import load_knowledge

    return load_knowledge()


def _one_line(title: str, brief: str, width: int) -> str:
    sentence = re.split(r"(?<=[.!?])\s", brief, maxsplit=1)[0]
    text = f"{title}: {sentence}"
    if len(text) > width:
        text = text[: width - 3].rsplit(" ", 1)[0] + "..."
    return text


def annotate_brief(text: str, path: str = "<file>", width: int = 120) -> str:
    """``text`` with a one-line theory note (the knowledge base's title and first sentence) at
    every ``# theory: <id>`` marker: above a code line that carries the marker, or below a marker
    that stands on its own line. Notes start with ``#   | `` so tools can strip them."""
    from ..agents.annotate import check_markers, find_markers

    markers = find_markers(path, text)
    unknown = check_markers(markers)
    if unknown:
        raise ZooError(f"{path}:{unknown[0].marker_line}: no theory entry for {unknown[0].concept!r}")
    entries = _knowledge()
    lines = text.splitlines()
    above: dict[int, list[str]] = {}
    below: dict[int, list[str]] = {}
    for m in markers:
        line = lines[m.marker_line - 1]
        slot = below if line.lstrip().startswith("#") else above
        if m.concept not in slot.setdefault(m.marker_line, []):
            slot[m.marker_line].append(m.concept)
    out = []
    for number, line in enumerate(lines, start=1):
        indent = line[: len(line) - len(line.lstrip())]
        note = lambda c: indent + _ANNOTATION + _one_line(entries[c].title, entries[c].brief, width - len(indent) - 6)
        out.extend(note(c) for c in above.get(number, []))
        out.append(line)
        out.extend(note(c) for c in below.get(number, []))
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def strip_annotations(text: str) -> str:
    """``text`` without the notes ``annotate_brief`` added."""
    return "".join(line for line in text.splitlines(keepends=True) if not line.lstrip().startswith(_ANNOTATION))


def _sha256(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


# --------------------------------------------------------------------------- weights


@dataclass
class Weights:
    source: str
    config: Any  # the checkpoint's model config
    tensors: dict
    fresh: list[str]  # canonical names the project initialises anew (a head for another class count)


def read_weights(source: str, arch: str) -> Weights:
    """Canonical tensors from what ``dlzoo.zoo.hub.load_checkpoint`` reads: a canonical or
    torchvision/timm state-dict file, a published checkpoint folder, or a hub id."""
    from ..zoo import hub

    path = Path(source).expanduser()
    if not path.exists() and os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        raise ZooError(
            f"--weights {source}: not a local file or folder, and HF_HUB_OFFLINE is set so the hub "
            "cannot be asked; pass a local checkpoint folder or canonical .safetensors file"
        )
    file_arch, config, tensors, _ = hub.load_checkpoint(source)
    if file_arch != arch:
        raise ZooError(f"--weights {source} holds {file_arch} weights; the project is --arch {arch}")
    return Weights(source, config, tensors, [])


# --------------------------------------------------------------------------- rendering


def _environment():
    from jinja2 import FileSystemLoader, StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    return SandboxedEnvironment(
        loader=FileSystemLoader(str(TEMPLATES)), undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False
    )


def _model_class(source: str, arch: str) -> str | None:
    names = re.findall(r"^class (\w+)\b", source, re.MULTILINE)
    return next((n for n in names if n.lower() == arch), None)


def results_key(arch: str, framework: str, task: str | None = None) -> str:
    """The key of a project's measured row in scaffold/results.json: ``vit/torch``, ``bert-mlm/torch``."""
    return f"{arch}-{task}/{framework}" if arch in TEXT_ARCHS else f"{arch}/{framework}"


def _measured(arch: str, framework: str, task: str | None = None) -> dict | None:
    if not RESULTS.is_file():
        return None
    return json.loads(RESULTS.read_text()).get(results_key(arch, framework, task))


def _py_literal(value: Any, indent: str = "") -> str:
    if isinstance(value, dict):  # one key per line: readable, and within any line length
        inner = indent + "    "
        return "{\n" + "".join(f"{inner}{k!r}: {_py_literal(v)},\n" for k, v in value.items()) + indent + "}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_py_literal(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


def tokenizer_vocab(path: str) -> tuple[bytes, int]:
    """(the file's bytes, its vocabulary size incl. added tokens) of a Hugging Face tokenizer.json,
    read as JSON (no tokenizers import at generation time)."""
    file = Path(path).expanduser()
    try:
        data = file.read_bytes()
        spec = json.loads(data)
        ids = (
            list(spec["model"]["vocab"].values()) if isinstance(spec["model"]["vocab"], dict) else list(range(len(spec["model"]["vocab"])))
        )
        ids += [token["id"] for token in spec.get("added_tokens") or []]
    except OSError:
        raise ZooError(f"--tokenizer {path}: cannot read it; pass a Hugging Face tokenizer.json") from None
    except (ValueError, KeyError, TypeError):
        raise ZooError(f"--tokenizer {path} is not a Hugging Face tokenizer.json (no model.vocab)") from None
    return data, max(ids) + 1


def _text_model_config(arch: str, task: str, base, vocab: int, weights: bool, classes: int, notes: list[str]):
    """The model config of a text project: the tokenizer's vocabulary (a fresh model) or a check
    that it fits (pretrained weights), and the head the task needs."""
    if weights:
        if vocab > base.vocab_size:
            raise ZooError(
                f"the tokenizer has {vocab} tokens but the weights' embedding has {base.vocab_size}; pass "
                "the tokenizer.json the weights were trained with (--tokenizer)"
            )
        config = base
    else:
        config = base.replace(vocab_size=vocab)
        if vocab != base.vocab_size:
            notes.append(f"model.vocab_size {base.vocab_size} -> {vocab} (the tokenizer's vocabulary)")
    if arch == "bert":
        config = config.replace(
            mlm_head=task == "mlm", num_classes=classes if task == "classify" else 0, pooler=config.pooler or task == "classify"
        )
    return config


def plan(
    name: str,
    *,
    arch: str,
    framework: str,
    preset: str | None = None,
    task: str | None = None,
    weights: str | None = None,
    annotate: str = "brief",
    tokenizer: str | None = None,
    choice: list[str] | None = None,
) -> dict[str, Any]:
    """Everything ``new_project`` writes, as {relative path: text or bytes}, plus the summary.
    ``choice``: the engineer agent's reasons when it chose the framework (for the README)."""
    check_name(name)
    check_arch(arch)
    check_framework(framework)
    task = task or TASKS[arch][0]
    if task not in TASKS[arch]:
        raise ZooError(f"--task {task!r} is not available for {arch}; expected one of: {', '.join(TASKS[arch])}")
    if annotate not in ANNOTATE:
        raise ZooError(f"--annotate {annotate!r}: expected one of {', '.join(ANNOTATE)}")
    if weights is not None and preset is not None:
        raise ZooError("pass --preset or --weights, not both: the weights' own config sets the model's size")
    modality = "text" if arch in TEXT_ARCHS else "image"
    if tokenizer is not None and modality != "text":
        raise ZooError(f"--tokenizer is for text projects (--arch gpt or bert), not --arch {arch}")
    pkg, pkg_note = package_name(name)
    notes = [pkg_note] if pkg_note else []
    zoo_dir = _zoo_dir()
    engine_template = TEMPLATES / "engines" / f"engine_{framework}.py.j2"
    if not engine_template.is_file():
        raise ZooError(f"--framework {framework}: no training engine for {framework} in this dlzoo version yet")

    loaded = None
    if weights is not None:
        loaded = read_weights(weights, arch)
        base = loaded.config
        preset_label = f"weights:{Path(weights).name or weights}"
    else:
        preset = preset or DEFAULT_PRESET
        base = get_config(arch, preset)
        preset_label = preset
    tokenizer_file = None
    if modality == "text":
        if tokenizer is not None:
            tokenizer_file, vocab = tokenizer_vocab(tokenizer)
        else:
            vocab = 256 + len(TEXT_SPECIALS[arch])
        model_config = _text_model_config(arch, task, base, vocab, loaded is not None, len(DOCSTRING_PACKAGES), notes)
        if loaded is not None:
            current = set(loaded.tensors)
            fresh = [n for n in ("classifier.kernel", "classifier.bias") if task == "classify" and n not in current]
            if task == "classify" and getattr(base, "num_classes", 0) not in (0, len(DOCSTRING_PACKAGES)):
                fresh = ["classifier.bias", "classifier.kernel"]
            if fresh:
                loaded.fresh = fresh
                notes.append("--weights: the encoder is loaded and the classifier head is freshly initialised")
        image_size = None
    else:
        model_config = base.replace(num_classes=DIGITS_CLASSES)
        if base.num_classes != DIGITS_CLASSES:
            notes.append(f"model.num_classes {base.num_classes} -> {DIGITS_CLASSES} (the default data, digits, has 10 classes)")
        if loaded is not None and base.num_classes != DIGITS_CLASSES:
            loaded.fresh = ["head.kernel", "head.bias"]
            notes.append(
                f"--weights: the backbone is loaded and the head is freshly initialised "
                f"({base.num_classes} classes in the checkpoint, {DIGITS_CLASSES} in the project)"
            )
        image_size = model_config.image_size if arch == "vit" else RESNET_IMAGE_SIZE

    copies = []
    for target, source in copied_sources(arch, framework):
        path = zoo_dir / source
        if not path.is_file():
            raise ZooError(f"zoo/{source} is missing from this dlzoo installation; it is copied into every {framework} project")
        original = path.read_text(encoding="utf-8")
        text = adapt_imports(original, arch)
        if annotate != "none":
            text = annotate_brief(text, f"{pkg}/{target}")
        copies.append(Copied(f"{pkg}/{target}", f"zoo/{source}", original, text))
    model_source = next(c.original for c in copies if c.target.endswith("model.py"))

    context = {
        "pkg": pkg,
        "name": name,
        "arch": arch,
        "framework": framework,
        "preset": preset_label,
        "task": task,
        "framework_choice": list(choice or []),
        "arch_title": ARCH_TITLES[arch],
        "framework_title": FRAMEWORK_TITLES[framework],
        "config_class": type(model_config).__name__,
        "model_class": _model_class(model_source, arch),
        "model_defaults": _py_literal(model_config.to_dict()),
        "model_config": model_config.to_dict(),
        "image_size": image_size,
        "defaults": TEXT_DEFAULTS[task] if modality == "text" else DEFAULTS[arch],
        "modality": modality,
        "specials": TEXT_SPECIALS.get(arch, []),
        "docstring_packages": DOCSTRING_PACKAGES,
        "sources": ("stdlib-docstrings", "jsonl", "csv") if task == "classify" else ("stdlib", "files"),
        "tokenizer": "tokenizer.json" if tokenizer_file else "bytes",
        "init_weights": "weights/init.safetensors" if loaded else "",
        "weights": {"source": weights, "source_name": Path(weights).name or weights, "fresh": loaded.fresh} if loaded else None,
        "dependencies": COMMON_DEPS + (["tokenizers>=0.15"] if tokenizer_file else []) + FRAMEWORK_DEPS[framework],
        "annotate": annotate,
        "measured": _measured(arch, framework, task),
        "dlzoo_version": _version(),
    }
    env = _environment()
    files: dict[str, str | bytes] = {}
    for folder, relative in _project_templates(modality, task):
        target = re.sub(r"(^|/)dot-", r"\1.", relative[: -len(".j2")].replace("PKG/", f"{pkg}/"))
        files[target] = env.get_template(f"{folder}/{relative}").render(context)
    engine = env.get_template(f"engines/engine_{framework}.py.j2").render(context)
    if annotate != "none":
        engine = annotate_brief(engine, f"{pkg}/engine.py")
        for target in (f"{pkg}/config.py", f"{pkg}/train.py"):
            files[target] = annotate_brief(files[target], target)
    files[f"{pkg}/engine.py"] = engine
    for copy in copies:
        files[copy.target] = copy.text
    if loaded is not None:
        files["weights/init.safetensors"] = _canonical_bytes(arch, loaded)
    if tokenizer_file is not None:
        files["tokenizer.json"] = tokenizer_file
    if annotate == "full":
        files["THEORY.md"] = None  # written from the files on disk, so its links point at real lines

    provenance = {
        "dlzoo_version": context["dlzoo_version"],
        "arch": arch,
        "framework": framework,
        "preset": preset_label,
        "task": task,
        "package": pkg,
        "options": {"annotate": annotate, "weights": weights, "preset": preset, "tokenizer": tokenizer},
        "model_config": model_config.to_dict(),
        "copied": {c.target: {"source": c.source, "sha256_source": _sha256(c.original), "sha256": _sha256(c.text)} for c in copies},
        "weights": (
            {
                "source": weights,
                "file": "weights/init.safetensors",
                "fresh": loaded.fresh,
                "sha256": _sha256(files["weights/init.safetensors"]),
            }
            if loaded
            else None
        ),
    }
    return {"files": files, "provenance": provenance, "package": pkg, "notes": notes, "context": context}


# Text projects: these files of templates/text replace their namesakes in templates/project;
# the image-only ones are left out (a GPT project predicts with generate.py).
_IMAGE_ONLY = {"PKG/predict.py.j2"}


def _project_templates(modality: str, task: str) -> list[tuple[str, str]]:
    """(template folder, path inside it) of every project file to render."""
    found = {p.relative_to(TEMPLATES / "project").as_posix(): "project" for p in (TEMPLATES / "project").rglob("*.j2") if p.is_file()}
    if modality == "text":
        for path in _IMAGE_ONLY:
            found.pop(path, None)
        for p in (TEMPLATES / "text").rglob("*.j2"):
            relative = p.relative_to(TEMPLATES / "text").as_posix()
            if (
                p.is_file()
                and not p.name.startswith("_")
                and not (relative == "PKG/generate.py.j2" and task != "lm")
                and not (relative == "PKG/predict.py.j2" and task != "classify")
            ):
                found[relative] = "text"
    return sorted((folder, relative) for relative, folder in found.items())


def _canonical_bytes(arch: str, loaded: Weights) -> bytes:
    """The checkpoint as one canonical safetensors file (its own config), as bytes."""
    from ..zoo import weights

    with tempfile.TemporaryDirectory() as tmp:
        path = weights.save(Path(tmp) / "init.safetensors", arch, loaded.config, loaded.tensors)
        return path.read_bytes()


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("dlzoo")
    except Exception:  # running from a source tree that is not installed
        return "0+unknown"


def _write_theory(root: Path, pkg: str, arch: str, framework: str) -> None:
    from ..agents.annotate import write_theory_md

    files = [root / pkg / f for f in ("model.py", "layers.py", "engine.py", "config.py", "train.py")]
    write_theory_md(arch, framework, root / "THEORY.md", files=[f for f in files if f.exists()])


# --------------------------------------------------------------------------- writing


def _existing_ours(target: Path) -> dict[str, str]:
    """{relative path: sha256} of the files a previous ``dlzoo new`` wrote into ``target``."""
    try:
        return json.loads((target / ".dlzoo.json").read_text()).get("written", {})
    except (OSError, json.JSONDecodeError, AttributeError):
        return {}


def new_project(
    name: str,
    *,
    arch: str,
    framework: str | None,
    preset: str | None = None,
    task: str | None = None,
    weights: str | None = None,
    annotate: str = "brief",
    force: bool = False,
    parent: str | os.PathLike = ".",
    tokenizer: str | None = None,
    needs: tuple[str, ...] = (),
    design: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write project ``name`` under ``parent``; returns the summary (the ``--json`` output,
    docs/scaffold.md). Raises ZooError for anything the user can fix, before writing anything."""
    recommended = _design(arch, task, design) if design else None
    if recommended and preset is None:
        preset = recommended["preset"]
    choice: list[str] = []
    if framework is None:
        framework, choice = choose_framework(arch, tuple(needs))
    elif needs:
        raise ZooError("--need asks the engineer agent to choose the framework; drop --framework or --need")
    check_name(name)
    parent = Path(parent)
    target = parent / name
    if target.exists() and not target.is_dir():
        raise ZooError(f"{target} exists and is a file; choose another project name")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise ZooError(
            f"{target} exists and is not empty; choose another name, or pass --force to add the project's "
            "files (files you wrote are never replaced)"
        )
    result = plan(
        name,
        arch=arch,
        framework=framework,
        preset=preset,
        task=task,
        weights=weights,
        annotate=annotate,
        tokenizer=tokenizer,
        choice=choice,
    )
    pkg, files, provenance = result["package"], result["files"], result["provenance"]
    if recommended:
        from ..agents.engineer.strategy import overrides_toml

        files["recommended.toml"] = overrides_toml(recommended)
        rows = "\n".join(f"| {d['name']} | `{d['value']}` | {d['reason']} |" for d in recommended["decisions"])
        files["README.md"] += (
            "\n## Recommended training settings\n\n"
            f"dlzoo's engineer agent designed this run (`dlzoo recommend`, for {design['dataset_size']:,} examples "
            f"of size {design['input_size']} and {design['budget_hours']:g} h on {design.get('device', 'cpu')}). "
            f"Train with them: `python -m {pkg}.train --config recommended.toml`.\n\n"
            f"| decision | value | why |\n|---|---|---|\n{rows}\n"
        )
        provenance["options"]["design"] = dict(design)
    if not parent.is_dir():
        raise ZooError(f"{parent} is not a folder")
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.dlzoo-new-", dir=parent))
    kept: list[str] = []
    try:
        for relative, content in files.items():
            if content is None:
                continue
            path = tmp / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content, encoding="utf-8")
        if "THEORY.md" in files:
            _write_theory(tmp, pkg, arch, framework)
        written = {p.relative_to(tmp).as_posix(): _sha256(p.read_bytes()) for p in sorted(tmp.rglob("*")) if p.is_file()}
        provenance["written"] = written
        (tmp / ".dlzoo.json").write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
        if not target.exists() or not any(target.iterdir()):
            if target.exists():
                target.rmdir()
            os.replace(tmp, target)
        else:
            kept = _merge_into(tmp, target)
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    listing = sorted(written) + [".dlzoo.json"]
    next_commands = [f"cd {name} && python -m pip install -e '.[test]'", f"python -m {pkg}.train", f"python -m {pkg}.evaluate runs/default"]
    return {
        "path": str(target),
        "package": pkg,
        "arch": arch,
        "framework": framework,
        "preset": provenance["preset"],
        "task": provenance["task"],
        "annotate": annotate,
        "files": listing,
        "kept": kept,
        "weights": provenance["weights"],
        "notes": result["notes"],
        "framework_choice": choice,
        "next": next_commands,
        "recommended": {"config": "recommended.toml", "preset": recommended["preset"], "overrides": recommended["overrides"]}
        if recommended
        else None,
    }


def _merge_into(tmp: Path, target: Path) -> list[str]:
    """--force into a non-empty folder: add our files; replace a file only if a previous ``dlzoo
    new`` wrote it and it is unchanged since. A file the user wrote or edited stays, and ours is
    written beside it as ``<file>.dlzoo-new``. Returns the user files kept."""
    ours = _existing_ours(target)
    kept = []
    for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
        relative = path.relative_to(tmp).as_posix()
        dest = target / relative
        mine = bool(ours) if relative == ".dlzoo.json" else ours.get(relative) == _sha256(dest.read_bytes()) if dest.is_file() else False
        if dest.is_dir() or (dest.exists() and not mine):
            kept.append(relative)
            dest = dest.with_name(dest.name + ".dlzoo-new")
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest)
    return kept


# A project's task -> the engineer agent's task vocabulary (dlzoo recommend --task).
DESIGN_TASKS = {"image-classification": "image-classification", "lm": "language-modeling", "classify": "text-classification"}


def _design(arch: str, task: str | None, design: dict[str, Any]) -> dict[str, Any]:
    """The engineer agent's training design for this project (``dlzoo recommend --task``), for
    ``design`` = {dataset_size, input_size, budget_hours[, device]}."""
    from ..agents.engineer.strategy import design_training

    task = task or TASKS[check_arch(arch)][0]
    if task not in DESIGN_TASKS:
        raise ZooError(
            f"--dataset-size/--input-size/--budget-hours design a training run for "
            f"{', '.join(DESIGN_TASKS)}; the {arch} {task} task has no design rules yet"
        )
    missing = [f"--{k.replace('_', '-')}" for k in ("dataset_size", "input_size", "budget_hours") if design.get(k) is None]
    if missing:
        raise ZooError(f"a training design needs {', '.join(missing)} as well (see dlzoo recommend --task)")
    return design_training(DESIGN_TASKS[task], arch=arch, **{k: v for k, v in design.items() if v is not None})


def choose_framework(arch: str, needs: tuple[str, ...] = ()) -> tuple[str, list[str]]:
    """The framework for a project when ``--framework`` is not given: the engineer agent's choice
    for the stated needs (``dlzoo recommend``), with its reasons, each citing a need or a row of
    the engineer's sourced facts table. Raises ZooError for an unknown need or an unmeetable set."""
    from ..agents.engineer.frameworks import choose_framework as engineer_choice

    return engineer_choice(arch, needs)


def summary_text(result: dict[str, Any]) -> str:
    """What ``dlzoo new`` prints: what it wrote, notes, and the next three commands."""
    lines = [
        f"wrote {result['path']}/ ({result['arch']} {result['preset']}, {result['framework']}, "
        f"package {result['package']}, {len(result['files'])} files):"
    ]
    lines += [f"  {f}" for f in result["files"]]
    lines += [f"note: {n}" for n in result["notes"]]
    if result.get("framework_choice"):
        lines.append(f"framework: {result['framework']}, chosen by the engineer agent (dlzoo recommend):")
        lines += [f"  {reason}" for reason in result["framework_choice"]]
    if result["kept"]:
        lines.append("kept your files (ours written beside them as <file>.dlzoo-new): " + ", ".join(result["kept"]))
    if result.get("recommended"):
        lines.append(
            f"training design by the engineer agent (dlzoo recommend): preset {result['recommended']['preset']}, "
            f"{result['path']}/recommended.toml (train with --config recommended.toml)"
        )
    lines.append("next:")
    lines += [f"  {c}" for c in result["next"]]
    return "\n".join(lines)
