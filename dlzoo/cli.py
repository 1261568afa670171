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

@click.group("dlzoo", cls=ZooGroup, no_args_is_help=True,
             help="dlzoo: BERT, GPT-2, ResNet and ViT in five frameworks, numerically identical.")
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
    status[FRAMEWORKS.index("keras")].update(backend=name, backend_source=source,
                                             backend_installed=name in KERAS_BACKENDS and _installed(name))
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


@cli.command("list")
@JSON_OPTION
def list_models(as_json: bool):
    """Architectures x frameworks x presets."""
    from dlzoo.zoo.spec import count_params

    frameworks = _frameworks_status()
    archs = [{"arch": arch,
              "presets": [{"name": name, "params": count_params(arch, config)}
                          for name, config in PRESETS[arch].items()],
              "aliases": dict(ALIASES[arch])} for arch in ARCHS]
    if as_json:
        print_json({"archs": archs, "frameworks": frameworks})
        return
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


@cli.command()
@click.argument("arch")
@click.option("--preset", "-p", default="tiny", show_default=True, help="Preset name, e.g. base, 124M, 50, B/16.")
@click.option("--seq-len", type=click.IntRange(min=1), default=None,
              help="bert, gpt: tokens per example, at most the context length (default: the context length).")
@click.option("--image-size", type=click.IntRange(min=1), default=None,
              help="resnet: input size in pixels (default 224); a vit preset fixes its own.")
