"""The master agent's commands: explain, ask, annotate, diagnose, doctor.

``register(group)`` adds them to dlzoo's click group. Nothing here imports a deep-learning
framework at import time; ``doctor`` imports the one it checks when it runs. User errors are
raised as ``ZooError``; the group prints them as one line on stderr with exit status 2, like the
rest of the CLI.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..clitools import OVERWRITE_OPTION, explicit, fail, print_json as _json
from ..zoo.configs import ZooError

PATH = click.Path(path_type=Path)


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _tty() -> bool:
    return sys.stdout.isatty()


def _paper_frameworks(framework: str) -> tuple[str, ...]:
    from .papers import FRAMEWORKS

    if framework != "all" and framework not in FRAMEWORKS:
        raise ZooError(f"--framework must be one of {', '.join(FRAMEWORKS)} or all, got {framework!r}")
    return FRAMEWORKS if framework == "all" else (framework,)


def _require_topic(topic: str | None) -> str:
    if not topic:
        raise ZooError("expected a TOPIC (e.g. `dlzoo explain sdpa`), --paper ID, or --list to see every concept")
    return topic


def explain_data(topic: str | None = None, *, paper: str | None = None, framework: str = "torch", list_all: bool = False) -> dict | list:
    """What ``dlzoo explain --json`` prints (docs/ask.md, docs/papers.md); the MCP ``explain`` tool
    returns the same. A concept entry with its zoo lines; with ``paper``, the paper mapped to code
    (``framework``: one framework or "all"); with ``list_all``, every concept id (every paper id
    with ``paper="list"`` or ``topic="papers"``). Raises ZooError for an unknown topic or paper."""
    if paper is not None or (list_all and topic == "papers"):
        from .papers import load_papers, lookup_paper, paper_dict

        if list_all or paper == "list":
            return [{"id": p.id, "title": p.title, "year": p.year} for p in load_papers().values()]
        frameworks = _paper_frameworks(framework)
        return paper_dict(lookup_paper(paper), frameworks)
    from .theory import load_knowledge, lookup, zoo_lines

    if list_all:
        return [{"id": e.id, "title": e.title} for e in load_knowledge().values()]
    entry = lookup(_require_topic(topic))
    data = entry.to_dict()
    data["zoo_lines"] = [{"file": m.path, "line": m.line, "concept": m.concept} for m in zoo_lines(entry)]
    return data


@click.command()
@click.argument("topic", required=False)
@click.option(
    "--level",
    type=click.Choice(["intro", "standard", "deep"]),
    default="standard",
    show_default=True,
    help="intro: plain words, no math; deep: adds derivations and every framework's lines.",
)
@click.option("--brief", is_flag=True, help="Only the one-paragraph summary.")
@click.option(
    "--paper",
    "paper_id",
    default=None,
    help="A paper behind the zoo (e.g. transformer, bert, resnet): its equations mapped to the zoo lines that implement them.",
)
@click.option("--framework", default="torch", show_default=True, help="With --paper: torch, flax, equinox, haiku, keras or all.")
@click.option("--json", "as_json", is_flag=True, help="The entry (or paper) as JSON.")
@click.option("--list", "list_all", is_flag=True, help="List every concept id (with --paper: every paper id).")
@click.pass_context
def explain(
    ctx: click.Context, topic: str | None, level: str, brief: bool, paper_id: str | None, framework: str, as_json: bool, list_all: bool
):
    """Explain a concept (summary, explanation, math, practice, papers), or a paper mapped to code.

    TOPIC is a concept id, title or alias, e.g. 'sdpa', 'pre-ln'.
    """
    _refuse_ignored_explain_options(ctx, topic, paper_id, list_all, as_json, brief)
    if as_json:
        _json(explain_data(topic, paper=paper_id, framework=framework, list_all=list_all))
        return
    if paper_id is not None or (list_all and topic == "papers"):
        list_all = list_all or paper_id == "list"
        from .papers import load_papers, lookup_paper, render_paper

        if list_all:
            for p in load_papers().values():
                _out(f"{p.id:<14}  {p.title} ({p.year})")
            return
        frameworks = _paper_frameworks(framework)
        sys.stdout.write(render_paper(lookup_paper(paper_id), frameworks))
        return
    from .theory import load_knowledge, lookup, render

    if list_all:
        entries = load_knowledge()
        width = max(map(len, entries))
        for e in entries.values():
            _out(f"{e.id:<{width}}  {e.title}")
        return
    entry = lookup(_require_topic(topic))
    if brief:
        _out(f"{entry.title}  [{entry.id}]\n\n{entry.brief}")
    else:
        sys.stdout.write(render(entry, level))


def _refuse_ignored_explain_options(ctx: click.Context, topic, paper_id, list_all, as_json, brief) -> None:
    """explain's options that a combination would ignore are refused instead."""
    papers = paper_id is not None or (list_all and topic == "papers")
    if paper_id is not None and topic:
        raise click.UsageError("give TOPIC or --paper ID, not both")
    if not papers and explicit(ctx, "framework"):
        raise click.UsageError("--framework applies to --paper")
    if list_all and topic and not papers:
        raise click.UsageError("--list takes no TOPIC; use `dlzoo explain TOPIC` or `dlzoo explain --list`")
    if brief and (papers or list_all or as_json):
        raise click.UsageError("--brief shortens a concept's text; it does not combine with --paper, --list or --json")
    if explicit(ctx, "level") and (papers or list_all or as_json or brief):
        raise click.UsageError("--level applies to a concept's text; it does not combine with --paper, --list, --json or --brief")


