"""Training metrics as JSON lines: a framework-free logger and a validating reader.

One JSON object per line (the format is documented in docs/metrics.md):

    {"type": "meta", "num_classes": 256, "total_steps": 1000, "warmup_steps": 100}
    {"type": "train", "step": 0, "loss": 5.54, "lr": 0.0, "grad_norm": 1.9, "grad_norms": {...}}
    {"type": "eval", "step": 100, "val_loss": 2.31, "val_accuracy": 0.42}

Non-finite numbers are written the way Python's json module writes them (NaN, Infinity,
-Infinity), because a diverged run is exactly when they matter. The logger appends and flushes
after every line, so a crashed run leaves a readable file.

    >>> from dlzoo.agents.metrics import MetricsLogger
    >>> with MetricsLogger("metrics.jsonl", num_classes=10) as log:      # doctest: +SKIP
    ...     log.log(step=0, loss=2.30, lr=1e-3, grad_norm=0.8)
    ...     log.log_eval(step=0, val_loss=2.31, val_accuracy=0.1)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

from ..zoo.configs import ZooError

TRAIN_FIELDS = ("loss", "lr", "grad_norm", "throughput")
EVAL_FIELDS = ("val_loss", "val_accuracy")
EVAL_PREFIXES = ("val_", "eval_", "validation_")
META_FIELDS = ("num_classes", "vocab_size", "total_steps", "warmup_steps", "batch_size", "arch", "framework")


class MetricsError(ZooError):
    """A metrics file that cannot be read; the message names the file and line."""


def _number(value: Any) -> float:
    """Python float from any real scalar (numpy, torch and jax 0-d arrays included)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Real):
        raise MetricsError(f"metric values must be real numbers, got {type(value).__name__} {value!r}")
    return float(value)


class MetricsLogger:
    """Appends metrics lines to ``path``; ``**meta`` (num_classes, vocab_size, total_steps,
    warmup_steps, ...) is written once as a meta line so ``dlzoo diagnose`` can compare the first
    loss with ln(num_classes) and locate the warmup."""

    def __init__(self, path: str | os.PathLike, **meta: Any):
        self.path = os.fspath(path)
        self._file = open(self.path, "a", encoding="utf-8")
        if meta:
            self._write({"type": "meta", **meta})

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, allow_nan=True) + "\n")
        self._file.flush()

    def log(
        self,
        *,
        step: int,
        loss: float,
        lr: float | None = None,
        grad_norm: float | None = None,
        grad_norms: dict[str, float] | None = None,
        throughput: float | None = None,
        **extra: Any,
    ) -> None:
        """One training step. ``grad_norms`` maps layer (or parameter) names to gradient norms;
        ``throughput`` is examples (or tokens) per second; ``extra`` numbers are kept as is."""
        record: dict[str, Any] = {"type": "train", "step": int(step), "loss": _number(loss)}
        for name, value in (("lr", lr), ("grad_norm", grad_norm), ("throughput", throughput)):
            if value is not None:
                record[name] = _number(value)
        if grad_norms:
            record["grad_norms"] = {str(k): _number(v) for k, v in grad_norms.items()}
        record.update({k: _number(v) for k, v in extra.items()})
        self._write(record)

    def log_eval(self, *, step: int, val_loss: float | None = None, val_accuracy: float | None = None, **extra: Any) -> None:
        """One evaluation: validation loss and/or accuracy at training step ``step``."""
        if val_loss is None and val_accuracy is None and not extra:
            raise MetricsError("log_eval needs val_loss, val_accuracy or another metric")
        record: dict[str, Any] = {"type": "eval", "step": int(step)}
        for name, value in (("val_loss", val_loss), ("val_accuracy", val_accuracy)):
            if value is not None:
                record[name] = _number(value)
        record.update({k: _number(v) for k, v in extra.items()})
        self._write(record)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Run:
    """A metrics file, parsed: train and eval records sorted by step, and the meta fields."""

    train: list[dict[str, Any]] = field(default_factory=list)
    eval: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    unit: str = "step"  # what "step" counts: optimizer steps, or epochs for epoch-level logs
    source: str = "dlzoo-jsonl"  # the format it was read from (logformats.FORMATS)
    warnings: list[str] = field(default_factory=list)  # values read but not analysed, and why
    path: str = ""  # the file (or directory) it was read from

    def series(self, name: str) -> tuple[list[int], list[float]]:
        """Steps and values of a train metric, for the records that have it."""
        rows = [r for r in self.train if name in r]
        return [r["step"] for r in rows], [r[name] for r in rows]

    def eval_series(self, name: str) -> tuple[list[int], list[float]]:
        rows = [r for r in self.eval if name in r]
        return [r["step"] for r in rows], [r[name] for r in rows]

    @property
    def num_classes(self) -> int | None:
        """Classes (or vocabulary size) the loss is over, when the meta line gives it."""
        value = self.meta.get("num_classes") or self.meta.get("vocab_size")
        return int(value) if value else None


