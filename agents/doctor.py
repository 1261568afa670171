"""Pre-flight checks on a zoo model, through the framework-neutral handle.

Before spending hours on a run, a few cheap experiments catch most wiring bugs (the list follows
the usual "recipe" for training networks: check the loss at init, overfit one batch, look at the
gradients). Every check works in every framework because it only uses ``Handle.apply``,
``Handle.vjp`` and the canonical state dict; losses and their gradients with respect to the
outputs are computed here in numpy.

    >>> from dlzoo.agents.doctor import run_checks
    >>> report = run_checks("gpt", "torch", "tiny")                     # doctest: +SKIP
    >>> [(c.name, c.passed) for c in report.checks]                    # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..zoo.configs import get_config
from .diagnose import INIT_TOLERANCE  # one rule for the loss at initialisation

OVERFIT_STEPS = 60
OVERFIT_LR = 3e-3
OVERFIT_TARGET = 0.2  # the loss must fall below 20% of its initial value
INVARIANCE_TOL = 1e-5
ACTIVATION_RATIO = 100.0  # max / min RMS of block outputs across depth


@dataclass
class Check:
    name: str
    passed: bool | None  # None: not applicable to this model or framework
    numbers: dict[str, Any]
    meaning: str  # what a failure means

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "numbers": self.numbers, "meaning": self.meaning}


@dataclass
class Report:
    arch: str
    framework: str
    preset: str
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed is not False for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "framework": self.framework,
            "preset": self.preset,
            "passed": self.passed,
            "checks": [c.to_dict() for c in self.checks],
        }


def _softmax_xent(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> tuple[float, np.ndarray]:
    """Weighted mean cross-entropy over the last axis and its gradient w.r.t. the logits."""
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    picked = np.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
    total = weights.sum()
    loss = float(-(picked * weights).sum() / total)
    grad = np.exp(logp)
    np.put_along_axis(grad, labels[..., None], np.take_along_axis(grad, labels[..., None], -1) - 1, axis=-1)
    return loss, (grad * (weights / total)[..., None]).astype(np.float32)


class _Task:
    """A small fixed batch with a classification loss over one output of the model."""

    def __init__(self, arch: str, config, rng: np.random.Generator, batch: int = 2, length: int = 16):
        self.arch = arch
        if arch in ("gpt", "bert"):
            limit = config.context_length if arch == "gpt" else config.max_positions
            length = min(length, limit)
            ids = rng.integers(0, config.vocab_size, size=(batch, length)).astype(np.int32)
        if arch == "gpt":
            self.inputs = {"input_ids": ids}
            self.output = "logits"
            self.labels = np.concatenate([ids[:, 1:], ids[:, :1]], axis=1)  # next token
            self.weights = np.ones(ids.shape)
            self.weights[:, -1] = 0.0  # the last position has no target
            self.num_classes = config.vocab_size
        elif arch == "bert":
            chosen = np.zeros(ids.shape, dtype=bool)
            chosen[:, 1::4] = True  # a quarter of the positions
            masked = np.where(chosen, 0, ids).astype(np.int32)  # id 0 stands in for [MASK]
            self.inputs = {"input_ids": masked, "attention_mask": np.ones_like(ids)}
            self.output = "mlm_logits"
            self.labels, self.weights = ids, chosen.astype(np.float64)
            self.num_classes = config.vocab_size
        else:
            size = config.image_size if arch == "vit" else 32
            self.inputs = {"pixel_values": rng.standard_normal((batch, size, size, config.num_channels)).astype(np.float32)}
            self.output = "logits"
            self.labels = rng.integers(0, config.num_classes, size=(batch,))
            self.weights = np.ones(batch)
            self.num_classes = config.num_classes

    def loss(self, handle) -> tuple[float, dict[str, np.ndarray]]:
        outputs = handle.apply(self.inputs, train=False)
        value, grad = _softmax_xent(outputs[self.output], self.labels, self.weights)
        return value, {self.output: grad}


def doctor_config(arch: str, preset: str):
    """The preset's config, with BERT's MLM head switched on so the model has a loss."""
    return get_config(arch, preset, mlm_head=True) if arch == "bert" else get_config(arch, preset)


def _initial_loss(task: _Task, handle) -> Check:
    loss, _ = task.loss(handle)
    expected = math.log(task.num_classes)
    tolerance = max(INIT_TOLERANCE[0] * expected, INIT_TOLERANCE[1])
    return Check(
        "initial-loss",
        bool(abs(loss - expected) <= tolerance),
        {"loss": round(loss, 4), "expected_ln_classes": round(expected, 4), "tolerance": round(tolerance, 4)},
        "far above ln C: the initial logits are too large (output layer init); far below: labels leak into the inputs",
    )


def _gradient_coverage(task: _Task, handle, rng: np.random.Generator) -> tuple[Check, dict[str, np.ndarray]]:
    outputs = handle.apply(task.inputs, train=False)
    cotangents = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in outputs.items()}
    grads = handle.vjp(task.inputs, cotangents)
    dead = sorted(k for k, g in grads.items() if not np.any(g != 0))
    bad = sorted(k for k, g in grads.items() if not np.all(np.isfinite(g)))
    return Check(
        "every-parameter-gets-gradient",
        not dead and not bad,
        {"parameters": len(grads), "without_gradient": dead[:10], "non_finite": bad[:10]},
        "a parameter without gradient never trains: it is cut off from every output (an unused "
        "layer, a detached tensor, or a branch multiplied by zero)",
    ), grads


def _overfit(task: _Task, handle, steps: int = OVERFIT_STEPS, lr: float = OVERFIT_LR) -> Check:
    """Adam in numpy on the canonical tensors: vjp -> update -> load_state_dict."""
    state = handle.state_dict()
    b1, b2, eps = 0.9, 0.999, 1e-8
    m: dict[str, np.ndarray] = {}
    v: dict[str, np.ndarray] = {}
    first, _ = task.loss(handle)
    history = [first]
    reached = None
    for t in range(1, steps + 1):
        _, cotangent = task.loss(handle)
        grads = handle.vjp(task.inputs, cotangent)
        for name, g in grads.items():
            m[name] = b1 * m.get(name, 0.0) + (1 - b1) * g
            v[name] = b2 * v.get(name, 0.0) + (1 - b2) * g * g
            step = lr * (m[name] / (1 - b1**t)) / (np.sqrt(v[name] / (1 - b2**t)) + eps)
            state[name] = (state[name] - step).astype(np.float32)
        handle.load_state_dict(state)
        loss, _ = task.loss(handle)
        history.append(loss)
        if reached is None and loss <= OVERFIT_TARGET * first:
            reached = t
            break
    return Check(
        "overfit-one-batch",
        reached is not None,
        {
            "initial_loss": round(first, 4),
            "final_loss": round(history[-1], 4),
            "steps_taken": len(history) - 1,
            "step_budget": steps,
            "target": f"<= {OVERFIT_TARGET} x initial",
            "optimizer": f"Adam lr={lr}",
        },
        "a model that cannot memorise two examples has a bug in the loss, the labels, the gradient path or the optimizer wiring",
    )


def _causal(task: _Task, handle, rng: np.random.Generator, config) -> Check:
    ids = task.inputs["input_ids"]
    cut = ids.shape[1] // 2
    changed = ids.copy()
    changed[:, cut:] = rng.integers(0, config.vocab_size, size=changed[:, cut:].shape)
    a = handle.apply({"input_ids": ids})["logits"][:, :cut]
    b = handle.apply({"input_ids": changed})["logits"][:, :cut]
    diff = float(np.abs(a - b).max())
    return Check(
        "no-future-leak",
        diff <= INVARIANCE_TOL,
        {"positions_checked": cut, "max_abs_diff": diff, "tolerance": INVARIANCE_TOL},
        "earlier positions depend on later tokens: the causal mask is missing or wrong, so "
        "training loss will be misleadingly low and generation will fail",
    )


def _padding(task: _Task, handle, rng: np.random.Generator, config) -> Check:
    ids = task.inputs["input_ids"]
    keep = ids.shape[1] - ids.shape[1] // 4
    mask = np.ones_like(ids)
    mask[:, keep:] = 0
    changed = ids.copy()
    changed[:, keep:] = rng.integers(0, config.vocab_size, size=changed[:, keep:].shape)
    a = handle.apply({"input_ids": ids, "attention_mask": mask})
    b = handle.apply({"input_ids": changed, "attention_mask": mask})
    diff = max(float(np.abs(a[k][:, :keep] - b[k][:, :keep]).max()) for k in ("last_hidden_state", "mlm_logits"))
    return Check(
        "padding-invariance",
        diff <= INVARIANCE_TOL,
        {"padded_positions": int(ids.shape[1] - keep), "max_abs_diff": diff, "tolerance": INVARIANCE_TOL},
        "real tokens attend to padding: the attention mask is not applied, so outputs depend on how much padding a batch happens to have",
    )


def _deterministic(task: _Task, handle) -> Check:
    a = handle.apply(task.inputs, train=False)
    b = handle.apply(task.inputs, train=False)
    diff = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    return Check(
        "eval-deterministic",
        diff == 0.0,
        {"max_abs_diff": diff},
        "two evaluations of the same input differ: dropout or batch statistics are active in "
        "eval mode, so validation numbers are noisy and not reproducible",
    )


def _activation_scale(task: _Task, handle) -> Check:
    """RMS of each residual block's output at initialisation, through the handle's block_outputs
    (every framework reads its own forward pass: hooks, nnx.capture, interceptors, ...)."""
    meaning = (
        "activations grow or shrink geometrically with depth: initialisation or residual "
        "scaling is off, and deeper variants will be unstable"
    )
    outputs = handle.block_outputs(task.inputs)  # every config has at least one block
    rms = {name: float(np.sqrt(np.mean(np.square(out, dtype=np.float64)))) for name, out in outputs.items()}
    values = np.array(list(rms.values()))
    ratio = float(values.max() / max(values.min(), 1e-30))
    return Check(
        "activation-scale",
        bool(np.all(np.isfinite(values)) and ratio <= ACTIVATION_RATIO),
        {"block_output_rms": {n: round(v, 5) for n, v in rms.items()}, "max_over_min": round(ratio, 3), "limit": ACTIVATION_RATIO},
        meaning,
    )


def run_checks(arch: str, framework: str, preset: str = "tiny", *, seed: int = 0, overfit_steps: int = OVERFIT_STEPS) -> Report:
    """Run every check that applies to ``arch``; returns a Report (see docs/diagnose.md)."""
    from ..zoo import load

    config = doctor_config(arch, preset)
    handle = load(arch, framework, config, seed=seed)
    rng = np.random.default_rng(seed)
    task = _Task(arch, config, rng)
    report = Report(arch, framework, preset)
    report.checks.append(_initial_loss(task, handle))
    coverage, _ = _gradient_coverage(task, handle, rng)
    report.checks.append(coverage)
    if arch == "gpt":
        report.checks.append(_causal(task, handle, rng, config))
    if arch == "bert":
        report.checks.append(_padding(task, handle, rng, config))
    report.checks.append(_deterministic(task, handle))
    report.checks.append(_activation_scale(task, handle))
    report.checks.append(_overfit(task, handle, steps=overfit_steps))  # last: it changes the weights
    return report
