"""`dlzoo bench`: side-by-side step time of every installed framework and the references."""

from __future__ import annotations

import click

from dlzoo.zoo.configs import ZooError

# above this many page faults per step under glibc malloc (64 MiB of 4 KiB pages), name the
# caching-allocator fix
FAULT_HINT = 16384


def _overrides(pairs: tuple[str, ...]) -> dict:
    import json

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ZooError(f"--set expects FIELD=VALUE (e.g. hidden_size=384), got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


@click.command()
@click.argument("arch")
@click.option("--preset", "-p", default="tiny", show_default=True, help="Preset name, e.g. tiny, 124M, B/16.")
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="FIELD=VALUE",
    help="Config field override, repeatable, e.g. --set hidden_size=384 --set num_layers=4.",
)
@click.option("--batch", "-b", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--seq-len", type=click.IntRange(min=1), default=None, help="Tokens per example (gpt, bert; default 128).")
@click.option("--image-size", type=click.IntRange(min=1), default=None, help="Image side (vit, resnet).")
@click.option(
    "--frameworks",
    "-f",
    "implementations",
    multiple=True,
    help="torch, transformers, torchvision (resnet), timm (vit), flax, equinox, haiku, keras, keras-fit (default: every installed one).",
)
@click.option("--mode", type=click.Choice(["train", "forward"]), default="train", show_default=True)
@click.option("--trials", type=click.IntRange(min=3), default=15, show_default=True, help="Interleaved rounds.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (docs/bench.md).")
def bench(arch, preset, sets, batch, seq_len, image_size, implementations, mode, trials, as_json):
    """Step time of every installed framework on the same weights, side by side (ratios first)."""
    from dlzoo.zoo.bench import run
    from dlzoo.zoo.configs import check_arch

    check_arch(arch)
    report = run(
        arch,
        preset,
        batch=batch,
        seq_len=seq_len,
        image_size=image_size,
        implementations=list(implementations) or None,
        mode=mode,
        trials=trials,
        overrides=_overrides(sets),
    )
    if as_json:
        from dlzoo.cli import print_json

        print_json(report)
        return
    render(report, arch, preset, mode, batch, trials)


def render(report: dict, arch: str, preset: str, mode: str, batch: int, trials: int) -> None:
    """The report as a table, the ceiling, and the allocator line (with the tcmalloc fix where
    glibc malloc takes more than FAULT_HINT page faults per step)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{arch} {preset} {mode}, batch {batch}, inputs {report['inputs']}, median of {trials} interleaved trials")
    for column in (
        "implementation",
        "x fastest",
        "x torch",
        "median ms",
        "IQR ms",
        "compile s",
        "examples/s",
        "GFLOP/s",
        "% ceiling",
        "step memory",
        "faults/step",
    ):
        table.add_column(column, justify="left" if column == "implementation" else "right")
    for row in report["results"]:
        q1, q3 = row["iqr_s"]
        memory = row["peak_step_memory_bytes"]
        table.add_row(
            row["implementation"],
            f"{row['ratio_to_fastest']:.2f}",
            "-" if row["ratio_to_torch"] is None else f"{row['ratio_to_torch']:.2f}",
            f"{row['median_s'] * 1e3:.2f}",
            f"{q1 * 1e3:.2f}-{q3 * 1e3:.2f}",
            f"{row['compile_s']:.2f}",
            f"{row['examples_per_s']:.1f}",
            f"{row['gflops']:.1f}",
            f"{100 * row['fraction_of_ceiling']:.0f}%",
            "-" if memory is None else f"{memory / 2**20:.1f} MiB",
            f"{row['page_faults_per_step'] / 1e3:.0f}k",
        )
    console = Console()
    console.print(table)
    console.print(
        f"matmul ceiling {report['ceiling_gflops']:.0f} GFLOP/s ({report['ceiling_library']}); "
        f"{report['flops_per_step'] / 1e9:.3f} GFLOP per step. Read the ratios: absolute times drift "
        "on a shared machine."
    )
    faults = max(row["page_faults_per_step"] for row in report["results"])
    line = f"allocator: {report['allocator']}."
    if report["allocator"] == "glibc malloc" and faults > FAULT_HINT:
        line += (
            f" Up to {faults / 1e3:.0f}k page faults per step (fresh memory, zero-filled): glibc returns large "
            "buffers to the kernel on free. A caching allocator keeps them: apt install libtcmalloc-minimal4, "
            "then LD_PRELOAD=libtcmalloc_minimal.so.4 (docs/bench.md, 'The allocator')."
        )
    console.print(line)


def register(group: click.Group) -> None:
    group.add_command(bench)
