"""The dlzoo command line.

Start-up stays light: nothing here imports a deep-learning framework at module level; commands
import what they use when they run. Every failure the user can cause ends in one line on stderr
and exit status 2; ``--json`` outputs follow the schemas in docs/cli.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from dlzoo.agents.cli import register as _register_master
from dlzoo.zoo.configs import ARCHS, ALIASES, PRESETS, ZooError, check_arch, get_config

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,  # plain help: the rich help formatter alone costs ~0.2 s of start-up
                  help="dlzoo: BERT, GPT-2, ResNet and ViT in five frameworks, numerically identical.")
console = Console()
err = Console(stderr=True)


def _print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def _frameworks_status():
    from dlzoo.zoo.frameworks import FRAMEWORKS, installed_frameworks

    installed = set(installed_frameworks())
    return [{"name": f, "installed": f in installed} for f in FRAMEWORKS]


@app.command("list")
def list_models(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """Architectures x frameworks x presets."""
    from dlzoo.zoo.spec import count_params

    frameworks = _frameworks_status()
    archs = [{"arch": arch,
              "presets": [{"name": name, "params": count_params(arch, config)}
                          for name, config in PRESETS[arch].items()],
              "aliases": dict(ALIASES[arch])} for arch in ARCHS]
    if as_json:
        _print_json({"archs": archs, "frameworks": frameworks})
        return
    table = Table(title="dlzoo models")
    table.add_column("arch", style="bold")
    table.add_column("presets (parameters)")
    for entry in archs:
        table.add_row(entry["arch"], ", ".join(f"{p['name']} ({_human(p['params'])})" for p in entry["presets"]))
    console.print(table)
    console.print("frameworks: " + ", ".join(
        f"{f['name']}" + ("" if f["installed"] else " [dim](not installed)[/dim]") for f in frameworks))


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


@app.command()
def info(arch: str = typer.Argument(..., help=f"One of: {', '.join(ARCHS)}."),
         preset: str = typer.Option("tiny", "--preset", "-p", help="Preset name, e.g. base, 124M, 50, B/16."),
         seq_len: Optional[int] = typer.Option(None, help="Tokens per example (default: the context length)."),
         image_size: Optional[int] = typer.Option(None, help="ResNet input size (default 224)."),
         as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """Parameters, FLOPs per example and a memory estimate."""
    from dlzoo.zoo.estimates import estimate

    config = get_config(check_arch(arch), preset)
    if seq_len is not None and seq_len <= 0 or image_size is not None and image_size <= 0:
        raise ZooError("--seq-len and --image-size must be positive integers")
    est = estimate(arch, config, seq_len=seq_len, image_size=image_size)
    if as_json:
        _print_json({"arch": arch, "preset": preset, "config": config.to_dict(), **est.as_dict()})
        return
    table = Table(title=f"{arch} {preset}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("parameters", f"{est.params:,}")
    table.add_row(f"forward FLOPs per example ({est.tokens_or_pixels})", _human(est.flops_forward))
    table.add_row("training FLOPs per example (fwd + bwd)", _human(est.flops_train_step))
    table.add_row("weights (fp32)", _bytes(est.weights_bytes))
    table.add_row("training state (weights, grads, AdamW)", _bytes(est.training_state_bytes))
    table.add_row("activations per example (fp32, training)", _bytes(est.activation_bytes_per_example))
    console.print(table)


@app.command()
def convert(src: str = typer.Argument(..., help="Hub id, published checkpoint folder, or canonical .safetensors file."),
            dst: Path = typer.Argument(..., help="Canonical .safetensors file, or a new folder for the published layout."),
            as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """Convert a published checkpoint to a canonical file, or a canonical file to the published layout."""
    from dlzoo.zoo import hub, weights

    if dst.exists() and (dst.is_file() or any(dst.iterdir())):
        raise ZooError(f"{dst} already exists; choose a new destination (dlzoo never overwrites files)")
    src_path = Path(src)
    if src_path.is_file() and src_path.suffix == ".safetensors":
        arch, config, tensors = weights.load(src_path)
        hub.export(arch, config, tensors, dst)
        direction, ignored = "canonical->published", []
    else:
        if dst.suffix != ".safetensors":
            raise ZooError(f"destination {dst} must end in .safetensors when converting a published checkpoint")
        arch, config, tensors, ignored = hub.load_checkpoint(src)
        weights.save(dst, arch, config, tensors)
        direction = "published->canonical"
    result = {"src": src, "dst": str(dst), "direction": direction, "arch": arch, "config": config.to_dict(),
              "params": weights.count_params(arch, config), "tensors": len(tensors), "ignored": ignored}
    if as_json:
        _print_json(result)
    else:
        console.print(f"[green]wrote[/green] {dst} ({direction}, {arch}, {result['params']:,} parameters"
                      + (f", ignored {len(ignored)} non-parameter tensors" if ignored else "") + ")")


@app.command()
def verify(arch: str = typer.Argument(..., help=f"One of: {', '.join(ARCHS)}."),
           preset: str = typer.Option("tiny", "--preset", "-p", help="Preset when no --weights are given."),
           weights_src: Optional[str] = typer.Option(None, "--weights", "-w",
                                                     help="Canonical file, published folder or hub id."),
           tol: float = typer.Option(1e-5, help="Max abs diff allowed, relative to the output scale when > 1."),
           seed: int = typer.Option(0, help="Seed for random weights and inputs."),
           frameworks: Optional[list[str]] = typer.Option(None, "--framework", "-f",
                                                          help="Only these frameworks (repeatable); default: all installed."),
           as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """Run the same weights in every installed framework and compare outputs against torch and transformers."""
    from dlzoo.verify import run_verify

    report = run_verify(arch, preset=preset, source=weights_src, tol=tol, seed=seed, frameworks=frameworks,
                        progress=None if as_json else err)
    if as_json:
        _print_json(report)
    else:
        _print_verify(report)
    if not report["passed"]:
        raise typer.Exit(1)


def _print_verify(report: dict) -> None:
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
    console.print(table)
    for note in report["notes"]:
        console.print(f"[dim]{note}[/dim]")
    console.print("[green]all within tolerance[/green]" if report["passed"]
                  else f"[red]some pairs exceed tolerance {report['tol']:g}[/red]")


@app.command()
def new(name: str = typer.Argument(..., help="Project folder to create (its package name is derived from it)."),
        arch: str = typer.Option(..., "--arch", help="resnet or vit (text projects: later)."),
        framework: Optional[str] = typer.Option(None, "--framework", "-f", help="torch, flax, equinox, haiku or keras."),
        preset: Optional[str] = typer.Option(None, "--preset", "-p", help="Any zoo preset (default: tiny, trains in minutes on a CPU)."),
        task: Optional[str] = typer.Option(None, "--task", help="Default: image-classification."),
        weights_src: Optional[str] = typer.Option(None, "--weights", "-w",
                                                  help="Start from: canonical .safetensors, published folder or hub id."),
        annotate: str = typer.Option("brief", "--annotate", help="Theory notes in the code: none, brief, full (+ THEORY.md)."),
        force: bool = typer.Option(False, "--force", help="Add to an existing folder; files you wrote are never replaced."),
        as_json: bool = typer.Option(False, "--json", help="Machine-readable output (docs/scaffold.md).")):
    """Write a self-contained training project (model copied from the zoo, data, train/evaluate/predict, tests)."""
    from dlzoo.scaffold.generate import new_project, summary_text

    result = new_project(name, arch=arch, framework=framework, preset=preset, task=task, weights=weights_src,
                         annotate=annotate, force=force)
    if as_json:
        _print_json(result)
    else:
        sys.stdout.write(summary_text(result) + "\n")


_register_master(app)


def main() -> None:
    try:
        app()
    except ZooError as error:
        err.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
