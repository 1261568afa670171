"""`dlzoo diagnose` end to end: read a log, diagnose it, and for a run of a dlzoo-generated
project turn the fixes into config overrides (``--set key=value``) and a config file
(``--write-fix FILE.toml``) that the project's ``train --config`` accepts.

A log belongs to a generated project when its folder holds the run's resolved ``config.toml``
and a ``.dlzoo.json`` (the project's provenance, with its package name) sits in a folder above
it: ``PROJECT/runs/<run>/metrics.jsonl``. The rerun command starts from the run's own resolved
config, so every setting of the diagnosed run is kept and only the fixes change:

    python -m PKG.train --config runs/<run>/config.toml --set run.name=<run>-fix --set optim.lr=0.0003

and the file written by ``--write-fix`` is that resolved config with the same changes applied.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tomllib
from pathlib import Path
from typing import Any

from ..zoo.configs import ZooError
from .diagnose import Finding, _Context, _fmt, diagnose_report, plot as draw, to_json
from .logformats import read_log

FIX_SUFFIXES = (".toml",)


def find_project(log: str | os.PathLike) -> dict[str, Any] | None:
    """{"root", "package", "run_dir", "config"} when ``log`` is a run of a generated project."""
    path = Path(log).resolve()
    run_dir = path if path.is_dir() else path.parent
    if not (run_dir / "config.toml").is_file():
        return None
    for folder in list(run_dir.parents)[:4]:
        marker = folder / ".dlzoo.json"
        if marker.is_file():
            try:
                provenance = json.loads(marker.read_text(encoding="utf-8"))
                config = tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8"))
            except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
                raise ZooError(f"{marker} or {run_dir / 'config.toml'} cannot be read ({error}); is this a dlzoo project run?") from None
            package = provenance.get("package")
            if not isinstance(package, str) or not package:
                return None
            return {"root": folder, "package": package, "run_dir": run_dir, "config": config}
    return None


def _get(config: dict[str, Any], key: str, default: Any = None) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _round(x: float) -> float:
    return float(f"{x:.3g}")


def finding_overrides(f: Finding, config: dict[str, Any], advice: dict[str, Any] | None, clip: float | None) -> dict[str, Any]:
    """The config changes (dotted key -> value) that carry out ``f``'s fix in a generated project
    (scaffold config: optim.lr, optim.warmup_fraction, optim.clip_norm, optim.weight_decay,
    train.epochs, data.augment). Empty when the fix is not a setting (a bug in the code or data)."""
    lr = _get(config, "optim.lr")
    warmup = _get(config, "optim.warmup_fraction", 0.0)
    out: dict[str, Any] = {}
    if advice is not None and advice["text"] in f.fix and isinstance(lr, (int, float)):
        out["optim.lr"] = _round(advice.get("suggested_peak_lr") or lr / advice["factor"])
    if f.kind == "lr-too-low" and isinstance(lr, (int, float)):
        out["optim.lr"] = _round(lr * 10)
    if (
        f.kind in ("lr-too-high", "early-instability")
        and isinstance(warmup, (int, float))
        and ("lengthen the warmup" in f.fix or "add a linear warmup" in f.fix)
    ):
        out["optim.warmup_fraction"] = _round(min(0.5, 2 * warmup) if warmup > 0 else 0.05)
    if "clip the global gradient norm" in f.fix.lower() and clip is not None and _get(config, "optim.clip_norm", 1.0) == 0:
        out["optim.clip_norm"] = _round(clip)
    if f.kind == "overfitting":
        wd = _get(config, "optim.weight_decay", 0.0)
        if isinstance(wd, (int, float)):
            out["optim.weight_decay"] = _round(2 * wd if wd > 0 else 0.05)
        if _get(config, "data.augment") is False:
            out["data.augment"] = True
    if f.kind == "underfitting" and isinstance(_get(config, "train.epochs"), int):
        out["train.epochs"] = 2 * _get(config, "train.epochs")
    return out


def _toml_literal(value: Any) -> str:
    """A value as `--set` reads it (TOML syntax)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value) if isinstance(value, float) else str(value)


def _fix_run_name(project: dict[str, Any]) -> str:
    """A run name the project does not hold yet: <run>-fix, <run>-fix2, ..."""
    base = str(_get(project["config"], "run.name", project["run_dir"].name)) + "-fix"
    out_dir = project["run_dir"].parent
    name, k = base, 1
    while (out_dir / name).exists():
        k += 1
        name = f"{base}{k}"
    return name


def rerun_command(project: dict[str, Any], overrides: dict[str, Any], run_name: str) -> str:
    config = os.path.relpath(project["run_dir"] / "config.toml", project["root"])
    sets = [f"--set run.name={run_name}"] + [f"--set {k}={_toml_literal(v)}" for k, v in overrides.items()]
    return f"python -m {project['package']}.train --config {config} " + " ".join(sets)


def fixed_config(project: dict[str, Any], overrides: dict[str, Any], run_name: str) -> dict[str, Any]:
    config = copy.deepcopy(project["config"])
    for key, value in {"run.name": run_name, **overrides}.items():
        node = config
        *sections, name = key.split(".")
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = value
    return config