@click.command()
@click.argument("question")
@click.option("--json", "as_json", is_flag=True, help="Ranked answers as JSON (docs/ask.md).")
@click.option("--top", "-k", type=click.IntRange(1, 10), default=3, show_default=True, help="How many entries to return.")
def ask(question: str, as_json: bool, top: int):
    """Answer a question from the knowledge base (BM25 ranking, offline); names its sources.

    QUESTION is a question in plain words. Exit status 1 when the question is declined (no
    entry covers it); the nearest entries are then listed as related.
    """
    from .ask import answer

    if not question.strip():
        raise click.UsageError('QUESTION is empty; ask in plain words, e.g. dlzoo ask "why warm up the learning rate?"')
    response = answer(question, k=top)
    if as_json:
        _json(response.to_dict())
    elif response.declined:
        _out(f"I don't know: no entry of the knowledge base answers this question ({response.reason}).")
        if response.related:
            _out("Related: " + ", ".join(f"{a.id} ({a.title})" for a in response.related))
        _out("See every concept: dlzoo explain --list")
    else:
        best = response.answers[0]
        _out(f"{best.title}  [{best.id}]")
        _out()
        _out(best.brief)
        _out()
        _out(best.passage)
        _out()
        _out("Sources: " + ", ".join(f"{a.id} ({a.score:.1f})" for a in response.answers))
        for p in best.papers:
            _out(f"  - {p.cite()}")
        _out(f"More: dlzoo explain {best.id}")
    if response.declined:
        sys.exit(1)


