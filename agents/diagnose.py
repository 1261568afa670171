"""Training-run diagnosis: read a training log, return findings with evidence, cause and fix.

Each detector looks for one pathology with thresholds documented in docs/diagnose.md; each
finding says where it happened (start_step..end_step, in the log's unit: steps, or epochs for
epoch-based logs), how bad it is, the numbers behind it, the cause in terms of the theory
knowledge base, and a fix with numbers computed from the run (a clipping threshold from the
logged gradient norms, one learning-rate cut for the whole report, a warmup length). Logs are
read by ``logformats.read_log`` (metrics.jsonl, Keras, Lightning, Hugging Face, TensorBoard, CSV);
the curves are drawn by ``diagnose_plot.plot``.

    >>> from dlzoo.agents.diagnose import diagnose_file
    >>> for f in diagnose_file("metrics.jsonl"):                        # doctest: +SKIP
    ...     print(f.kind, f.start_step, f.end_step, f.fix)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import diagnose_stats as st
from .metrics import Run

KINDS = (
    "non-finite",
    "divergence",
    "loss-spike",
    "plateau",
    "overfitting",
    "underfitting",
    "exploding-gradients",
    "vanishing-gradients",
    "lr-too-high",
    "lr-too-low",
    "abnormal-initial-loss",
    "early-instability",
    "accumulating-gradients",
    "broken-labels",
)
SEVERITIES = ("low", "medium", "high")

# Thresholds (docs/diagnose.md explains each and where it comes from).
LEVEL_FLOOR = 0.10  # relative measures use max(level, 10% of the loss at initialisation)
SPIKE_Z = 6.0  # modified z-score of a value against its trailing window
SPIKE_MIN_EXCESS = 0.10  # ... and at least 10% above the window's (floored) level
ISOLATED_AFTER = 3  # a spike whose next 3 steps are back (median) within 10% of the level is one bad batch
GRAD_SPIKE_RATIO = 10.0  # a gradient-norm spike is also >= 10x the trailing median (an order of magnitude)
DIVERGENCE_RISE = 0.25  # smoothed loss above its running best by 25% of max(|best|, floor / 5)
DIVERGENCE_FLOOR = 0.2
NO_PROGRESS = 0.05  # < 5% relative improvement from the first 3 lines to the last tenth
STALLED_Z = 2.0  # a smooth run is stalled when improvement + 2 standard errors < 5%,
NOISY_STALLED_Z = 4.0  # ... a noisy one when improvement < 5% + 4 standard errors
NOISY = 0.10  # robust std of step-to-step changes / loss level (from second differences)
PLATEAU_FLAT = 0.01  # < 1% change across a segment
PLATEAU_DROP = 0.10  # ... followed by a later drop of > 10%
CHANCE_FRACTION = 0.9  # loss >= 0.9 ln(C): still at chance
UNDERFIT_FRACTION = 0.6  # converged with loss >= 0.6 ln(C)
# |first loss - ln C| > max(0.25 ln C, 1 nat). A nat of slack: torch's default head init
# U(+-1/sqrt(fan_in)) on ResNet's all-positive pooled features gives logits of std ~1, and at some
# seeds a first loss 0.8 nat above ln 10 (the zoo's tiny ResNet, seeds 0-5, every framework:
# 1.94-3.13). An init that is really too large (logit std >= 1.5) lands further out. doctor's
# initial-loss check uses the same rule.
INIT_TOLERANCE = (0.25, 1.0)
OVERFIT_RISE = 0.05  # final validation loss >= 5% above its minimum
VANISH_RATIO = 1e-3  # a gradient norm 1000x below its early level / the other layers
EXPLODE_GROWTH = 10.0  # sustained 10x growth of the smoothed gradient norm
DIVERGENCE_HORIZON = 5  # the learning-rate cut is the loss's growth over the 5 steps after the onset,
LR_CUT_MAX = 100.0  # ... at most 100 (beyond that a learning-rate range test is the fix)
CLIP_PERCENTILE = 90
EARLY_STEPS = 10  # early instability: within the first max(10, n/20) steps the loss rises
EARLY_ABOVE = 0.05  # ... above its starting level max(first loss, ln C) by 5% of it and 6 noise std,
EARLY_RISE = 0.15  # ... and by 15% of that level above its best so far
EARLY_NOISE_Z = 6.0
STUCK_START = 0.4  # a non-chance plateau begins in the first 40% of the run,
STUCK_SPAN = 0.5  # ... lasts at least half of it, to the end,
STUCK_FLAT = 0.03  # ... with the loss's quarter-segment medians within 3% (+3 standard errors) of its level,
STUCK_LEVEL = 0.25  # ... at a level above 25% of the loss at initialisation
ACCUMULATE_GROWTH = 4.0  # accumulating gradients: the norm grows >= 4x over the first fifth of the run,
ACCUMULATE_RANK = 0.9  # ... near-monotonically (rank correlation with the step >= 0.9)
CHANCE_ACCURACY = (1.5, 0.02)  # validation accuracy <= 1.5/C + 0.02 is chance level,
BROKEN_PROGRESS = 0.10  # ... while training improved >= 10%: the labels carry no signal
CRAWL_Z = 3.0  # lr too low: the last half still falls (by 3 standard errors), and the run ends
CRAWL_CHANCE = 0.8  # ... still near chance (>= 0.8 ln C) or (without C) gained < 20%, and its last
CRAWL_GAIN = 0.2  # ... half fell at least 0.3x as much as its first (it has not begun to converge)
CRAWL_STEADY = 0.3
STUCK_RATE = 0.05  # ... falling at most 5% as fast per step as before it began
STEADY_RANK = -0.3  # lr too low rather than a plateau: loss and step rank-correlate <= -0.3,
STEADY_Z = 5.0  # ... significantly (rank correlation x sqrt(n - 1) <= -5, about 5 standard errors),
STEADY_VAL = 0.75  # ... the validation loss fell at >= 75% of successive evaluations (when >= 4 are logged),
STEADY_GRAD = (0.2, 5.0)  # ... and the gradient norm's last-quarter median is 0.2x-5x its first-quarter one
# A run that ends at chance at a peak rate of at most LOW_RATE is lr-too-low (medium), not a
# plateau: below the 1e-4..1e-1 of training from scratch with Adam or SGD, a weight moves at most
# about peak lr x steps; the gradient norm must keep its size (STEADY_GRAD), a vanished one is
# another fault. A cut gradient path or labels without signal at an ordinary rate stay plateaus.
LOW_RATE = 3e-5

UNSTABLE = ("non-finite", "divergence", "early-instability")
LR_CHANGE = "<learning-rate change>"  # placeholder in fixes, replaced by one sentence per report


@dataclass
class Finding:
    kind: str
    start_step: int
    end_step: int
    severity: str
    evidence: dict[str, Any]
    cause: str
    fix: str
    theory: tuple[str, ...] = field(default=())
    # (cut of the learning rate at the onset, why, index of the onset) when the fix lowers the rate;
    # the report uses one such proposal for every finding (_apply_lr_advice).
    lr_proposal: tuple[float, str, int | None] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The documented JSON schema: exactly these seven keys."""
        cause = self.cause + (f" (theory: {', '.join(self.theory)})" if self.theory else "")
        return {
            "kind": self.kind,
            "start_step": int(self.start_step),
            "end_step": int(self.end_step),
            "severity": self.severity,
            "evidence": _jsonable(self.evidence),
            "cause": cause,
            "fix": self.fix,
        }


