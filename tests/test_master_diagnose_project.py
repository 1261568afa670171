"""Closing the loop: diagnose a run of a dlzoo-generated project, give each fix as the exact
override to rerun with, write them as a config the project's `train --config` accepts, rerun,
and diagnose the rerun."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from dlzoo.agents.diagnose_fix import find_project, run_diagnose
from dlzoo.zoo.configs import ZooError

RUNS = Path(__file__).parent / "data" / "runs"


def _fake_project(tmp_path: Path, run_file: Path, config: str) -> Path:
    """A project layout around a real run's log: .dlzoo.json at the root, runs/<run>/config.toml."""
    (tmp_path / ".dlzoo.json").write_text(json.dumps({"package": "proj", "arch": "vit", "framework": "torch"}))
    run_dir = tmp_path / "runs" / "default"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text(run_file.read_text())
    (run_dir / "config.toml").write_text(config)
    return run_dir / "metrics.jsonl"


CONFIG = """seed = 0
[run]
name = "default"
out_dir = "runs"
[optim]
lr = 0.1
weight_decay = 0.0
warmup_fraction = 0.0
clip_norm = 0.0
[train]
epochs = 10
[data]
augment = false
"""


def test_overrides_per_finding_and_fix_file(tmp_path):
    log = _fake_project(tmp_path, RUNS / "tuning" / "gpt_lr_far_too_high.jsonl", CONFIG)
    fix = tmp_path / "fix.toml"
    result = run_diagnose(log, write_fix=fix)
    data = result["json"]
    assert data["project"]["package"] == "proj"
    advice = data["learning_rate"]
    lowered = [f for f in data["findings"] if "optim.lr" in f["overrides"]]
    assert lowered and all(f["overrides"]["optim.lr"] == pytest.approx(advice["suggested_peak_lr"], rel=1e-2) for f in lowered)
    # no warmup before: one is added; clipping was off: the threshold comes from the logged norms
    assert data["project"]["overrides"]["optim.warmup_fraction"] == 0.05
    for f in lowered:
        assert f["rerun"].startswith("python -m proj.train --config runs/default/config.toml --set run.name=default-fix ")
        assert f"--set optim.lr={f['overrides']['optim.lr']!r}" in f["rerun"]
    written = tomllib.loads(fix.read_text())
    assert written["optim"]["lr"] == data["project"]["overrides"]["optim.lr"]
    assert written["run"]["name"] == "default-fix" and written["train"]["epochs"] == 10  # the rest kept
    assert fix.read_text().startswith("# Written by `dlzoo diagnose --write-fix`")


def test_overfitting_and_underfitting_overrides(tmp_path):
    log = _fake_project(tmp_path, RUNS / "tuning" / "vit_overfit.jsonl", CONFIG)
    data = run_diagnose(log)["json"]
    over = next(f for f in data["findings"] if f["kind"] == "overfitting")
    assert over["overrides"] == {"optim.weight_decay": 0.05, "data.augment": True}


def test_code_bugs_have_no_config_override(tmp_path):
    log = _fake_project(tmp_path, RUNS / "tuning" / "gpt_no_zero_grad.jsonl", CONFIG)
    data = run_diagnose(log)["json"]
    accumulating = next(f for f in data["findings"] if f["kind"] == "accumulating-gradients")
    assert accumulating["overrides"] == {} and "rerun" not in accumulating


def test_write_fix_needs_a_project_and_refuses_to_overwrite(tmp_path):
    with pytest.raises(ZooError, match="needs a run of a dlzoo-generated project"):
        run_diagnose(RUNS / "tuning" / "gpt_healthy.jsonl", write_fix=tmp_path / "fix.toml")
    assert not (tmp_path / "fix.toml").exists()
    log = _fake_project(tmp_path, RUNS / "tuning" / "gpt_lr_far_too_high.jsonl", CONFIG)
    (tmp_path / "fix.toml").write_text("mine")
    with pytest.raises(ZooError, match="already exists"):
        run_diagnose(log, write_fix=tmp_path / "fix.toml")
    assert (tmp_path / "fix.toml").read_text() == "mine"
    with pytest.raises(ZooError, match="must end in .toml"):
        run_diagnose(log, write_fix=tmp_path / "fix.txt")
    assert find_project(RUNS / "tuning" / "gpt_healthy.jsonl") is None


def test_cli_text_and_json(tmp_path):
    from dlzoo.cli import cli

    log = _fake_project(tmp_path, RUNS / "tuning" / "gpt_lr_far_too_high.jsonl", CONFIG)
    text = CliRunner().invoke(cli, ["diagnose", str(log)])
    assert text.exit_code == 0, text.output
    assert "  rerun:    python -m proj.train --config runs/default/config.toml" in text.output
    out = CliRunner().invoke(cli, ["diagnose", str(log), "--json", "--write-fix", str(tmp_path / "f.toml")])
    data = json.loads(out.output)
    assert data["unit"] == "step" and data["source"] == "dlzoo-jsonl" and data["project"]["fix_file"].endswith("f.toml")
    bad = CliRunner().invoke(cli, ["diagnose", str(log), "--overwrite"])
    assert bad.exit_code == 2 and "--overwrite applies to --plot and --write-fix" in bad.output


def _train(project: Path, *args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "proj.train", *args], cwd=project, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]


def test_far_too_high_lr_diagnosed_fixed_and_rerun_healthy(tmp_path):
    """A generated torch ViT project trained at lr 0.05 (25x its default) for 6 short epochs: the run
    is diagnosed unstable, --write-fix lowers the rate, and the rerun from the written config has
    no finding at all. About a minute on one CPU core."""
    pytest.importorskip("torch", reason="the generated project trains with torch")
    from dlzoo.scaffold.generate import new_project

    new_project("proj", arch="vit", framework="torch", parent=tmp_path)
    project = tmp_path / "proj"
    _train(project, "--set", "train.epochs=6", "--set", "train.batch_size=16", "--set", "optim.lr=0.05", "--set", "run.name=hot")
    result = run_diagnose(project / "runs" / "hot" / "metrics.jsonl", write_fix=project / "fix.toml")
    kinds = {f.kind for f in result["findings"] if f.severity == "high"}
    assert {"lr-too-high", "early-instability"} <= kinds, kinds
    lr = result["overrides"]["optim.lr"]
    assert lr < 0.05 / 10
    fixed = tomllib.loads((project / "fix.toml").read_text())
    assert fixed["optim"]["lr"] == lr and fixed["run"]["name"] == "hot-fix" and fixed["train"]["epochs"] == 6
    _train(project, "--config", "fix.toml")
    rerun = run_diagnose(project / "runs" / "hot-fix" / "metrics.jsonl")
    assert [(f.kind, f.severity) for f in rerun["findings"]] == []
