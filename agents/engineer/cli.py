"""The engineer agent's commands: ``dlzoo recommend`` and ``dlzoo migrate``.

``register(group)`` adds them to dlzoo's click group, which turns a ``ZooError`` into one
``error:`` line and exit status 2. Nothing here imports a deep-learning framework; ``migrate``
imports the two frameworks it converts between when it runs. ``--json`` schemas: docs/engineer.md.
"""

from __future__ import annotations

import json
import sys

import click

from ...zoo.configs import ZooError


def _json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _out(text: str = "") -> None:
    click.echo(text)


STRATEGY_OPTIONS = ("dataset_size", "input_size", "budget_hours")


def recommend_data(
    arch: str | None = None,
    needs=(),
    *,
    task: str | None = None,
    dataset_size: int | None = None,
    input_size: int | None = None,
    budget_hours: float | None = None,
    device: str | None = None,
    num_classes: int | None = None,
    utilisation: float | None = None,
) -> dict:
    """What ``dlzoo recommend --json`` prints (docs/engineer.md); the MCP ``recommend`` tool
    returns the same. Raises ZooError for an unknown need, or training options without --task."""
    from .frameworks import recommend_frameworks
    from .strategy import design_training

    given = {"dataset_size": dataset_size, "input_size": input_size, "budget_hours": budget_hours}
    training = None
    if task is None:
        stray = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is not None]
        stray += [
            f"--{name}"
            for name, value in (("num-classes", num_classes), ("device", device), ("utilisation", utilisation))
            if value is not None
        ]
        if stray:
            raise ZooError(
                f"{', '.join(stray)} design a training run and need --task (image-classification, text-classification or language-modeling)"
            )
    else:
        missing = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is None]
        if missing:
            raise ZooError(f"--task needs {', '.join(missing)} as well")
        training = design_training(
            task,
            dataset_size=dataset_size,
            input_size=input_size,
            budget_hours=budget_hours,
            device=device or "cpu",
            arch=arch,
            num_classes=num_classes,
            utilisation=utilisation,
        )
        arch = training["arch"]
    return {"frameworks": recommend_frameworks(arch, needs), "training": training}


@click.command()
@click.option("--arch", default=None, help="Architecture (bert, gpt, resnet, vit); with --task, fixes the choice.")
@click.option(
    "--need",
    "needs",
    multiple=True,
    metavar="NEED",
    help="A need from the vocabulary (repeatable), e.g. onnx-export, tpu, beginner-friendly.",
)
@click.option("--task", default=None, help="image-classification, text-classification or language-modeling.")
@click.option("--dataset-size", type=int, default=None, help="Labelled examples (language modeling: tokens).")
@click.option("--input-size", type=int, default=None, help="Image side in pixels, or tokens per example.")
@click.option("--budget-hours", type=float, default=None, help="Training time budget on the device, in hours.")
@click.option("--device", default=None, help="cpu (measured, the default), a100, h100 or h200.")
@click.option("--num-classes", type=int, default=None, help="Classes, written into the model config.")
@click.option(
    "--utilisation",
    type=float,
    default=None,
    help="Model FLOPs utilisation for the time estimate (default: per device and arch, see docs).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (docs/engineer.md).")
def recommend(arch, needs, task, dataset_size, input_size, budget_hours, device, num_classes, utilisation, as_json):
    """Rank the five frameworks for your needs; with --task, design the training too.

    \b
    dlzoo recommend --need onnx-export --need beginner-friendly
    dlzoo recommend --task image-classification --dataset-size 1797 --input-size 8 --budget-hours 0.1
    """
    data = recommend_data(
        arch,
        needs,
        task=task,
        dataset_size=dataset_size,
        input_size=input_size,
        budget_hours=budget_hours,
        device=device,
        num_classes=num_classes,
        utilisation=utilisation,
    )
    if as_json:
        _json(data)
        return
    frameworks, training = data["frameworks"], data["training"]
    _print_frameworks(frameworks)
    if training is not None:
        _out()
        _print_training(training)


