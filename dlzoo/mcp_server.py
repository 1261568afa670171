"""``dlzoo mcp``: dlzoo's commands as tools for LLM clients, over the Model Context Protocol.

The server speaks MCP through the official ``mcp`` SDK (the ``mcp`` extra) on stdio, or on
streamable HTTP bound to a loopback address. Each tool calls the same Python function as the
command's ``--json`` path, so a tool's structured result is the command's JSON document (a list
is wrapped as ``{"result": [...]}``, since MCP structured content is an object); its text content
is that document as the CLI prints it. Resources: the knowledge base entries, the papers and the
docs pages. docs/mcp.md documents tools, arguments, results and the rules below.

Rules (:class:`Policy`, fixed when the server starts):

- Every path a tool reads or writes is taken relative to the root folder (default: the current
  directory) and must resolve inside it, symlinks followed; anything else is refused.
- Tools that write (``new``, ``migrate``, ``convert``, ``annotate`` with ``theory_md``,
  ``diagnose`` with ``plot``) never replace an existing file or a non-empty folder, and write
  into existing folders only.
- Tools that load or run a model (``verify``, ``doctor``, ``convert``, ``migrate``, ``new`` with weights)
  refuse models above ``max_params`` parameters, counted from the preset or from the weight
  files' headers before anything is loaded.
- Weights are read from safetensors only: a PyTorch pickle checkpoint is refused (no tool
  unpickles anything, not even with ``weights_only``), and no tool runs user-supplied code. Hub
  ids are refused unless the server was started with ``allow_hub`` (downloads land in the
  Hugging Face cache, outside the root).
- A failing call is a tool error whose text is one line ``error: ...``; the server keeps serving.

Start-up imports neither a deep-learning framework nor numpy: tools import what they need on
first use (a missing framework is reported with the extra that installs it). The CLI imports this
module to register ``dlzoo mcp``, so the SDK itself is imported only when the server starts.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click

from dlzoo.zoo.configs import ARCHS, ZooError
from dlzoo.zoo.frameworks import FRAMEWORKS

# GPT-2 (124M), BERT-base (110M) and ViT-B/16 (86M) fit; the medium and large presets do not.
DEFAULT_MAX_PARAMS = 130_000_000
LOOPBACK = ("127.0.0.1", "localhost", "::1")
URI = "dlzoo://"
# Which extra installs a module a tool may need on first use.
EXTRAS = {
    "torch": "torch",
    "jax": "flax",
    "flax": "flax",
    "optax": "flax",
    "equinox": "equinox",
    "haiku": "haiku",
    "keras": "keras",
    "transformers": "reference",
    "mcp": "mcp",
}


class ToolError(ZooError):
    """A call the server refuses (bad argument, path outside the root, model too large, ...)."""


def one_line(text: str) -> str:
    return " ".join(str(text).split())


# --------------------------------------------------------------------------- policy


def _elements(path: Path) -> int:
    """Number of stored values in a safetensors file, read from its header alone (layout: u64
    header length, then a JSON header with each tensor's shape)."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > 100_000_000:
                raise ValueError("header too large")
            header = json.loads(f.read(size))
        total = 0
        for name, entry in header.items():
            if name != "__metadata__":
                count = 1
                for dim in entry["shape"]:
                    count *= int(dim)
                total += count
    except (OSError, ValueError, KeyError, TypeError, AttributeError, struct.error) as error:
        raise ToolError(f"{path}: not a readable safetensors file ({type(error).__name__}: {one_line(error)})") from None
    return total


def _safetensors_files(folder: Path) -> list[Path]:
    """The weight files ``dlzoo.zoo.checkpoints.read_pretrained`` would read from ``folder`` (the
    published layout, else a folder's single state-dict file), refusing PyTorch pickles. Empty
    when the folder holds no usable weights: the loader then says what it expected."""
    from dlzoo.zoo.checkpoints import STATE_DICT_SUFFIXES
    from dlzoo.zoo.hub import WEIGHT_FILES

    has_config = (folder / "config.json").is_file()
    found = next((name for name in WEIGHT_FILES if (folder / name).is_file()), None) if has_config else None
    if found is None:
        files = [p.name for p in sorted(folder.iterdir()) if p.is_file() and p.suffix in STATE_DICT_SUFFIXES]
        if len(files) != 1:
            return []
        shards = files
    elif found.endswith(".index.json"):
        try:
            shards = sorted(set(json.loads((folder / found).read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise ToolError(f"{folder / found}: not a valid shard index (needs a 'weight_map')") from None
    else:
        shards = [found]
    pickled = [s for s in shards if not s.endswith(".safetensors")]
    if pickled:
        raise ToolError(
            f"{folder}: {pickled[0]} is a PyTorch pickle file, which this server never loads; "
            "convert it to safetensors first (outside the server), or use a model.safetensors checkpoint"
        )
    return [folder / s for s in shards]


@dataclass(frozen=True)
class Policy:
    """What the server may touch, fixed at start-up (see the module docstring)."""

    root: Path
    max_params: int = DEFAULT_MAX_PARAMS
    allow_hub: bool = False

    @classmethod
    def create(cls, root: str | os.PathLike = ".", max_params: int = DEFAULT_MAX_PARAMS, allow_hub: bool = False) -> "Policy":
        path = Path(root).expanduser()
        if not path.is_dir():
            raise ZooError(f"--root {root}: not an existing folder; pass the folder the tools may read and write")
        if max_params < 1:
            raise ZooError(f"--max-params must be a positive integer, got {max_params}")
        return cls(path.resolve(), int(max_params), bool(allow_hub))

    def inside(self, value: str, what: str) -> Path:
        """``value`` (relative to the root, or absolute) resolved with symlinks followed; refused
        unless it stays inside the root."""
        if not isinstance(value, str) or not value.strip() or "\x00" in value:
            raise ToolError(f"{what}: expected a path relative to the server's root {self.root}")
        resolved = (self.root / value).resolve()
        if not resolved.is_relative_to(self.root):
            raise ToolError(
                f"{what} {value!r} resolves to {resolved}, outside the server's root {self.root}; "
                "the server reads and writes only inside its root (symlinks are followed)"
            )
        return resolved

    def read_path(self, value: str, what: str) -> Path:
        path = self.inside(value, what)
        if not path.exists():
            raise ToolError(f"{what} {value!r}: no such file or folder under the server's root {self.root}")
        return path

    def write_path(self, value: str, what: str, *, empty_folder_ok: bool = False) -> Path:
        """A new destination inside the root whose folder exists; an existing file, link or
        non-empty folder is refused (the server never overwrites)."""
        path = self.inside(value, what)
        given = self.root / value
        for candidate in (given, path):
            if os.path.lexists(candidate):
                if empty_folder_ok and candidate.is_dir() and not candidate.is_symlink() and not any(candidate.iterdir()):
                    continue
                raise ToolError(f"{what} {value!r} already exists; the server never overwrites: choose a new name")
        if not path.parent.is_dir():
            raise ToolError(f"{what} {value!r}: folder {path.parent} does not exist; the server creates no folders on the way")
        return path

    def check_params(self, params: int, what: str) -> None:
        if params > self.max_params:
            raise ToolError(
                f"{what} has {params:,} parameters, above this server's limit of {self.max_params:,}; "
                "restart the server with a larger --max-params to allow it"
            )

    def check_preset(self, arch: str, preset: str) -> None:
        from dlzoo.zoo.configs import check_arch, get_config
        from dlzoo.zoo.spec import count_params

        self.check_params(count_params(arch, get_config(check_arch(arch), preset)), f"{arch} preset {preset!r}")

    def weights_source(self, value: str, what: str) -> str:
        """A canonical .safetensors file or a published folder inside the root (or, with
        ``allow_hub``, a hub id, downloaded first): checked for pickles and for size before any
        tensor is read. Returns the local path to pass on."""
        if not isinstance(value, str) or not value.strip():
            raise ToolError(f"{what}: expected a .safetensors file, a checkpoint folder or a hub id")
        from dlzoo.zoo.files import looks_like_path

        if not os.path.lexists(self.root / value) and not looks_like_path(value):  # the CLI's rule for hub ids
            if not self.allow_hub:
                raise ToolError(
                    f"{what} {value!r}: not a file or folder under the server's root {self.root}, and hub "
                    "downloads are off; start the server with --allow-hub to fetch hub ids"
                )
            from dlzoo.zoo.hub import resolve

            path = resolve(value)
        else:
            path = self.read_path(value, what)
        if path.is_file():
            if path.suffix != ".safetensors":
                raise ToolError(
                    f"{what} {value!r}: expected a .safetensors file or a checkpoint folder; "
                    "this server loads no other weight format (no pickles)"
                )
            files = [path]
        else:
            files = _safetensors_files(path)
        self.check_params(sum(_elements(f) for f in files), f"{what} {value!r}")
        return str(path)


# --------------------------------------------------------------------------- tools


def _schema(properties: dict[str, dict], required: tuple[str, ...] = ()) -> dict:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


ARCH = {"type": "string", "enum": list(ARCHS), "description": "Architecture."}
FRAMEWORK = {"type": "string", "enum": list(FRAMEWORKS), "description": "Framework."}
PRESET = {"type": "string", "description": "Preset name, e.g. tiny, base, 124M, 50, B/16 (list shows them)."}
PATH = {"type": "string", "minLength": 1, "description": "Path relative to the server's root."}
SEED = {"type": "integer", "minimum": 0, "default": 0}


@dataclass(frozen=True)
class Tool:
    """One tool: its JSON schema, what it does with a :class:`Policy` and validated arguments,
    and, for a command that not every dlzoo version has, the function that provides it."""

    name: str
    description: str
    schema: dict
    run: Callable[[Policy, dict], Any]
    writes: bool = False
    provider: str | None = None  # "module:function"; the tool exists only when it does

    def annotations(self, policy: Policy) -> dict:
        """MCP tool hints: read-only or not; never destructive (nothing is overwritten); open to
        the world only where a hub id may be fetched."""
        fetches = policy.allow_hub and bool({"weights", "src"} & set(self.schema["properties"]))
        return {"read_only_hint": not self.writes, "destructive_hint": False, "open_world_hint": fetches}


def _provided(provider: str) -> bool:
    module, _, _ = provider.partition(":")
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _provider_function(tool: Tool) -> Callable:
    module_name, _, attr = tool.provider.partition(":")
    unavailable = ToolError(f"{tool.name} is not available in this version of dlzoo ({module_name}.{attr} is missing); update dlzoo")
    if not _provided(tool.provider):
        raise unavailable
    function = getattr(importlib.import_module(module_name), attr, None)
    if function is None:
        raise unavailable
    return function


def _call_provider(tool: Tool, **kwargs) -> Any:
    """Call a provided command with the arguments given (``None`` left out where the function has
    a default), refusing an argument this version's function does not take."""
    import inspect

    function = _provider_function(tool)
    parameters = inspect.signature(function).parameters
    required = {name for name, p in parameters.items() if p.default is p.empty}
    kwargs = {k: v for k, v in kwargs.items() if v is not None or k in required}
    if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        unknown = sorted(set(kwargs) - set(parameters))
        if unknown:
            raise ToolError(f"{tool.name} in this version of dlzoo does not take {', '.join(unknown)}")
    return function(**kwargs)


def _list(policy: Policy, args: dict) -> dict:
    from dlzoo.cli import list_data

    return list_data()


def _info(policy: Policy, args: dict) -> dict:
    from dlzoo.cli import info_data

    return info_data(
        args["arch"],
        args.get("preset", "tiny"),
        seq_len=args.get("seq_len"),
        image_size=args.get("image_size"),
        batch_size=args.get("batch_size", 1),
        precision=args.get("precision", "fp32"),
        checkpointing=args.get("checkpointing", False),
        device=args.get("device"),
        utilisation=args.get("utilisation"),
        devices=args.get("devices", 1),
        sharding=args.get("sharding", "data"),
    )


def _explain(policy: Policy, args: dict) -> dict | list:
    from dlzoo.agents.cli import explain_data

    papers = "paper" in args or (args.get("list") and args.get("topic") == "papers")
    if "paper" in args and "topic" in args:
        raise ToolError("give topic or paper, not both")
    if "framework" in args and not papers:
        raise ToolError("framework applies to paper")
    if args.get("list") and "topic" in args and not papers:
        raise ToolError("list takes no topic; give topic, or list=true alone")
    return explain_data(
        args.get("topic"), paper=args.get("paper"), framework=args.get("framework", "torch"), list_all=args.get("list", False)
    )


def _ask(policy: Policy, args: dict) -> dict:
    from dlzoo.agents.ask import answer

    return answer(args["question"], k=args.get("top", 3)).to_dict()


def _annotate(policy: Policy, args: dict) -> dict:
    from dlzoo.agents.annotate import annotate_source, find_markers, model_files, theory_md_path, write_theory_md

    file, arch, framework = args.get("file"), args.get("arch"), args.get("framework")
    if file is None and not (arch and framework):
        raise ToolError("give file, or arch and framework (a zoo model)")
    if file is not None and (arch or framework) and "theory_md" not in args:
        raise ToolError("give file, or arch and framework, not both")
    files = [policy.read_path(file, "file")] if file is not None else model_files(arch, framework)
    if not find_markers(files[0]):  # the CLI's message (it exits 1 there)
        raise ToolError(
            f"{files[0]} has no `# theory: <id>` markers, so there is nothing to annotate; "
            "mark a line with e.g. `# theory: layer-norm` (ids: explain with list=true)"
        )
    if "theory_md" in args:
        if "level" in args:
            raise ToolError("level applies to the annotated text; THEORY.md always holds the full entries")
        out = policy.write_path(str(theory_md_path(policy.inside(args["theory_md"], "theory_md"))), "theory_md")
        written = write_theory_md(arch or files[0].stem, framework or "torch", out, files=files)
        return {"theory_md": str(written), "files": [str(f) for f in files]}
    level = args.get("level", "brief")
    text = annotate_source(files[0], level=level)
    return {
        "file": str(files[0]),
        "level": level,
        "markers": [{"line": m.line, "concept": m.concept} for m in find_markers(files[0])],
        "text": text,
    }


def _diagnose(policy: Policy, args: dict) -> dict:
    from dlzoo.agents.diagnose import PLOT_SUFFIXES
    from dlzoo.agents.diagnose_fix import run_diagnose

    path = policy.read_path(args["metrics"], "metrics")
    out = None
    if "plot" in args:
        if not args["plot"].lower().endswith(PLOT_SUFFIXES):
            raise ToolError(f"plot {args['plot']!r}: expected a file name ending in {', '.join(PLOT_SUFFIXES)}")
        out = policy.write_path(args["plot"], "plot")
    # the same function as `dlzoo diagnose --json`: every log format, the same document
    return run_diagnose(path, plot=out)["json"]


def _doctor(policy: Policy, args: dict) -> dict:
    from dlzoo.agents.doctor import run_checks
    from dlzoo.zoo.configs import check_arch
    from dlzoo.zoo.handle import backend

    arch, framework, preset = check_arch(args["arch"]), args["framework"], args.get("preset", "tiny")
    policy.check_preset(arch, preset)
    backend(framework)  # imports the framework: a clear error naming the extra when it is missing
    return run_checks(arch, framework, preset, seed=args.get("seed", 0)).to_dict()


def _verify(policy: Policy, args: dict) -> dict:
    from dlzoo.verify import run_verify

    source = None
    if "weights" in args:
        source = policy.weights_source(args["weights"], "weights")
    else:
        policy.check_preset(args["arch"], args.get("preset", "tiny"))
    return run_verify(
        args["arch"],
        preset=args.get("preset"),
        source=source,
        tol=args.get("tol", 1e-5),
        seed=args.get("seed", 0),
        frameworks=args.get("frameworks") or None,
    )


def _convert(policy: Policy, args: dict) -> dict:
    from dlzoo.cli import convert_data

    src = policy.weights_source(args["src"], "src")
    dst = policy.write_path(args["dst"], "dst", empty_folder_ok=not args["dst"].endswith(".safetensors"))
    return convert_data(
        src,
        dst,
        arch=args.get("arch"),
        preset=args.get("preset"),
        num_classes=args.get("num_classes"),
        image_size=args.get("image_size"),
        seed=args.get("seed", 0),
        overwrite=False,
    )


def _new(policy: Policy, args: dict) -> Any:
    folder = policy.read_path(args.get("folder", "."), "folder")
    if not folder.is_dir():
        raise ToolError(f"folder {args.get('folder')!r} is not a folder")
    policy.write_path(str(folder.relative_to(policy.root) / args["name"]), "name", empty_folder_ok=True)
    weights = policy.weights_source(args["weights"], "weights") if "weights" in args else None
    return _call_provider(
        TOOLS["new"],
        name=args["name"],
        arch=args["arch"],
        framework=args.get("framework"),
        preset=args.get("preset"),
        task=args.get("task"),
        weights=weights,
        annotate=args.get("annotate"),
        force=False,
        parent=str(folder),
    )


def _recommend(policy: Policy, args: dict) -> dict:
    from dlzoo.agents.engineer.cli import recommend_data

    return recommend_data(
        args.get("arch"),
        tuple(args.get("needs", ())),
        task=args.get("task"),
        dataset_size=args.get("dataset_size"),
        input_size=args.get("input_size"),
        budget_hours=args.get("budget_hours"),
        device=args.get("device"),
        num_classes=args.get("num_classes"),
        utilisation=args.get("utilisation"),
    )


def _migrate(policy: Policy, args: dict) -> dict:
    from dlzoo.agents.engineer.migrate import latest_checkpoint, migrate_project, read_provenance

    project = policy.read_path(args["project"], "project")
    provenance = read_provenance(project)  # refuses a folder dlzoo new did not write
    out = args.get("out", str((project.parent / f"{project.name}_{args['to']}").relative_to(policy.root)) if project != policy.root else "")
    out = policy.write_path(out, "out", empty_folder_ok=True)
    # migrate runs the model in both frameworks: the same size limit as verify
    checkpoint = latest_checkpoint(project)
    if checkpoint is not None and (checkpoint / "model.safetensors").is_file():
        policy.check_params(_elements(checkpoint / "model.safetensors"), f"project {args['project']!r}")
    elif provenance.get("options", {}).get("preset"):
        policy.check_preset(provenance["arch"], provenance["options"]["preset"])
    return migrate_project(project, args["to"], out=out)


TOOLS: dict[str, Tool] = {
    t.name: t
    for t in [
        Tool(
            "list",
            "Architectures x frameworks x presets with parameter counts, and which frameworks are installed (dlzoo list --json).",
            _schema({}),
            _list,
        ),
        Tool(
            "info",
            "Parameters, FLOPs per example and a memory estimate for a preset (dlzoo info --json).",
            _schema(
                {
                    "arch": ARCH,
                    "preset": {**PRESET, "default": "tiny"},
                    "seq_len": {"type": "integer", "minimum": 1, "description": "bert, gpt: tokens per example."},
                    "image_size": {"type": "integer", "minimum": 1, "description": "resnet: input size in pixels."},
                    "batch_size": {"type": "integer", "minimum": 1, "default": 1, "description": "Batch for the memory and time estimate."},
                    "precision": {"type": "string", "enum": ["fp32", "tf32", "bf16", "fp16"], "default": "fp32"},
                    "checkpointing": {"type": "boolean", "default": False, "description": "Activation checkpointing per residual block."},
                    "device": {"type": "string", "description": "cpu (measured), a100, h100 or h200: largest batch, time per step."},
                    "utilisation": {
                        "type": "number",
                        "exclusiveMinimum": 0,
                        "maximum": 1,
                        "description": "Model FLOPs utilisation (default per device).",
                    },
                    "devices": {"type": "integer", "minimum": 1, "default": 1, "description": "Devices the global batch is split over."},
                    "sharding": {
                        "type": "string",
                        "enum": ["data", "fsdp"],
                        "default": "data",
                        "description": "data: state replicated (DDP); fsdp: weights, grads, AdamW state sharded (ZeRO-3).",
                    },
                },
                ("arch",),
            ),
            _info,
        ),
        Tool(
            "explain",
            "A concept from the master agent's knowledge base (summary, explanation, math, practice, "
            "papers, the zoo lines that show it), or a paper behind the zoo with its equations mapped to zoo lines "
            "(dlzoo explain --json). list: every concept id; paper='list': every paper id.",
            _schema(
                {
                    "topic": {"type": "string", "minLength": 1, "description": "Concept id, title or alias, e.g. sdpa, pre-ln."},
                    "paper": {"type": "string", "minLength": 1, "description": "Paper id (e.g. transformer, bert, resnet) or 'list'."},
                    "framework": {
                        "type": "string",
                        "enum": [*FRAMEWORKS, "all"],
                        "default": "torch",
                        "description": "With paper: whose zoo lines to show.",
                    },
                    "list": {"type": "boolean", "default": False, "description": "List every concept id."},
                }
            ),
            _explain,
        ),
        Tool(
            "ask",
            "Answer a question in plain words from the knowledge base (offline BM25), naming its sources; "
            "declines (declined: true, with related entries) when no entry covers it (dlzoo ask --json).",
            _schema(
                {
                    "question": {"type": "string", "minLength": 1, "pattern": "\\S"},
                    "top": {"type": "integer", "minimum": 1, "maximum": 10, "default": 3},
                },
                ("question",),
            ),
            _ask,
        ),
        Tool(
            "annotate",
            "A Python file (or a zoo model: arch and framework) with the theory beside the lines its "
            "'# theory:' markers point at; with theory_md, writes THEORY.md there instead (a new file under the root).",
            _schema(
                {
                    "file": PATH,
                    "arch": ARCH,
                    "framework": FRAMEWORK,
                    "level": {"type": "string", "enum": ["brief", "full"], "default": "brief"},
                    "theory_md": {**PATH, "description": "Write THEORY.md here (a folder means FOLDER/THEORY.md)."},
                }
            ),
            _annotate,
            writes=True,
        ),
        Tool(
            "diagnose",
            "Find what went wrong in a training run from its metrics.jsonl: divergence, spikes, plateaus, "
            "over/underfitting, with evidence, cause and fix (dlzoo diagnose --json). plot: also draw the curves.",
            _schema({"metrics": PATH, "plot": {**PATH, "description": "A new .png, .svg or .pdf file under the root."}}, ("metrics",)),
            _diagnose,
            writes=True,
        ),
        Tool(
            "doctor",
            "Pre-flight checks on a zoo model in one framework: loss at init, overfitting one batch, "
            "gradient coverage, causal and padding masks, determinism, activation scale (dlzoo doctor --json).",
            _schema({"arch": ARCH, "framework": FRAMEWORK, "preset": {**PRESET, "default": "tiny"}, "seed": SEED}, ("arch", "framework")),
            _doctor,
        ),
        Tool(
            "verify",
            "Run the same weights in every installed framework (or those named) and compare every output "
            "against torch and transformers (dlzoo verify --json).",
            _schema(
                {
                    "arch": ARCH,
                    "preset": {**PRESET, "description": "Preset of random weights (default tiny)."},
                    "weights": {
                        "type": "string",
                        "minLength": 1,
                        "description": "Canonical .safetensors file or published checkpoint folder under the root.",
                    },
                    "tol": {"type": "number", "minimum": 0, "default": 1e-5},
                    "seed": SEED,
                    "frameworks": {"type": "array", "items": FRAMEWORK, "uniqueItems": True},
                },
                ("arch",),
            ),
            _verify,
        ),
        Tool(
            "convert",
            "Convert a checkpoint (published folder, or a torchvision/timm state dict in safetensors) to a "
            "canonical .safetensors file, or a canonical file to the published layout in a new folder "
            "(dlzoo convert --json). Both paths under the root; dst must be new.",
            _schema(
                {
                    "src": {"type": "string", "minLength": 1},
                    "dst": PATH,
                    "arch": {**ARCH, "description": "What a state dict holds (default: inferred from its names)."},
                    "preset": {
                        **PRESET,
                        "description": "Preset of a state dict without config.json: torchvision/timm (default: from shapes) "
                        "or transformers-named (required).",
                    },
                    "num_classes": {"type": "integer", "minimum": 1, "description": "Head size; another size starts fresh."},
                    "image_size": {"type": "integer", "minimum": 1, "description": "ViT resolution (position embeddings resized)."},
                    "seed": {**SEED, "description": "Seed of freshly initialised heads."},
                },
                ("src", "dst"),
            ),
            _convert,
            writes=True,
        ),
        Tool(
            "new",
            "Write a self-contained training project (model copied from the zoo, data, train/evaluate/predict, "
            "tests) as a new folder under the root (dlzoo new --json).",
            _schema(
                {
                    "name": {"type": "string", "minLength": 1, "description": "Project folder to create."},
                    "arch": ARCH,
                    "framework": FRAMEWORK,
                    "preset": PRESET,
                    "task": {"type": "string"},
                    "weights": {"type": "string", "minLength": 1, "description": "Start from these weights."},
                    "annotate": {"type": "string", "enum": ["none", "brief", "full"]},
                    "folder": {**PATH, "default": ".", "description": "Existing folder under the root to create it in."},
                },
                ("name", "arch"),
            ),
            _new,
            writes=True,
            provider="dlzoo.scaffold.generate:new_project",
        ),
        Tool(
            "recommend",
            "The engineer agent: the five frameworks ranked for the stated needs, each reason tied to a "
            "need or a dated, sourced fact; with task, dataset_size, input_size and budget_hours, the training design "
            "too (architecture, preset, batch, optimizer, schedule, ...) (dlzoo recommend --json).",
            _schema(
                {
                    "arch": ARCH,
                    "needs": {
                        "type": "array",
                        "items": {"type": "string"},
                        "uniqueItems": True,
                        "description": "Needs from the vocabulary, e.g. onnx-export, tpu, beginner-friendly.",
                    },
                    "task": {"type": "string", "enum": ["image-classification", "text-classification", "language-modeling"]},
                    "dataset_size": {"type": "integer", "minimum": 1, "description": "Labelled examples (LM: tokens)."},
                    "input_size": {"type": "integer", "minimum": 1, "description": "Image side, or tokens per example."},
                    "budget_hours": {"type": "number", "exclusiveMinimum": 0},
                    "device": {"type": "string", "description": "With task: cpu (measured, the default), a100, h100 or h200."},
                    "num_classes": {"type": "integer", "minimum": 1},
                    "utilisation": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                }
            ),
            _recommend,
        ),
        Tool(
            "migrate",
            "The engineer agent: a generated project as the same project in another framework (same config, "
            "the latest checkpoint's weights converted and checked), written as a new folder under the root "
            "(dlzoo migrate --json).",
            _schema(
                {"project": PATH, "to": FRAMEWORK, "out": {**PATH, "description": "New folder (default: PROJECT_<framework> beside it)."}},
                ("project", "to"),
            ),
            _migrate,
            writes=True,
        ),
    ]
}


def available_tools() -> list[Tool]:
    """The tools this installation provides (a command another dlzoo version adds is left out)."""
    return [t for t in TOOLS.values() if t.provider is None or _provided(t.provider)]


_validators: dict[str, Any] = {}


def check_arguments(tool: Tool, arguments: Any) -> dict:
    """Validate ``arguments`` against the tool's JSON schema; ToolError with one line otherwise."""
    from jsonschema import Draft202012Validator

    arguments = {} if arguments is None else arguments
    validator = _validators.setdefault(tool.name, Draft202012Validator(tool.schema))
    errors = sorted(validator.iter_errors(arguments), key=lambda e: (list(e.absolute_path), e.message))
    if errors:
        error = errors[0]
        where = ".".join(map(str, error.absolute_path))
        message = "must not be blank" if error.validator == "pattern" else error.message  # the only pattern: \S
        raise ToolError(f"{tool.name}: " + (f"argument {where!r}: " if where else "") + message)
    return dict(arguments)


def _missing_module(error: ImportError) -> str:
    name = (error.name or "").split(".")[0]
    if name in EXTRAS:
        return f"this needs {name}, which is not installed; install it with: pip install 'dlzoo[{EXTRAS[name]}]'"
    return f"a module this needs is not installed ({one_line(error)})"


def call_tool(policy: Policy, name: str, arguments: Any) -> tuple[Any, str | None]:
    """Run tool ``name``: (its JSON document, None), or (None, the one-line error). Never raises
    for a user error or a failing command; an unexpected exception is logged and reported as an
    internal error."""
    tool = TOOLS.get(name)
    if tool is None or tool not in available_tools():
        known = ", ".join(t.name for t in available_tools())
        if tool is not None:
            return None, f"{name} is not available in this version of dlzoo ({tool.provider} is missing); tools: {known}"
        return None, f"unknown tool {name!r}; tools: {known}"
    try:
        data = tool.run(policy, check_arguments(tool, arguments))
        if hasattr(data, "to_dict"):
            data = data.to_dict()
        return data, None
    except ZooError as error:
        return None, one_line(error)
    except click.ClickException as error:
        return None, one_line(error.format_message())
    except ImportError as error:
        return None, _missing_module(error)
    except (Exception, SystemExit) as error:  # a bug, not the user's doing: keep serving, say so
        import logging

        logging.getLogger("dlzoo.mcp").exception("tool %s failed", name)
        return None, f"internal error in {name}: {type(error).__name__}: {one_line(error)} (please report it)"


# --------------------------------------------------------------------------- resources


def docs_dir() -> Path | None:
    """docs/ as installed (package data ``dlzoo.docs``) or beside the package in a checkout."""
    spec = importlib.util.find_spec("dlzoo.docs")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in [*map(Path, locations), Path(__file__).resolve().parent.parent / "docs"]:
        if folder.is_dir() and any(folder.glob("*.md")):
            return folder
    return None


def resources() -> list[dict]:
    """Every resource: {uri, name, title, description, mime_type}."""
    from dlzoo.agents.papers import load_papers
    from dlzoo.agents.theory import load_knowledge

    out = [
        {"uri": f"{URI}knowledge/{e.id}", "name": e.id, "title": e.title, "description": e.brief, "mime_type": "text/plain"}
        for e in load_knowledge().values()
    ]
    out += [
        {
            "uri": f"{URI}papers/{p.id}",
            "name": p.id,
            "title": f"{p.title} ({p.year})",
            "description": one_line(p.summary)[:300],
            "mime_type": "text/plain",
        }
        for p in load_papers().values()
    ]
    folder = docs_dir()
    if folder is not None:
        out += [
            {
                "uri": f"{URI}docs/{page.name}",
                "name": page.stem,
                "title": _title(page),
                "description": f"dlzoo documentation: {page.name}",
                "mime_type": "text/markdown",
            }
            for page in sorted(folder.glob("*.md"))
        ]
    return out


def _title(page: Path) -> str:
    first = page.read_text(encoding="utf-8").lstrip().splitlines()[:1]
    return first[0].lstrip("# ").strip() if first else page.stem


RESOURCE_TEMPLATES = [
    {
        "uri_template": f"{URI}knowledge/{{id}}",
        "name": "knowledge",
        "mime_type": "text/plain",
        "description": "A knowledge base entry at the deep level (dlzoo explain ID --level deep); ids: explain list=true.",
    },
    {
        "uri_template": f"{URI}papers/{{id}}",
        "name": "papers",
        "mime_type": "text/plain",
        "description": "A paper mapped to the zoo lines in every framework (dlzoo explain --paper ID --framework all).",
    },
    {
        "uri_template": f"{URI}docs/{{page}}",
        "name": "docs",
        "mime_type": "text/markdown",
        "description": "A page of dlzoo's documentation, e.g. cli.md, mcp.md.",
    },
]


def read_resource(uri: str) -> tuple[str, str]:
    """(text, mime type) of a resource; ToolError for an unknown one."""
    kind, _, key = uri.removeprefix(URI).partition("/") if uri.startswith(URI) else ("", "", "")
    if kind == "knowledge" and key:
        from dlzoo.agents.theory import load_knowledge, render

        entries = load_knowledge()
        if key in entries:
            return render(entries[key], "deep"), "text/plain"
    elif kind == "papers" and key:
        from dlzoo.agents.papers import FRAMEWORKS as PAPER_FRAMEWORKS, load_papers, render_paper

        papers = load_papers()
        if key in papers:
            return render_paper(papers[key], PAPER_FRAMEWORKS), "text/plain"
    elif kind == "docs" and key:
        folder = docs_dir()
        names = {p.name for p in folder.glob("*.md")} if folder is not None else set()
        if key in names:  # names from the folder listing: no path in a URI reaches another file
            return (folder / key).read_text(encoding="utf-8"), "text/markdown"
    raise ToolError(f"unknown resource {uri!r}; resources/list names every one ({URI}knowledge/ID, {URI}papers/ID, {URI}docs/PAGE.md)")


# --------------------------------------------------------------------------- the MCP server


def instructions(policy: Policy) -> str:
    return (
        f"dlzoo: BERT, GPT-2, ResNet and ViT in five frameworks, and two offline agents. Tools return the "
        f"JSON of the matching `dlzoo ... --json` command. Paths are relative to the root {policy.root} and stay "
        f"inside it; tools that write never overwrite; models above {policy.max_params:,} parameters are refused. "
        f"Resources hold the knowledge base ({URI}knowledge/ID), papers and docs."
    )


def build_server(policy: Policy):
    """The MCP server (``mcp.server.lowlevel.Server``) serving ``policy``'s tools and resources."""
    import anyio
    import mcp_types as types
    from mcp.server.lowlevel import Server
    from mcp.shared.exceptions import MCPError

    from dlzoo import __version__

    limiter = anyio.CapacityLimiter(1)  # one command at a time: models are large, matplotlib is not thread-safe

    async def list_tools(ctx, params) -> types.ListToolsResult:
        return types.ListToolsResult(
            tools=[
                types.Tool(
                    name=t.name,
                    description=t.description,
                    input_schema=t.schema,
                    annotations=types.ToolAnnotations(**t.annotations(policy)),
                )
                for t in available_tools()
            ]
        )

    async def call(ctx, params) -> types.CallToolResult:
        data, error = await anyio.to_thread.run_sync(call_tool, policy, params.name, params.arguments, limiter=limiter)
        if error is not None:
            return types.CallToolResult(content=[types.TextContent(type="text", text=f"error: {error}")], is_error=True)
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=json.dumps(data, indent=2))],
            structured_content=data if isinstance(data, dict) else {"result": data},
        )

    async def list_resources(ctx, params) -> types.ListResourcesResult:
        listing = await anyio.to_thread.run_sync(resources, limiter=limiter)
        return types.ListResourcesResult(resources=[types.Resource(**r) for r in listing])

    async def list_templates(ctx, params) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=[types.ResourceTemplate(**t) for t in RESOURCE_TEMPLATES])

    async def read(ctx, params) -> types.ReadResourceResult:
        try:
            text, mime = await anyio.to_thread.run_sync(read_resource, str(params.uri), limiter=limiter)
        except ZooError as error:
            raise MCPError(types.INVALID_PARAMS, one_line(error)) from None
        return types.ReadResourceResult(contents=[types.TextResourceContents(uri=params.uri, mime_type=mime, text=text)])

    return Server(
        "dlzoo",
        version=__version__,
        title="dlzoo",
        instructions=instructions(policy),
        on_list_tools=list_tools,
        on_call_tool=call,
        on_list_resources=list_resources,
        on_list_resource_templates=list_templates,
        on_read_resource=read,
    )