def _jsonable(value: Any) -> Any:
    """JSON-ready evidence: numbers keep 6 significant digits (1e-7 stays 1e-7, never 0.0)."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return float(f"{value:.6g}") if math.isfinite(value) else value
    if isinstance(value, np.integer):
        return int(value)
    return value


def _fmt(x: float) -> str:
    return f"{x:.3g}"


class _Context:
    """Arrays shared by the detectors."""

    def __init__(self, run: Run):
        self.run = run
        self.unit = getattr(run, "unit", "step")
        self.steps = np.array([r["step"] for r in run.train])
        self.loss = np.array([r["loss"] for r in run.train], dtype=float)
        self.n = len(self.loss)
        self.w = st.window(self.n)
        self.finite = np.isfinite(self.loss)
        first_bad = np.flatnonzero(~self.finite)
        self.usable = int(first_bad[0]) if len(first_bad) else self.n  # the finite prefix
        self.lr = self._column("lr")
        self.grad = self._column("grad_norm")
        self.num_classes = run.num_classes
        self.ln_c = math.log(self.num_classes) if self.num_classes and self.num_classes > 1 else None
        head = self.loss[: self.usable][:3]
        start = float(np.median(head)) if len(head) else 1.0
        # The reference scale of the loss: chance level when known, else where the run started.
        self.ref = self.ln_c if self.ln_c is not None else abs(start)
        self.floor = LEVEL_FLOOR * self.ref
        self.noise = float(np.nan_to_num(st.relative_noise(self.loss[: self.usable], self.floor)))

    def _column(self, name: str) -> np.ndarray | None:
        if not any(name in r for r in self.run.train):
            return None
        return np.array([r.get(name, np.nan) for r in self.run.train], dtype=float)

    def at(self, i: int) -> int:
        return int(self.steps[min(max(i, 0), self.n - 1)])

    def lr_at(self, i: int) -> float | None:
        return None if self.lr is None or not np.isfinite(self.lr[i]) else float(self.lr[i])

    def peak_lr(self) -> tuple[float, int] | None:
        if self.lr is None or not np.isfinite(self.lr).any():
            return None
        i = int(np.nanargmax(self.lr))
        return float(self.lr[i]), i

    def warmup_steps(self) -> int | None:
        """The warmup length: as declared in the meta line, else read off the logged rate (the
        number of steps until it first reaches 99% of its peak, counting the step that does)."""
        declared = self.run.meta.get("warmup_steps")
        if isinstance(declared, (int, float)) and not isinstance(declared, bool) and declared > 0:
            return int(declared)
        peak = self.peak_lr()
        if peak is None or not np.isfinite(self.lr[0]) or self.lr[0] >= 0.99 * peak[0]:
            return None
        return int(self.steps[np.flatnonzero(self.lr >= 0.99 * peak[0])[0]] - self.steps[0] + 1)

    def in_warmup(self, i: int) -> bool:
        """Whether index i lies in the warmup, with the rate (when logged) below 95% of its peak."""
        warm = self.warmup_steps()
        if warm is None or self.steps[i] >= self.steps[0] + warm:
            return False
        peak, lr = self.peak_lr(), self.lr_at(i)
        return peak is None or lr is None or lr < 0.95 * peak[0]

    def clip_threshold(self) -> float | None:
        if self.grad is None:
            return None
        g = self.grad[np.isfinite(self.grad)]
        if not len(g):
            return None
        z, _ = st.robust_z(self.grad, self.w)
        healthy = self.grad[np.isfinite(self.grad) & ~(np.nan_to_num(z) >= SPIKE_Z)]
        return float(np.percentile(healthy if len(healthy) else g, CLIP_PERCENTILE))

    def progress(self) -> tuple[float, float] | None:
        """Relative improvement from the start (median of the first 3 lines: a fast learner is
        already near its floor by the end of the first tenth) to the end (median of the last
        tenth) of the finite prefix, and its standard error from the run's relative noise."""
        loss = self.loss[: self.usable]
        k = max(3, len(loss) // 10)
        if len(loss) < 2 * k:
            return None
        first, last = float(np.median(loss[:3])), float(np.median(loss[-k:]))
        error = 1.2533 * self.noise * math.sqrt(max(first, self.floor) ** 2 / 3 + max(last, self.floor) ** 2 / k)
        scale = max(abs(first), 1e-12)
        return (first - last) / scale, error / scale

    def words(self, a: int, b: int | None = None) -> str:
        """'step 12' / 'epochs 3-7' in the log's unit."""
        if b is None or b == a:
            return f"{self.unit} {a}"
        return f"{self.unit}s {a}-{b}"


def _clip_text(ctx: _Context) -> str:
    c = ctx.clip_threshold()
    return (
        f"clip the global gradient norm at {_fmt(c)} (the {CLIP_PERCENTILE}th percentile of the logged norms)"
        if c is not None
        else "clip the global gradient norm (log grad_norm to get a threshold)"
    )


def _lr_cut(ctx: _Context, onset: int, growth: float) -> tuple[float, str]:
    """How much to lower the learning rate at which instability began (index ``onset``, the loss
    growing ``growth``-fold over the next DIVERGENCE_HORIZON steps, NaN when unknown), and why.

    The faster the loss blows up, the further the rate is past the stability limit, so the cut is
    the growth G itself (a rule of thumb: docs/diagnose.md says why), up to LR_CUT_MAX, and never
    below the floor for the case: 2 (half the rate) during warmup, 10 when a rate without warmup
    breaks in the first tenth of the run, 3 otherwise."""
    if ctx.in_warmup(onset):
        floor, reason = 2.0, "half the rate at which it broke"
    elif ctx.warmup_steps() is None and onset < max(ctx.w, ctx.n // 10):
        floor, reason = 10.0, "a rate that breaks in the first tenth of a run without warmup is off by an order of magnitude"
    else:
        floor, reason = 3.0, "the usual first cut"
    grew = f"the loss grew {_fmt(growth)}x within {DIVERGENCE_HORIZON} {ctx.unit}s of the onset"
    if not math.isfinite(growth) or growth <= floor:
        return floor, reason + (f"; {grew}" if math.isfinite(growth) else "")
    if growth > LR_CUT_MAX:
        return LR_CUT_MAX, f"{grew}; beyond {_fmt(LR_CUT_MAX)}x, find the rate with a learning-rate range test"
    return growth, (
        f"{grew}: the faster a loss blows up, the further the step size is past the stability limit 2/sharpness, so the cut grows with it"
    )


# --------------------------------------------------------------------------------------------
# detectors


def _non_finite(ctx: _Context) -> list[Finding]:
    findings = []
    bad = np.flatnonzero(~ctx.finite)
    if len(bad):
        i = int(bad[0])
        evidence = {
            "first_bad_step": ctx.at(i),
            "value": float(ctx.loss[i]),
            "non_finite_lines": int(len(bad)),
            "last_finite_loss": float(ctx.loss[i - 1]) if i else None,
        }
        if ctx.grad is not None and i and np.isfinite(ctx.grad[:i]).any():
            evidence["grad_norm_before"] = float(ctx.grad[i - 1])
        if ctx.lr_at(i) is not None:
            evidence["lr"] = ctx.lr_at(i)
        findings.append(
            Finding(
                "non-finite",
                ctx.at(i),
                ctx.at(bad[-1]),
                "high",
                evidence,
                "the loss became NaN or infinite: an update overshot (learning rate above the stability "
                "limit 2/sharpness), an overflow in low precision, or a log/division of zero in the loss",
                f"restart from a checkpoint before {ctx.words(ctx.at(i))}, {LR_CHANGE}, {_clip_text(ctx)}, "
                "and with fp16 use dynamic loss scaling or bf16",
                ("sharpness-lr", "gradient-clipping", "mixed-precision"),
                lr_proposal=(*_lr_cut(ctx, i, math.nan), i),
            )
        )
    if ctx.grad is not None:
        logged = np.array(["grad_norm" in r for r in ctx.run.train[: ctx.usable]], dtype=bool)
        gbad = np.flatnonzero(logged & ~np.isfinite(ctx.grad[: ctx.usable]))
        if len(gbad):
            findings.append(
                Finding(
                    "non-finite",
                    ctx.at(gbad[0]),
                    ctx.at(gbad[-1]),
                    "medium",
                    {"metric": "grad_norm", "non_finite_lines": int(len(gbad))},
                    "the gradient norm was NaN or infinite while the loss stayed finite: an overflow in the "
                    "backward pass (typical of fp16 without loss scaling) or a skipped optimizer step",
                    f"use bf16 or dynamic loss scaling, and {_clip_text(ctx)}",
                    ("mixed-precision", "gradient-clipping"),
                )
            )
    return findings


def _early_instability(ctx: _Context) -> list[Finding]:
    """A blow-up in the first steps, before any trailing window exists: the loss climbs above
    where the untrained model started (max(median of the first 3 losses, ln C)), which no healthy
    update does."""
    loss = ctx.loss[: ctx.usable]
    horizon = min(len(loss), max(EARLY_STEPS, ctx.n // 20))
    if horizon < 3:
        return []
    start = max(float(np.median(loss[:3])), ctx.ln_c or -math.inf)  # a median: one low first draw is not the level
    for i in range(1, horizon):
        best = float(loss[:i].min())
        # Above the start by 5% and by 4 noise std (the start is a median; the best so far is a
        # minimum, biased low by the noise, so the noise test is made against the start).
        rise = loss[i] - best
        if loss[i] > start + max(EARLY_ABOVE, EARLY_NOISE_Z * ctx.noise) * abs(start) and rise > EARLY_RISE * abs(start):
            onset = int(np.argmin(loss[:i]))
            peak = i + int(np.argmax(loss[i:horizon]))
            back = np.flatnonzero(loss[peak:] <= start)
            end = peak + int(back[0]) if len(back) else len(loss) - 1
            # The same growth measure as divergence's, so one blow-up gets one cut however it is seen.
            centred = st.centred_median3(loss)
            ahead = min(onset + DIVERGENCE_HORIZON, len(loss) - 1)
            growth = float(centred[ahead] / centred[onset]) if centred[onset] > 0 and ahead > onset else math.nan
            evidence = {
                "first_loss": float(loss[0]),
                "best_before": best,
                "best_step": ctx.at(onset),
                "peak_step": ctx.at(peak),
                "peak_loss": float(loss[peak]),
            }
            if ctx.ln_c is not None:
                evidence["ln_num_classes"] = ctx.ln_c
            if ctx.lr_at(onset) is not None:
                evidence["lr_at_onset"] = ctx.lr_at(onset)
            return [
                Finding(
                    "early-instability",
                    ctx.at(onset),
                    ctx.at(end),
                    "high",
                    evidence,
                    "within the first updates the loss rose above where the untrained model started (worse "
                    "than chance): the first steps overshot far past the stability limit 2/sharpness; such a "
                    "blow-up often leaves the model in a degenerate state (collapsed attention, saturated "
                    "units) from which it only reaches a plateau",
                    f"{LR_CHANGE}, and keep the warmup"
                    if ctx.warmup_steps()
                    else f"{LR_CHANGE}, and add a linear warmup over the first {max(10, ctx.n // 20)} {ctx.unit}s",
                    ("sharpness-lr", "lr-schedule"),
                    lr_proposal=(*_lr_cut(ctx, onset, growth), onset),
                )
            ]
    return []


def _divergence(ctx: _Context) -> list[Finding]:
    loss = ctx.loss[: ctx.usable]
    if len(loss) < 10:
        return []
    k = max(5, ctx.w // 2)
    smooth = st.rolling_median(loss, k)
    best = np.minimum.accumulate(smooth)
    # A sustained doubling of a near-zero loss is a real rise: divergence uses a fifth of the floor.
    scale = np.maximum(np.abs(best), DIVERGENCE_FLOOR * ctx.floor)
    # The running best of a noisy median sits a few standard errors below the typical level;
    # 4 standard errors of a k-point median (1.2533 sigma / sqrt k) keep noise from looking like a rise.
    noise = ctx.noise * np.maximum(np.abs(best), ctx.floor)  # absolute: the noise was measured against the floored level
    margin = 4 * 1.2533 * noise / math.sqrt(k)
    above = smooth - best > DIVERGENCE_RISE * scale + margin + 1e-12
    sustain = max(3, ctx.w // 2)
    centred = st.centred_median3(loss)
    findings, searched = [], 0
    for i, j in st.spans(above):
        # A rise still growing when the run ends is confirmed by the unlagged loss: the centred
        # 3-median of the last 3 steps above the threshold too.
        at_end = j == len(loss) - 1 and (
            j - i + 1 >= 3 or (j - i + 1 >= 2 and bool(np.all(centred[-3:] - best[-3:] > (DIVERGENCE_RISE * scale + margin)[-3:])))
        )
        if j - i + 1 >= sustain or at_end:
            # The trailing median confirms a rise k/2 steps or more after it began; the onset is
            # the last step (since the previous divergence) where the unlagged loss was still
            # within one noise std of the best smoothed level.
            near_best = np.flatnonzero(centred[searched : i + 1] <= best[i] + noise[i])
            onset = searched + int(near_best[-1] if len(near_best) else np.argmin(centred[searched : i + 1]))
            ahead = min(onset + DIVERGENCE_HORIZON, len(loss) - 1)
            growth = float(centred[ahead] / centred[onset]) if centred[onset] > 0 and ahead > onset else math.nan
            evidence = {
                "best_smoothed_loss": float(best[i]),
                "best_step": ctx.at(int(np.argmin(smooth[: i + 1]))),
                "onset_step": ctx.at(onset),
                "confirmed_step": ctx.at(i),
                "smoothed_loss_at_end": float(smooth[j]),
                "peak_smoothed_loss": float(smooth[i : j + 1].max()),
                "rise": float(smooth[i : j + 1].max() - best[i]),
                "growth": growth if math.isfinite(growth) else None,
                "growth_steps": ahead - onset,
            }
            if ctx.lr_at(onset) is not None:
                evidence["lr_at_onset"] = ctx.lr_at(onset)
            findings.append(
                Finding(
                    "divergence",
                    ctx.at(onset),
                    ctx.at(j),
                    "high",
                    evidence,
                    "the smoothed loss climbed well above its best value and stayed there: updates are "
                    "larger than the curvature allows, so the iterate is thrown out of the basin",
                    f"restart from the checkpoint at {ctx.words(ctx.at(onset))}, {LR_CHANGE}, and {_clip_text(ctx)}",
                    ("sharpness-lr", "lr-schedule", "gradient-clipping"),
                    lr_proposal=(*_lr_cut(ctx, onset, growth), onset),
                )
            )
            searched = j + 1
    return findings


def _spikes(ctx: _Context) -> list[Finding]:
    loss = ctx.loss[: ctx.usable]
    z, med = st.robust_z(loss, ctx.w, ctx.floor)
    excess = (loss - med) / np.maximum(np.abs(med), ctx.floor)
    hits = [i for i in range(len(loss)) if z[i] >= SPIKE_Z and excess[i] >= SPIKE_MIN_EXCESS]
    findings = []
    for group in st.groups(hits, max(2, ctx.w // 4)):
        peak = max(group, key=lambda i: z[i])
        severity = "high" if excess[peak] >= 1.0 else "medium" if z[peak] >= 2 * SPIKE_Z else "low"
        # A batch unlike the others spikes its own step only; an overshooting update also spoils
        # the steps after it, until the optimizer has found its way back.
        after = loss[group[-1] + 1 : group[-1] + 1 + ISOLATED_AFTER]
        back = len(after) > 0 and bool(np.median(after) <= med[peak] + SPIKE_MIN_EXCESS * max(abs(med[peak]), ctx.floor))
        isolated = len(group) <= 2 and back
        evidence = {
            "peak_step": ctx.at(peak),
            "peak_loss": float(loss[peak]),
            "trailing_median": float(med[peak]),
            "robust_z": float(z[peak]),
            "spike_steps": len(group),
            "window": ctx.w,
            "recovered_next_steps": back,
        }
        if isolated:
            findings.append(
                Finding(
                    "loss-spike",
                    ctx.at(group[0]),
                    ctx.at(group[-1]),
                    severity,
                    evidence,
                    "the loss jumped far above its recent level for a single step and was back at once: the "
                    "batch of that step was unlike the others (corrupted, unnormalised, mislabelled or "
                    "from another distribution); an overshooting update would have spoiled the next steps too",
                    f"look at the batch of {ctx.words(ctx.at(peak))} (its inputs' range and its labels), "
                    f"and {_clip_text(ctx)} so one bad batch cannot move the weights far",
                    ("gradient-clipping", "adamw"),
                )
            )
        else:
            findings.append(
                Finding(
                    "loss-spike",
                    ctx.at(group[0]),
                    ctx.at(group[-1]),
                    severity,
                    evidence,
                    "the loss jumped far outside the variation of the preceding window and took steps to "
                    "recover: an update landed on a region of high curvature, or an outlier gradient "
                    "entered Adam's moments",
                    f"{_clip_text(ctx)}; if spikes repeat, {LR_CHANGE} or lengthen the warmup",
                    ("sharpness-lr", "gradient-clipping", "adamw"),
                    lr_proposal=(2.0, "half the rate, for repeated spikes", None),
                )
            )
    return findings


def _layer_series(ctx: _Context) -> list[tuple[str, np.ndarray]]:
    layers = sorted({k for r in ctx.run.train[: ctx.usable] for k in r.get("grad_norms", {})})
    return [
        (name, np.array([r.get("grad_norms", {}).get(name, np.nan) for r in ctx.run.train[: ctx.usable]], dtype=float)) for name in layers
    ]


def _gradient_spikes(ctx: _Context, layers: list[tuple[str, np.ndarray]], loss_events: list[Finding]) -> list[Finding]:
    """Gradient-norm spikes (robust z >= 6 and >= 10x the trailing median): global ones with the
    global norm as evidence, per-layer ones (where the global norm did not spike) with that
    layer's own norm, median and ratio. Medium only when repeated and coinciding with a loss event."""
    hits: dict[str, dict[int, tuple[float, float]]] = {}
    series = ([("global", ctx.grad[: ctx.usable])] if ctx.grad is not None else []) + layers
    for name, g in series:
        if len(g) < 10:
            continue
        z, med = st.robust_z(g, ctx.w)
        hits[name] = {i: (float(g[i]), float(med[i])) for i in range(len(g)) if z[i] >= SPIKE_Z and g[i] >= GRAD_SPIKE_RATIO * med[i]}
    gap = max(2, ctx.w // 4)

    def with_loss_event(a: int, b: int) -> bool:
        return any(f.start_step - gap <= b and a <= f.end_step + gap for f in loss_events)

    findings = []
    global_groups = st.groups(sorted(hits.get("global", {})), gap)
    for group in global_groups:
        peak = max(group, key=lambda i: hits["global"][i][0])
        value, median = hits["global"][peak]
        also = sorted(n for n in hits if n != "global" and any(i in hits[n] for i in group))
        a, b = ctx.at(group[0]), ctx.at(group[-1])
        findings.append(
            Finding(
                "exploding-gradients",
                a,
                b,
                "medium" if len(group) > 1 and with_loss_event(a, b) else "low",
                {
                    "series": "global",
                    "spike_steps": len(group),
                    "peak_step": ctx.at(peak),
                    "peak_grad_norm": value,
                    "trailing_median": median,
                    "ratio": value / median if median > 0 else None,
                    "layers_also_spiking": also[:10],
                },
                "the global gradient norm jumped by more than an order of magnitude over its recent level: "
                "the loss surface is locally very steep (large curvature relative to the step size), or "
                "one batch was unlike the others",
                _clip_text(ctx).capitalize() + f"; if the spikes coincide with loss spikes, {LR_CHANGE}",
                ("gradient-clipping", "sharpness-lr", "residual-connections"),
                lr_proposal=(2.0, "half the rate, for gradient spikes that come with loss spikes", None),
            )
        )
    covered = {i for g in global_groups for i in range(g[0] - gap, g[-1] + gap + 1)}
    layer_hits: dict[int, list[str]] = {}
    for name, found in hits.items():
        if name != "global":
            for i in found:
                if i not in covered:
                    layer_hits.setdefault(i, []).append(name)
    for group in st.groups(sorted(layer_hits), gap):
        a, b = ctx.at(group[0]), ctx.at(group[-1])
        if len(group) == 1 and not with_loss_event(a, b):
            continue  # one layer's norm is heavy-tailed: a lone one-step jump is not a finding
        names = sorted({n for i in group for n in layer_hits[i]})
        per_layer = {}
        for n in names[:10]:
            i = max((i for i in group if i in hits[n]), key=lambda i: hits[n][i][0] / max(hits[n][i][1], 1e-30))
            value, median = hits[n][i]
            per_layer[n] = {
                "step": ctx.at(i),
                "grad_norm": value,
                "trailing_median": median,
                "ratio": value / median if median > 0 else None,
            }
        evidence: dict[str, Any] = {"series": "per-layer", "layers": per_layer, "spike_steps": len(group)}
        if ctx.grad is not None:
            peak = group[0]
            evidence["global_grad_norm_at_step"] = float(ctx.grad[peak]) if np.isfinite(ctx.grad[peak]) else None
        findings.append(
            Finding(
                "exploding-gradients",
                a,
                b,
                "medium" if len(group) > 1 and with_loss_event(a, b) else "low",
                evidence,
                f"the gradient norm of {', '.join(names[:3])}{' and others' if len(names) > 3 else ''} jumped by more "
                "than an order of magnitude over its own recent level while the global norm did not: a "
                "rare input hit that layer (a rare token's embedding, an outlier patch), or the layer's "
                "local curvature is high",
                "usually harmless once; if it repeats, clip the gradient norm per layer or globally, and "
                "check the inputs that reach this layer at those steps",
                ("gradient-clipping", "sharpness-lr"),
            )
        )
    return findings


def _gradient_trends(ctx: _Context, layers: list[tuple[str, np.ndarray]], improving: bool) -> list[Finding]:
    findings: list[Finding] = []
    if ctx.grad is not None:
        g = ctx.grad[: ctx.usable]
        g = g[np.isfinite(g)]
        if len(g) >= 3 * ctx.w:
            smooth = st.rolling_median(g, ctx.w)
            early = float(np.median(g[: ctx.w]))
            high = np.flatnonzero(smooth[ctx.w :] >= EXPLODE_GROWTH * max(early, 1e-12)) + ctx.w
            if len(high) >= ctx.w:
                growth = float(smooth.max() / max(early, 1e-12))
                findings.append(
                    Finding(
                        "exploding-gradients",
                        ctx.at(high[0]),
                        ctx.at(high[-1]),
                        "low" if improving else "high",
                        {
                            "early_median_grad_norm": early,
                            "max_smoothed_grad_norm": float(smooth.max()),
                            "growth": growth,
                            "loss_improving": improving,
                        },
                        "the typical gradient norm grew more than tenfold and stayed there: the model is "
                        "moving into ever sharper regions, usually because the learning rate is too high "
                        "for the curvature or the residual stream is growing unchecked"
                        + ("; the loss kept improving meanwhile, so this is a warning, not yet a failure" if improving else ""),
                        f"{_clip_text(ctx)} and {LR_CHANGE}",
                        ("sharpness-lr", "gradient-clipping", "initialization"),
                        lr_proposal=(
                            max(2.0, math.sqrt(growth)),
                            f"the square root of the {_fmt(growth)}x growth of the gradient norm",
                            int(high[0]),
                        ),
                    )
                )
            vanish = np.flatnonzero(smooth[ctx.w :] <= VANISH_RATIO * early) + ctx.w
            if len(vanish) >= ctx.w:
                findings.append(
                    Finding(
                        "vanishing-gradients",
                        ctx.at(vanish[0]),
                        ctx.at(vanish[-1]),
                        "medium",
                        {"early_median_grad_norm": early, "min_smoothed_grad_norm": float(smooth.min())},
                        "the gradient norm fell more than a thousandfold below its early level: saturated "
                        "units, dead ReLUs or a broken gradient path (missing residual or normalisation)",
                        "check that every parameter gets gradients (`dlzoo doctor`), use residual connections "
                        "and normalisation, and reinitialise with He/GPT-2 scaling",
                        ("residual-connections", "initialization", "layer-norm"),
                    )
                )
    if layers:
        medians = {n: float(np.nanmedian(s)) for n, s in layers if np.isfinite(s).any()}
        typical = float(np.median(list(medians.values()))) if medians else 0.0
        starved = sorted(n for n, m in medians.items() if typical > 0 and m <= VANISH_RATIO * typical)
        if starved:
            findings.append(
                Finding(
                    "vanishing-gradients",
                    ctx.at(0),
                    ctx.at(ctx.usable - 1),
                    "medium",
                    {
                        "layers": starved[:10],
                        "layer_median_grad_norms": {n: medians[n] for n in starved[:10]},
                        "median_over_layers": typical,
                    },
                    "these layers receive gradients a thousand times smaller than the typical layer: they "
                    "barely train, usually because their path to the loss is blocked (a dead branch, "
                    "saturated activation, a layer not used in the loss, or zero-initialised weights that "
                    "never woke up)",
                    "check the forward path of the listed layers (`dlzoo doctor` reports parameters without "
                    "gradient), and make sure they are part of the loss",
                    ("residual-connections", "initialization"),
                )
            )
    return findings


def _accumulating(ctx: _Context) -> list[Finding]:
    """Gradients summed across steps (optimizer.zero_grad() forgotten): the logged norm of the
    .grad buffers grows steadily from the first step, near-monotonically, while a healthy run's
    norm jumps around a level or falls."""
    if ctx.grad is None:
        return []
    g = ctx.grad[: ctx.usable]
    m = min(len(g), max(20, ctx.n // 5))
    head = g[:m]
    if m < 20 or not np.isfinite(head).all():
        return []
    start = float(np.median(head[:3]))
    end = float(np.median(head[-max(3, m // 4) :]))
    rank = st.rank_correlation(np.arange(m), head)
    if not (start > 0 and end >= ACCUMULATE_GROWTH * start and rank >= ACCUMULATE_RANK):
        return []
    return [
        Finding(
            "accumulating-gradients",
            ctx.at(0),
            ctx.at(m - 1),
            "high",
            {
                "grad_norm_at_start": start,
                "grad_norm_after": end,
                "growth": end / start,
                "over_steps": m,
                "rank_correlation_with_step": rank,
            },
            "the gradient norm grew steadily from the very first step instead of fluctuating around a "
            "level: gradients are being summed across steps (optimizer.zero_grad() is not called, or "
            "called before backward() only every k steps without dividing the loss by k), so every "
            "update uses the sum of all past gradients and the run behaves as if its learning rate kept growing",
            "call optimizer.zero_grad(set_to_none=True) once per optimizer step, before backward(); for "
            "deliberate accumulation over k micro-batches divide the loss by k and step every k batches. "
            "The learning rate is not the problem: keep it",
            ("gradient-clipping", "adamw"),
        )
    ]


def _no_progress(ctx: _Context) -> list[Finding]:
    measured = ctx.progress()
    if measured is None:
        return []
    progress, error = measured
    loss = ctx.loss[: ctx.usable]
    level = float(np.median(loss))
    noise = math.sqrt(2) * ctx.noise  # std of a step-to-step change / level
    # Each verdict needs evidence for what it claims. "Hardly moved" (smooth runs): the improvement
    # is below 5% with two standard errors to spare, so a run that learned fast and sits at its
    # floor is not called stalled. "Bounces without going down" (noisy runs): the improvement is
    # not four standard errors above 5%, so chance dips of a long noisy run do not pass for progress.
    stalled = progress < NO_PROGRESS + NOISY_STALLED_Z * error if noise >= NOISY else progress + STALLED_Z * error < NO_PROGRESS
    crawl = _crawl(ctx)
    at_chance = ctx.ln_c is not None and np.median(loss[-max(3, len(loss) // 4) :]) >= CHANCE_FRACTION * ctx.ln_c
    start, end = ctx.at(0), ctx.at(ctx.usable - 1)
    evidence = {"relative_improvement": progress, "median_loss": level, "step_noise": noise}
    peak = ctx.peak_lr()
    if peak:
        evidence["peak_lr"] = peak[0]
    low = _low_rate_at_chance(ctx) if at_chance and crawl is None else None
    if not stalled and crawl is None:
        # Not stalled by the measure from the first lines, which can sit above chance (a warmup
        # blip, an init above ln C), or too noisy to be sure of; a run that ends at chance at a
        # tiny rate is still not learning.
        if low is None:
            return []
        return [_too_low(ctx, {**evidence, **low, "ln_num_classes": ctx.ln_c}, "medium", LOW_RATE_TEXT.format(_fmt(low["peak_lr"])))]
    if crawl is not None:
        evidence.update(crawl)
    steady = _steady_descent(ctx) if at_chance and crawl is None else None
    if steady is not None:
        evidence.update(steady)
        evidence["ln_num_classes"] = ctx.ln_c
        return [_too_low(ctx, evidence, "high", "still at chance level but falling steadily, not flat: " + STEADY_TEXT)]
    if low is not None:
        return [_too_low(ctx, {**evidence, **low, "ln_num_classes": ctx.ln_c}, "medium", LOW_RATE_TEXT.format(_fmt(low["peak_lr"])))]
    if at_chance and crawl is None:
        evidence["ln_num_classes"] = ctx.ln_c
        return [
            Finding(
                "plateau",
                start,
                end,
                "high",
                evidence,
                f"the loss stayed at chance level (ln {ctx.num_classes} = {_fmt(ctx.ln_c)}): the model is "
                "not learning at all, from a learning rate far off in either direction, labels that do not "
                "match the inputs, or a gradient path that is cut",
                "overfit a single small batch first (`dlzoo doctor` does this); if that works, run a "
                "learning-rate range test over 1e-5..1e-1 and check the labels",
                ("initialization", "sharpness-lr"),
            )
        ]
    if noise >= NOISY and crawl is None:
        return [
            Finding(
                "lr-too-high",
                start,
                end,
                "medium",
                evidence,
                "the loss bounces from step to step without going down: the steps overshoot along the "
                "sharpest directions (learning rate near or above 2/sharpness), so progress cancels out",
                f"{LR_CHANGE} and {_clip_text(ctx)}",
                ("sharpness-lr", "lr-schedule"),
                lr_proposal=(3.0, "the usual first cut for a loss that bounces without progress", None),
            )
        ]
    how = (
        "still falling as fast at the end as in the first half: it has not begun to converge, " if crawl is not None else "hardly at all: "
    )
    return [_too_low(ctx, evidence, "medium", how)]


STEADY_TEXT = (
    "the training loss falls with the step throughout, the validation loss fell at nearly every "
    "evaluation and the gradients keep a healthy size, so the model is learning, only far too slowly "
    "(a plateau from broken labels or a cut gradient path has no such trend); "
)


LOW_RATE_TEXT = (
    "still at chance level at a peak learning rate of {}, far below the rates that train a network "
    "from scratch, with gradients of unchanged size (so the gradient path is intact): "
)


def _too_low(ctx: _Context, evidence: dict[str, Any], severity: str, how: str) -> Finding:
    peak = ctx.peak_lr()
    lr_text = f"from {_fmt(peak[0])} to {_fmt(peak[0] * 10)}" if peak else "by a factor of 10"
    return Finding(
        "lr-too-low",
        ctx.at(0),
        ctx.at(ctx.usable - 1),
        severity,
        evidence,
        "the loss moves smoothly but slowly, " + how + "each step is far smaller than the curvature would allow, so training crawls",
        f"raise the learning rate {lr_text} (or run a learning-rate range test, Smith 2017)",
        ("sharpness-lr", "lr-schedule"),
    )


def _input_free_loss(run: Run) -> float | None:
    """The loss (nats) of the best prediction that ignores the input, when the log's meta line
    gives it: a generated language-model project logs ``data.unigram_entropy_bits_per_token``."""
    data = run.meta.get("data")
    bits = data.get("unigram_entropy_bits_per_token") if isinstance(data, dict) else None
    if isinstance(bits, (int, float)) and not isinstance(bits, bool) and math.isfinite(bits) and bits > 0:
        return float(bits) * math.log(2)
    return None


def _steady_descent(ctx: _Context) -> dict[str, float] | None:
    """Evidence that a slow run is learning, only slowly (a learning rate far too low) rather than
    stuck: the training loss falls with the step (rank correlation <= STEADY_RANK, and
    significantly so), the validation loss, when at least 4 evaluations are logged, fell at nearly
    every one of them and ended below where it began, and the global gradient norm, when logged,
    neither vanished nor grew (a cut gradient path or a dead network has no such trend; labels
    that carry no signal make the validation loss rise). None when any of this fails."""
    loss = ctx.loss[: ctx.usable]
    n = len(loss)
    if n < 40:
        return None
    rank = st.rank_correlation(np.arange(n, dtype=float), loss)
    if not (rank <= STEADY_RANK and rank * math.sqrt(n - 1) <= -STEADY_Z):
        return None
    out: dict[str, float] = {"rank_correlation_with_step": rank}
    _, val = ctx.run.eval_series("val_loss")
    val = [v for v in val if math.isfinite(v)]
    if len(val) >= 4:
        falls = float(np.mean(np.diff(val) < 0))
        if falls < STEADY_VAL or val[-1] >= val[0]:
            return None
        out.update({"val_loss_fell_fraction": falls, "val_loss_first": val[0], "val_loss_last": val[-1]})
    if ctx.grad is not None:
        g = ctx.grad[: ctx.usable]
        q = n // 4
        early, late = np.nanmedian(g[:q]), np.nanmedian(g[-q:])
        if not (np.isfinite(early) and np.isfinite(late) and early > 0):
            return None
        if not STEADY_GRAD[0] <= late / early <= STEADY_GRAD[1]:
            return None
        out["grad_norm_late_over_early"] = float(late / early)
    return out


def _low_rate_at_chance(ctx: _Context) -> dict[str, float] | None:
    """Evidence that a run at chance is held there by its learning rate: the peak rate is at most
    ``LOW_RATE`` and the global gradient norm, when logged, has its last-quarter median within
    ``STEADY_GRAD`` of its first-quarter one. The validation loss's trend is added as evidence when
    at least 4 evaluations are logged (it is not required: at such a rate it may not move at all).
    None when the rate is ordinary or unknown, or the gradients vanished or grew."""
    peak = ctx.peak_lr()
    if peak is None or peak[0] > LOW_RATE:
        return None
    out: dict[str, float] = {"peak_lr": peak[0]}
    n = ctx.usable
    q = n // 4
    if ctx.grad is not None:
        if q < 1:
            return None
        g = ctx.grad[:n]
        early, late = np.nanmedian(g[:q]), np.nanmedian(g[-q:])
        if not (np.isfinite(early) and np.isfinite(late) and early > 0 and STEADY_GRAD[0] <= late / early <= STEADY_GRAD[1]):
            return None
        out["grad_norm_late_over_early"] = float(late / early)
    _, val = ctx.run.eval_series("val_loss")
    val = [v for v in val if math.isfinite(v)]
    if len(val) >= 4:
        out.update({"val_loss_first": val[0], "val_loss_last": val[-1], "val_loss_fell_fraction": float(np.mean(np.diff(val) < 0))})
    return out


def _crawl(ctx: _Context) -> dict[str, float] | None:
    """A run too slow to have begun converging: the loss falls in its last half at least as fast
    as in its first (a healthy run decelerates), the last half's fall is significant (3 standard
    errors of two quarter medians), and it gained less than half of its starting loss."""
    loss = ctx.loss[: ctx.usable]
    q = len(loss) // 4
    if q < 10 or math.sqrt(2) * ctx.noise >= NOISY:  # "smoothly but slowly": a bouncing loss is not crawling
        return None
    med = [float(np.median(loss[k * q : (k + 1) * q])) for k in range(4)]
    first_half, last_half = med[0] - med[1], med[2] - med[3]
    se = 1.2533 * ctx.noise * max(med[3], ctx.floor) / math.sqrt(q) * math.sqrt(2)
    gained = (float(np.median(loss[:3])) - med[3]) / max(abs(float(np.median(loss[:3]))), 1e-12)
    if last_half <= CRAWL_Z * se:
        return None
    # Not yet converging: the last half still falls at least 0.3x as much as the first (a healthy
    # run decelerates far more), and the run ends near chance (or, without C, gained < 20%).
    steady = last_half >= CRAWL_STEADY * first_half
    near_chance = ctx.ln_c is not None and med[3] >= CRAWL_CHANCE * ctx.ln_c
    if steady and (near_chance or (ctx.ln_c is None and gained < CRAWL_GAIN)):
        return {"fall_first_half": first_half, "fall_last_half": last_half, "fall_standard_error": se}
    return None


def _stuck(ctx: _Context, after: Finding | None) -> list[Finding]:
    """A non-chance plateau: the loss fell, then sat at one level from early on to the end of the
    run while still far above zero (for a language model typically the unigram statistics)."""
    loss = ctx.loss[: ctx.usable]
    n = len(loss)
    # A loss that fell fast and then held one level is also what a run that converged early looks
    # like: it counts as stuck only after a blow-up, or when chance level (ln C) is known and the
    # level sits between 25% of the start and 60% of ln C (above that, underfitting reports it).
    if n < 40 or (after is None and ctx.ln_c is None) or math.sqrt(2) * ctx.noise >= NOISY:
        return []  # (a loss that bounces by 10% a step is the noisy no-progress case, not a plateau)
    seg = max(5, n // 10)
    level = float(np.median(loss[-seg:]))
    initial = float(np.median(loss[:3]))
    if level < STUCK_LEVEL * initial or (ctx.ln_c is not None and level >= CHANCE_FRACTION * ctx.ln_c):
        return []
    if after is None and level >= UNDERFIT_FRACTION * ctx.ln_c:
        return []  # converged above 60% of chance without a blow-up: underfitting says it
    se = 1.2533 * ctx.noise * max(level, ctx.floor) / math.sqrt(seg)
    band = STUCK_FLAT * level + 3 * math.sqrt(2) * se
    # The earliest start from which every segment median stays within the band of the final level.
    start = None
    for s in range(0, int(STUCK_START * n) + 1, max(1, seg // 2)):
        medians = [float(np.median(loss[a : a + seg])) for a in range(s, n - seg + 1, max(1, seg // 2))]
        if n - s >= STUCK_SPAN * n and all(abs(m - level) <= band for m in medians):
            start = s
            break
    if start is None or initial - level < 2 * band:
        return []
    # The first step whose centred median is inside the band (the segment grid is coarse).
    centred = st.centred_median3(loss)
    inside = np.flatnonzero(np.abs(centred[: start + seg] - level) <= band)
    first = int(inside[0]) if len(inside) else start
    # A plateau, not a slow descent: per step, the loss falls far more slowly on it than before it.
    before = (initial - level) / max(first, 1)
    on = (float(np.median(loss[first : first + seg])) - level) / max(n - first - seg, 1)
    if on > STUCK_RATE * before:
        return []
    evidence: dict[str, Any] = {
        "plateau_loss": level,
        "plateau_start_step": ctx.at(first),
        "plateau_fraction_of_run": (n - first) / n,
        "initial_loss": initial,
        "band": band,
    }
    steps, acc = ctx.run.eval_series("val_accuracy")
    late = [a for s, a in zip(steps, acc) if s >= ctx.at(first) and math.isfinite(a)]
    if len(late) >= 3:
        evidence["val_accuracy_range"] = [min(late), max(late)]
    cause = (
        "the loss fell at first, then sat at one level far above zero for the rest of the run: the "
        "model found a shortcut that ignores part of its input (for a language model, the unigram "
        "statistics: the same prediction whatever the context) and the updates no longer move it"
    )
    fix = (
        "check that the model can use its input (`dlzoo doctor` overfits one batch), then lower the "
        "learning rate and warm it up: " + LR_CHANGE
    )
    proposal = None  # after an instability, the instability's own proposal sets the report's cut
    if after is not None:
        cause += f"; it began right after the {after.kind} at {ctx.words(after.start_step)}, which left the model degenerate"
    else:
        evidence["fraction_of_chance"] = level / ctx.ln_c
        cause += (
            f", at {level / ctx.ln_c:.0%} of chance level: too large a learning rate collapses a model "
            "onto such a shortcut within its first steps, and a model that cannot see its input sits there too"
        )
        proposal = (3.0, "the usual first cut", None)
    return [
        Finding(
            "plateau",
            ctx.at(first),
            ctx.at(n - 1),
            "medium",
            evidence,
            cause,
            fix,
            ("sharpness-lr", "lr-schedule", "initialization"),
            lr_proposal=proposal,
        )
    ]


def _plateaus(ctx: _Context) -> list[Finding]:
    loss = ctx.loss[: ctx.usable]
    seg = max(2 * ctx.w, len(loss) // 10)
    if len(loss) < 4 * seg:
        return []
    warm = ctx.warmup_steps()
    findings, flat = [], []
    starts = list(range(0, len(loss) - seg + 1, seg))
    levels = [float(np.median(loss[s : s + seg])) for s in starts]
    for k, s in enumerate(starts):
        third = seg // 3
        a, b = np.median(loss[s : s + third]), np.median(loss[s + seg - third : s + seg])
        in_warmup = warm is not None and ctx.steps[s] < ctx.steps[0] + warm
        flat.append(abs(a - b) / max(abs(levels[k]), ctx.floor) < PLATEAU_FLAT and not in_warmup)
    for k, j in st.spans(flat):
        level = float(np.median(loss[starts[k] : starts[j] + seg]))
        later = levels[j + 1 :]
        if later and min(later) < (1 - PLATEAU_DROP) * level:
            findings.append(
                Finding(
                    "plateau",
                    ctx.at(starts[k]),
                    ctx.at(starts[j] + seg - 1),
                    "low",
                    {
                        "plateau_loss": level,
                        "plateau_steps": ctx.at(starts[j] + seg - 1) - ctx.at(starts[k]),
                        "later_best_segment_loss": float(min(later)),
                    },
                    "the loss stalled for a long stretch and dropped again afterwards: training sat near a "
                    "saddle or flat region, which costs steps but is not a failure",
                    "a higher learning rate or a schedule with a longer warmup and a cosine decay usually "
                    "shortens such stretches; check the initialisation if it happens at the start",
                    ("sharpness-lr", "lr-schedule", "initialization"),
                )
            )
    return findings


def _initial_loss(ctx: _Context) -> list[Finding]:
    if ctx.ln_c is None or not ctx.finite[0]:
        return []
    first = float(ctx.loss[0])
    tolerance = max(INIT_TOLERANCE[0] * ctx.ln_c, INIT_TOLERANCE[1])
    if abs(first - ctx.ln_c) <= tolerance:
        return []
    high = first > ctx.ln_c
    evidence = {"initial_loss": first, "expected": ctx.ln_c, "num_classes": ctx.num_classes, "tolerance": tolerance}
    if high and ctx.grad is not None and np.isfinite(ctx.grad[0]):
        evidence["initial_grad_norm"] = float(ctx.grad[0])
    return [
        Finding(
            "abnormal-initial-loss",
            ctx.at(0),
            ctx.at(0),
            "medium" if high else "high",
            evidence,
            (
                "the first loss is far above ln C: the initial logits are large, so the untrained model is "
                "confidently wrong; the weights (the output layer, or a deep stack whose activations grow "
                "with depth) are initialised too large"
                if high
                else "the first loss is far below ln C: an untrained model cannot beat chance, so the labels leak "
                "into the inputs (e.g. targets not shifted by one) or num_classes is wrong"
            ),
            (
                "initialise with the architecture's own scheme (std 0.02, residual projections scaled by "
                "1/sqrt(2 x layers), the output layer small or zero) and check the logits' scale at step 0 "
                "(`dlzoo doctor` checks the loss at init)"
                if high
                else "check the target shift and that labels are not visible to the model; check num_classes / vocab_size in the meta line"
            ),
            ("initialization", "next-token-prediction"),
        )
    ]


def _overfitting(ctx: _Context) -> list[Finding]:
    steps, val = ctx.run.eval_series("val_loss")
    pairs = [(s, v) for s, v in zip(steps, val) if math.isfinite(v)]
    if len(pairs) < 3:
        return []
    vs = np.array([v for _, v in pairs])
    best = int(np.argmin(vs))
    after = vs[best + 1 :]
    if len(after) < 2 or vs[-1] < (1 + OVERFIT_RISE) * vs[best] or np.any(after[-2:] < (1 + OVERFIT_RISE / 2) * vs[best]):
        return []

    def train_near(step: int) -> float:
        idx = np.flatnonzero((ctx.steps <= step) & ctx.finite)[-ctx.w :]
        return float(np.median(ctx.loss[idx])) if len(idx) else float("nan")

    train_best, train_end = train_near(pairs[best][0]), train_near(pairs[-1][0])
    gap_best, gap_end = vs[best] - train_best, vs[-1] - train_end
    # Overfitting is validation rising while training does not: a training loss that rose by a
    # divergence's margin too is instability, not overfitting.
    if not gap_end > gap_best or not train_end <= train_best + DIVERGENCE_RISE * max(train_best, ctx.floor):
        return []
    rise = vs[-1] / vs[best] - 1
    return [
        Finding(
            "overfitting",
            int(pairs[best][0]),
            int(pairs[-1][0]),
            "high" if rise >= 0.2 else "medium" if rise >= 0.1 else "low",
            {
                "best_val_loss": float(vs[best]),
                "best_val_step": int(pairs[best][0]),
                "final_val_loss": float(vs[-1]),
                "gap_at_best": float(gap_best),
                "gap_at_end": float(gap_end),
            },
            "validation loss rose while training loss kept falling: the model is fitting details of "
            "the training set that do not carry over (its capacity exceeds what the data constrains)",
            f"keep the checkpoint from {ctx.words(int(pairs[best][0]))} (early stopping), and add regularisation: "
            "more weight decay (e.g. x2), dropout 0.1, data augmentation or more data",
            ("generalization-capacity", "dropout", "adamw", "double-descent"),
        )
    ]


def _broken_labels(ctx: _Context) -> list[Finding]:
    """Training improves while validation accuracy stays at chance: what the model learns from the
    training labels does not carry over at all, the signature of labels unrelated to the inputs
    (shuffled, misaligned with their examples, or a different label order in the two splits)."""
    if ctx.num_classes is None or ctx.num_classes < 2:
        return []
    steps, acc = ctx.run.eval_series("val_accuracy")
    acc = [a for a in acc if math.isfinite(a)]
    measured = ctx.progress()
    if len(acc) < 3 or measured is None:
        return []
    chance = 1.0 / ctx.num_classes
    ceiling = CHANCE_ACCURACY[0] * chance + CHANCE_ACCURACY[1]
    progress, error = measured
    if max(acc[len(acc) // 4 :]) > ceiling or progress < BROKEN_PROGRESS + 2 * error:
        return []
    return [
        Finding(
            "broken-labels",
            ctx.at(0),
            ctx.at(ctx.usable - 1),
            "high",
            {
                "val_accuracy_max": max(acc),
                "val_accuracy_last": acc[-1],
                "chance_accuracy": chance,
                "chance_ceiling": ceiling,
                "train_relative_improvement": progress,
            },
            f"the training loss improved by {progress:.0%} while validation accuracy never rose above chance "
            f"(1/{ctx.num_classes} = {_fmt(chance)}): the model memorises the training labels but nothing it "
            "learns predicts a validation label. Labels that do not belong to their inputs (shuffled, "
            "misaligned after a sort or a join, a different class order in the two splits) do exactly this",
            "check a few (input, label) pairs of the training data by eye, that inputs and labels are "
            "shuffled together, and that both splits map class names to the same ids",
            ("generalization-capacity",),
        )
    ]


def _underfitting(ctx: _Context) -> list[Finding]:
    if ctx.ln_c is None:
        return []
    loss = ctx.loss[: ctx.usable]
    q = max(3, len(loss) // 4)
    if len(loss) < 4 * q:
        return []
    tail = loss[-q:]
    level = float(np.median(tail))
    third = max(1, q // 3)
    change = abs(np.median(tail[:third]) - np.median(tail[-third:])) / max(abs(level), 1e-12)
    if not (UNDERFIT_FRACTION * ctx.ln_c <= level < CHANCE_FRACTION * ctx.ln_c and change < 0.02):
        return []
    # Above what a model that ignores its input reaches (the unigram entropy of a language model's
    # data, when the log gives it) and still falling steadily: capacity cannot be the limit, since
    # the output bias alone gets there; the steps are too small.
    baseline = _input_free_loss(ctx.run)
    steady = _steady_descent(ctx) if baseline is not None and level > baseline else None
    if steady is not None:
        steady.update({"final_loss": level, "input_free_loss": baseline, "ln_num_classes": ctx.ln_c})
        return [
            _too_low(
                ctx,
                steady,
                "medium",
                "ending above the loss of a model that ignores its input ("
                + _fmt(baseline)
                + " nats, the unigram entropy) and falling steadily: "
                + STEADY_TEXT,
            )
        ]
    return [
        Finding(
            "underfitting",
            ctx.at(len(loss) - q),
            ctx.at(len(loss) - 1),
            "medium",
            {
                "final_loss": level,
                "ln_num_classes": ctx.ln_c,
                "fraction_of_chance": level / ctx.ln_c,
                "tail_relative_change": float(change),
            },
            "training converged at a loss still above 60% of chance level: the model (or the training "
            "budget and learning rate) cannot fit the training data",
            "increase capacity (width/depth preset), train longer with a higher peak learning rate, and "
            "reduce regularisation (dropout, weight decay, label smoothing)",
            ("generalization-capacity", "inductive-bias"),
        )
    ]


def _lr_too_high(ctx: _Context, unstable: list[Finding]) -> list[Finding]:
    """Attribute instability to the learning rate when the rate was logged."""
    peak = ctx.peak_lr()
    if peak is None or not unstable:
        return []
    first = min(unstable, key=lambda f: f.start_step)
    onset = min(int(np.searchsorted(ctx.steps, first.evidence.get("onset_step", first.start_step))), ctx.n - 1)
    evidence = {"trigger": first.kind, "onset_step": ctx.at(onset), "lr_at_onset": ctx.lr_at(onset) or peak[0], "peak_lr": peak[0]}
    warm = ctx.warmup_steps()
    if warm is not None:
        evidence["warmup_steps"] = warm
    if ctx.in_warmup(onset):
        fix = f"the run became unstable during warmup: {LR_CHANGE}, and keep the warmup"
    elif warm is not None:
        fix = (
            f"the run became unstable at the peak learning rate: {LR_CHANGE}, and lengthen the warmup "
            f"from {warm} to {2 * warm} {ctx.unit}s, then decay with a cosine"
        )
    else:
        total = int(ctx.run.meta.get("total_steps") or ctx.steps[-1] + 1)
        fix = f"{LR_CHANGE}, and add a linear warmup of {max(10, total // 20)} {ctx.unit}s followed by cosine decay to {ctx.unit} {total}"
    return [
        Finding(
            "lr-too-high",
            first.start_step,
            max(f.end_step for f in unstable),
            "high",
            evidence,
            "instability started while the learning rate was at or near its peak: the step size exceeds "
            "the stability limit 2/sharpness of the current region",
            fix,
            ("sharpness-lr", "lr-schedule", "gradient-clipping"),
            lr_proposal=first.lr_proposal,
        )
    ]


# --------------------------------------------------------------------------------------------
# attribution and the report's one learning-rate change


def _blame_other_cause(findings: list[Finding], unstable: list[Finding], culprit: Finding, why: str) -> None:
    """Instability explained by something other than the learning rate: its findings name the
    culprit and stop proposing a learning-rate cut."""
    for f in unstable:
        f.cause = f"{why}; see the {culprit.kind} finding"
        f.fix = f"fix the {culprit.kind} first: {culprit.fix}"
        f.lr_proposal = None


def _apply_lr_advice(ctx: _Context, findings: list[Finding]) -> dict[str, Any] | None:
    """One learning-rate change for the whole report, from the earliest instability's proposal
    (else the earliest proposal), written into every fix that lowers the rate."""
    proposals = [f for f in findings if f.lr_proposal is not None]
    if not proposals:
        for f in findings:
            f.fix = f.fix.replace(LR_CHANGE, "lower the learning rate")
        return None
    unstable = [f for f in proposals if f.kind in UNSTABLE or f.kind == "lr-too-high"]
    chosen = min(unstable or proposals, key=lambda f: (f.start_step, f.kind != "lr-too-high"))
    cut, reason, onset = chosen.lr_proposal
    peak = ctx.peak_lr()
    advice: dict[str, Any] = {"factor": cut, "reason": reason}
    if peak is None:
        text = f"lower the learning rate by a factor of {_fmt(cut)} ({reason})"
    else:
        base = ctx.lr_at(onset) if onset is not None and ctx.in_warmup(onset) and ctx.lr_at(onset) else peak[0]
        target = base / cut
        advice.update(factor=peak[0] / target, peak_lr=peak[0], suggested_peak_lr=target)
        text = f"lower the learning rate from {_fmt(peak[0])} to {_fmt(target)} (a factor of {_fmt(peak[0] / target)}; {reason})"
    advice["text"] = text
    for f in findings:
        f.fix = f.fix.replace(LR_CHANGE, text)
        if f.kind == "divergence":
            f.evidence["lr_factor"] = advice["factor"]
        if f.kind == "lr-too-high" and "suggested_peak_lr" in advice:
            f.evidence["suggested_peak_lr"] = advice["suggested_peak_lr"]
    return advice


def diagnose(run: Run) -> list[Finding]:
    """All findings for a parsed run, ordered by start step."""
    return diagnose_report(run)[0]


def diagnose_report(run: Run) -> tuple[list[Finding], dict[str, Any] | None]:
    """Findings ordered by start step, and the report's learning-rate advice (None when no
    finding lowers the rate): {"factor", "reason", "text", and with a logged rate "peak_lr",
    "suggested_peak_lr"}."""
    ctx = _Context(run)
    initial = _initial_loss(ctx)
    findings = _non_finite(ctx) + initial
    early = _early_instability(ctx)
    diverged = _divergence(ctx)
    spikes = [s for s in _spikes(ctx) if not any(d.start_step <= s.start_step <= d.end_step for d in diverged)]
    findings += early + diverged + spikes
    unstable = [f for f in findings if f.kind in UNSTABLE and f.evidence.get("metric") != "grad_norm"]
    overshoots = [f for f in spikes if f.lr_proposal is not None]  # spikes that were not one bad batch
    if len(overshoots) >= 2:
        unstable += overshoots
    accumulating = _accumulating(ctx)
    findings += accumulating
    init_high = [f for f in initial if f.evidence["initial_loss"] > f.evidence["expected"]]
    if accumulating:
        _blame_other_cause(
            findings,
            unstable,
            accumulating[0],
            "the run became unstable because gradients accumulate across steps (each update "
            "is the sum of all past gradients), not because of the learning rate",
        )
    elif init_high and unstable and _before_recovery(ctx, init_high[0], min(f.start_step for f in unstable)):
        _blame_other_cause(
            findings,
            unstable,
            init_high[0],
            "the instability came while the loss was still far above ln C from an "
            "initialisation that is too large, not from the learning rate",
        )
    else:
        findings += _lr_too_high(ctx, unstable)
    layers = _layer_series(ctx)
    measured = ctx.progress()
    improving = measured is not None and measured[0] > NO_PROGRESS + 2 * measured[1]
    loss_events = early + diverged + spikes + [f for f in findings if f.kind == "non-finite"]
    findings += _gradient_spikes(ctx, layers, loss_events)
    trends = _gradient_trends(ctx, layers, improving)
    if accumulating:  # the growth is the accumulation itself
        trends = [f for f in trends if f.kind != "exploding-gradients"]
    findings += trends
    stuck = [] if accumulating else _stuck(ctx, min(early + diverged, key=lambda f: f.start_step) if early + diverged else None)
    findings += stuck
    # A run that only blew up in its first steps is judged on the rest too (stuck at chance after it).
    if not [f for f in unstable if f.kind != "early-instability"]:
        stalled = [] if stuck else _no_progress(ctx)
        findings += stalled or _plateaus(ctx) + ([] if stuck else _underfitting(ctx))
    broken = _broken_labels(ctx)
    findings += broken
    if not broken:
        findings += _overfitting(ctx)
    if any(f.kind == "lr-too-high" for f in findings):  # one report never says both
        findings = [f for f in findings if f.kind != "lr-too-low"]
    advice = _apply_lr_advice(ctx, findings)
    return sorted(findings, key=lambda f: (f.start_step, KINDS.index(f.kind))), advice


def _before_recovery(ctx: _Context, init: Finding, step: int) -> bool:
    """Whether ``step`` comes before the loss first fell within the initial-loss tolerance of ln C."""
    limit = init.evidence["expected"] + init.evidence["tolerance"]
    recovered = np.flatnonzero(ctx.finite & (ctx.loss <= limit))
    return not len(recovered) or step <= ctx.at(int(recovered[0]))


def diagnose_file(path: str | os.PathLike, format: str | None = None) -> list[Finding]:
    """Findings for a training log in any supported format (``logformats.read_log``)."""
    from .logformats import read_log

    return diagnose(read_log(path, format=format))


def to_json(findings: list[Finding], run: Run | None = None, advice: dict[str, Any] | None = None) -> dict[str, Any]:
    """The documented --json schema (docs/diagnose.md)."""
    data: dict[str, Any] = {"findings": [f.to_dict() for f in findings]}
    if run is not None:
        data.update(
            unit=getattr(run, "unit", "step"), source=getattr(run, "source", "dlzoo-jsonl"), warnings=list(getattr(run, "warnings", []))
        )
    if advice is not None:
        data["learning_rate"] = _jsonable({k: v for k, v in advice.items() if k != "text"})
    return data


PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def plot(run: Run, findings: list[Finding], path: str | os.PathLike, *, overwrite: bool = False, title: str | None = None) -> str:
    """Draw the run and its findings (``diagnose_plot.plot``) to a .png, .svg or .pdf with the
    write policy of ``dlzoo.zoo.files`` (existing folder, no overwrite unless ``overwrite=True``,
    atomic); returns its path. Raises PathError / OutputExistsError."""
    from .diagnose_plot import plot as _plot

    return _plot(run, findings, path, overwrite=overwrite, title=title)
