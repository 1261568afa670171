"""The dlzoo command line (click).

Start-up stays light: nothing here imports a deep-learning framework, numpy or rich at module
level; commands import what they use when they run. ``--json`` outputs follow the schemas in
docs/cli.md.

Errors: a command raises ``ZooError`` (or a click usage error) and :class:`ZooGroup` prints it as
one line ``error: ...`` on stderr with exit status 2 -- the single place where user errors are
rendered. Adding a command: write a ``@click.command`` in your own module, raise ``ZooError`` for
bad input, and add it in that module's ``register(group)`` (see dlzoo/agents/cli.py), called below.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from dlzoo.zoo.configs import ARCHS, ALIASES, PRESETS, ZooError, check_arch, get_config

JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def _error_line(message: str) -> None:
    text = " ".join(str(message).split())  # one line, whatever the message holds
    click.echo(click.style("error:", fg="red") + " " + text, err=True)


class ZooGroup(click.Group):
    """A click group whose every user error -- ``ZooError`` raised by a command, or a usage error
    click finds while parsing -- ends as one ``error:`` line on stderr and exit status 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except ZooError as error:
            _error_line(str(error))
            sys.exit(2)
        except click.UsageError as error:
            where = error.ctx.command_path if error.ctx is not None else (prog_name or "dlzoo")
            _error_line(f"{where}: {error.format_message()} (see '{where} --help')")
            sys.exit(error.exit_code)
        except click.ClickException as error:
            _error_line(error.format_message())
            sys.exit(error.exit_code)
        except click.Abort:
            click.echo("interrupted", err=True)
            sys.exit(130)
        if standalone_mode:
            sys.exit(code if isinstance(code, int) else 0)
        return code


@click.group(cls=ZooGroup, no_args_is_help=True,
             help="dlzoo: BERT, GPT-2, ResNet and ViT in five frameworks, numerically identical.")
def cli() -> None:
    pass


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr)


def _frameworks_status():
    from dlzoo.zoo.frameworks import FRAMEWORKS, installed_frameworks

    installed = set(installed_frameworks())
    return [{"name": f, "installed": f in installed} for f in FRAMEWORKS]


def list_data() -> dict:
    """What ``dlzoo list --json`` prints (docs/cli.md); the MCP ``list`` tool returns the same."""
    from dlzoo.zoo.spec import count_params

    archs = [{"arch": arch,
              "presets": [{"name": name, "params": count_params(arch, config)}
                          for name, config in PRESETS[arch].items()],
              "aliases": dict(ALIASES[arch])} for arch in ARCHS]
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
        table.add_row(entry["arch"], ", ".join(f"{p['name']} ({_human(p['params'])})" for p in entry["presets"]))
    console = _console()
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


def info_data(arch: str, preset: str = "tiny", seq_len: int | None = None, image_size: int | None = None) -> dict:
    """What ``dlzoo info --json`` prints (docs/cli.md); the MCP ``info`` tool returns the same.
    Raises ZooError for an unknown arch or preset or a bad size."""
    from dlzoo.zoo.estimates import estimate

    config = get_config(check_arch(arch), preset)
    if seq_len is not None and seq_len <= 0 or image_size is not None and image_size <= 0:
        raise ZooError("--seq-len and --image-size must be positive integers")
    est = estimate(arch, config, seq_len=seq_len, image_size=image_size)
    return {"arch": arch, "preset": preset, "config": config.to_dict(), **est.as_dict()}


@cli.command()
@click.argument("arch")
@click.option("--preset", "-p", default="tiny", show_default=True, help="Preset name, e.g. base, 124M, 50, B/16.")
@click.option("--seq-len", type=int, default=None, help="Tokens per example (default: the context length).")
@click.option("--image-size", type=int, default=None, help="ResNet input size (default 224).")
@JSON_OPTION
def info(arch: str, preset: str, seq_len: int | None, image_size: int | None, as_json: bool):
    """Parameters, FLOPs per example and a memory estimate.

    ARCH is one of: bert, gpt, resnet, vit.
    """
    data = info_data(arch, preset, seq_len=seq_len, image_size=image_size)
    if as_json:
        print_json(data)
        return
    from rich.table import Table

    table = Table(title=f"{arch} {preset}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("parameters", f"{data['params']:,}")
    table.add_row(f"forward FLOPs per example ({data['tokens_or_pixels']})", _human(data['flops_forward']))
    table.add_row("training FLOPs per example (fwd + bwd)", _human(data['flops_train_step']))
    table.add_row("weights (fp32)", _bytes(data['weights_bytes']))
    table.add_row("training state (weights, grads, AdamW)", _bytes(data['training_state_bytes']))
    table.add_row("activations per example (fp32, training)", _bytes(data['activation_bytes_per_example']))
    _console().print(table)


def convert_data(src: str, dst: str | Path) -> dict:
    """Convert as ``dlzoo convert`` does and return what ``--json`` prints (docs/cli.md); the MCP
    ``convert`` tool returns the same. Raises ZooError when DST exists or SRC is unusable."""
    from dlzoo.zoo import hub, weights

    dst = Path(dst)

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
    return result


@cli.command()
@click.argument("src")
@click.argument("dst", type=click.Path(path_type=Path))
@JSON_OPTION
def convert(src: str, dst: Path, as_json: bool):
    """Convert a published checkpoint to a canonical file, or a canonical file to the published layout.

    SRC: hub id, published checkpoint folder, or canonical .safetensors file.
    DST: canonical .safetensors file, or a new folder for the published layout.
    """
    result = convert_data(src, dst)
    if as_json:
        print_json(result)
    else:
        ignored = result["ignored"]
        _console().print(f"[green]wrote[/green] {dst} ({result['direction']}, {result['arch']}, {result['params']:,} parameters"
                         + (f", ignored {len(ignored)} non-parameter tensors" if ignored else "") + ")")


@cli.command()
@click.argument("arch")
@click.option("--preset", "-p", default="tiny", show_default=True, help="Preset when no --weights are given.")
@click.option("--weights", "-w", "weights_src", default=None, help="Canonical file, published folder or hub id.")
@click.option("--tol", type=float, default=1e-5, show_default=True,
              help="Max abs diff allowed, relative to the output scale when > 1.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random weights and inputs.")
@click.option("--framework", "-f", "frameworks", multiple=True,
              help="Only these frameworks (repeatable); default: all installed.")
@JSON_OPTION
def verify(arch: str, preset: str, weights_src: str | None, tol: float, seed: int, frameworks: tuple[str, ...],
           as_json: bool):
    """Run the same weights in every installed framework and compare outputs against torch and transformers.

    ARCH is one of: bert, gpt, resnet, vit. Exit status 1 when a pair exceeds the tolerance.
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


def _register_commands() -> None:
    from dlzoo.agents.cli import register as register_master
    from dlzoo.mcp_server import register as register_mcp

    register_master(cli)
    register_mcp(cli)


_register_commands()


def main() -> None:
    cli.main(prog_name="dlzoo")


if __name__ == "__main__":
    main()
