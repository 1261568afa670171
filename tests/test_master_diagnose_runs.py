"""diagnose on real training runs of the zoo's models with known pathologies.

The runs (tests/data/runs/, made by benchmarks/diagnose_runs.py) come in two sets: a tuning set
the detectors were adjusted on, and a held-out set generated and committed before any tuning
(other seeds, corpora, models, optimizers and magnitudes), scored the same way: every pathology
found with its onset within 10% of the run length, no medium or high finding on a healthy run,
and no finding that misnames the cause (tests/runs_score.py).
"""

from __future__ import annotations

import json

import pytest

from runs_score import RUNS, score


def test_tuning_runs_every_pathology_found_and_healthy_runs_quiet():
    result = score("tuning")
    assert result.pathologies == 10 and result.healthy == 5
    assert not result.failures, result.line("tuning") + "\n" + "\n".join(result.failures)


# Measured once, after tuning, on the held-out runs: 8 of 9 pathologies found, no alarm on the 4
# healthy runs, no misnamed cause. The one miss: vit_lr_too_low (AdamW at 3e-6 for 300 steps,
# training loss 2.301 -> 2.290 at chance, validation accuracy 0.11 -> 0.17) is reported as a
# plateau at chance level, whose fix offers a learning-rate range test but does not say "too low".
HELDOUT_KNOWN_MISSES = {"vit_lr_too_low"}


def test_heldout_runs_as_measured():
    result = score("heldout")
    assert result.pathologies == 9 and result.healthy == 4
    assert result.found >= 8 and result.false_alarms == 0 and result.misattributions == 0, result.line("heldout")
    assert {f.split(":")[0] for f in result.failures} <= HELDOUT_KNOWN_MISSES, result.failures


def test_one_learning_rate_change_per_report():
    from dlzoo.agents.diagnose import diagnose_report
    from dlzoo.agents.metrics import read_metrics

    for which in ("tuning", "heldout"):
        for path in sorted((RUNS / which).glob("*.jsonl")):
            findings, advice = diagnose_report(read_metrics(path))
            lowering = [f for f in findings if "lower the learning rate" in f.fix]
            if advice is None:
                assert not lowering, path
                continue
            assert all(advice["text"] in f.fix for f in lowering), (path, advice["text"], [f.fix for f in lowering])


def test_declared_warmup_is_reported_exactly(tmp_path):
    """A declared 50-step warmup is 50 in every finding, not the 49 of the index where the rate peaks."""
    from dlzoo.agents.diagnose import diagnose

    from test_master_diagnose import healthy, run_of

    lines = [{"type": "meta", "warmup_steps": 50}] + healthy(n=400, warmup=50, seed=1)
    for line in lines:
        if line.get("type") == "train" and line["step"] >= 250:
            line["loss"] *= 1.02 ** (line["step"] - 250)
    found = {f.kind: f for f in diagnose(run_of(lines))}
    assert found["lr-too-high"].evidence["warmup_steps"] == 50
    assert "from 50 to 100" in found["lr-too-high"].fix


def test_evidence_keeps_small_numbers():
    from dlzoo.agents.diagnose import Finding

    f = Finding("vanishing-gradients", 0, 1, "medium", {"grad": 1.234567e-7, "nested": [2.5e-9]}, "c", "f")
    data = f.to_dict()["evidence"]
    assert data["grad"] == pytest.approx(1.23457e-7) and data["nested"][0] == 2.5e-9
    json.dumps(data)
