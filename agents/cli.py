"""The master agent's commands: explain, ask, annotate, diagnose, doctor.

``register(app)`` adds them to dlzoo's typer app. Nothing here imports a deep-learning
framework at import time; ``doctor`` imports the one it checks when it runs. User errors print one
line on stderr and exit with status 2, like the rest of the CLI.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from ..zoo.configs import ZooError


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _fail(error: Exception) -> None:
    sys.stderr.write(f"error: {error}\n")
    raise typer.Exit(2)


def _tty() -> bool:
    return sys.stdout.isatty()


def explain(topic: Optional[str] = typer.Argument(None, help="Concept id, title or alias, e.g. 'sdpa', 'pre-ln'."),
            brief: bool = typer.Option(False, "--brief", help="Only the one-paragraph summary."),
            as_json: bool = typer.Option(False, "--json", help="The entry as JSON."),
            list_all: bool = typer.Option(False, "--list", help="List every concept id.")):
    """Explain a concept: summary, explanation, math, papers, misconceptions."""
    from .theory import load_knowledge, lookup

    try:
        if list_all:
            entries = load_knowledge()
            if as_json:
                _json([{"id": e.id, "title": e.title} for e in entries.values()])
            else:
                width = max(map(len, entries))
                for e in entries.values():
                    _out(f"{e.id:<{width}}  {e.title}")
            return
        if not topic:
            raise ZooError("expected a TOPIC (e.g. `dlzoo explain sdpa`), or --list to see every concept")
        entry = lookup(topic)
    except ZooError as error:
        _fail(error)
    if as_json:
        _json(entry.to_dict())
        return
    _out(f"{entry.title}  [{entry.id}]")
    _out()
    _out(entry.brief)
    if brief:
        return
    _out()
    _out(entry.full)
    _out()
    _out("Math (LaTeX):")
    _out("  " + entry.math.replace("\n", "\n  "))
    _out()
    _out("Common misconceptions:")
    for m in entry.misconceptions:
        _out(f"  - {m}")
    _out()
    _out("Papers:")
    for p in entry.papers:
        _out(f"  - {p.cite()}")
    _out()
    _out("Related: " + ", ".join(entry.related))


def ask(question: str = typer.Argument(..., help="A question in plain words."),
        as_json: bool = typer.Option(False, "--json", help="Ranked answers as JSON."),
        top: int = typer.Option(3, "--top", "-k", min=1, max=10, help="How many entries to return.")):
    """Answer a question from the knowledge base (BM25 ranking, offline); names its sources."""
    from .ask import ask as _ask

    answers = _ask(question, k=top)
    if as_json:
        _json({"question": question, "answers": [a.to_dict() for a in answers],
               "sources": [a.id for a in answers]})
        return
    if not answers:
        sys.stderr.write("error: nothing in the knowledge base matches that question; "
                         "try other words or `dlzoo explain --list`\n")
        raise typer.Exit(1)
    best = answers[0]
    _out(f"{best.title}  [{best.id}]")
    _out()
    _out(best.brief)
    _out()
    _out(best.passage)
    _out()
    _out("Sources: " + ", ".join(f"{a.id} ({a.score:.1f})" for a in answers))
    for p in best.papers:
        _out(f"  - {p.cite()}")
    _out(f"More: dlzoo explain {best.id}")


def annotate(file: Optional[Path] = typer.Argument(None, help="A Python file with `# theory: <id>` markers."),
             level: str = typer.Option("brief", "--level", help="brief or full."),
             arch: Optional[str] = typer.Option(None, "--arch", help="With --framework and --theory-md: a zoo model."),
             framework: Optional[str] = typer.Option(None, "--framework"),
             theory_md: Optional[Path] = typer.Option(None, "--theory-md", help="Write THEORY.md here.")):
    """Print a file with the theory beside the lines it explains, or write THEORY.md for a zoo model."""
    from .annotate import annotate_source, model_files, write_theory_md

    try:
        if theory_md is not None:
            if file is not None:
                files = [file]
                written = write_theory_md(arch or file.stem, framework or "torch", theory_md, files=files)
            else:
                if not (arch and framework):
                    raise ZooError("--theory-md needs FILE or both --arch and --framework "
                                   "(e.g. dlzoo annotate --arch gpt --framework torch --theory-md THEORY.md)")
                written = write_theory_md(arch, framework, theory_md)
            _out(f"wrote {written}")
            return
        if file is None:
            if not (arch and framework):
                raise ZooError("expected FILE, or --arch and --framework (e.g. dlzoo annotate zoo/torch/gpt.py)")
            file = model_files(arch, framework)[0]
        text = annotate_source(file, level=level)
    except ZooError as error:
        _fail(error)
    if _tty():
        from rich.console import Console
        from rich.syntax import Syntax

        Console().print(Syntax(text, "python", line_numbers=True, word_wrap=False))
    else:
        sys.stdout.write(text)


def diagnose(metrics: Path = typer.Argument(..., help="metrics.jsonl written by training (docs/metrics.md)."),
             as_json: bool = typer.Option(False, "--json", help='{"findings": [...]} (docs/diagnose.md).'),
             plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG of the curves with findings marked.")):
    """Find what went wrong in a training run: divergence, spikes, plateaus, over/underfitting, ..."""
    from .diagnose import diagnose as _diagnose, plot as _plot, to_json
    from .metrics import read_metrics

    try:
        run = read_metrics(metrics)
    except ZooError as error:
        _fail(error)
    findings = _diagnose(run)
    if plot is not None:
        _plot(run, findings, plot)
    if as_json:
        _json(to_json(findings))
        return
    _out(f"{metrics}: {len(run.train)} training lines, {len(run.eval)} evaluation lines, "
         f"{len(findings)} finding(s)")
    for f in findings:
        d = f.to_dict()
        _out()
        _out(f"[{f.severity}] {f.kind}: steps {f.start_step}-{f.end_step}")
        _out("  evidence: " + json.dumps(d["evidence"]))
        _out("  cause:    " + d["cause"])
        _out("  fix:      " + d["fix"])
    if plot is not None:
        _out(f"\nplot: {plot}")


def doctor(arch: str = typer.Option(..., "--arch", help="bert, gpt, resnet or vit."),
           framework: str = typer.Option(..., "--framework", help="torch, flax, equinox, haiku or keras."),
           preset: str = typer.Option("tiny", "--preset", help="Config preset (small ones run in seconds)."),
           as_json: bool = typer.Option(False, "--json", help="The report as JSON."),
           seed: int = typer.Option(0, "--seed")):
    """Pre-flight checks on a zoo model: init loss, overfit one batch, gradients, masking, determinism."""
    from ..zoo.configs import check_arch
    from ..zoo.handle import backend
    from .doctor import run_checks

    try:
        check_arch(arch)
        backend(framework)  # a clear error when the framework is not installed
        report = run_checks(arch, framework, preset, seed=seed)
    except ZooError as error:
        _fail(error)
    if as_json:
        _json(report.to_dict())
    else:
        _out(f"doctor: {arch} ({framework}, preset {preset})")
        for c in report.checks:
            mark = {True: "PASS", False: "FAIL", None: "SKIP"}[c.passed]
            _out(f"  {mark}  {c.name}: {json.dumps(c.numbers)}")
            if c.passed is False:
                _out(f"        means: {c.meaning}")
        _out("all checks passed" if report.passed else "some checks failed")
    if not report.passed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the master agent's commands to ``app``."""
    app.command("explain")(explain)
    app.command("ask")(ask)
    app.command("annotate")(annotate)
    app.command("diagnose")(diagnose)
    app.command("doctor")(doctor)
