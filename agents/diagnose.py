"""Training-run diagnosis: read a metrics file, return findings with evidence, cause and fix.

Each detector looks for one pathology with thresholds documented in docs/diagnose.md; each
finding says where it happened (start_step..end_step), how bad it is, the numbers behind it, the
cause in terms of the theory knowledge base, and a fix with numbers computed from the run
(a clipping threshold from the logged gradient norms, a learning-rate factor, a warmup length).

    >>> from dlzoo.agents.diagnose import diagnose_file
    >>> for f in diagnose_file("metrics.jsonl"):                        # doctest: +SKIP
    ...     print(f.kind, f.start_step, f.end_step, f.fix)
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .metrics import Run, read_metrics

KINDS = ("non-finite", "divergence", "loss-spike", "plateau", "overfitting", "underfitting",
         "exploding-gradients", "vanishing-gradients", "lr-too-high", "lr-too-low",
         "abnormal-initial-loss")
SEVERITIES = ("low", "medium", "high")

# Thresholds (docs/diagnose.md explains each and where it comes from).
SPIKE_Z = 6.0                # modified z-score of a value against its trailing window
SPIKE_MIN_EXCESS = 0.10      # ... and at least 10% above the window's median
GRAD_SPIKE_RATIO = 10.0      # a gradient-norm spike is also >= 10x the trailing median (an order of magnitude)
DIVERGENCE_RISE = 0.25       # smoothed loss above its running best by 25% of |best|
NO_PROGRESS = 0.05           # < 5% relative improvement from the first 3 lines to the last tenth
STALLED_Z = 2.0              # a smooth run is stalled when improvement + 2 standard errors < 5%,
NOISY_STALLED_Z = 4.0        # ... a noisy one when improvement < 5% + 4 standard errors
NOISY = 0.10                 # robust std of step-to-step changes / loss level (from second differences)
PLATEAU_FLAT = 0.01          # < 1% change across a segment
PLATEAU_DROP = 0.10          # ... followed by a later drop of > 10%
CHANCE_FRACTION = 0.9        # loss >= 0.9 ln(C): still at chance
UNDERFIT_FRACTION = 0.6      # converged with loss >= 0.6 ln(C)
# |first loss - ln C| > max(0.25 ln C, 1 nat). A nat of slack: torch's default head init
# U(+-1/sqrt(fan_in)) on ResNet's all-positive pooled features gives logits of std ~1, and at some
# seeds a first loss 0.8 nat above ln 10 (the zoo's tiny ResNet, seeds 0-5, every framework:
# 1.94-3.13). An init that is really too large (logit std >= 1.5) lands further out. doctor's
# initial-loss check uses the same rule.
INIT_TOLERANCE = (0.25, 1.0)
OVERFIT_RISE = 0.05          # final validation loss >= 5% above its minimum
VANISH_RATIO = 1e-3          # a gradient norm 1000x below its early level / the other layers
EXPLODE_GROWTH = 10.0        # sustained 10x growth of the smoothed gradient norm
DIVERGENCE_HORIZON = 5       # the learning-rate cut is the loss's growth over the 5 steps after the onset,
LR_CUT_MAX = 100.0           # ... at most 100 (beyond that a learning-rate range test is the fix)
CLIP_PERCENTILE = 90


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

    def to_dict(self) -> dict[str, Any]:
        """The documented JSON schema: exactly these seven keys."""
        cause = self.cause + (f" (theory: {', '.join(self.theory)})" if self.theory else "")
        return {"kind": self.kind, "start_step": int(self.start_step), "end_step": int(self.end_step),
                "severity": self.severity, "evidence": _jsonable(self.evidence), "cause": cause,
                "fix": self.fix}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return round(value, 6) if math.isfinite(value) else value
    if isinstance(value, np.integer):
        return int(value)
    return value


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _window(n: int) -> int:
    """Trailing-window length: a tenth of the run, between 10 and 50 steps."""
    return int(min(50, max(10, n // 10)))


def _past_windows(values: np.ndarray, w: int, include_current: bool) -> np.ndarray:
    """Row i holds the w values before index i (or ending at i), NaN-padded at the start."""
    padded = np.concatenate([np.full(w, np.nan), values])
    windows = np.lib.stride_tricks.sliding_window_view(padded, w)
    return windows[1:] if include_current else windows[:-1]


def _nanmedian(windows: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows at the start are expected
        return np.nanmedian(windows, axis=1)


def _rolling_median(values: np.ndarray, w: int) -> np.ndarray:
    """Median of the last w values up to and including each index."""
    return _nanmedian(_past_windows(np.asarray(values, dtype=float), w, include_current=True))


def _relative_noise(values: np.ndarray) -> float:
    """Robust std of the noise relative to the level, from second differences.

    Second differences cancel a locally linear trend, and divided by the level (a trailing
    5-median) exponential decay or growth leaves a near-constant that subtracting the median
    removes, so neither a steep start nor a blow-up passes for noise: 1.4826 MAD(second
    difference / level) / sqrt(6) estimates the std of independent noise. NaN with fewer than 5
    finite values."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) < 5:
        return math.nan
    level = np.abs(_rolling_median(values, 5)[1:-1])
    relative = np.diff(values, n=2) / np.maximum(level, 1e-12)
    return 1.4826 * float(np.median(np.abs(relative - np.median(relative)))) / math.sqrt(6)