@click.command()
@click.argument("file", required=False, type=PATH)
@click.option(
    "--level",
    type=click.Choice(["brief", "full"]),
    default="brief",
    show_default=True,
    help="How much theory beside each line (printing only; THEORY.md is always full).",
)
@click.option("--arch", default=None, help="With --framework: a zoo model instead of FILE.")
@click.option("--framework", default=None, help="With --arch: torch, flax, equinox, haiku or keras.")
@click.option("--theory-md", type=PATH, default=None, help="Write THEORY.md here (a folder means FOLDER/THEORY.md).")
@OVERWRITE_OPTION
@click.pass_context
def annotate(
    ctx: click.Context, file: Path | None, level: str, arch: str | None, framework: str | None, theory_md: Path | None, overwrite: bool
):
    """Print a file with the theory beside the lines it explains, or write THEORY.md for a zoo model.

    FILE is a Python file with `# theory: <id>` markers. Exit status 1 when it has none.
    """
    from ..zoo.files import check_output_file
    from .annotate import annotate_source, model_files, theory_md_path, write_theory_md

    if file is not None and (arch or framework) and theory_md is None:
        raise click.UsageError(
            "give FILE, or --arch and --framework, not both (with --theory-md, --arch and --framework only name FILE's model)"
        )
    if theory_md is None and overwrite:
        raise click.UsageError("--overwrite applies to --theory-md")
    if theory_md is not None and explicit(ctx, "level"):
        raise click.UsageError("--level applies to printing; THEORY.md always holds the full entries")
    if theory_md is not None:
        if file is None and not (arch and framework):
            raise ZooError(
                "--theory-md needs FILE or both --arch and --framework "
                "(e.g. dlzoo annotate --arch gpt --framework torch --theory-md THEORY.md)"
            )
        files = [file] if file is not None else model_files(arch, framework)
        out = check_output_file(theory_md_path(theory_md), overwrite=overwrite, what="THEORY.md file")
        _require_markers(files[0])
        written = write_theory_md(arch or files[0].stem, framework or "torch", out, files=files, overwrite=overwrite)
        _out(f"wrote {written}")
        return
    if file is None:
        if not (arch and framework):
            raise ZooError("expected FILE, or --arch and --framework (e.g. dlzoo annotate zoo/torch/gpt.py)")
        file = model_files(arch, framework)[0]
    _require_markers(file)
    text = annotate_source(file, level=level)
    if _tty():
        from rich.console import Console
        from rich.syntax import Syntax

        Console().print(Syntax(text, "python", line_numbers=True, word_wrap=False))
    else:
        sys.stdout.write(text)


def _require_markers(file: Path) -> None:
    from .annotate import find_markers

    if not find_markers(file):
        fail(
            f"{file} has no `# theory: <id>` markers, so there is nothing to annotate; "
            "mark a line with e.g. `# theory: layer-norm` (ids: dlzoo explain --list)"
        )


@click.command()
@click.argument("log", type=PATH)
@click.option(
    "--format",
    "log_format",
    default=None,
    metavar="FORMAT",
    help="Skip auto-detection: dlzoo-jsonl, jsonl, keras-csv, keras-history, lightning-csv, hf-trainer-state, tensorboard or csv.",
)
@click.option(
    "--num-classes",
    type=click.IntRange(min=2),
    default=None,
    help="Classes (or vocabulary size) of the loss, when the log does not say (for ln C).",
)
@click.option("--json", "as_json", is_flag=True, help='{"findings": [...], ...} (docs/diagnose.md).')
@click.option("--plot", type=PATH, default=None, help="Write the curves with findings marked to this .png, .svg or .pdf file.")
@click.option(
    "--write-fix", type=PATH, default=None, help="For a run of a dlzoo project: write the fixes as a TOML config for `train --config`."
)
@OVERWRITE_OPTION
def diagnose(
    log: Path, log_format: str | None, num_classes: int | None, as_json: bool, plot: Path | None, write_fix: Path | None, overwrite: bool
):
    """Find what went wrong in a training run: divergence, spikes, plateaus, over/underfitting, ...

    LOG is a metrics.jsonl, a Keras CSVLogger/history file, a Lightning metrics.csv, a Hugging Face
    trainer_state.json, a TensorBoard run directory or a CSV with step/epoch and loss columns.
    """
    from .diagnose_fix import run_diagnose, text_report

    result = run_diagnose(log, log_format=log_format, num_classes=num_classes, plot=plot, write_fix=write_fix, overwrite=overwrite)
    if as_json:
        _json(result["json"])
        return
    for line in text_report(result):
        _out(line)