def _print_frameworks(result: dict) -> None:
    needs = ", ".join(result["needs"]) or "none stated"
    _out(f"Frameworks for {result['arch'] or 'any architecture'} (needs: {needs})")
    for row in result["ranking"]:
        flag = "" if row["eligible"] else f"  violates {', '.join(row['violates'])}"
        _out(f"  {row['rank']}. {row['framework']:<8} score {row['score']:+d}" + ("" if row["installed"] else "  (not installed)") + flag)
        for r in row["reasons"]:
            what = r["need"] or "every project"
            cites = f"  [{', '.join(r['facts'])}]" if r["facts"] else ""
            _out(f"       {r['effect']:+d} {what}: {r['text']}{cites}")
    for e in result["excluded"]:
        _out(f"  -  {e['framework']}: {e['reason']}")
    for note in result["notes"]:
        _out(f"  note: {note}")
    _out(f"Choice: {result['choice']}")
    if result["facts"]:
        _out(f"Sources (facts checked {result['facts_checked']}):")
        for fid, f in result["facts"].items():
            _out(f"  [{fid}] {f['title']} <{f['source']}>")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "-" if value is None else str(value)


def _print_training(t: dict) -> None:
    _out(f"Training plan: {t['task']} -> {t['arch']} {t['preset']}")
    for d in t["decisions"]:
        _out(f"  {d['name']:<24} {_fmt(d['value']):<28} {d['reason']}  [{', '.join(d['rules'])}]")
    dev = t["costs"].get("device", {})
    mem = t["costs"]["memory"]
    if dev:
        _out(
            f"  estimate: {t['steps']:,} steps of {dev['step_seconds'] * 1e3:.3g} ms = {t['estimated_hours']:.3g} h "
            f"(budget {t['budget_hours']:g} h) at {dev['utilisation']:.0%} of {dev['basis']}"
        )
    _out(
        f"  memory: {mem['total_bytes'] / 2**30:.3g} GiB at batch {mem['batch_size']} ({mem['precision']}, "
        f"activations {mem['activation_bytes'] / 2**30:.3g} GiB)"
    )
    for note in t["notes"]:
        _out(f"  note: {note}")
    _out("Project config (python -m PKG.train --set KEY=VALUE, or dlzoo new with the same flags):")
    for key, value in t["overrides"].items():
        _out(f"  --set {key}={json.dumps(value) if isinstance(value, bool) else value}")
    _out("Sources:")
    for r in t["rules"]:
        _out(f"  [{r['id']}] {r['title']} <{r['source']}>")


@click.command()
@click.argument("project", type=click.Path(file_okay=False))
@click.option("--to", "framework", required=True, help="Target framework: torch, flax, equinox, haiku or keras.")
@click.option(
    "--out",
    "out",
    default=None,
    type=click.Path(file_okay=False),
    help="New project directory (default: PROJECT's name + _<framework> beside it).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (docs/engineer.md).")
def migrate(project, framework, out, as_json):
    """Turn a generated project into the same project in another framework.

    The latest checkpoint's weights are converted (canonical tensors), the configuration is kept,
    and the new model's outputs are checked against the old one's. PROJECT is never written to.
    """
    from .migrate import migrate_project

    result = migrate_project(project, framework, out=out)
    if as_json:
        _json(result)
        return
    _out(f"wrote {result['out']} ({result['arch']}, {result['from']} -> {result['to']})")
    if result["checkpoint"]:
        _out(f"  weights: {result['checkpoint']} -> {result['init_weights']}")
        _out(f"  outputs match within {result['tolerance']:g} (max abs diff {result['max_abs_diff']:.2e})")
    for note in result["notes"]:
        _out(f"  note: {note}")


def register(group: click.Group) -> None:
    """Add ``recommend`` and ``migrate`` to ``group`` (dlzoo's ZooGroup)."""
    group.add_command(recommend)
    group.add_command(migrate)
