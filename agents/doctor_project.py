"""`dlzoo doctor PROJECT`: pre-flight checks on a generated project's own model, training step
and data, before a long run.

The project is self-contained and never imports dlzoo; doctor imports the project's package
(``PKG.config``, ``PKG.data``, ``PKG.train``, ``PKG.engine``) from its folder and uses the same
entry points its training loop does, so what is checked is what will train: its config
(defaults, or a run's resolved ``config.toml``, or ``--config FILE``), its data pipeline and its
framework's ``Engine``.

Checks (thresholds and what a failure means: docs/diagnose.md, "doctor PROJECT"):
labels-not-constant, inputs-normalised, splits-disjoint, initial-loss, every-parameter-updates,
eval-deterministic, overfit-one-batch, model-copy-unmodified, and for text projects
no-causal-leak / no-padding-leak.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..zoo.configs import ZooError
from .diagnose import INIT_TOLERANCE
from .doctor import Check, OVERFIT_TARGET

MAJORITY_SHARE = 0.95
OVERFIT_LM_ROWS = 4  # rows of a language model's batch the overfit check trains on


def find_project_root(path: str | Path) -> tuple[Path, dict[str, Any], Path | None]:
    """(project root, its .dlzoo.json, a run's config.toml or None) for a project folder, a run
    folder inside it, or a file inside a run folder."""
    path = Path(path).resolve()
    start = path if path.is_dir() else path.parent
    run_config = start / "config.toml" if (start / "config.toml").is_file() else None
    for folder in [start, *list(start.parents)[:4]]:
        marker = folder / ".dlzoo.json"
        if marker.is_file():
            try:
                provenance = json.loads(marker.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise ZooError(f"{marker} is not valid JSON ({error}); was it edited?") from None
            if not isinstance(provenance, dict) or not provenance.get("package"):
                raise ZooError(f"{marker} has no package name; expected the provenance file `dlzoo new` writes")
            return folder, provenance, run_config if folder != start else None
    raise ZooError(
        f"{path} is not inside a dlzoo-generated project (no .dlzoo.json in it or above it); "
        "`dlzoo doctor ARCH -f FRAMEWORK` checks a zoo model instead"
    )


@contextlib.contextmanager
def _importable(root: Path, package: str):
    """Import the project's package from ``root`` (and forget it afterwards)."""
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module(package)
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
            del sys.modules[name]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _copies(root: Path, provenance: dict[str, Any]) -> Check:
    copied = provenance.get("copied") or {}
    changed = sorted(name for name, entry in copied.items() if not (root / name).is_file() or _sha256(root / name) != entry.get("sha256"))
    return Check(
        "model-copy-unmodified",
        not changed if copied else None,
        {"files": len(copied), "changed": changed},
        "the copied zoo code was edited since `dlzoo new`: the zoo's conformance, causal and padding "
        "tests no longer cover it; run the project's own tests",
    )


def _labels(dataset, num_classes: int) -> Check:
    y = np.asarray(dataset.train.y)
    counts = np.bincount(y, minlength=num_classes) if len(y) else np.zeros(num_classes, int)
    share = float(counts.max() / max(len(y), 1))
    missing = [int(c) for c in np.flatnonzero(counts[:num_classes] == 0)]
    ok = len(y) > 0 and int((counts > 0).sum()) >= 2 and share < MAJORITY_SHARE and not missing
    return Check(
        "labels-not-constant",
        bool(ok),
        {
            "train_examples": int(len(y)),
            "classes_present": int((counts > 0).sum()),
            "num_classes": num_classes,
            "largest_class_share": round(share, 4),
            "classes_missing": missing[:20],
        },
        "the training labels are (nearly) constant or classes are missing: labels read wrong (one "
        "folder, a constant column) or model.num_classes does not match the data",
    )


def _normalised(dataset) -> Check:
    def stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = dataset.normalize(x).reshape(-1, x.shape[-1]).astype(np.float64)
        return z.mean(axis=0), z.std(axis=0)

    tm, ts = stats(dataset.train.x)
    vm, vs = stats(dataset.val.x)
    ok = (
        np.all(np.abs(tm) <= 0.1) and np.all((ts >= 0.5) & (ts <= 2.0)) and np.all(np.abs(vm) <= 0.5) and np.all((vs >= 0.25) & (vs <= 4.0))
    )
    r = lambda a: [round(float(v), 4) for v in a]  # noqa: E731
    return Check(
        "inputs-normalised",
        bool(ok),
        {"train_mean": r(tm), "train_std": r(ts), "val_mean": r(vm), "val_std": r(vs)},
        "inputs are not standardised (mean 0, std 1 per channel from the training split): "
        "normalisation missing, applied twice, or computed on another split",
    )


def _disjoint(dataset, field: str = "x", what: str = "images") -> Check:
    def digests(x: np.ndarray) -> set[bytes]:
        return {hashlib.blake2b(np.ascontiguousarray(row).tobytes(), digest_size=16).digest() for row in x}

    train = digests(getattr(dataset.train, field))
    shared_val = len(train & digests(getattr(dataset.val, field)))
    shared_test = len(train & digests(getattr(dataset.test, field)))
    return Check(
        "splits-disjoint",
        shared_val == 0 and shared_test == 0,
        {f"train_{what}_also_in_val": shared_val, f"train_{what}_also_in_test": shared_test},
        f"training {what} reappear in validation or test: the measured accuracy is inflated "
        "(duplicates in the source, or a split that is not a partition)",
    )


def _num_classes(cfg) -> int:
    """Classes of the loss: the classifier's classes, else (language models) the vocabulary."""
    return getattr(cfg.model, "num_classes", None) or cfg.model.vocab_size


def _data_checks(cfg, dataset, provenance: dict[str, Any]) -> list[Check]:
    """Image projects: labels, normalisation, disjoint splits. Text classifiers: labels and
    disjoint splits of the token rows; token ids need no normalisation. Language models (GPT,
    masked LM) split whole documents and have no labels of their own: not applicable."""
    if provenance.get("arch") not in ("gpt", "bert"):
        return [_labels(dataset, cfg.model.num_classes), _normalised(dataset), _disjoint(dataset)]
    tokens = {"reason": "token ids: nothing to standardise"}
    normalised = Check("inputs-normalised", None, tokens, "inputs are not standardised")
    if provenance.get("task") == "classify":
        return [_labels(dataset, cfg.model.num_classes), normalised, _disjoint(dataset, "ids", "texts")]
    lm = {"reason": "language model: the targets are the text itself, split by whole documents"}
    return [
        Check("labels-not-constant", None, lm, "the training labels are (nearly) constant"),
        normalised,
        Check("splits-disjoint", None, lm, "training texts reappear in validation or test"),
    ]


def _model_checks(project, cfg, dataset, steps: int) -> list[Check]:
    from importlib import import_module

    engine_module = import_module(f"{project}.engine")
    data = import_module(f"{project}.data")
    if hasattr(cfg.model, "vocab_size"):  # text projects' loaders have no augmentation
        loader = data.Loader(dataset.train, dataset, cfg.train.batch_size, seed=cfg.seed)
    else:
        loader = data.Loader(dataset.train, dataset, cfg.train.batch_size, seed=cfg.seed, augment=False, max_shift=0)
    batch = loader.batch(0, 0)
    if hasattr(cfg.model, "context_length"):
        # A language model's batch holds batch_size x seq_len targets (2048 by default), more than
        # a tiny model memorises in overfit_steps; four rows are still one fixed batch to overfit.
        batch = {k: v[:OVERFIT_LM_ROWS] for k, v in batch.items()}
    engine = engine_module.Engine(cfg, cfg.model, total_steps=steps)
    num_classes = _num_classes(cfg)
    first = engine.eval_step(batch)
    loss0 = float(first["loss_sum"]) / int(first["count"])
    expected = math.log(num_classes)
    tolerance = max(INIT_TOLERANCE[0] * expected, INIT_TOLERANCE[1])
    checks = [
        Check(
            "initial-loss",
            bool(abs(loss0 - expected) <= tolerance),
            {"loss": round(loss0, 4), "expected_ln_classes": round(expected, 4), "tolerance": round(tolerance, 4)},
            "far above ln C: the initial logits are too large (output layer init); far below: labels leak into the inputs",
        )
    ]
    again = engine.eval_step(batch)
    checks.append(
        Check(
            "eval-deterministic",
            float(again["loss_sum"]) == float(first["loss_sum"]),
            {"loss_sum": [float(first["loss_sum"]), float(again["loss_sum"])]},
            "evaluation is random: dropout or batch statistics are active in eval mode",
        )
    )
    before = {k: np.array(v, copy=True) for k, v in engine.model_state().items()}
    losses = [engine.train_step(batch)["loss"]]
    after = engine.model_state()
    frozen = sorted(k for k, v in before.items() if np.array_equal(v, after[k]))
    checks.append(
        Check(
            "every-parameter-updates",
            not frozen,
            {"tensors": len(before), "unchanged_after_one_step": frozen[:20]},
            "these tensors did not change in a training step: they get no gradient (cut from the loss) or are frozen by mistake",
        )
    )
    for _ in range(steps - 1):
        losses.append(engine.train_step(batch)["loss"])
    final = engine.eval_step(batch)
    accuracy = int(final["correct"]) / int(final["count"])
    final_loss = float(final["loss_sum"]) / int(final["count"])
    ok = accuracy == 1.0 or final_loss <= OVERFIT_TARGET * loss0
    checks.append(
        Check(
            "overfit-one-batch",
            bool(ok),
            {
                "steps": steps,
                "batch": int(final["count"]),
                "loss_start": round(loss0, 4),
                "loss_end": round(final_loss, 4),
                "batch_accuracy": round(accuracy, 4),
                "lr": cfg.optim.lr,
            },
            "the model cannot fit one fixed batch: the loss, the labels, the optimizer wiring or the learning rate is wrong",
        )
    )
    return checks


LEAK_LENGTH = 16  # tokens per row of the leak checks' batch


def _text_checks(package: str, cfg, provenance: dict[str, Any]) -> list[Check]:
    """Causal and padding leaks, on the project's own model through its Engine (so an edit of the
    copied model code that drops a mask is caught): a language model's ``Engine.logits`` at the
    first half of the positions must not change when the second half's tokens do (no-causal-leak)
    nor, with left padding, when the padded tokens' ids do (no-padding-leak); a classifier's
    ``Engine.predict`` must not change when right-padded tokens' ids do. A masked-LM project
    exposes no per-token outputs: it is checked on the zoo model with its config (the copy is
    the zoo file, as model-copy-unmodified confirms). Image projects: not applicable."""
    from .doctor import INVARIANCE_TOL

    arch, task = provenance.get("arch"), provenance.get("task")
    causal_meaning = (
        "earlier positions see later tokens: the causal mask is missing or wrong, so the training "
        "loss is misleadingly low and generation fails"
    )
    padding_meaning = "real tokens attend to padding: the attention mask is not applied, so outputs depend on how much padding a batch has"
    if arch not in ("gpt", "bert"):
        reason = {"reason": f"{arch} image classifier: no token sequence, no mask"}
        return [Check("no-causal-leak", None, reason, causal_meaning), Check("no-padding-leak", None, reason, padding_meaning)]
    if arch == "bert" and task != "classify":
        return _zoo_text_checks(provenance, causal_meaning, padding_meaning)
    engine = importlib.import_module(f"{package}.engine").Engine(cfg, cfg.model, total_steps=1)
    rng = np.random.default_rng(0)
    limit = cfg.model.context_length if arch == "gpt" else cfg.model.max_positions
    length = min(LEAK_LENGTH, limit)
    ids = rng.integers(0, cfg.model.vocab_size, size=(2, length)).astype(np.int32)
    ones = np.ones_like(ids)
    pad = length // 4

    def changed(columns: slice) -> np.ndarray:
        out = ids.copy()
        out[:, columns] = (
            out[:, columns] + 1 + rng.integers(0, cfg.model.vocab_size - 1, size=out[:, columns].shape)
        ) % cfg.model.vocab_size
        return out

    def difference(forward, a: np.ndarray, b: np.ndarray, mask: np.ndarray, keep: slice) -> float:
        return float(np.abs(np.asarray(forward(a, mask))[:, keep] - np.asarray(forward(b, mask))[:, keep]).max())

    if arch == "gpt":
        cut = length // 2
        causal_diff = difference(engine.logits, ids, changed(slice(cut, None)), ones, slice(0, cut))
        causal = Check(
            "no-causal-leak",
            causal_diff <= INVARIANCE_TOL,
            {"positions_checked": cut, "max_abs_diff": causal_diff, "tolerance": INVARIANCE_TOL, "model": "project"},
            causal_meaning,
        )
        left = ones.copy()
        left[:, :pad] = 0  # left padding, as batched generation pads
        pad_diff = difference(engine.logits, ids, changed(slice(0, pad)), left, slice(pad, None))
    else:
        causal = Check("no-causal-leak", None, {"reason": "bidirectional encoder: every token may see every other"}, causal_meaning)
        right = ones.copy()
        right[:, length - pad :] = 0
        pad_diff = difference(engine.predict, ids, changed(slice(length - pad, None)), right, slice(None))
    padding = Check(
        "no-padding-leak",
        pad_diff <= INVARIANCE_TOL,
        {"padded_positions": pad, "max_abs_diff": pad_diff, "tolerance": INVARIANCE_TOL, "model": "project"},
        padding_meaning,
    )
    return [causal, padding]


def _zoo_text_checks(provenance: dict[str, Any], causal_meaning: str, padding_meaning: str) -> list[Check]:
    from ..zoo import load
    from ..zoo.configs import get_config
    from .doctor import _padding, _Task

    config = get_config("bert", "tiny", **(provenance.get("model_config") or {}))
    handle = load("bert", provenance.get("framework"), config, seed=0)
    rng = np.random.default_rng(0)
    zoo = _padding(_Task("bert", config, rng), handle, rng, config)
    return [
        Check("no-causal-leak", None, {"reason": "bidirectional encoder: every token may see every other"}, causal_meaning),
        Check("no-padding-leak", zoo.passed, {**zoo.numbers, "model": "zoo"}, padding_meaning),
    ]


def run_project_checks(path: str | Path, *, config: str | Path | None = None, overfit_steps: int | None = None) -> dict[str, Any]:
    """Every check on the project at (or above) ``path``; returns the --json report:
    {"project", "package", "arch", "framework", "config", "passed", "checks": [...]}. Raises
    ZooError when ``path`` is not a project or the project's config/data are refused by the
    project itself (its UserError, re-raised with the same message)."""
    root, provenance, run_config = find_project_root(path)
    package = provenance["package"]
    config_path = Path(config) if config is not None else run_config
    checks: list[Check] = [_copies(root, provenance)]
    with _importable(root, package):
        cfg_module = importlib.import_module(f"{package}.config")
        train = importlib.import_module(f"{package}.train")
        try:
            cfg = cfg_module.load_config(config_path)
            dataset = train.prepare(cfg)
        except cfg_module.UserError as error:
            raise ZooError(f"{root.name}: {error}") from None
        checks += _data_checks(cfg, dataset, provenance)
        steps = overfit_steps or cfg.train.overfit_steps
        try:
            checks += _model_checks(package, cfg, dataset, steps)
        except cfg_module.UserError as error:
            raise ZooError(f"{root.name}: {error}") from None
        checks += _text_checks(package, cfg, provenance)
    return {
        "project": str(root),
        "package": package,
        "arch": provenance.get("arch"),
        "framework": provenance.get("framework"),
        "config": str(config_path) if config_path else "defaults",
        "passed": all(c.passed is not False for c in checks),
        "checks": [c.to_dict() for c in checks],
    }
