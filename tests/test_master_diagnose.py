"""diagnose on synthetic runs: healthy runs of many shapes give no findings; injected pathologies
(hypothesis-drawn positions and magnitudes) are found at the right steps; bad files fail cleanly."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, example, given, settings, strategies as st

from dlzoo.agents.diagnose import KINDS, SEVERITIES, diagnose, to_json
from dlzoo.agents.metrics import MetricsError, MetricsLogger, parse_lines, read_metrics

# The detectors are statistical, so every property is checked on random runs over its strategy's
# full range. CI runs a fixed (derandomized) set of 50 examples per property, plus the @example
# cases that once sat on a threshold. The thresholds were tuned until every property passed
# random sweeps with derandomize=False: 1000 examples per property, then 2000, with no failure.
# DLZOO_DIAGNOSE_SWEEP=N runs such a sweep, N fresh random examples per property (6-7 minutes
# on 2 cores):
#     DLZOO_DIAGNOSE_SWEEP=1000 python -m pytest -n 2 tests/test_master_diagnose.py --hypothesis-show-statistics
SWEEP = int(os.environ.get("DLZOO_DIAGNOSE_SWEEP", "0"))
SETTINGS = settings(
    max_examples=SWEEP or 50, derandomize=not SWEEP, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def healthy(
    n=400, L0=5.0, floor=0.3, tau=0.15, noise=0.02, warmup=0, g0=1.0, seed=0, num_classes=None, evals=True, lr=1e-3, gap=0.05
) -> list[dict]:
    """A run that learns: loss decays towards floor*L0 at a speed set by the cumulative learning
    rate (linear warmup, then cosine), with multiplicative noise; gradient norms log-normal
    around a slowly decaying level; validation loss a constant gap above the trend."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    sched = np.where(t < warmup, (t + 1) / max(warmup, 1), 0.5 * (1 + np.cos(np.pi * (t - warmup) / max(n - warmup, 1))))
    sched = np.maximum(sched, 0.05)
    trend = L0 * floor + L0 * (1 - floor) * np.exp(-np.cumsum(sched) / (tau * n))
    loss = trend * (1 + noise * rng.standard_normal(n))
    grad = g0 * (0.4 + 0.6 * np.exp(-t / n)) * np.exp(0.2 * rng.standard_normal(n))
    lines = [{"type": "meta", "num_classes": num_classes}] if num_classes else []
    lines += [
        {"type": "train", "step": int(i), "loss": float(loss[i]), "lr": float(lr * sched[i]), "grad_norm": float(grad[i])} for i in range(n)
    ]
    if evals:
        lines += [
            {"type": "eval", "step": int(i), "val_loss": float(trend[i] * (1 + gap) * (1 + 0.005 * rng.standard_normal()))}
            for i in range(n // 10, n, n // 10)
        ]
    return lines


def run_of(lines):
    return parse_lines([json.dumps(line) for line in lines])


def train_index(lines, step):
    return next(k for k, line in enumerate(lines) if line["type"] == "train" and line["step"] == step)


def kinds(findings):
    return [f.kind for f in findings]


shapes = st.fixed_dictionaries(
    {
        "n": st.integers(60, 600),
        "L0": st.floats(0.5, 10.0),
        "floor": st.floats(0.02, 0.7),
        "tau": st.floats(0.02, 0.4),
        "noise": st.floats(0.0, 0.04),
        "g0": st.floats(0.01, 50.0),
        "seed": st.integers(0, 10_000),
        "gap": st.floats(0.0, 0.3),
        "lr": st.floats(1e-5, 1.0),
    }
)


@SETTINGS
@given(shape=shapes, warmup_fraction=st.floats(0.0, 0.1))
# A 60-step run that converged within its first steps (once read as lr-too-low), and one whose
# 10-step spike window looked quiet by chance (once read as a loss spike).
@example(shape=dict(n=60, L0=1.0, floor=0.6875, tau=0.0234375, noise=0.0, g0=1.0, seed=0, gap=0.0, lr=1.0), warmup_fraction=0.0)
@example(shape=dict(n=60, L0=3.75, floor=0.466, tau=0.375, noise=0.0274, g0=18.4, seed=5563, gap=0.25, lr=0.855), warmup_fraction=0.0)
# A slow start in warmup whose noise once read as an early instability (a minimum is biased low).
@example(shape=dict(n=272, L0=1.0, floor=0.5, tau=0.25, noise=0.0390625, g0=1.0, seed=312, gap=0.0, lr=1.0), warmup_fraction=0.0625)
@example(
    shape=dict(n=390, L0=1.0, floor=0.625, tau=0.375, noise=0.0390625, g0=1.0, seed=566, gap=0.0, lr=1.0), warmup_fraction=0.0
)  # a 4-noise-std draw in the first steps once read as an early instability
def test_healthy_runs_have_no_findings(shape, warmup_fraction):
    lines = healthy(warmup=int(warmup_fraction * shape["n"]), **shape)
    assert diagnose(run_of(lines)) == []


@SETTINGS
@given(classes=st.sampled_from([2, 10, 100, 256, 50257]), seed=st.integers(0, 1000), n=st.integers(100, 600))
def test_healthy_runs_starting_at_ln_classes_have_no_findings(classes, seed, n):
    lines = healthy(n=n, L0=math.log(classes), floor=0.2, seed=seed, num_classes=classes)
    assert diagnose(run_of(lines)) == []


@SETTINGS
@given(shape=shapes, where=st.floats(0.2, 0.95), size=st.floats(0.8, 20.0), width=st.integers(1, 3))
# A doubling on a noise-free curve still falling fast (once missed: the curve's bend inflated the scale).
@example(shape=dict(n=60, L0=1.0, floor=0.03125, tau=0.0625, noise=0.0, g0=1.0, seed=0, gap=0.0, lr=1.0), where=0.25, size=1.0, width=1)
# A spike 20x above a loss near zero on the same steep curve.
@example(
    shape=dict(n=60, L0=1.0, floor=0.0234375, tau=0.046875, noise=0.0, g0=1.0, seed=0, gap=0.0, lr=1.0), where=0.203125, size=20.0, width=1
)
def test_loss_spike_found_at_its_step(shape, where, size, width):
    lines = healthy(**shape)
    n = shape["n"]
    step = int(where * n)
    # Near a loss of zero, relative measures use a floor of 10% of the starting loss (docs/diagnose.md):
    # a jump smaller than half that floored level is a wiggle, not reported by design.
    start = float(np.median([line["loss"] for line in lines[:3]]))
    level = lines[train_index(lines, step)]["loss"]
    assume(size * level >= 0.5 * max(level, 0.1 * start))
    for s in range(step, min(n, step + width)):
        lines[train_index(lines, s)]["loss"] *= 1 + size
    spikes = [f for f in diagnose(run_of(lines)) if f.kind in ("loss-spike", "divergence")]
    assert spikes and any(f.start_step <= step <= f.end_step for f in spikes), spikes


@SETTINGS
@given(shape=shapes, where=st.floats(0.0, 0.99), value=st.sampled_from([math.nan, math.inf, -math.inf]))
def test_non_finite_found_at_its_step(shape, where, value):
    lines = healthy(**shape)
    step = int(where * shape["n"])
    for s in range(step, shape["n"]):
        lines[train_index(lines, s)]["loss"] = value
    found = [f for f in diagnose(run_of(lines)) if f.kind == "non-finite"]
    assert found and found[0].start_step == step and found[0].severity == "high"


@SETTINGS
@given(shape=shapes, where=st.floats(0.3, 0.8), rate=st.floats(2.0, 20.0))
# Growth injected while the trend still falls (the rise starts ~100 steps later), and a rise that
# is small beside the progress made (once hidden by a 5%-of-progress term in the threshold).
@example(shape=dict(n=600, L0=8.5, floor=0.02, tau=0.16, noise=0.027, g0=13.7, seed=0, gap=0.0, lr=0.17), where=0.41, rate=2.0)
@example(shape=dict(n=495, L0=4.2, floor=0.02, tau=0.03, noise=0.017, g0=11.2, seed=4155, gap=0.0, lr=0.54), where=0.707, rate=2.0)
# A rise still growing at the very end, above the threshold for its last 2 steps only.
@example(shape=dict(n=60, L0=1.0, floor=0.03125, tau=0.1875, noise=0.0390625, g0=1.0, seed=60, gap=0.0, lr=1.0), where=0.796875, rate=2.0)
# A loss near zero (below the floor): the onset band once used the floored noise as if relative to the loss.
@example(shape=dict(n=239, L0=1.0, floor=0.0234375, tau=0.03125, noise=0.03125, g0=1.0, seed=7181, gap=0.0, lr=1.0), where=0.625, rate=2.0)
def test_divergence_found_where_it_starts(shape, where, rate):
    n = max(shape["n"], 200)
    lines = healthy(**{**shape, "n": n})
    onset = int(where * n)
    growth = np.exp(rate * np.maximum(np.arange(n) - onset, 0) / n)
    for s in range(onset, n):
        lines[train_index(lines, s)]["loss"] *= growth[s]
    # The loss starts rising where the injected growth overtakes the healthy decay, not at `onset`:
    # while the trend still falls faster, the noise-free loss keeps going down. Past its minimum
    # it rises slowly at first, and only leaves its noise band (one noise std above the minimum)
    # some steps later; any step in between is where the rise began, to within the noise.
    trend = np.array([line["loss"] for line in healthy(**{**shape, "n": n, "noise": 0.0}) if line["type"] == "train"])
    clean = (trend * growth)[onset:]
    lowest = onset + int(np.argmin(clean))
    emerged = onset + int(np.flatnonzero(clean <= clean.min() * (1 + shape["noise"]))[-1])
    found = [f for f in diagnose(run_of(lines)) if f.kind == "divergence"]
    window = min(50, max(10, n // 10))
    assert found and lowest - window <= found[0].start_step <= emerged + window, (lowest, emerged, found)
    assert found[0].end_step >= n - 1 - window and found[0].evidence["onset_step"] == found[0].start_step
    assert "lr-too-high" in kinds(diagnose(run_of(lines)))


@SETTINGS
@given(
    n=st.integers(60, 600),
    L0=st.floats(0.5, 10.0),
    noise=st.floats(0.0, 0.04),
    seed=st.integers(0, 10_000),
    start=st.integers(0, 1),
    rate=st.floats(0.1, 1.0),
)
def test_divergence_from_the_first_step_is_cut_by_its_growth(n, L0, noise, seed, start, rate):
    """The loss grows e^rate-fold per step from step `start` on (up to 1e4 times, where a real run
    would overflow). A rate of at least 0.1 is 2.5 noise std or more, so the rise is visible from
    its first step. The onset must be found within 2 steps, and the learning-rate cut must be at
    least the loss's growth over the 5 steps after it (capped at 100), so a faster blow-up never
    gets a milder cut."""

    def blow_up(rate):
        lines = healthy(n=n, L0=L0, floor=1.0, noise=noise, seed=seed, evals=False)
        for s in range(start, n):
            lines[train_index(lines, s)]["loss"] *= math.exp(min(rate * (s - start), math.log(1e4)))
        found = {f.kind: f for f in diagnose(run_of(lines))}
        assert {"divergence", "lr-too-high"} <= set(found), found
        diverged, too_high = found["divergence"], found["lr-too-high"]
        assert abs(diverged.start_step - start) <= 2 and diverged.evidence["onset_step"] == diverged.start_step
        cut = diverged.evidence["lr_factor"]
        # One learning-rate change per report: the same sentence in every fix that lowers the rate.
        sentence = f"(a factor of {cut:.3g};"
        assert all(sentence in f.fix for f in found.values() if "learning rate from" in f.fix)
        assert sentence in diverged.fix and sentence in too_high.fix
        assert too_high.evidence["suggested_peak_lr"] == pytest.approx(too_high.evidence["peak_lr"] / cut)
        return cut

    slow, fast = blow_up(rate), blow_up(2 * rate + 0.3)
    # An onset found a step early leaves 4 growing steps in the 5-step horizon; the medians the
    # growth is read from carry up to 4 noise std each.
    assert slow >= min(100.0, math.exp(4 * rate) / (1 + 4 * noise) ** 2 * (1 - 1e-9))
    assert slow <= max(10.0, math.exp(5 * rate) * (1 + 4 * noise) ** 2 * (1 + 1e-9))
    assert fast > slow or fast == 100.0 or fast == slow == 10.0, (slow, fast)


@SETTINGS
@given(shape=shapes, where=st.floats(0.2, 0.6), rise=st.floats(0.15, 1.0))
@example(
    shape=dict(n=294, L0=1.0, floor=0.5, tau=0.0625, noise=0.03125, g0=1.0, seed=294, gap=0.0, lr=1.0), where=0.5, rise=1.0
)  # a converged training loss 3 standard errors higher at the end by chance
def test_overfitting_found_after_the_best_validation_step(shape, where, rise):
    n = shape["n"]
    lines = healthy(**shape)
    best = int(where * n)
    evals = [line for line in lines if line["type"] == "eval"]
    anchor = max((line for line in evals if line["step"] <= best), key=lambda line: line["step"])
    best, v0 = anchor["step"], anchor["val_loss"]
    for line in evals:
        if line["step"] > best:
            line["val_loss"] = v0 * (1 + rise * (line["step"] - best) / (n - best))
    found = [f for f in diagnose(run_of(lines)) if f.kind == "overfitting"]
    # On a converged (flat) validation curve any earlier evaluation may hold the minimum by noise,
    # so the finding must start at or before the injected turn and cover the whole rise.
    assert found and found[0].start_step <= best and found[0].end_step == evals[-1]["step"], found
    assert found[0].evidence["best_val_loss"] <= v0
    assert f"step {found[0].start_step}" in found[0].fix


@SETTINGS
@given(shape=shapes, where=st.floats(0.2, 0.95), factor=st.floats(20.0, 1e4))
def test_gradient_explosion_found_at_its_step(shape, where, factor):
    lines = healthy(**shape)
    step = int(where * shape["n"])
    # factor times the recent typical norm: scaling the step's own log-normal draw would let a low
    # draw (4 sigma is a factor 2) shrink a 20x spike below the detector's 10x rule.
    recent = [lines[train_index(lines, s)]["grad_norm"] for s in range(step - 10, step)]
    lines[train_index(lines, step)]["grad_norm"] = factor * float(np.median(recent))
    found = [f for f in diagnose(run_of(lines)) if f.kind == "exploding-gradients"]
    assert found and found[0].start_step <= step <= found[0].end_step
    clip = float(found[0].fix.split("at ")[1].split(" ")[0])
    norms = sorted(line["grad_norm"] for line in lines if line["type"] == "train")
    assert norms[0] <= clip <= norms[-1] / factor * 1.01 or clip < norms[-1]


@SETTINGS
@given(shape=shapes, ratio=st.floats(1e-7, 1e-4))
def test_starved_layer_named(shape, ratio):
    lines = healthy(**shape)
    for line in lines:
        if line["type"] == "train":
            g = line["grad_norm"]
            line["grad_norms"] = {"blocks.0.attn": g / 2, "blocks.1.attn": g / 3, "head": g / 4, "blocks.2.mlp": g * ratio}
    found = [f for f in diagnose(run_of(lines)) if f.kind == "vanishing-gradients"]
    assert found and found[0].evidence["layers"] == ["blocks.2.mlp"]


@SETTINGS
@given(seed=st.integers(0, 1000), n=st.integers(100, 800), noise=st.floats(0.3, 0.6))
@example(seed=831, n=209, noise=0.5)  # once read as healthy: chance "progress" between two medians
@example(seed=2, n=288, noise=0.5)  # once also "lr-too-low" (a chance fall in the last half)
@example(seed=982, n=629, noise=0.5)  # once also a "stuck" plateau after a chance divergence
@example(seed=95, n=132, noise=0.5)  # once read as lr-too-low (a chance 14% "fall")
def test_oscillation_without_progress_is_lr_too_high(seed, n, noise):
    lines = healthy(n=n, floor=1.0, noise=noise, seed=seed, evals=False)
    found = diagnose(run_of(lines))
    # Noise this heavy may also cross the divergence, spike or early-instability thresholds; the verdict stays lr-too-high.
    assert "lr-too-high" in kinds(found) and set(kinds(found)) <= {"lr-too-high", "divergence", "loss-spike", "early-instability"}
    assert all("lower the learning rate" in f.fix for f in found if f.kind == "lr-too-high")


@SETTINGS
@given(seed=st.integers(0, 1000), n=st.integers(100, 800), lr=st.floats(1e-7, 1e-3))
def test_flat_smooth_run_is_lr_too_low_with_a_factor(seed, n, lr):
    lines = healthy(n=n, floor=0.99, noise=0.001, seed=seed, lr=lr, evals=False)
    found = diagnose(run_of(lines))
    assert kinds(found) == ["lr-too-low"]
    assert f"to {lr * 10:.3g}" in found[0].fix


@SETTINGS
@given(seed=st.integers(0, 1000), classes=st.sampled_from([10, 100, 1000]), factor=st.floats(1.8, 5.0))
def test_abnormal_initial_loss(seed, classes, factor):
    lines = healthy(L0=factor * math.log(classes), floor=0.05, seed=seed, num_classes=classes)
    found = diagnose(run_of(lines))
    assert kinds(found)[0] == "abnormal-initial-loss" and found[0].start_step == 0


@pytest.mark.parametrize("excess, flagged", [(0.8, False), (-0.8, False), (1.3, True), (-1.3, True)])
def test_initial_loss_slack_is_one_nat_for_ten_classes(excess, flagged):
    """A default-initialised ResNet starts up to 0.8 nat above ln 10 (diagnose.INIT_TOLERANCE)."""
    lines = healthy(L0=math.log(10) + excess, floor=0.05, noise=0.0, num_classes=10)
    assert ("abnormal-initial-loss" in kinds(diagnose(run_of(lines)))) is flagged


def test_plateau_in_the_middle_and_at_chance():
    n, rng = 600, np.random.default_rng(0)
    t = np.arange(n)
    loss = np.where(t < 200, 3 - t / 200, np.where(t < 400, 2.0, 2.0 - (t - 400) / 200)) * (1 + 0.002 * rng.standard_normal(n))
    lines = [{"step": int(i), "loss": float(v), "lr": 1e-3} for i, v in enumerate(loss)]
    found = [f for f in diagnose(run_of(lines)) if f.kind == "plateau"]
    assert found and 180 <= found[0].start_step <= 260 and 340 <= found[0].end_step <= 420
    stuck = [{"type": "meta", "num_classes": 10}] + [{"step": i, "loss": math.log(10) * (1 + 0.001 * math.sin(i))} for i in range(200)]
    assert kinds(diagnose(run_of(stuck))) == ["plateau"]


def test_underfitting_against_ln_classes():
    lines = healthy(L0=math.log(100), floor=0.7, tau=0.05, num_classes=100, evals=False)
    assert kinds(diagnose(run_of(lines))) == ["underfitting"]


def test_json_schema_and_vocabulary(tmp_path):
    lines = healthy(seed=3)
    lines[train_index(lines, 250)]["loss"] = math.nan
    data = to_json(diagnose(run_of(lines)))
    assert set(data) == {"findings"} and data["findings"]
    for f in data["findings"]:
        assert set(f) == {"kind", "start_step", "end_step", "severity", "evidence", "cause", "fix"}
        assert f["kind"] in KINDS and f["severity"] in SEVERITIES and f["start_step"] <= f["end_step"]
    json.dumps(data, allow_nan=True)


def test_logger_round_trip_with_non_finite_values(tmp_path):
    path = tmp_path / "m.jsonl"
    with MetricsLogger(path, num_classes=10, total_steps=3) as log:
        log.log(step=0, loss=np.float32(2.3), lr=1e-3, grad_norm=0.5, grad_norms={"head": 0.1}, throughput=100.0)
        log.log(step=1, loss=float("nan"), lr=1e-3, grad_norm=float("inf"))
        log.log_eval(step=1, val_loss=2.4, val_accuracy=0.1)
    text = path.read_text()
    assert "NaN" in text and "Infinity" in text
    run = read_metrics(path)
    assert run.num_classes == 10 and len(run.train) == 2 and run.eval[0]["val_accuracy"] == 0.1
    assert math.isnan(run.train[1]["loss"]) and run.train[0]["grad_norms"] == {"head": pytest.approx(0.1)}


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "no training lines"),
        ("not json\n", "is not a JSON object"),
        ("[1, 2]\n", "expected an object"),
        ('{"step": -1, "loss": 1.0}\n', "integer step"),
        ('{"step": 1, "loss": "high"}\n', "must be a number"),
        ('{"type": "eval", "step": 1}\n', "without val_loss"),
        ('{"type": "train", "step": 1}\n', "without 'loss'"),
    ],
)
def test_malformed_files_are_one_line_errors(tmp_path, content, message):
    from dlzoo.cli import cli

    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(MetricsError, match=message):
        read_metrics(path)
    result = CliRunner().invoke(cli, ["diagnose", str(path)])
    assert result.exit_code == 2 and result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0] and "Traceback" not in result.output


def test_cli_json_and_plot(tmp_path):
    from dlzoo.cli import cli

    lines = healthy(seed=5)
    lines[train_index(lines, 300)]["loss"] *= 4
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    png = tmp_path / "run.png"
    result = CliRunner().invoke(cli, ["diagnose", str(path), "--json", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [f["kind"] for f in data["findings"]] == ["loss-spike"] and data["findings"][0]["start_step"] == 300
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = CliRunner().invoke(cli, ["diagnose", str(path)]).output
    assert "loss-spike: step 300" in text
