"""``dlzoo new``: the command line of project generation (logic in ``generate.py``).

Imports no deep-learning framework: generating a project only reads zoo files and renders text.
"""

from __future__ import annotations

import sys

import click

from dlzoo.clitools import JSON_OPTION, print_json


@click.command("new")
@click.argument("name")
@click.option("--arch", required=True, help="resnet, vit, gpt or bert.")
@click.option(
    "--framework", "-f", default=None, help="torch, flax, equinox, haiku or keras (default: the engineer agent's choice for --need)."
)
@click.option(
    "--need",
    "needs",
    multiple=True,
    metavar="NEED",
    help="Without --framework: what the project needs (dlzoo recommend's vocabulary), repeatable.",
)
@click.option("--preset", "-p", default=None, help="Any zoo preset (default: tiny, trains in minutes on a CPU).")
@click.option("--task", default=None, help="resnet/vit: image-classification; gpt: lm; bert: mlm (default) or classify.")
@click.option("--tokenizer", "tokenizer", default=None, help="Text projects: a Hugging Face tokenizer.json (default: byte-level).")
@click.option(
    "--weights", "-w", "weights_src", default=None, help="Start from: canonical .safetensors, published checkpoint folder or hub id."
)
@click.option(
    "--annotate",
    type=click.Choice(["none", "brief", "full"]),
    default="brief",
    show_default=True,
    help="Theory notes in the code (full: also THEORY.md).",
)
@click.option(
    "--dataset-size",
    type=click.IntRange(min=1),
    default=None,
    help="With --input-size and --budget-hours: the engineer agent designs the training (recommended.toml).",
)
@click.option("--input-size", type=click.IntRange(min=1), default=None, help="Image side in pixels, or tokens per example.")
@click.option("--budget-hours", type=click.FloatRange(min=0, min_open=True), default=None, help="Training time budget.")
@click.option("--device", default=None, help="For the design: cpu (default), a100, h100 or h200.")
@click.option("--force", is_flag=True, help="Add to an existing folder; files you wrote are never replaced.")
@JSON_OPTION
def new(
    name: str,
    arch: str,
    framework: str | None,
    needs: tuple[str, ...],
    preset: str | None,
    task: str | None,
    tokenizer: str | None,
    weights_src: str | None,
    dataset_size: int | None,
    input_size: int | None,
    budget_hours: float | None,
    device: str | None,
    annotate: str,
    force: bool,
    as_json: bool,
) -> None:
    """Write a self-contained training project NAME: the zoo's model copied, data, train, evaluate,
    predict, checkpoints, tests (docs/scaffold.md)."""
    from .generate import new_project, summary_text

    given = {"dataset_size": dataset_size, "input_size": input_size, "budget_hours": budget_hours, "device": device}
    design = {k: v for k, v in given.items() if v is not None} or None

    result = new_project(
        name,
        arch=arch,
        framework=framework,
        preset=preset,
        task=task,
        weights=weights_src,
        annotate=annotate,
        force=force,
        tokenizer=tokenizer,
        needs=needs,
        design=design,
    )
    if as_json:
        print_json(result)
    else:
        sys.stdout.write(summary_text(result) + "\n")


def register(group: click.Group) -> None:
    group.add_command(new)