def serve(policy: Policy, http: str | None = None) -> None:
    """Serve on stdio (the default), or on streamable HTTP at ``http`` ("[HOST:]PORT", loopback only)."""
    if importlib.util.find_spec("mcp") is None:
        raise ZooError("dlzoo mcp needs the MCP SDK, which is not installed; install it with: pip install 'dlzoo[mcp]'")
    if http is not None:
        host, port = _host_port(http)
        import uvicorn

        app = build_server(policy).streamable_http_app(host=host)
        click.echo(f"dlzoo mcp: serving http://{host}:{port}/mcp (root {policy.root})", err=True)
        uvicorn.run(app, host=host, port=port, log_level="warning")
        return
    import anyio
    from mcp.server.stdio import stdio_server

    server = build_server(policy)

    async def run() -> None:
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())

    anyio.run(run)


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]") if sep else "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ZooError(f"--http {text!r}: expected [HOST:]PORT, e.g. 8765 or 127.0.0.1:8765")
    if host not in LOOPBACK:
        raise ZooError(
            f"--http {text!r}: the server listens on loopback only ({', '.join(LOOPBACK)}); it has no "
            "authentication, so put an authenticating proxy in front of it for remote clients"
        )
    return host, int(port)


@click.command("mcp")
@click.option(
    "--root",
    default=".",
    show_default=True,
    type=click.Path(path_type=Path),
    help="The only folder tools read and write in (paths outside it are refused).",
)
@click.option(
    "--max-params",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_PARAMS,
    show_default=True,
    help="Largest model (parameters) that verify, doctor, convert, migrate and new will load.",
)
@click.option("--allow-hub", is_flag=True, help="Let tools download hub ids (into the Hugging Face cache).")
@click.option("--http", default=None, metavar="[HOST:]PORT", help="Serve streamable HTTP on a loopback address instead of stdio.")
def mcp_command(root: Path, max_params: int, allow_hub: bool, http: str | None):
    """Serve dlzoo's commands as tools for LLM clients over the Model Context Protocol (stdio).

    Register it with a client as the command `dlzoo mcp --root DIR` (docs/mcp.md).
    """
    serve(Policy.create(root, max_params, allow_hub), http=http)


def register(group: click.Group) -> None:
    group.add_command(mcp_command)