def _robust_z(values: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Robust z-score of each value against the w values before it, and the window's level.

    The level is the median of the last five values of the window; the noise scale is the
    median absolute deviation of the window's second differences (1.4826 MAD / sqrt 6, a
    Gaussian-consistent estimate of the noise std that a smooth, even a curved, trend does not
    inflate), and never less than the whole series' relative noise times the level: a window of
    a few dozen values can look quiet by chance, and a scale estimated from a handful of
    differences must not turn ordinary noise into spikes. This is Iglewicz and Hoaglin's modified
    z-score made robust to the trend of a training curve. NaN where there are fewer than
    max(10, w/2) past values."""
    values = np.asarray(values, dtype=float)
    windows = _past_windows(np.where(np.isfinite(values), values, np.nan), w, include_current=False)
    enough = np.isfinite(windows).sum(axis=1) >= max(10, w // 2)
    level = _nanmedian(windows[:, -5:])
    curvature = np.diff(windows, n=2, axis=1)
    mad = _nanmedian(np.abs(curvature - _nanmedian(curvature)[:, None]))
    scale = 1.4826 * np.nan_to_num(mad) / math.sqrt(6)
    run_noise = np.nan_to_num(_relative_noise(values)) * np.abs(np.nan_to_num(level))
    scale = np.maximum.reduce([scale, run_noise, 1.4826e-3 * np.abs(np.nan_to_num(level)),  # flat windows
                               np.full_like(scale, 1e-12)])
    ok = enough & np.isfinite(values) & np.isfinite(level)
    z = np.where(ok, (values - level) / scale, np.nan)
    return z, np.where(ok, level, np.nan)


def _groups(indices: list[int], gap: int) -> list[list[int]]:
    """Split sorted indices into runs whose members are at most ``gap`` apart."""
    groups: list[list[int]] = []
    for i in indices:
        if groups and i - groups[-1][-1] <= gap:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _spans(mask) -> list[tuple[int, int]]:
    """(first, last) index of every run of consecutive True values."""
    return [(g[0], g[-1]) for g in _groups(np.flatnonzero(mask).tolist(), 1)]


class _Context:
    """Arrays shared by the detectors."""

    def __init__(self, run: Run):
        self.run = run
        self.steps = np.array([r["step"] for r in run.train])
        self.loss = np.array([r["loss"] for r in run.train], dtype=float)
        self.n = len(self.loss)
        self.w = _window(self.n)
        self.finite = np.isfinite(self.loss)
        first_bad = np.flatnonzero(~self.finite)
        self.usable = int(first_bad[0]) if len(first_bad) else self.n  # the finite prefix
        self.lr = self._column("lr")
        self.grad = self._column("grad_norm")
        self.num_classes = run.num_classes
        self.ln_c = math.log(self.num_classes) if self.num_classes and self.num_classes > 1 else None

    def _column(self, name: str) -> np.ndarray | None:
        if not any(name in r for r in self.run.train):
            return None
        return np.array([r.get(name, np.nan) for r in self.run.train], dtype=float)

    def lr_at(self, i: int) -> float | None:
        return None if self.lr is None or not np.isfinite(self.lr[i]) else float(self.lr[i])

    def peak_lr(self) -> tuple[float, int] | None:
        if self.lr is None or not np.isfinite(self.lr).any():
            return None
        i = int(np.nanargmax(self.lr))
        return float(self.lr[i]), i

    def warmup_end(self) -> int | None:
        """Index where the learning rate first reaches 99% of its peak, if it started lower."""
        peak = self.peak_lr()
        if peak is None or not np.isfinite(self.lr[0]) or self.lr[0] >= 0.99 * peak[0]:
            return None
        return int(np.flatnonzero(self.lr >= 0.99 * peak[0])[0])

    def clip_threshold(self) -> float | None:
        if self.grad is None:
            return None
        g = self.grad[np.isfinite(self.grad)]
        if not len(g):
            return None
        z, _ = _robust_z(self.grad, self.w)
        healthy = self.grad[np.isfinite(self.grad) & ~(np.nan_to_num(z) >= SPIKE_Z)]
        return float(np.percentile(healthy if len(healthy) else g, CLIP_PERCENTILE))

    def progress(self) -> tuple[float, float] | None:
        """Relative improvement from the start (median of the first 3 lines: a fast learner is
        already near its floor by the end of the first tenth) to the end (median of the last
        tenth) of the finite prefix, and its standard error from the run's relative noise."""
        loss = self.loss[:self.usable]
        k = max(3, len(loss) // 10)
        if len(loss) < 2 * k:
            return None
        first, last = float(np.median(loss[:3])), float(np.median(loss[-k:]))
        sigma = np.nan_to_num(_relative_noise(loss))
        error = 1.2533 * sigma * math.sqrt(first ** 2 / 3 + last ** 2 / k)  # two medians of noisy values
        scale = max(abs(first), 1e-12)
        return (first - last) / scale, error / scale


def _clip_text(ctx: _Context) -> str:
    c = ctx.clip_threshold()
    return (f"clip the global gradient norm at {_fmt(c)} (the {CLIP_PERCENTILE}th percentile of the logged "
            "norms)" if c is not None else "clip the global gradient norm (log grad_norm to get a threshold)")


def _non_finite(ctx: _Context) -> list[Finding]:
    findings = []
    bad = np.flatnonzero(~ctx.finite)
    if len(bad):
        i = int(bad[0])
        evidence = {"first_bad_step": int(ctx.steps[i]), "value": float(ctx.loss[i]),
                    "non_finite_lines": int(len(bad)), "last_finite_loss": float(ctx.loss[i - 1]) if i else None}
        if ctx.grad is not None and i and np.isfinite(ctx.grad[:i]).any():
            evidence["grad_norm_before"] = float(ctx.grad[i - 1])
        if ctx.lr_at(i) is not None:
            evidence["lr"] = ctx.lr_at(i)
        findings.append(Finding(
            "non-finite", int(ctx.steps[i]), int(ctx.steps[bad[-1]]), "high", evidence,
            "the loss became NaN or infinite: an update overshot (learning rate above the stability "
            "limit 2/sharpness), an overflow in low precision, or a log/division of zero in the loss",
            f"restart from a checkpoint before step {int(ctx.steps[i])}, lower the learning rate "
            f"by a factor of 10, {_clip_text(ctx)}, and with fp16 use dynamic loss scaling or bf16",
            ("sharpness-lr", "gradient-clipping", "mixed-precision")))
    if ctx.grad is not None:
        logged = np.array(["grad_norm" in r for r in ctx.run.train[:ctx.usable]], dtype=bool)
        gbad = np.flatnonzero(logged & ~np.isfinite(ctx.grad[:ctx.usable]))
        if len(gbad):
            findings.append(Finding(
                "non-finite", int(ctx.steps[gbad[0]]), int(ctx.steps[gbad[-1]]), "medium",
                {"metric": "grad_norm", "non_finite_lines": int(len(gbad))},
                "the gradient norm was NaN or infinite while the loss stayed finite: an overflow in the "
                "backward pass (typical of fp16 without loss scaling) or a skipped optimizer step",
                f"use bf16 or dynamic loss scaling, and {_clip_text(ctx)}",
                ("mixed-precision", "gradient-clipping")))
    return findings


def _centred_median3(values: np.ndarray) -> np.ndarray:
    """Median of each value and its two neighbours (the ends repeat): one-step outliers removed,
    no lag."""
    padded = np.pad(np.asarray(values, dtype=float), 1, mode="edge")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, 3), axis=1)