def _kind(record: dict[str, Any]) -> str:
    kind = record.get("type")
    if kind is None:  # tolerate loggers that omit "type": infer it from the fields present
        if "step" not in record and any(k in record for k in META_FIELDS):
            return "meta"
        return "eval" if any(k in record for k in EVAL_FIELDS) and "loss" not in record else "train"
    return kind


def parse_lines(lines, name: str = "<metrics>") -> Run:
    """Parse and validate metrics lines; raises MetricsError naming the first bad line."""
    run = Run()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{name}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise MetricsError(
                f"{where} is not a JSON object ({error.msg}); each line must be one JSON object, see docs/metrics.md"
            ) from None
        if not isinstance(record, dict):
            raise MetricsError(f"{where} is a JSON {type(record).__name__}, expected an object with step and loss (see docs/metrics.md)")
        kind = _kind(record)
        if kind == "meta":
            run.meta.update({k: v for k, v in record.items() if k != "type"})
            continue
        if kind not in ("train", "eval"):
            raise MetricsError(f"{where} has type {kind!r}; expected 'train', 'eval' or 'meta'")
        step = record.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise MetricsError(f"{where} needs an integer step >= 0, got {step!r}")
        required = ("loss",) if kind == "train" else ()
        for key in required:
            if key not in record:
                raise MetricsError(f"{where} is a train line without 'loss'; train lines need step and loss")
        if kind == "eval" and not any(k in record for k in EVAL_FIELDS):
            raise MetricsError(f"{where} is an eval line without val_loss or val_accuracy")
        for key in TRAIN_FIELDS + EVAL_FIELDS:
            if key in record and (isinstance(record[key], bool) or not isinstance(record[key], (int, float))):
                raise MetricsError(f"{where}: {key} must be a number, got {record[key]!r}")
            if key in record:
                record[key] = float(record[key])
        norms = record.get("grad_norms")
        if norms is not None and (
            not isinstance(norms, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in norms.values())
        ):
            raise MetricsError(f"{where}: grad_norms must be an object mapping layer names to numbers")
        if kind == "train":
            # A train line may carry the step's evaluation too: it becomes an eval record at the
            # same step, so validation values are analysed, never dropped.
            evaluated = {k: record.pop(k) for k in list(record) if k in EVAL_FIELDS or k.startswith(EVAL_PREFIXES)}
            if evaluated:
                run.eval.append({"type": "eval", "step": step, **evaluated})
        (run.train if kind == "train" else run.eval).append(record)
    if not run.train:
        raise MetricsError(f"{name} has no training lines; expected JSON lines with at least step and loss (see docs/metrics.md)")
    run.train.sort(key=lambda r: r["step"])
    run.eval.sort(key=lambda r: r["step"])
    return run


def read_metrics(path: str | os.PathLike) -> Run:
    """Read and validate a metrics file (see docs/metrics.md)."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as file:
            run = parse_lines(file, name=path)
        run.path = path
        return run
    except FileNotFoundError:
        raise MetricsError(f"metrics file {path} does not exist; pass the metrics.jsonl written by training") from None
    except IsADirectoryError:
        raise MetricsError(f"{path} is a directory; pass the metrics.jsonl file inside it") from None
    except UnicodeDecodeError:
        raise MetricsError(f"{path} is not a UTF-8 text file; expected JSON lines (see docs/metrics.md)") from None
