"""diagnose reads the logs people have: each fixture under tests/data/logs/ was written by the
library's own logger during a short real run (benchmarks/diagnose_log_fixtures.py), and is read
by auto-detection into the right unit, with its validation values placed and its pathology found."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dlzoo.agents.diagnose import diagnose
from dlzoo.agents.logformats import canonical, detect, read_log
from dlzoo.agents.metrics import MetricsError

LOGS = Path(__file__).parent / "data" / "logs"


def kinds(run):
    return {f.kind for f in diagnose(run) if f.severity in ("medium", "high")}


@pytest.mark.parametrize(
    "path, source",
    [
        ("keras/training.csv", "keras-csv"),
        ("keras/history.json", "keras-history"),
        ("lightning/version_0", "lightning-csv"),
        ("lightning/version_0/metrics.csv", "lightning-csv"),
        ("hf", "hf-trainer-state"),
        ("hf/checkpoint-120/trainer_state.json", "hf-trainer-state"),
        ("derived/overfit.csv", "csv"),
        ("derived/overfit_val_on_train_lines.jsonl", "jsonl"),
        ("derived/epochs.jsonl", "jsonl"),
        ("tensorboard", "tensorboard"),
    ],
)
def test_detected_from_path_and_content(path, source):
    assert detect(LOGS / path)[1] == source


def test_keras_csvlogger_and_history_are_epochs_and_overfit():
    """60 epochs of a dense net on 100 digits images: validation loss turns up after epoch ~6."""
    csv_run, history = read_log(LOGS / "keras/training.csv"), read_log(LOGS / "keras/history.json")
    for run in (csv_run, history):
        assert run.unit == "epoch" and len(run.train) == 60 and len(run.eval) == 60 and not run.warnings
        found = [f for f in diagnose(run) if f.kind == "overfitting"]
        assert found and found[0].start_step < 15 and found[0].end_step == 59 and "epoch" in found[0].fix
    assert [r["loss"] for r in csv_run.train] == pytest.approx([r["loss"] for r in history.train], rel=1e-5)


def test_keras_tensorboard_callback_is_read_in_epochs():
    pytest.importorskip("tensorboard", reason="reading event files needs the tensorboard package (dlzoo[tensorboard])")
    run = read_log(LOGS / "keras/tb")
    assert run.source == "tensorboard" and run.unit == "epoch" and len(run.train) == 60 and len(run.eval) == 60
    assert any("vs_iterations" in w for w in run.warnings)  # the iteration-indexed duplicates, named
    assert [r["loss"] for r in run.train] == pytest.approx([r["loss"] for r in read_log(LOGS / "keras/history.json").train], rel=1e-5)
    assert "overfitting" in kinds(run)


def test_lightning_metrics_csv_merges_sparse_rows():
    run = read_log(LOGS / "lightning/version_0")
    assert run.unit == "step" and run.num_classes == 10 and not run.warnings
    assert len(run.train) >= 200 and all("lr" in r for r in run.train[1:])  # LearningRateMonitor rows placed
    assert len(run.eval) == 10 and all("val_loss" in e and "val_accuracy" in e for e in run.eval)
    assert kinds(run) == set()  # a healthy run


def test_hf_trainer_state_reads_log_history_and_config():
    run = read_log(LOGS / "hf")
    assert run.unit == "step" and run.num_classes == 256 and run.meta["total_steps"] == 120
    assert len(run.train) == 120 and len(run.eval) == 6
    assert {"lr", "grad_norm"} <= set(run.train[5])
    # AdamW at 0.05 collapses the 2-layer GPT-2 onto the byte-unigram plateau by step ~12.
    stuck = [f for f in diagnose(run) if f.kind == "plateau"]
    assert stuck and stuck[0].start_step <= 24 and stuck[0].severity == "medium"


def test_torch_summarywriter_run_directory():
    pytest.importorskip("tensorboard", reason="reading event files needs the tensorboard package (dlzoo[tensorboard])")
    run = read_log(LOGS / "tensorboard")
    assert run.unit == "step" and len(run.train) == 200 and len(run.eval) == 10
    spikes = [f for f in diagnose(run) if f.kind == "loss-spike"]
    assert {f.start_step for f in spikes} == {60, 130}  # the two corrupted batches
    assert not [f for f in diagnose(run) if f.kind == "lr-too-high"]  # one-step spikes are data, not the rate


@pytest.mark.parametrize("path", ["derived/overfit.csv", "derived/overfit_val_on_train_lines.jsonl"])
def test_validation_values_on_training_lines_are_placed(path):
    """The same real overfitting run as a plain CSV and as JSON lines carrying loss and val_loss
    together: the validation values land in eval records and the overfitting is found."""
    run = read_log(LOGS / path)
    assert len(run.eval) == 40 and all("val_loss" in e for e in run.eval)
    assert not any("val_loss" in r for r in run.train)
    found = [f for f in diagnose(run) if f.kind == "overfitting"]
    assert found and found[0].start_step == 149


def test_jsonl_counting_epochs():
    run = read_log(LOGS / "derived/epochs.jsonl")
    assert run.unit == "epoch" and run.source == "jsonl" and len(run.train) == 20
    assert all("val_accuracy" in e for e in run.eval)


@pytest.mark.parametrize(
    "name, where",
    [
        ("loss", ("train", "loss")),
        ("train_loss", ("train", "loss")),
        ("Loss/train", ("train", "loss")),
        ("train_loss_step", ("train", "loss")),
        ("epoch_loss", ("train", "loss")),
        ("val_loss", ("eval", "val_loss")),
        ("eval_loss", ("eval", "val_loss")),
        ("Loss/val", ("eval", "val_loss")),
        ("validation/epoch_loss", ("eval", "val_loss")),
        ("val_acc", ("eval", "val_accuracy")),
        ("eval_accuracy", ("eval", "val_accuracy")),
        ("lr-AdamW", ("train", "lr")),
        ("learning_rate", ("train", "lr")),
        ("train/grad_norm", ("train", "grad_norm")),
        ("test_loss", None),
        ("eval_runtime", None),
        ("throughput", None),
    ],
)
def test_metric_names_mapped_by_their_words(name, where):
    assert canonical(name) == where


@pytest.mark.parametrize(
    "content, name, message",
    [
        ("loss,val_loss\n1.0,2.0\n", "no_index.csv", "needs a step"),
        ("step,loss\n,1.0\n", "blank_step.csv", "have no step"),
        ('{"epoch": 0, "loss": 1}\n{"loss": 0.5, "val_loss": 0.7}\n', "lines.jsonl", "have no step or epoch"),
        ('{"step": 0, "acc": 0.5}\n', "noloss.jsonl", "no training loss"),
        ('{"a": [1, 2], "b": [1]}', "history.json", "different lengths"),
        ('{"x": 1}', "other.json", "neither a trainer_state"),
        ("\x00\x01binary", "blob.bin", "binary file"),
    ],
)
def test_unplaceable_values_are_errors(tmp_path, content, name, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(MetricsError, match=message):
        read_log(path)


def test_unknown_columns_are_named_in_warnings(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("step,loss,perplexity_custom\n" + "".join(f"{i},{3 - i / 100},{i}\n" for i in range(50)))
    run = read_log(path)
    assert run.warnings and "perplexity_custom" in run.warnings[0]
    assert run.train[3]["perplexity_custom"] == 3.0  # kept in the run


def test_format_option_and_num_classes(tmp_path):
    path = tmp_path / "log.txt"
    path.write_text("epoch,loss\n" + "".join(f"{i},{2.3 - i / 50}\n" for i in range(20)))
    run = read_log(path, format="keras-csv", num_classes=10)
    assert run.unit == "epoch" and run.num_classes == 10
    with pytest.raises(MetricsError, match="unknown log format"):
        read_log(path, format="xml")


def test_missing_and_empty_directory(tmp_path):
    with pytest.raises(MetricsError, match="does not exist"):
        read_log(tmp_path / "nope.jsonl")
    with pytest.raises(MetricsError, match="without a training log"):
        read_log(tmp_path)


def test_fixtures_are_small():
    total = sum(p.stat().st_size for p in LOGS.rglob("*") if p.is_file())
    assert total < 400_000, total
    json.loads((LOGS / "hf/checkpoint-120/config.json").read_text())  # no weights, only logs and config
    assert not list(LOGS.rglob("*.safetensors")) and not list(LOGS.rglob("*.bin"))
