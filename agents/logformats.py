"""Training logs in the formats people have, read into one `Run` for diagnose.

    >>> from dlzoo.agents.logformats import read_log
    >>> run = read_log("lightning_logs/version_0")          # doctest: +SKIP
    >>> run.source, run.unit, run.warnings                  # doctest: +SKIP
    ('lightning-csv', 'step', [])

Formats (``FORMATS``; found by ``detect`` from the path and the first bytes, or named with
``format=``):

| format | what | unit |
|---|---|---|
| ``dlzoo-jsonl`` | dlzoo's metrics.jsonl (docs/metrics.md) | step |
| ``jsonl`` | other JSON lines: one object per step or epoch (``loss``, ``val_loss``, ... on one line) | step or epoch |
| ``keras-csv`` | Keras ``CSVLogger`` (``epoch,loss,val_loss,...``) | epoch |
| ``keras-history`` | ``json.dump(model.fit(...).history)``: metric -> list of per-epoch values | epoch |
| ``lightning-csv`` | PyTorch Lightning ``CSVLogger``'s ``metrics.csv`` (sparse rows, ``epoch`` and ``step``) | step |
| ``hf-trainer-state`` | Hugging Face ``Trainer``'s ``trainer_state.json`` (``log_history``) | step |
| ``tensorboard`` | event files or a run directory (``EventAccumulator``; scalars, TF2 tensors) | step (epoch: Keras) |
| ``csv`` | any CSV with a ``step`` (or ``iteration``/``global_step``) or ``epoch`` column and a loss column | step or epoch |

Metric names are mapped onto diagnose's fields by their words: ``loss``, ``train_loss``,
``Loss/train`` -> loss; ``val_loss``, ``eval_loss``, ``validation/epoch_loss``, ``Loss/val`` ->
val_loss; ``val_acc``, ``eval_accuracy`` -> val_accuracy; ``lr``, ``learning_rate``,
``lr-AdamW`` -> lr; ``grad_norm``, ``gradient_norm`` -> grad_norm. Every other number is kept in
its record, and the run's ``warnings`` name what diagnose does not analyse. A value that cannot
be placed at a step (a row without step or epoch, a learning rate at a step without a training
loss) is a warning or an error (``MetricsError``), never silently dropped.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable

from .metrics import EVAL_FIELDS, MetricsError, Run, parse_lines

FORMATS = ("dlzoo-jsonl", "jsonl", "keras-csv", "keras-history", "lightning-csv", "hf-trainer-state", "tensorboard", "csv")
STEP_COLUMNS = ("step", "global_step", "iteration", "iter", "it", "batch", "steps")
EPOCH_COLUMNS = ("epoch", "epochs")
# Numbers a log carries that diagnose has no use for and need no warning.
BOOKKEEPING = re.compile(
    r"(runtime|samples_per_second|steps_per_second|total_flos|num_input_tokens_seen|"
    r"wall_?time|^time$|timestamp|^epoch$|^step$|throughput|memory|^created_at)"
)
VALIDATION_WORDS = {"val", "valid", "validation", "eval", "evaluation", "dev"}
ACCURACY_WORDS = {"acc", "accuracy", "sparse_categorical_accuracy", "categorical_accuracy", "top1"}


def canonical(name: str) -> tuple[str, str] | None:
    """Where a metric name belongs: ("train", "loss" | "lr" | "grad_norm" | "accuracy") or
    ("eval", "val_loss" | "val_accuracy"); None for a name diagnose does not analyse."""
    low = name.lower().replace("\\", "/")
    for phrase, word in (
        ("learning_rate", "lr"),
        ("learning-rate", "lr"),
        ("learningrate", "lr"),
        ("grad_norm", "gradnorm"),
        ("gradient_norm", "gradnorm"),
        ("grad-norm", "gradnorm"),
        ("sparse_categorical_accuracy", "acc"),
        ("categorical_accuracy", "acc"),
    ):
        low = low.replace(phrase, word)
    words = [w for w in re.split(r"[/_\-.\s]+", low) if w]
    if "test" in words:
        return None
    role = "eval" if VALIDATION_WORDS & set(words) else "train"
    if "loss" in words:
        field = "loss"
    elif ACCURACY_WORDS & set(words):
        field = "accuracy"
    elif "lr" in words:
        field = "lr"
    elif "gradnorm" in words or {"grad", "norm"} <= set(words):
        field = "grad_norm"
    else:
        return None
    if role == "eval":
        return ("eval", f"val_{field}") if field in ("loss", "accuracy") else None
    return "train", field


def _aggregate(name: str) -> bool:
    """Lightning's ``*_epoch`` aggregates (and Keras' ``epoch_*`` tags) repeat step-level values."""
    words = re.split(r"[/_\-.\s]+", name.lower())
    return "epoch" in words


def _number(value: Any) -> float | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        return None


def build_run(
    rows: Iterable[tuple[int, dict[str, float]]], *, unit: str, source: str, path: str, meta: dict[str, Any] | None = None
) -> Run:
    """A Run from (step or epoch, {metric name: value}) rows: names mapped by ``canonical``, the
    values of one step merged into one train and one eval record. When a field has both a
    step-level name and an ``epoch`` aggregate (Lightning's train_loss_step / train_loss_epoch),
    the step-level one is used and the aggregate kept as an extra number."""
    rows = list(rows)
    names = {n for _, values in rows for n in values}
    chosen: dict[str, str] = {}  # name -> canonical field it fills
    for name in sorted(names, key=lambda n: (_aggregate(n), n)):
        where = canonical(name)
        if where is None:
            continue
        field = where[1]
        if field not in chosen.values():
            chosen[name] = field
    train: dict[int, dict[str, Any]] = {}
    evals: dict[int, dict[str, Any]] = {}
    for step, values in rows:
        for name, value in values.items():
            where = canonical(name)
            field = chosen.get(name)
            if field is not None and where is not None:
                target = evals if where[0] == "eval" else train
                key = "accuracy" if field == "accuracy" else field
            elif where is not None and where[0] == "eval" or name.lower().startswith(("val", "eval", "validation")):
                target, key = evals, name
            else:
                target, key = train, name
            record = target.setdefault(step, {"type": "eval" if target is evals else "train", "step": step})
            record[key] = value
    warnings: list[str] = []
    orphans = {s: r for s, r in train.items() if "loss" not in r}
    if orphans:
        fields = sorted({k for r in orphans.values() for k in r if k not in ("type", "step")})
        # Values logged at steps where no training loss was (a learning-rate monitor on its own
        # rows): attach them to the nearest earlier loss step when one exists.
        loss_steps = sorted(s for s, r in train.items() if "loss" in r)
        unplaced = 0
        for s, record in orphans.items():
            del train[s]
            earlier = [t for t in loss_steps if t <= s]
            if earlier:
                for k, v in record.items():
                    if k not in ("type", "step"):
                        train[earlier[-1]].setdefault(k, v)
            else:
                unplaced += 1
        if unplaced:
            warnings.append(
                f"{unplaced} row(s) before the first training loss carried {', '.join(fields)} "
                "and were not used (no training loss at or before their step)"
            )
    evals = {s: r for s, r in evals.items() if any(k not in ("type", "step") for k in r)}
    if not train:
        found = ", ".join(sorted(names)) or "none"
        raise MetricsError(
            f"{path} has no training loss ({source}); expected a column or tag named like loss / train_loss / Loss/train; found: {found}"
        )
    unanalysed = sorted(n for n in names if n not in chosen and not BOOKKEEPING.search(n.lower()) and canonical(n) is None)
    if unanalysed:
        warnings.append(
            "not analysed (kept in the run): "
            + ", ".join(unanalysed[:12])
            + (f" and {len(unanalysed) - 12} more" if len(unanalysed) > 12 else "")
        )
    duplicates = [n for n, f in ((n, canonical(n)) for n in names) if f and n not in chosen and not _aggregate(n)]
    if duplicates:
        warnings.append(
            "several names fill the same field; used "
            + ", ".join(f"{n} for {f}" for n, f in chosen.items())
            + "; not used: "
            + ", ".join(sorted(duplicates))
        )
    run = Run(
        train=[train[s] for s in sorted(train)],
        eval=[evals[s] for s in sorted(evals)],
        meta=dict(meta or {}),
        unit=unit,
        source=source,
        warnings=warnings,
        path=path,
    )
    return run


# --------------------------------------------------------------------------------------------
# readers


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise MetricsError(f"{path} is not a UTF-8 text file; expected a training log (see docs/diagnose.md)") from None


def _index(value: Any) -> int | None:
    number = _number(value)
    if number is None or not math.isfinite(number) or number < 0:
        return None
    return int(round(number))


def read_csv(path: Path, source: str = "csv", meta: dict[str, Any] | None = None) -> Run:
    """Keras CSVLogger, Lightning metrics.csv, or any CSV with a step or epoch column."""
    text = _read_text(path)
    reader = csv.DictReader(io.StringIO(text))
    columns = [c for c in (reader.fieldnames or []) if c is not None]
    lowered = {c.lower().strip(): c for c in columns}
    step_col = next((lowered[c] for c in STEP_COLUMNS if c in lowered), None)
    epoch_col = next((lowered[c] for c in EPOCH_COLUMNS if c in lowered), None)
    if step_col is None and epoch_col is None:
        raise MetricsError(
            f"{path}: a CSV log needs a step (or iteration/global_step) or an epoch column; its columns are {', '.join(columns) or 'none'}"
        )
    index_col, unit = (step_col, "step") if step_col is not None else (epoch_col, "epoch")
    rows, skipped = [], 0
    for number, row in enumerate(reader, start=2):
        at = _index(row.get(index_col))
        values = {c: v for c, v in ((c, _number(row.get(c))) for c in columns if c not in (step_col, epoch_col)) if v is not None}
        if at is None:
            if values:
                raise MetricsError(f"{path}:{number}: values {', '.join(values)} have no {index_col}; every row needs its {unit}")
            skipped += 1
            continue
        if values:
            rows.append((at, values))
    run = build_run(rows, unit=unit, source=source, path=str(path), meta=meta)
    return run


def read_keras_history(path: Path, data: dict[str, Any]) -> Run:
    lengths = {len(v) for v in data.values()}
    if len(lengths) != 1:
        raise MetricsError(
            f"{path}: a Keras history maps each metric to one value per epoch; the lists have different lengths {sorted(lengths)}"
        )
    rows = [(epoch, {k: float(v[epoch]) for k, v in data.items() if _number(v[epoch]) is not None}) for epoch in range(lengths.pop())]
    return build_run(rows, unit="epoch", source="keras-history", path=str(path))


def _hf_meta(directory: Path) -> dict[str, Any]:
    """num_classes from a config.json beside trainer_state.json (or one level up): the label
    count of a classifier, the vocabulary of a language model."""
    for folder in (directory, directory.parent):
        config = folder / "config.json"
        if config.is_file():
            try:
                cfg = json.loads(config.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                return {}
            heads = " ".join(cfg.get("architectures") or [])
            if "Classification" in heads and (cfg.get("id2label") or cfg.get("num_labels")):
                return {"num_classes": len(cfg["id2label"]) if cfg.get("id2label") else int(cfg["num_labels"])}
            if re.search(r"LMHead|CausalLM|MaskedLM", heads) and cfg.get("vocab_size"):
                return {"vocab_size": int(cfg["vocab_size"])}
    return {}


def read_trainer_state(path: Path, data: dict[str, Any]) -> Run:
    history = data.get("log_history")
    if not isinstance(history, list):
        raise MetricsError(f"{path}: trainer_state.json without a log_history list")
    rows, summary = [], {}
    for number, entry in enumerate(history):
        if not isinstance(entry, dict):
            continue
        if "train_runtime" in entry:  # the end-of-training summary: its train_loss is a mean over the run
            summary = entry
            continue
        at = _index(entry.get("step"))
        values = {k: float(v) for k, v in entry.items() if k not in ("step", "epoch") and _number(v) is not None}
        if at is None:
            raise MetricsError(f"{path}: log_history[{number}] has no step; values {', '.join(values)} cannot be placed")
        rows.append((at, values))
    meta = _hf_meta(path.parent)
    if data.get("max_steps"):
        meta["total_steps"] = int(data["max_steps"])
    run = build_run(rows, unit="step", source="hf-trainer-state", path=str(path), meta=meta)
    if summary:
        run.meta["summary"] = {k: v for k, v in summary.items() if _number(v) is not None}
    return run


def _event_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and "tfevents" in p.name)


def read_tensorboard(path: Path) -> Run:
    """Scalars of every event file at or below ``path`` (a file or a run directory); a tag in a
    subdirectory is named ``subdir/tag`` (Keras writes train/ and validation/ beside each other)."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        from tensorboard.util import tensor_util
    except ImportError:
        raise MetricsError("reading TensorBoard logs needs the tensorboard package: pip install 'dlzoo[tensorboard]'") from None
    files = _event_files(path)
    if not files:
        raise MetricsError(f"{path}: no TensorBoard event files (events.out.tfevents.*) found")
    root = path if path.is_dir() else path.parent
    per_step: dict[int, dict[str, float]] = {}
    collected: list[tuple[str, str, list[tuple[int, float]]]] = []
    for file in files:
        accumulator = EventAccumulator(str(file), size_guidance={"scalars": 0, "tensors": 0})
        try:
            accumulator.Reload()
        except Exception as error:  # a truncated or foreign file: one clear line
            raise MetricsError(f"{file}: not a readable TensorBoard event file ({type(error).__name__})") from None
        prefix = file.parent.relative_to(root).as_posix()
        tags = accumulator.Tags()
        series = [(tag, [(e.step, e.value) for e in accumulator.Scalars(tag)]) for tag in tags.get("scalars", [])]
        for tag in tags.get("tensors", []):  # TF2 summaries (tf.summary.scalar, Keras' callback)
            points = []
            for event in accumulator.Tensors(tag):
                array = tensor_util.make_ndarray(event.tensor_proto)
                if array.size == 1 and array.dtype.kind in "fiu":
                    points.append((event.step, float(array.reshape(()))))
            if points:
                series.append((tag, points))
        collected.extend((f"{prefix}/{tag}" if prefix not in ("", ".") else tag, tag, points) for tag, points in series)
    # Keras' callback writes per-epoch tags (epoch_loss, ...) and, in validation/, the same values
    # against the iteration count (evaluation_loss_vs_iterations): two units in one directory.
    epochs = any(tag.startswith("epoch_") for _, tag, _ in collected)
    skipped = []
    for name, tag, points in collected:
        if epochs and not tag.startswith("epoch_"):
            skipped.append(name)
            continue
        for step, value in points:
            per_step.setdefault(int(step), {})[name] = value
    run = build_run(sorted(per_step.items()), unit="epoch" if epochs else "step", source="tensorboard", path=str(path))
    if skipped:
        run.warnings.append(f"not used: {', '.join(sorted(skipped))} (counted in iterations, while the other tags count epochs)")
    return run


def read_jsonl(path: Path, text: str) -> Run:
    """dlzoo's metrics.jsonl, or JSON lines from another logger (names mapped by ``canonical``;
    lines without step use epoch)."""
    lines = text.splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise MetricsError(
                f"{path}:{number} is not a JSON object ({error.msg}); each line must be one JSON object, see docs/metrics.md"
            ) from None
        records.append((number, record))
    dlzoo = any(isinstance(r, dict) and ("type" in r or "step" in r and "loss" in r) for _, r in records)
    if dlzoo or not records:
        run = parse_lines(lines, name=str(path))
        run.path = str(path)
        return run
    rows, unit = [], None
    for number, record in records:
        if not isinstance(record, dict):
            raise MetricsError(f"{path}:{number} is a JSON {type(record).__name__}, expected an object")
        key = next((k for k in STEP_COLUMNS if k in record), None)
        this = "step"
        if key is None:
            key, this = next((k for k in EPOCH_COLUMNS if k in record), None), "epoch"
        values = {k: float(v) for k, v in record.items() if k != key and _number(v) is not None and not isinstance(v, str)}
        if key is None or _index(record[key]) is None:
            raise MetricsError(f"{path}:{number}: values {', '.join(values) or 'none'} have no step or epoch; every line needs one")
        if unit is not None and this != unit:
            raise MetricsError(f"{path}:{number} counts in {this}s while earlier lines count in {unit}s")
        unit = this
        rows.append((_index(record[key]), values))
    return build_run(rows, unit=unit or "step", source="jsonl", path=str(path))


# --------------------------------------------------------------------------------------------
# detection


def _log_file_in(directory: Path) -> tuple[Path, str] | None:
    for name, fmt in (("metrics.jsonl", "dlzoo-jsonl"), ("metrics.csv", "lightning-csv"), ("trainer_state.json", "hf-trainer-state")):
        if (directory / name).is_file():
            return directory / name, fmt
    checkpoints = sorted(directory.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(re.sub(r"\D", "", p.parent.name) or 0))
    if checkpoints:
        return checkpoints[-1], "hf-trainer-state"
    if _event_files(directory):
        return directory, "tensorboard"
    return None


def detect(path: str | os.PathLike) -> tuple[Path, str]:
    """The file to read and its format, from the path and the start of the file."""
    path = Path(path)
    if not path.exists():
        raise MetricsError(
            f"training log {path} does not exist; pass a metrics.jsonl, a CSV/JSON log, a trainer_state.json or a TensorBoard run directory"
        )
    if path.is_dir():
        found = _log_file_in(path)
        if found is None:
            raise MetricsError(
                f"{path} is a directory without a training log (metrics.jsonl, metrics.csv, "
                "trainer_state.json, checkpoint-*/trainer_state.json or TensorBoard event files)"
            )
        return found
    if "tfevents" in path.name:
        return path, "tensorboard"
    with path.open("rb") as file:
        head = file.read(4096)
    if b"\x00" in head:
        raise MetricsError(
            f"{path} is a binary file; expected a training log (see docs/diagnose.md), or a "
            "TensorBoard event file named events.out.tfevents.*"
        )
    stripped = head.decode("utf-8", errors="ignore").lstrip()  # the cut may split a character
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return path, "jsonl"
    if stripped.startswith("{"):
        try:  # one JSON document, or JSON lines (which do not parse as one document unless single)
            data = json.loads(_read_text(path))
        except json.JSONDecodeError:
            return path, "jsonl"
        if isinstance(data, dict) and "log_history" in data:
            return path, "hf-trainer-state"
        if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
            return path, "keras-history"
        if path.suffix == ".json":
            raise MetricsError(
                f"{path} is a JSON document that is neither a trainer_state.json (log_history) "
                "nor a Keras history (metric -> list of per-epoch values)"
            )
        return path, "jsonl"
    header = [c.strip().lower() for c in stripped.splitlines()[0].split(",")] if stripped else []
    if len(header) > 1:
        if "epoch" in header and "step" in header:
            return path, "lightning-csv"
        if header[0] == "epoch" and not set(STEP_COLUMNS) & set(header):
            return path, "keras-csv"
        return path, "csv"
    if not stripped:
        return path, "dlzoo-jsonl"  # an empty file: the jsonl reader says it has no training lines
    raise MetricsError(
        f"{path}: not a recognised training log (JSON lines, CSV with a header, JSON, or TensorBoard events); name the format with --format"
    )


def _json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as error:
        raise MetricsError(f"{path} is not valid JSON ({error.msg} at line {error.lineno})") from None


def read_log(path: str | os.PathLike, format: str | None = None, num_classes: int | None = None) -> Run:
    """Read a training log (see the module docstring); ``format`` skips detection;
    ``num_classes`` supplies C (for ln C) when the log does not say it. Raises MetricsError."""
    if format is not None and format not in FORMATS:
        raise MetricsError(f"unknown log format {format!r}; expected one of {', '.join(FORMATS)}")
    given = Path(path)
    if format is None:
        file, format = detect(given)
    else:
        if not given.exists():
            raise MetricsError(f"training log {given} does not exist")
        file = given
        if given.is_dir() and format != "tensorboard":
            found = _log_file_in(given)
            if found is None:
                raise MetricsError(f"{given} is a directory without a {format} log")
            file = found[0]
    if format == "tensorboard":
        run = read_tensorboard(file)
    elif format in ("dlzoo-jsonl", "jsonl"):
        run = read_jsonl(file, _read_text(file))
    elif format in ("keras-csv", "lightning-csv", "csv"):
        meta = _lightning_meta(file.parent) if format == "lightning-csv" else None
        run = read_csv(file, source=format, meta=meta)
    elif format == "keras-history":
        data = _json(file)
        if not isinstance(data, dict):
            raise MetricsError(f"{file}: a Keras history is a JSON object mapping metrics to lists")
        run = read_keras_history(file, data)
    else:
        data = _json(file)
        if not isinstance(data, dict):
            raise MetricsError(f"{file}: trainer_state.json must be a JSON object")
        run = read_trainer_state(file, data)
    if num_classes is not None:
        if num_classes < 2:
            raise MetricsError(f"num_classes must be at least 2, got {num_classes}")
        run.meta["num_classes"] = int(num_classes)
    if run.unit == "epoch" and "val_loss" not in {k for r in run.eval for k in r} and len(run.train) < 6:
        run.warnings.append(f"only {len(run.train)} epochs: too few for most detectors")
    _check_eval_fields(run)
    return run


def _check_eval_fields(run: Run) -> None:
    """Evaluation values that no detector reads are named in the warnings."""
    extra = sorted({k for r in run.eval for k in r if k not in ("type", "step", *EVAL_FIELDS) and not BOOKKEEPING.search(k.lower())})
    if extra and not any(w.startswith("not analysed") for w in run.warnings):
        run.warnings.append("not analysed (kept in the run): " + ", ".join(extra[:12]))


def _lightning_meta(directory: Path) -> dict[str, Any]:
    """num_classes / vocab_size from Lightning's hparams.yaml (top-level keys only)."""
    hparams = directory / "hparams.yaml"
    if not hparams.is_file():
        return {}
    meta = {}
    for line in hparams.read_text(encoding="utf-8", errors="replace").splitlines():
        match = re.match(r"^(num_classes|vocab_size|total_steps|warmup_steps):\s*(\d+)\s*$", line)
        if match:
            meta[match.group(1)] = int(match.group(2))
    return meta