@click.command()
@click.argument("target", metavar="ARCH|PROJECT", required=False)
@click.option("--framework", "-f", default=None, help="ARCH only: torch, flax, equinox, haiku or keras.")
@click.option("--preset", "-p", default="tiny", show_default=True, help="ARCH only: config preset (small ones run in seconds).")
@click.option(
    "--config",
    "config_file",
    type=PATH,
    default=None,
    help="PROJECT only: a config TOML to check with (default: the run's config.toml, else the defaults).",
)
@click.option(
    "--overfit-steps",
    type=click.IntRange(min=1),
    default=None,
    help="PROJECT only: steps of the overfit-one-batch check (default: the project's train.overfit_steps).",
)
@click.option("--json", "as_json", is_flag=True, help="The report as JSON.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--arch", "arch_option", default=None, hidden=True, help="Deprecated: give ARCH as the argument.")
@click.pass_context
def doctor(
    ctx: click.Context,
    target: str | None,
    framework: str | None,
    preset: str,
    config_file: Path | None,
    overfit_steps: int | None,
    as_json: bool,
    seed: int,
    arch_option: str | None,
):
    """Pre-flight checks on a zoo model or a generated project: init loss, overfit one batch, gradients, data.

    ARCH is one of: bert, gpt, resnet, vit (with -f FRAMEWORK). PROJECT is a folder made by `dlzoo new`
    (or a run folder in it): its own model, training step and data are checked. Exit status 1 when a
    check fails.
    """
    from ..zoo.configs import check_arch, get_config
    from ..zoo.handle import backend

    if target is not None and Path(target).is_dir():
        for name in ("framework", "preset", "seed", "arch_option"):
            if explicit(ctx, name):
                raise click.UsageError(f"--{name.replace('_option', '').replace('_', '-')} applies to ARCH, not to a PROJECT")
        from .doctor_project import run_project_checks

        report = run_project_checks(target, config=config_file, overfit_steps=overfit_steps)
        title = f"doctor: project {report['project']} ({report['arch']}, {report['framework']}; config: {report['config']})"
        _report(report, as_json, title)
        return
    for name in ("config_file", "overfit_steps"):
        if explicit(ctx, name):
            raise click.UsageError(
                f"--{name.replace('_file', '').replace('_', '-')} applies to a PROJECT folder; {target!r} is not a folder"
            )
    arch = target
    from .doctor import run_checks

    if arch_option is not None:
        if arch is not None and arch != arch_option:
            raise click.UsageError(f"ARCH {arch!r} and --arch {arch_option!r} differ; give ARCH only")
        arch = arch_option
    if arch is None:
        raise click.UsageError("missing argument 'ARCH' (one of: bert, gpt, resnet, vit) or a PROJECT folder")
    if framework is None:
        raise click.UsageError("ARCH needs --framework/-f (torch, flax, equinox, haiku or keras)")
    get_config(check_arch(arch), preset)  # names checked before the framework is imported
    backend(framework)  # a clear error when the framework is not installed
    if arch_option is not None:
        click.echo(f"note: --arch is deprecated; write `dlzoo doctor {arch} -f {framework}`", err=True)
    report = run_checks(arch, framework, preset, seed=seed)
    _report(report.to_dict(), as_json, f"doctor: {arch} ({framework}, preset {preset})")


def _report(report: dict, as_json: bool, title: str) -> None:
    if as_json:
        _json(report)
    else:
        _out(title)
        for c in report["checks"]:
            mark = {True: "PASS", False: "FAIL", None: "SKIP"}[c["passed"]]
            _out(f"  {mark}  {c['name']}: {json.dumps(c['numbers'])}")
            if c["passed"] is False:
                _out(f"        means: {c['meaning']}")
        _out("all checks passed" if report["passed"] else "some checks failed")
    if not report["passed"]:
        sys.exit(1)


def register(group: click.Group) -> None:
    """Add the master agent's commands to ``group`` (dlzoo's :class:`dlzoo.cli.ZooGroup`, which
    turns the ``ZooError`` they raise into one ``error:`` line)."""
    for command in (explain, ask, annotate, diagnose, doctor):
        group.add_command(command)