def _in_warmup(ctx: _Context, i: int) -> bool:
    """Whether index i lies in a warmup, with the rate still below 95% of its peak."""
    peak, lr = ctx.peak_lr(), ctx.lr_at(i)
    return ctx.warmup_end() is not None and peak is not None and lr is not None and lr < 0.95 * peak[0]


def _lr_cut(ctx: _Context, onset: int, growth: float) -> tuple[float, str]:
    """How much to lower the learning rate at which instability began (index ``onset``, the loss
    growing ``growth``-fold over the next DIVERGENCE_HORIZON steps, NaN when unknown), and why.

    The faster the loss blows up, the further the rate is past the stability limit, so the cut is
    the growth G itself (a rule of thumb: docs/diagnose.md says why), up to LR_CUT_MAX, and never
    below the floor for the case: 2 (half the rate) during warmup, 10 when a rate without warmup
    breaks in the first tenth of the run, 3 otherwise."""
    if _in_warmup(ctx, onset):
        floor, reason = 2.0, "half the rate at which it broke"
    elif ctx.warmup_end() is None and onset < max(ctx.w, ctx.n // 10):
        floor, reason = 10.0, "a rate that breaks in the first tenth of a run without warmup is off by an order of magnitude"
    else:
        floor, reason = 3.0, "the usual first cut"
    grew = f"the loss grew {_fmt(growth)}x within {DIVERGENCE_HORIZON} steps of the onset"
    if not math.isfinite(growth) or growth <= floor:
        return floor, reason + (f"; {grew}" if math.isfinite(growth) else "")
    if growth > LR_CUT_MAX:
        return LR_CUT_MAX, f"{grew}; beyond {_fmt(LR_CUT_MAX)}x, find the rate with a learning-rate range test"
    return growth, (f"{grew}: the faster a loss blows up, the further the step size is past the "
                    "stability limit 2/sharpness, so the cut grows with it")


def _divergence(ctx: _Context) -> list[Finding]:
    loss = ctx.loss[:ctx.usable]
    if len(loss) < 10:
        return []
    k = max(5, ctx.w // 2)
    smooth = _rolling_median(loss, k)
    best = np.minimum.accumulate(smooth)
    # The running best of a noisy median sits a few standard errors below the typical level;
    # 4 standard errors of a k-point median (1.2533 sigma / sqrt k) keep noise from looking like a rise.
    sigma = float(np.nan_to_num(_relative_noise(loss)))
    margin = 4 * 1.2533 * sigma * np.abs(best) / math.sqrt(k)
    above = smooth - best > DIVERGENCE_RISE * np.abs(best) + margin + 1e-12
    sustain = max(3, ctx.w // 2)
    centred = _centred_median3(loss)
    findings, searched = [], 0
    for i, j in _spans(above):
        if j - i + 1 >= sustain or (j == len(loss) - 1 and j - i + 1 >= 3):
            # The trailing median confirms a rise k/2 steps or more after it began; the onset is
            # the last step (since the previous divergence) where the unlagged loss was still
            # within one noise std of the best smoothed level.
            near_best = np.flatnonzero(centred[searched:i + 1] <= best[i] + sigma * abs(best[i]))
            onset = searched + int(near_best[-1] if len(near_best) else np.argmin(centred[searched:i + 1]))
            ahead = min(onset + DIVERGENCE_HORIZON, len(loss) - 1)
            growth = float(centred[ahead] / centred[onset]) if centred[onset] > 0 and ahead > onset else math.nan
            cut, why = _lr_cut(ctx, onset, growth)
            evidence = {"best_smoothed_loss": float(best[i]), "best_step": int(ctx.steps[np.argmin(smooth[:i + 1])]),
                        "onset_step": int(ctx.steps[onset]), "confirmed_step": int(ctx.steps[i]),
                        "smoothed_loss_at_end": float(smooth[j]), "peak_smoothed_loss": float(smooth[i:j + 1].max()),
                        "rise": float(smooth[i:j + 1].max() - best[i]),
                        "growth": growth if math.isfinite(growth) else None, "growth_steps": ahead - onset,
                        "lr_factor": cut}
            if ctx.lr_at(onset) is not None:
                evidence["lr_at_onset"] = ctx.lr_at(onset)
            findings.append(Finding(
                "divergence", int(ctx.steps[onset]), int(ctx.steps[j]), "high", evidence,
                "the smoothed loss climbed well above its best value and stayed there: updates are "
                "larger than the curvature allows, so the iterate is thrown out of the basin",
                f"restart from the checkpoint at step {int(ctx.steps[onset])}, lower the learning rate by a "
                f"factor of {_fmt(cut)} ({why}) and {_clip_text(ctx)}",
                ("sharpness-lr", "lr-schedule", "gradient-clipping")))
            searched = j + 1
    return findings


def _spikes(ctx: _Context) -> list[Finding]:
    loss = ctx.loss[:ctx.usable]
    z, med = _robust_z(loss, ctx.w)
    excess = (loss - med) / np.maximum(np.abs(med), 1e-12)
    hits = [i for i in range(len(loss)) if z[i] >= SPIKE_Z and excess[i] >= SPIKE_MIN_EXCESS]
    findings = []
    for group in _groups(hits, max(2, ctx.w // 4)):
        peak = max(group, key=lambda i: z[i])
        severity = "high" if excess[peak] >= 1.0 else "medium" if z[peak] >= 2 * SPIKE_Z else "low"
        findings.append(Finding(
            "loss-spike", int(ctx.steps[group[0]]), int(ctx.steps[group[-1]]), severity,
            {"peak_step": int(ctx.steps[peak]), "peak_loss": float(loss[peak]),
             "trailing_median": float(med[peak]), "robust_z": float(z[peak]), "spike_steps": len(group),
             "window": ctx.w},
            "the loss jumped far outside the variation of the preceding window: a step landed on a "
            "region of high curvature (often a rare batch or an outlier gradient entering Adam's moments)",
            f"{_clip_text(ctx)}; if spikes repeat, lower the learning rate by a factor of 2 or lengthen warmup",
            ("sharpness-lr", "gradient-clipping", "adamw")))
    return findings


def _gradients(ctx: _Context) -> list[Finding]:
    findings: list[Finding] = []
    series: list[tuple[str, np.ndarray]] = []
    if ctx.grad is not None:
        series.append(("global", ctx.grad[:ctx.usable]))
    layers = sorted({k for r in ctx.run.train[:ctx.usable] for k in r.get("grad_norms", {})})
    for name in layers:
        series.append((name, np.array([r.get("grad_norms", {}).get(name, np.nan)
                                       for r in ctx.run.train[:ctx.usable]], dtype=float)))
    spikes: dict[int, list[str]] = {}
    for name, g in series:
        if len(g) < 10:
            continue
        z, med = _robust_z(g, ctx.w)
        for i in range(len(g)):
            if z[i] >= SPIKE_Z and g[i] >= GRAD_SPIKE_RATIO * med[i]:
                spikes.setdefault(i, []).append(name)
    for group in _groups(sorted(spikes), max(2, ctx.w // 4)):
        names = sorted({n for i in group for n in spikes[i]})
        g = ctx.grad if ctx.grad is not None else None
        peak = max(group, key=lambda i: g[i]) if g is not None else group[0]
        evidence = {"spike_steps": len(group), "series": names[:10]}
        if g is not None:
            _, med = _robust_z(g[:ctx.usable], ctx.w)
            evidence.update(peak_step=int(ctx.steps[peak]), peak_grad_norm=float(g[peak]),
                            trailing_median=float(med[peak]) if np.isfinite(med[peak]) else None)
        findings.append(Finding(
            "exploding-gradients", int(ctx.steps[group[0]]), int(ctx.steps[group[-1]]),
            "medium" if len(group) > 1 else "low", evidence,
            "gradient norms jumped by more than an order of magnitude over their recent level: the "
            "loss surface is locally very steep (large curvature relative to the step size)",
            _clip_text(ctx).capitalize() + "; if the spikes coincide with loss spikes, also lower the learning rate",
            ("gradient-clipping", "sharpness-lr", "residual-connections")))
    if ctx.grad is not None:
        g = ctx.grad[:ctx.usable]
        g = g[np.isfinite(g)]
        if len(g) >= 3 * ctx.w:
            smooth = _rolling_median(g, ctx.w)
            early = float(np.median(g[:ctx.w]))
            low = np.flatnonzero(smooth[ctx.w:] >= EXPLODE_GROWTH * max(early, 1e-12)) + ctx.w
            if len(low) >= ctx.w:
                findings.append(Finding(
                    "exploding-gradients", int(ctx.steps[low[0]]), int(ctx.steps[low[-1]]), "high",
                    {"early_median_grad_norm": early, "max_smoothed_grad_norm": float(smooth.max()),
                     "growth": float(smooth.max() / max(early, 1e-12))},
                    "the typical gradient norm grew more than tenfold and stayed there: the model is "
                    "moving into ever sharper regions, usually because the learning rate is too high "
                    "for the curvature or the residual stream is growing unchecked",
                    f"{_clip_text(ctx)} and lower the learning rate by a factor of "
                    f"{_fmt(max(2.0, math.sqrt(smooth.max() / max(early, 1e-12))))}",
                    ("sharpness-lr", "gradient-clipping", "initialization")))
            vanish = np.flatnonzero(smooth[ctx.w:] <= VANISH_RATIO * early) + ctx.w
            if len(vanish) >= ctx.w:
                findings.append(Finding(
                    "vanishing-gradients", int(ctx.steps[vanish[0]]), int(ctx.steps[vanish[-1]]), "medium",
                    {"early_median_grad_norm": early, "min_smoothed_grad_norm": float(smooth.min())},
                    "the gradient norm fell more than a thousandfold below its early level: saturated "
                    "units, dead ReLUs or a broken gradient path (missing residual or normalisation)",
                    "check that every parameter gets gradients (`dlzoo doctor`), use residual connections "
                    "and normalisation, and reinitialise with He/GPT-2 scaling",
                    ("residual-connections", "initialization", "layer-norm")))
    if layers:
        medians = {n: float(np.nanmedian(s)) for n, s in series if n != "global" and np.isfinite(s).any()}
        typical = float(np.median(list(medians.values()))) if medians else 0.0
        starved = sorted(n for n, m in medians.items() if typical > 0 and m <= VANISH_RATIO * typical)
        if starved:
            findings.append(Finding(
                "vanishing-gradients", int(ctx.steps[0]), int(ctx.steps[ctx.usable - 1]), "medium",
                {"layers": starved[:10], "layer_median_grad_norms": {n: medians[n] for n in starved[:10]},
                 "median_over_layers": typical},
                "these layers receive gradients a thousand times smaller than the typical layer: they "
                "barely train, usually because their path to the loss is blocked (a dead branch, "
                "saturated activation, a layer not used in the loss, or zero-initialised weights that "
                "never woke up)",
                "check the forward path of the listed layers (`dlzoo doctor` reports parameters without "
                "gradient), and make sure they are part of the loss",
                ("residual-connections", "initialization")))
    return findings


def _no_progress(ctx: _Context, unstable: bool) -> list[Finding]:
    measured = ctx.progress()
    if measured is None or unstable:
        return []
    progress, error = measured
    loss = ctx.loss[:ctx.usable]
    level = float(np.median(loss))
    noise = math.sqrt(2) * float(np.nan_to_num(_relative_noise(loss)))  # std of a step-to-step change / level
    # Each verdict needs evidence for what it claims. "Hardly moved" (smooth runs): the improvement
    # is below 5% with two standard errors to spare, so a run that learned fast and sits at its
    # floor is not called stalled. "Bounces without going down" (noisy runs): the improvement is
    # not four standard errors above 5%, so chance dips of a long noisy run do not pass for progress.
    stalled = (progress < NO_PROGRESS + NOISY_STALLED_Z * error if noise >= NOISY
               else progress + STALLED_Z * error < NO_PROGRESS)
    if not stalled:
        return []
    start, end = int(ctx.steps[0]), int(ctx.steps[ctx.usable - 1])
    evidence = {"relative_improvement": progress, "median_loss": level, "step_noise": noise}
    peak = ctx.peak_lr()
    if peak:
        evidence["peak_lr"] = peak[0]
    if ctx.ln_c is not None and np.median(loss[-max(3, len(loss) // 4):]) >= CHANCE_FRACTION * ctx.ln_c:
        evidence["ln_num_classes"] = ctx.ln_c
        return [Finding(
            "plateau", start, end, "high", evidence,
            f"the loss stayed at chance level (ln {ctx.num_classes} = {_fmt(ctx.ln_c)}): the model is "
            "not learning at all, from a learning rate far off in either direction, labels that do not "
            "match the inputs, or a gradient path that is cut",
            "overfit a single small batch first (`dlzoo doctor` does this); if that works, run a "
            "learning-rate range test over 1e-5..1e-1 and check the labels",
            ("initialization", "sharpness-lr"))]
    if noise >= NOISY:
        lr_text = f"from {_fmt(peak[0])} to {_fmt(peak[0] / 3)}" if peak else "by a factor of 3"
        return [Finding(
            "lr-too-high", start, end, "medium", evidence,
            "the loss bounces from step to step without going down: the steps overshoot along the "
            "sharpest directions (learning rate near or above 2/sharpness), so progress cancels out",
            f"lower the learning rate {lr_text} and {_clip_text(ctx)}", ("sharpness-lr", "lr-schedule"))]
    lr_text = f"from {_fmt(peak[0])} to {_fmt(peak[0] * 10)}" if peak else "by a factor of 10"
    return [Finding(
        "lr-too-low", start, end, "medium", evidence,
        "the loss moves smoothly but hardly at all: each step is far smaller than the curvature "
        "would allow, so training crawls",
        f"raise the learning rate {lr_text} (or run a learning-rate range test, Smith 2017)",
        ("sharpness-lr", "lr-schedule"))]


def _plateaus(ctx: _Context) -> list[Finding]:
    loss = ctx.loss[:ctx.usable]
    seg = max(2 * ctx.w, len(loss) // 10)
    if len(loss) < 4 * seg:
        return []
    warm = ctx.warmup_end()
    peak = ctx.peak_lr()
    findings, flat = [], []
    starts = list(range(0, len(loss) - seg + 1, seg))
    levels = [float(np.median(loss[s:s + seg])) for s in starts]
    for k, s in enumerate(starts):
        third = seg // 3
        a, b = np.median(loss[s:s + third]), np.median(loss[s + seg - third:s + seg])
        in_warmup = peak is not None and warm is not None and s < warm
        flat.append(abs(a - b) / max(abs(levels[k]), 1e-12) < PLATEAU_FLAT and not in_warmup)
    for k, j in _spans(flat):
        level = float(np.median(loss[starts[k]:starts[j] + seg]))
        later = levels[j + 1:]
        if later and min(later) < (1 - PLATEAU_DROP) * level:
            findings.append(Finding(
                "plateau", int(ctx.steps[starts[k]]), int(ctx.steps[starts[j] + seg - 1]), "low",
                {"plateau_loss": level, "plateau_steps": int(ctx.steps[starts[j] + seg - 1] - ctx.steps[starts[k]]),
                 "later_best_segment_loss": float(min(later))},
                "the loss stalled for a long stretch and dropped again afterwards: training sat near a "
                "saddle or flat region, which costs steps but is not a failure",
                "a higher learning rate or a schedule with a longer warmup and a cosine decay usually "
                "shortens such stretches; check the initialisation if it happens at the start",
                ("sharpness-lr", "lr-schedule", "initialization")))
    return findings


def _initial_loss(ctx: _Context) -> list[Finding]:
    if ctx.ln_c is None or not ctx.finite[0]:
        return []
    first = float(ctx.loss[0])
    tolerance = max(INIT_TOLERANCE[0] * ctx.ln_c, INIT_TOLERANCE[1])
    if abs(first - ctx.ln_c) <= tolerance:
        return []
    high = first > ctx.ln_c
    return [Finding(
        "abnormal-initial-loss", int(ctx.steps[0]), int(ctx.steps[0]), "medium" if high else "high",
        {"initial_loss": first, "expected": ctx.ln_c, "num_classes": ctx.num_classes, "tolerance": tolerance},
        ("the first loss is far above ln C: the initial logits are large, so the untrained model is "
         "confidently wrong; the output layer is initialised too large" if high else
         "the first loss is far below ln C: an untrained model cannot beat chance, so the labels leak "
         "into the inputs (e.g. targets not shifted by one) or num_classes is wrong"),
        ("initialise the output layer with a small std (0.02) or zero and check the logits' scale"
         if high else "check the target shift and that labels are not visible to the model; check "
                      "num_classes / vocab_size in the meta line"),
        ("initialization", "next-token-prediction"))]


def _overfitting(ctx: _Context) -> list[Finding]:
    steps, val = ctx.run.eval_series("val_loss")
    pairs = [(s, v) for s, v in zip(steps, val) if math.isfinite(v)]
    if len(pairs) < 3:
        return []
    vs = np.array([v for _, v in pairs])
    best = int(np.argmin(vs))
    after = vs[best + 1:]
    if len(after) < 2 or vs[-1] < (1 + OVERFIT_RISE) * vs[best] or np.any(after[-2:] < (1 + OVERFIT_RISE / 2) * vs[best]):
        return []

    def train_near(step: int) -> float:
        idx = np.flatnonzero((ctx.steps <= step) & ctx.finite)[-ctx.w:]
        return float(np.median(ctx.loss[idx])) if len(idx) else float("nan")

    gap_best = vs[best] - train_near(pairs[best][0])
    gap_end = vs[-1] - train_near(pairs[-1][0])
    if not gap_end > gap_best:
        return []
    rise = vs[-1] / vs[best] - 1
    return [Finding(
        "overfitting", int(pairs[best][0]), int(pairs[-1][0]),
        "high" if rise >= 0.2 else "medium" if rise >= 0.1 else "low",
        {"best_val_loss": float(vs[best]), "best_val_step": int(pairs[best][0]), "final_val_loss": float(vs[-1]),
         "gap_at_best": float(gap_best), "gap_at_end": float(gap_end)},
        "validation loss rose while training loss kept falling: the model is fitting details of "
        "the training set that do not carry over (its capacity exceeds what the data constrains)",
        f"keep the checkpoint from step {int(pairs[best][0])} (early stopping), and add regularisation: "
        "more weight decay (e.g. x2), dropout 0.1, data augmentation or more data",
        ("generalization-capacity", "dropout", "adamw", "double-descent"))]


def _underfitting(ctx: _Context) -> list[Finding]:
    if ctx.ln_c is None:
        return []
    loss = ctx.loss[:ctx.usable]
    q = max(3, len(loss) // 4)
    if len(loss) < 4 * q:
        return []
    tail = loss[-q:]
    level = float(np.median(tail))
    third = max(1, q // 3)
    change = abs(np.median(tail[:third]) - np.median(tail[-third:])) / max(abs(level), 1e-12)
    if not (UNDERFIT_FRACTION * ctx.ln_c <= level < CHANCE_FRACTION * ctx.ln_c and change < 0.02):
        return []
    return [Finding(
        "underfitting", int(ctx.steps[len(loss) - q]), int(ctx.steps[len(loss) - 1]), "medium",
        {"final_loss": level, "ln_num_classes": ctx.ln_c, "fraction_of_chance": level / ctx.ln_c,
         "tail_relative_change": float(change)},
        "training converged at a loss still above 60% of chance level: the model (or the training "
        "budget and learning rate) cannot fit the training data",
        "increase capacity (width/depth preset), train longer with a higher peak learning rate, and "
        "reduce regularisation (dropout, weight decay, label smoothing)",
        ("generalization-capacity", "inductive-bias"))]


def _lr_too_high(ctx: _Context, unstable: list[Finding]) -> list[Finding]:
    """Attribute instability to the learning rate when the rate was logged."""
    peak = ctx.peak_lr()
    if peak is None or not unstable:
        return []
    first = min(unstable, key=lambda f: f.start_step)
    onset = min(int(np.searchsorted(ctx.steps, first.evidence.get("onset_step", first.start_step))), ctx.n - 1)
    lr_onset = ctx.lr_at(onset) or peak[0]
    warm = ctx.warmup_end()
    evidence = {"trigger": first.kind, "onset_step": int(ctx.steps[onset]), "lr_at_onset": lr_onset,
                "peak_lr": peak[0]}
    if warm is not None:
        evidence["warmup_steps"] = int(ctx.steps[warm])
    cut, why = _lr_cut(ctx, onset, first.evidence.get("growth") or math.nan)
    if _in_warmup(ctx, onset):
        target = lr_onset / cut
        fix = (f"the run became unstable during warmup at lr {_fmt(lr_onset)}: set the peak learning rate "
               f"to {_fmt(target)} (a factor of {_fmt(peak[0] / target)} lower; {why}) and keep the warmup")
    elif warm is not None:
        target = peak[0] / cut
        fix = (f"the run became unstable at the peak learning rate: lower it from {_fmt(peak[0])} to "
               f"{_fmt(target)} (factor {_fmt(cut)}; {why}) and lengthen the warmup from {int(ctx.steps[warm])} "
               f"to {2 * int(ctx.steps[warm])} steps, then decay with a cosine")
    else:
        target = peak[0] / cut
        total = int(ctx.run.meta.get("total_steps") or ctx.steps[-1] + 1)
        fix = (f"lower the learning rate from {_fmt(peak[0])} to {_fmt(target)} (factor {_fmt(cut)}; {why}) "
               f"and add a linear warmup of {max(10, total // 20)} steps followed by cosine decay to step {total}")
    evidence["suggested_peak_lr"] = target
    return [Finding(
        "lr-too-high", first.start_step, max(f.end_step for f in unstable), "high", evidence,
        "instability started while the learning rate was at or near its peak: the step size exceeds "
        "the stability limit 2/sharpness of the current region", fix,
        ("sharpness-lr", "lr-schedule", "gradient-clipping"))]


def diagnose(run: Run) -> list[Finding]:
    """All findings for a parsed run, ordered by start step."""
    ctx = _Context(run)
    findings = _non_finite(ctx) + _initial_loss(ctx)
    diverged = _divergence(ctx)
    spikes = [s for s in _spikes(ctx)
              if not any(d.start_step <= s.start_step <= d.end_step for d in diverged)]
    findings += diverged + spikes
    unstable = [f for f in findings if f.kind in ("non-finite", "divergence")
                and f.evidence.get("metric") != "grad_norm"]
    if len(spikes) >= 2:
        unstable += spikes
    findings += _lr_too_high(ctx, unstable)
    findings += _gradients(ctx)
    if not unstable:
        stalled = _no_progress(ctx, unstable=len(spikes) >= 2)  # one spike is noise, not instability
        findings += stalled or _plateaus(ctx) + _underfitting(ctx)
    findings += _overfitting(ctx)
    return sorted(findings, key=lambda f: (f.start_step, KINDS.index(f.kind)))


def diagnose_file(path: str | os.PathLike) -> list[Finding]:
    return diagnose(read_metrics(path))


def to_json(findings: list[Finding]) -> dict[str, Any]:
    return {"findings": [f.to_dict() for f in findings]}


PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def plot(run: Run, findings: list[Finding], path: str | os.PathLike, *, overwrite: bool = False) -> str:
    """Loss (and validation loss), learning rate and gradient norm over steps, with each finding
    shaded over its step range and labelled with its kind. Writes a .png, .svg or .pdf (by the
    suffix) with the write policy of ``dlzoo.zoo.files`` (existing folder, no overwrite unless
    ``overwrite=True``, atomic); returns its path. Raises PathError / OutputExistsError."""
    from ..zoo.files import check_output_file, write_atomic

    check_output_file(path, overwrite=overwrite, suffixes=PLOT_SUFFIXES, what="plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ctx = _Context(run)
    panels = [("loss", ctx.loss)] + [(n, a) for n, a in (("grad_norm", ctx.grad), ("lr", ctx.lr)) if a is not None]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.6 * len(panels) + 0.6), sharex=True, squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, (name, values) in zip(axes[:, 0], panels):
        ax.plot(ctx.steps, np.where(np.isfinite(values), values, np.nan), lw=1, label=name)
        if name == "loss":
            vs, vv = run.eval_series("val_loss")
            if vs:
                ax.plot(vs, vv, "o-", ms=3, lw=1, label="val_loss")
            for s in ctx.steps[~ctx.finite]:
                ax.axvline(s, color="red", lw=0.5, alpha=0.5)
        if name == "grad_norm" and np.nanmin(np.where(values > 0, values, np.nan)) > 0:
            ax.set_yscale("log")
        for k, f in enumerate(findings):
            colour = colours(KINDS.index(f.kind) % 10)
            ax.axvspan(f.start_step, max(f.end_step, f.start_step + 0.5), color=colour, alpha=0.15)
            if name == "loss":
                ax.annotate(f.kind, (f.start_step, 1.0 - 0.09 * (k % 8)), xycoords=("data", "axes fraction"),
                            fontsize=7, color=colour, va="top")
        ax.set_ylabel(name)
        ax.legend(loc="upper right", fontsize=7)
    axes[-1, 0].set_xlabel("step")
    axes[0, 0].set_title(f"{len(findings)} finding(s)" if findings else "no findings")
    fig.tight_layout()
    try:
        written = write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100), overwrite=overwrite,
                               suffixes=PLOT_SUFFIXES, what="plot")
    finally:
        plt.close(fig)
    return os.fspath(written)