@JSON_OPTION
def info(arch: str, preset: str, seq_len: int | None, image_size: int | None, as_json: bool):
    """Parameters, FLOPs per example and a memory estimate.

    ARCH is one of: bert, gpt, resnet, vit.
    """
    from dlzoo.zoo.estimates import estimate

    config = get_config(check_arch(arch), preset)
    if seq_len is not None:
        if arch not in ("bert", "gpt"):
            raise ZooError(f"--seq-len applies to bert and gpt; {arch} takes images (resnet: --image-size)")
        context = config.context_length if arch == "gpt" else config.max_positions
        if seq_len > context:
            raise ZooError(f"--seq-len {seq_len} exceeds the {arch} {preset} context of {context} tokens; "
                           f"choose at most {context}")
    if image_size is not None:
        if arch == "vit" and image_size != config.image_size:
            raise ZooError(f"a vit preset fixes its image size ({preset}: {config.image_size} px; its position "
                           f"embeddings are sized for it); --image-size applies to resnet")
        if arch in ("bert", "gpt"):
            raise ZooError(f"--image-size applies to resnet; {arch} takes tokens (--seq-len)")
    est = estimate(arch, config, seq_len=seq_len, image_size=image_size)
    if as_json:
        print_json({"arch": arch, "preset": preset, "config": config.to_dict(), **est.as_dict()})
        return
    from rich.table import Table

    table = Table(title=f"{arch} {preset}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("parameters", f"{est.params:,}")
    table.add_row(f"forward FLOPs per example ({est.tokens_or_pixels})", _human(est.flops_forward))
    table.add_row("training FLOPs per example (fwd + bwd)", _human(est.flops_train_step))
    table.add_row("weights (fp32)", _bytes(est.weights_bytes))
    table.add_row("training state (weights, grads, AdamW)", _bytes(est.training_state_bytes))
    table.add_row("activations per example (fp32, training)", _bytes(est.activation_bytes_per_example))
    _console().print(table)


@cli.command()
@click.argument("src")
@click.argument("dst", type=click.Path(path_type=Path))
@OVERWRITE_OPTION
@JSON_OPTION
def convert(src: str, dst: Path, overwrite: bool, as_json: bool):
    """Convert a published checkpoint to a canonical file, or a canonical file to the published layout.

    SRC: hub id, published checkpoint folder, or canonical .safetensors file.
    DST: a .safetensors name (canonical file) for a published SRC; a new folder for a canonical SRC.
    """
    from dlzoo.zoo import files, hub, weights

    src_path = Path(src).expanduser()
    if src_path.is_file() and src_path.suffix == ".safetensors":
        if dst.suffix == ".safetensors":
            raise ZooError(f"{src} is already a canonical file; to write the published layout, give DST as a "
                           f"new folder name (e.g. {dst.with_suffix('')})")
        if overwrite:
            raise ZooError("--overwrite applies to a .safetensors destination; dlzoo never replaces a folder")
        files.check_output_folder(dst)
        arch, config, tensors = weights.load(src_path)
        hub.export(arch, config, tensors, dst)
        direction, ignored = "canonical->published", []
    else:
        if dst.suffix != ".safetensors":
            raise ZooError(f"destination {dst} must end in .safetensors when converting a published checkpoint")
        files.check_output_file(dst, overwrite=overwrite, suffixes=(".safetensors",), what="canonical weights file")
        arch, config, tensors, ignored = hub.load_checkpoint(src)
        weights.save(dst, arch, config, tensors, overwrite=overwrite)
        direction = "published->canonical"
    result = {"src": src, "dst": str(dst), "direction": direction, "arch": arch, "config": config.to_dict(),
              "params": weights.count_params(arch, config), "tensors": len(tensors), "ignored": ignored}
    if as_json:
        print_json(result)
    else:
        _console().print(f"[green]wrote[/green] {dst} ({direction}, {arch}, {result['params']:,} parameters"
                         + (f", ignored {len(ignored)} non-parameter tensors" if ignored else "") + ")")


@cli.command()
@click.argument("arch")
@click.option("--preset", "-p", default=None, help="Preset of the random weights (default tiny); not with --weights.")
@click.option("--weights", "-w", "weights_src", default=None, help="Canonical file, published folder or hub id.")
@click.option("--tol", type=click.FloatRange(min=0), default=1e-5, show_default=True,
              help="Max abs diff allowed, relative to the output scale when > 1.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed for random weights (numpy) and inputs.")
@click.option("--framework", "-f", "frameworks", multiple=True,
              help="Only these frameworks (repeatable); default: all installed.")
@JSON_OPTION
def verify(arch: str, preset: str, weights_src: str | None, tol: float, seed: int, frameworks: tuple[str, ...],
           as_json: bool):
    """Run the same weights in every installed framework and compare outputs against torch and transformers.

    ARCH is one of: bert, gpt, resnet, vit. Random weights come from numpy (--seed), so the
    result does not depend on -f; torch and transformers always run as the references when
    installed. Exit status 1 when a pair exceeds the tolerance.
    """
    from dlzoo.verify import run_verify

    progress = None if as_json else (lambda message: click.echo(message, err=True))
    report = run_verify(arch, preset=preset, source=weights_src, tol=tol, seed=seed, frameworks=list(frameworks) or None,
                        progress=progress)
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
    console.print("[green]all within tolerance[/green]" if report["passed"]
                  else f"[red]some pairs exceed tolerance {report['tol']:g}[/red]")


@cli.command()
@click.argument("name")
@click.option("--arch", required=True, help="resnet or vit (text projects: later).")
@click.option("--framework", "-f", default=None, help="torch, flax, equinox, haiku or keras.")
@click.option("--preset", "-p", default=None, help="Any zoo preset (default: tiny, trains in minutes on a CPU).")
@click.option("--task", default=None, help="Default: image-classification.")
@click.option("--weights", "-w", "weights_src", default=None,
              help="Start from: canonical .safetensors, published folder or hub id.")
@click.option("--annotate", type=click.Choice(["none", "brief", "full"]), default="brief", show_default=True,
              help="Theory notes in the code (full adds THEORY.md).")
@click.option("--force", is_flag=True, help="Add to an existing folder; files you wrote are never replaced.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (docs/scaffold.md).")
def new(name: str, arch: str, framework: str | None, preset: str | None, task: str | None, weights_src: str | None,
        annotate: str, force: bool, as_json: bool):
    """Write a self-contained training project (model copied from the zoo, data, train/evaluate/predict, tests).

    NAME is the project folder to create (its package name is derived from it).
    """
    from dlzoo.scaffold.generate import new_project, summary_text

    result = new_project(name, arch=arch, framework=framework, preset=preset, task=task, weights=weights_src,
                         annotate=annotate, force=force)
    if as_json:
        print_json(result)
    else:
        sys.stdout.write(summary_text(result) + "\n")


def _register_commands() -> None:
    from dlzoo.agents.cli import register as register_master

    register_master(cli)


_register_commands()


def main() -> None:
    cli.main(prog_name="dlzoo")


if __name__ == "__main__":
    main()