def write_fix_file(
    path: str | os.PathLike,
    project: dict[str, Any],
    overrides: dict[str, Any],
    run_name: str,
    changes: list[str],
    *,
    overwrite: bool = False,
) -> Path:
    """The run's resolved config with ``overrides`` applied (and a fresh run name), as TOML."""
    import tomli_w

    from ..zoo.files import write_atomic

    config = fixed_config(project, overrides, run_name)
    header = [
        "# Written by `dlzoo diagnose --write-fix` from " + str(project["run_dir"] / "config.toml"),
        "# Changes: " + ("; ".join(changes) if changes else "none (no finding has a config fix)"),
        f"# Rerun: python -m {project['package']}.train --config {Path(path).name}",
        "",
    ]
    text = "\n".join(header) + tomli_w.dumps(_finite(config))
    return write_atomic(
        path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), overwrite=overwrite, suffixes=FIX_SUFFIXES, what="fix config"
    )


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return list(value)
    return value


def run_diagnose(
    log: str | os.PathLike,
    *,
    log_format: str | None = None,
    num_classes: int | None = None,
    plot: str | os.PathLike | None = None,
    write_fix: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Everything `dlzoo diagnose` does; returns {"run", "findings", "advice", "project",
    "overrides", "json", "plot", "fix_file"}. Outputs are checked before any work, so a refused
    command writes nothing. Raises ZooError (MetricsError, PathError) for bad input."""
    from ..zoo.files import check_output_file
    from .diagnose import PLOT_SUFFIXES

    if overwrite and plot is None and write_fix is None:
        raise ZooError("--overwrite applies to --plot and --write-fix; neither was given")
    if plot is not None:
        check_output_file(plot, overwrite=overwrite, suffixes=PLOT_SUFFIXES, what="plot")
    if write_fix is not None:
        check_output_file(write_fix, overwrite=overwrite, suffixes=FIX_SUFFIXES, what="fix config")
    run = read_log(log, format=log_format, num_classes=num_classes)
    findings, advice = diagnose_report(run)
    project = find_project(run.path or log)
    if write_fix is not None and project is None:
        raise ZooError(
            f"--write-fix needs a run of a dlzoo-generated project (runs/<run>/config.toml with .dlzoo.json above it); {log} is not one"
        )
    data = to_json(findings, run, advice)
    result: dict[str, Any] = {
        "run": run,
        "findings": findings,
        "advice": advice,
        "project": project,
        "overrides": {},
        "plot": None,
        "fix_file": None,
    }
    if project is not None:
        clip = _Context(run).clip_threshold()
        run_name = _fix_run_name(project)
        merged: dict[str, Any] = {}
        changes: list[str] = []
        for f, entry in zip(findings, data["findings"]):
            overrides = finding_overrides(f, project["config"], advice, clip)
            entry["overrides"] = overrides
            if overrides:
                entry["rerun"] = rerun_command(project, overrides, run_name)
            for key, value in overrides.items():
                if key not in merged:
                    merged[key] = value
                    changes.append(f"{key} {_fmt_value(_get(project['config'], key))} -> {_fmt_value(value)} ({f.kind})")
        result["overrides"] = merged
        data["project"] = {
            "root": str(project["root"]),
            "package": project["package"],
            "run_dir": str(project["run_dir"]),
            "overrides": merged,
            "rerun": rerun_command(project, merged, run_name) if merged else None,
        }
        if write_fix is not None:
            written = write_fix_file(write_fix, project, merged, run_name, changes, overwrite=overwrite)
            result["fix_file"] = str(written)
            data["project"]["fix_file"] = str(written)
            data["project"]["rerun_with_fix_file"] = f"python -m {project['package']}.train --config {written}"
    if plot is not None:
        result["plot"] = draw(run, findings, plot, overwrite=overwrite, title=str(log))
        data["plot"] = result["plot"]
    result["json"] = data
    return result


def _fmt_value(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return _fmt(value)
    return str(value)


def text_report(result: dict[str, Any]) -> list[str]:
    """The human-readable report, line by line."""
    run, findings = result["run"], result["findings"]
    unit = run.unit
    lines = [f"{run.path}: {run.source}, {len(run.train)} training {unit}s, {len(run.eval)} evaluations, {len(findings)} finding(s)"]
    lines += [f"warning: {w}" for w in run.warnings]
    for f, entry in zip(findings, result["json"]["findings"]):
        lines.append("")
        span = f"{unit} {f.start_step}" if f.start_step == f.end_step else f"{unit}s {f.start_step}-{f.end_step}"
        lines.append(f"[{f.severity}] {f.kind}: {span}")
        lines.append("  evidence: " + json.dumps(entry["evidence"]))
        lines.append("  cause:    " + entry["cause"])
        lines.append("  fix:      " + entry["fix"])
        if entry.get("rerun"):
            lines.append("  rerun:    " + entry["rerun"])
    project = result["json"].get("project")
    if project and project.get("rerun"):
        lines += ["", "all fixes at once: " + project["rerun"]]
    if result["fix_file"]:
        lines.append(f"fix config: {result['fix_file']} (python -m {result['project']['package']}.train --config {result['fix_file']})")
    if result["plot"]:
        lines += ["", f"plot: {result['plot']}"]
    return lines
