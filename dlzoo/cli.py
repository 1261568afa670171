"""The dlzoo command line (click).

Start-up stays light: nothing here imports a deep-learning framework, numpy or rich at module
level; commands import what they use when they run. ``--json`` outputs follow the schemas in
docs/cli.md.

Errors: a command raises ``ZooError`` (or a click usage error) and :class:`ZooGroup` prints it as
one line ``error: ...`` on stderr with exit status 2 -- the single place where user errors are
rendered. Commands check every argument (paths included) before they start work, so a refused
command creates and changes nothing. Library notices (the ``dlzoo`` logger at INFO, e.g. the keras
backend dlzoo chose) are shown as ``note: ...`` lines on stderr.

Adding a command: write a ``@click.command`` in your own module, raise ``ZooError`` for bad input,
and add it in that module's ``register(group)`` (see dlzoo/agents/cli.py), called below.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from dlzoo import __version__
from dlzoo.clitools import JSON_OPTION, OVERWRITE_OPTION, SEED, ZooGroup, print_json
from dlzoo.zoo.configs import ARCHS, ALIASES, PRESETS, ZooError, check_arch, get_config


@click.group(
    "dlzoo", cls=ZooGroup, no_args_is_help=True, help="dlzoo: BERT, GPT-2, ResNet and ViT in five frameworks, numerically identical."
)
@click.version_option(__version__, "--version", prog_name="dlzoo", message="%(prog)s %(version)s")
def cli() -> None:
    pass


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr)


def _frameworks_status():
    from dlzoo.zoo.frameworks import FRAMEWORKS, KERAS_BACKENDS, _installed, installed_frameworks, keras_backend

    installed = set(installed_frameworks())
    status = [{"name": f, "installed": f in installed} for f in FRAMEWORKS]
    name, source = keras_backend()
    status[FRAMEWORKS.index("keras")].update(
        backend=name, backend_source=source, backend_installed=name in KERAS_BACKENDS and _installed(name)
    )
    return status


def _framework_cell(f: dict) -> str:
    text = f["name"]
    if f["name"] == "keras" and f["installed"]:
        missing = "" if f["backend_installed"] else ", [red]not installed[/red]"
        text += f" (backend {f['backend']}: {f['backend_source']}{missing})"
    return text + ("" if f["installed"] else " [dim](not installed)[/dim]")


def _preset_cell(arch: str, presets: list[dict], aliases: dict[str, str]) -> str:
    cells = []
    for p in presets:
        names = [alias for alias, target in aliases.items() if target == p["name"]]
        cells.append(f"{p['name']} ({_human(p['params'])}" + (f"; aka {', '.join(names)}" if names else "") + ")")
    grammar = ", or any SIZE/PATCH (e.g. S/8)" if arch == "vit" else ""
    return ", ".join(cells) + grammar


def list_data() -> dict:
    """What ``dlzoo list --json`` prints (docs/cli.md); the MCP ``list`` tool returns the same."""
    from dlzoo.zoo.spec import count_params

    archs = [
        {
            "arch": arch,
            "presets": [{"name": name, "params": count_params(arch, config)} for name, config in PRESETS[arch].items()],
            "aliases": dict(ALIASES[arch]),
        }
        for arch in ARCHS
    ]
    return {"archs": archs, "frameworks": _frameworks_status()}


@cli.command("list")
@JSON_OPTION
def list_models(as_json: bool):
    """Architectures x frameworks x presets."""
    data = list_data()
    if as_json:
        print_json(data)
        return
    archs, frameworks = data["archs"], data["frameworks"]
    from rich.table import Table

    table = Table(title="dlzoo models")
    table.add_column("arch", style="bold")
    table.add_column("presets (parameters)")
    for entry in archs:
        table.add_row(entry["arch"], _preset_cell(entry["arch"], entry["presets"], entry["aliases"]))
    console = _console()
    console.print(table)
    console.print("frameworks: " + ", ".join(_framework_cell(f) for f in frameworks))


def _human(n: float, unit: str = "") -> str:
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def _bytes(n: int) -> str:
    for suffix, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {suffix}"
    return f"{n} B"


def info_data(
    arch: str,
    preset: str = "tiny",
    seq_len: int | None = None,
    image_size: int | None = None,
    *,
    batch_size: int = 1,
    precision: str = "fp32",
    checkpointing: bool = False,
    device: str | None = None,
    utilisation: float | None = None,
    devices: int = 1,
    sharding: str = "data",
) -> dict:
    """What ``dlzoo info --json`` prints (docs/cli.md, docs/engineer.md); the MCP ``info`` tool
    returns the same. Raises ZooError for an unknown arch, preset, precision or device, or a size
    that does not apply."""
    from dlzoo.agents.engineer.costs import cost_report
    from dlzoo.zoo.estimates import estimate

    config = get_config(check_arch(arch), preset)
    if seq_len is not None:
        if arch not in ("bert", "gpt"):
            raise ZooError(f"--seq-len applies to bert and gpt; {arch} takes images (resnet: --image-size)")
        context = config.context_length if arch == "gpt" else config.max_positions
        if seq_len > context:
            raise ZooError(f"--seq-len {seq_len} exceeds the {arch} {preset} context of {context} tokens; choose at most {context}")
    if image_size is not None:
        if arch == "vit" and image_size != config.image_size:
            raise ZooError(
                f"a vit preset fixes its image size ({preset}: {config.image_size} px; its position "
                f"embeddings are sized for it); --image-size applies to resnet"
            )
        if arch in ("bert", "gpt"):
            raise ZooError(f"--image-size applies to resnet; {arch} takes tokens (--seq-len)")
    est = estimate(arch, config, seq_len=seq_len, image_size=image_size)
    costs = cost_report(
        arch,
        config,
        batch_size=batch_size,
        precision=precision,
        device=device,
        utilisation=utilisation,
        checkpointing=checkpointing,
        seq_len=seq_len,
        image_size=image_size,
        devices=devices,
        sharding=sharding,
    )
    return {"arch": arch, "preset": preset, "config": config.to_dict(), **est.as_dict(), "costs": costs}


@cli.command()
@click.argument("arch")
@click.option("--preset", "-p", default="tiny", show_default=True, help="Preset name, e.g. base, 124M, 50, B/16.")
@click.option(
    "--seq-len",
    type=click.IntRange(min=1),
    default=None,
    help="bert, gpt: tokens per example, at most the context length (default: the context length).",
)
@click.option(
    "--image-size", type=click.IntRange(min=1), default=None, help="resnet: input size in pixels (default 224); a vit preset fixes its own."
)
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True, help="Batch for the memory and time estimate.")
@click.option("--precision", default="fp32", show_default=True, help="fp32, tf32, bf16 or fp16 (mixed).")
@click.option("--checkpointing", is_flag=True, help="Activation checkpointing per residual block.")
@click.option("--device", default=None, help="cpu (measured), a100, h100 or h200: largest batch and time per step.")
@click.option("--utilisation", type=float, default=None, help="Model FLOPs utilisation (default per device, see docs).")
@click.option("--devices", type=click.IntRange(min=1), default=1, show_default=True, help="Devices the global batch is split over.")
@click.option(
    "--sharding",
    type=click.Choice(["data", "fsdp"]),
    default="data",
    show_default=True,
    help="data: state replicated (DDP); fsdp: weights, grads, AdamW state sharded (ZeRO-3).",
)
@JSON_OPTION
def info(
    arch: str,
    preset: str,
    seq_len: int | None,
    image_size: int | None,
    batch_size: int,
    precision: str,
    checkpointing: bool,
    device: str | None,
    utilisation: float | None,
    devices: int,
    sharding: str,
    as_json: bool,
):
    """Parameters, FLOPs, training memory and, with --device, largest batch and time per step.

    ARCH is one of: bert, gpt, resnet, vit. Estimates: docs/engineer.md.
    """
    data = info_data(
        arch,
        preset,
        seq_len=seq_len,
        image_size=image_size,
        batch_size=batch_size,
        precision=precision,
        checkpointing=checkpointing,
        device=device,
        utilisation=utilisation,
        devices=devices,
        sharding=sharding,
    )
    if as_json:
        print_json(data)
        return
    from rich.table import Table

    costs = data["costs"]
    f, mem = costs["flops"], costs["memory"]
    table = Table(title=f"{arch} {preset}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("parameters", f"{data['params']:,}")
    table.add_row(f"forward FLOPs per example ({data['tokens_or_pixels']})", _human(f["forward"]))
    table.add_row("training FLOPs per example (fwd + bwd)", _human(f["train"]))
    if f["tokens"]:
        table.add_row("training FLOPs per token", _human(f["train_per_token"]))
    label = f"{precision}, batch {batch_size}" + (", checkpointing" if checkpointing else "")
    table.add_row(
        f"weights + grads + AdamW ({precision})",
        _bytes(mem["weights_bytes"] + mem["weight_copy_bytes"] + mem["gradient_bytes"] + mem["optimizer_bytes"]),
    )
    table.add_row(f"activations ({label}, {mem['kernels']} kernels)", _bytes(mem["activation_bytes"]))
    table.add_row(f"training memory ({label})", _bytes(mem["total_bytes"]))
    split = costs.get("per_device")
    if split:
        where = f"per device, {devices} devices, {sharding}, batch {split['batch_per_device']} each"
        table.add_row(f"training state ({where})", _bytes(split["state_bytes"] + split["gathered_bytes"]))
        table.add_row(f"training memory ({where})", _bytes(split["total_bytes"]))
        table.add_row("communication per device per step", _bytes(split["communication_bytes"]))
    dev = costs.get("device")
    if dev:
        if "max_batch_size" in dev:
            table.add_row(
                f"largest {'global ' if split else ''}batch on {devices if split else ''}{'x ' if split else ''}{dev['name']} "
                "(without / with checkpointing)",
                f"{dev['max_batch_size']} / {dev['max_batch_size_checkpointing']}",
            )
        step = dev["step_seconds"]
        table.add_row(f"time per step at {dev['utilisation']:.0%} of peak", f"{step * 1e3:.3g} ms" if step < 1 else f"{step:.3g} s")
    console = _console()
    console.print(table)
    if dev:
        console.print(f"[dim]peak: {dev['basis']}; utilisation: {dev['utilisation_basis']}[/dim]", highlight=False)


def convert_data(
    src: str,
    dst: str | Path,
    *,
    arch: str | None = None,
    preset: str | None = None,
    num_classes: int | None = None,
    image_size: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> dict:
    """Convert as ``dlzoo convert`` does and return what ``--json`` prints (docs/cli.md); the MCP
    ``convert`` tool returns the same. Raises ZooError when DST exists (unless ``overwrite``, for
    a file) or SRC is unusable."""
    from dlzoo.zoo import checkpoints, files, hub, weights

    dst = Path(dst)
    src_path = Path(src).expanduser()
    options = {k: v for k, v in (("num_classes", num_classes), ("image_size", image_size)) if v is not None}
    if (
        dst.suffix != ".safetensors"
        and src_path.is_file()
        and src_path.suffix == ".safetensors"
        and checkpoints._is_canonical(src_path)
        and not options
    ):
        if overwrite:
            raise ZooError("--overwrite applies to a .safetensors destination; dlzoo never replaces a folder")
        files.check_output_folder(dst)
        arch, config, tensors = weights.load(src_path)
        hub.export(arch, config, tensors, dst)
        direction, report = "canonical->published", None
    else:
        if dst.suffix != ".safetensors":
            raise ZooError(f"destination {dst} must end in .safetensors when converting a checkpoint")
        if src_path.is_file() and src_path.suffix == ".safetensors" and checkpoints._is_canonical(src_path) and not options:
            raise ZooError(
                f"{src} is already a canonical file; to write the published layout, give DST as a "
                f"new folder name (e.g. {dst.with_suffix('')}); to change its head or resolution, "
                "pass --num-classes or --image-size"
            )
        files.check_output_file(dst, overwrite=overwrite, suffixes=(".safetensors",), what="canonical weights file")
        arch, config, tensors, report = checkpoints.read_pretrained(src, arch=arch, preset=preset, seed=seed, **options)
        weights.save(dst, arch, config, tensors, overwrite=overwrite)
        direction = "published->canonical" if report.layout != "dlzoo" else "canonical->canonical"
    result = {
        "src": src,
        "dst": str(dst),
        "direction": direction,
        "arch": arch,
        "config": config.to_dict(),
        "params": weights.count_params(arch, config),
        "tensors": len(tensors),
        "ignored": report.ignored if report else [],
        "report": report.to_dict() if report else None,
    }
    return result


@cli.command()
@click.argument("src")
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--arch", default=None, help="What a state dict holds (default: inferred from its names).")
@click.option(
    "--preset",
    "-p",
    default=None,
    help="Preset of a state dict without config.json: torchvision/timm (default: from shapes) or transformers-named (required).",
)
@click.option("--num-classes", type=int, default=None, help="Head size; a head of another size is initialised fresh.")
@click.option("--image-size", type=int, default=None, help="ViT resolution; position embeddings are resized.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of freshly initialised heads.")
@OVERWRITE_OPTION
@JSON_OPTION
def convert(
    src: str,
    dst: Path,
    arch: str | None,
    preset: str | None,
    num_classes: int | None,
    image_size: int | None,
    seed: int,
    overwrite: bool,
    as_json: bool,
):
    """Convert a checkpoint to a canonical file, or a canonical file to the published layout.

    SRC: hub id, published checkpoint folder, torchvision/timm state dict (.pth, .pt, .safetensors)
    or canonical .safetensors file (docs/checkpoints.md lists the layouts).
    DST: canonical .safetensors file, or a new folder for the published layout.
    """
    result = convert_data(
        src, dst, arch=arch, preset=preset, num_classes=num_classes, image_size=image_size, seed=seed, overwrite=overwrite
    )
    if as_json:
        print_json(result)
    else:
        _console().print(
            f"[green]wrote[/green] {dst} ({result['direction']}, {result['arch']}, {result['params']:,} parameters)", highlight=False
        )
        if result["report"] is not None:
            from dlzoo.zoo.checkpoints import LoadReport

            _console().print(LoadReport(**result["report"]).summary(), highlight=False, markup=False)


@cli.command()
@click.argument("arch")
@click.option("--preset", "-p", default=None, help="Preset of the random weights (default tiny); not with --weights.")
@click.option("--weights", "-w", "weights_src", default=None, help="Canonical file, published folder or hub id.")
@click.option(
    "--tol",
    type=click.FloatRange(min=0),
    default=1e-5,
    show_default=True,
    help="Max abs diff allowed, relative to the output scale when > 1.",
)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed for random weights (numpy) and inputs.")
@click.option("--framework", "-f", "frameworks", multiple=True, help="Only these frameworks (repeatable); default: all installed.")
@JSON_OPTION
def verify(arch: str, preset: str, weights_src: str | None, tol: float, seed: int, frameworks: tuple[str, ...], as_json: bool):
    """Run the same weights in every installed framework and compare outputs against torch and transformers.

    ARCH is one of: bert, gpt, resnet, vit. Random weights come from numpy (--seed), so the
    result does not depend on -f; torch and transformers always run as the references when
    installed. Exit status 1 when a pair exceeds the tolerance.
    """
    from dlzoo.verify import run_verify

    progress = None if as_json else (lambda message: click.echo(message, err=True))
    report = run_verify(arch, preset=preset, source=weights_src, tol=tol, seed=seed, frameworks=list(frameworks) or None, progress=progress)
    if as_json:
        print_json(report)
    else:
        _print_verify(report)
    if not report["passed"]:
        sys.exit(1)


def _print_verify(report: dict) -> None:
    from rich.table import Table

    table = Table(title=f"{report['arch']} ({report['params']:,} parameters): max abs difference per output")
    table.add_column("framework", style="bold")
    table.add_column("against")
    outputs = sorted({o for row in report["rows"] for o in row["diffs"]})
    for name in outputs:
        table.add_column(name, justify="right")
    table.add_column("result")
    for row in report["rows"]:
        cells = [f"{row['diffs'][o]:.2e}" if o in row["diffs"] else "-" for o in outputs]
        verdict = "[green]ok[/green]" if row["passed"] else "[red]FAIL[/red]"
        table.add_row(row["framework"], row["against"], *cells, verdict)
    console = _console()
    console.print(table)
    for note in report["notes"]:
        console.print(f"[dim]{note}[/dim]")
    console.print(
        "[green]all within tolerance[/green]" if report["passed"] else f"[red]some pairs exceed tolerance {report['tol']:g}[/red]"
    )


def _register_commands() -> None:
    from dlzoo.agents.cli import register as register_master
    from dlzoo.agents.engineer.cli import register as register_engineer
    from dlzoo.cli_bench import register as register_bench
    from dlzoo.mcp_server import register as register_mcp
    from dlzoo.scaffold.cli import register as register_scaffold

    register_master(cli)
    register_engineer(cli)
    register_bench(cli)
    register_mcp(cli)
    register_scaffold(cli)


_register_commands()


def main() -> None:
    cli.main(prog_name="dlzoo")


if __name__ == "__main__":
    main()
