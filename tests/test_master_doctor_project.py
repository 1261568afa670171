"""`dlzoo doctor PROJECT` on generated projects: a fresh project passes; each kind of breakage
(labels nearly constant, inputs not normalised, overlapping splits, an output layer scaled up,
edited model code) fails exactly the check that names it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch", reason="the generated projects here train with torch")

from dlzoo.agents.doctor_project import run_project_checks  # noqa: E402
from dlzoo.zoo.configs import ZooError  # noqa: E402


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    from dlzoo.scaffold.generate import new_project

    parent = tmp_path_factory.mktemp("projects")
    new_project("proj", arch="vit", framework="torch", parent=parent)
    return parent / "proj"


def verdicts(report) -> dict[str, bool | None]:
    return {c["name"]: c["passed"] for c in report["checks"]}


def test_fresh_project_passes_every_check(project):
    report = run_project_checks(project)
    assert report["passed"], [c for c in report["checks"] if c["passed"] is False]
    v = verdicts(report)
    assert v["overfit-one-batch"] and v["initial-loss"] and v["every-parameter-updates"]
    assert v["no-causal-leak"] is None and v["no-padding-leak"] is None  # image classifier: not applicable
    overfit = next(c for c in report["checks"] if c["name"] == "overfit-one-batch")
    assert overfit["numbers"]["batch_accuracy"] == 1.0


def _npz(path: Path, y: np.ndarray, x: np.ndarray | None = None) -> Path:
    rng = np.random.default_rng(0)
    x = rng.random((len(y), 8, 8)).astype(np.float32) if x is None else x
    np.savez(path, x=x, y=y)
    return path


def _config(tmp_path: Path, npz: Path) -> Path:
    path = tmp_path / "check.toml"
    path.write_text(f'[data]\nsource = "npz"\npath = "{npz}"\nimage_size = 32\n')
    return path


def test_nearly_constant_labels(project, tmp_path):
    y = np.concatenate([np.zeros(970, int), np.arange(10).repeat(3)])
    report = run_project_checks(project, config=_config(tmp_path, _npz(tmp_path / "d.npz", y)), overfit_steps=2)
    labels = next(c for c in report["checks"] if c["name"] == "labels-not-constant")
    assert labels["passed"] is False and labels["numbers"]["largest_class_share"] >= 0.95 and not report["passed"]


def test_overlapping_splits(project, tmp_path):
    rng = np.random.default_rng(1)
    base = rng.random((100, 8, 8)).astype(np.float32)
    x = np.concatenate([base] * 10)  # every image ten times: the split cannot keep them apart
    y = np.tile(np.arange(10).repeat(10), 10)
    report = run_project_checks(project, config=_config(tmp_path, _npz(tmp_path / "d.npz", y, x)), overfit_steps=2)
    assert verdicts(report)["splits-disjoint"] is False


def test_broken_normalisation_and_scaled_head(tmp_path):
    from dlzoo.scaffold.generate import new_project

    new_project("broken", arch="vit", framework="torch", parent=tmp_path)
    root = tmp_path / "broken"
    data = root / "broken" / "data.py"
    text = data.read_text()
    assert "return ((x - self.mean) / self.std).astype(np.float32)" in text
    data.write_text(
        text.replace(
            "return ((x - self.mean) / self.std).astype(np.float32)", "return (x * 255).astype(np.float32)  # normalisation forgotten"
        )
    )
    model = root / "broken" / "model.py"
    text = model.read_text()
    assert "return self.head(x[:, 0])" in text
    model.write_text(text.replace("return self.head(x[:, 0])", "return 100 * self.head(x[:, 0])"))
    report = run_project_checks(root, overfit_steps=2)
    v = verdicts(report)
    assert v["inputs-normalised"] is False and v["initial-loss"] is False and v["model-copy-unmodified"] is False
    copies = next(c for c in report["checks"] if c["name"] == "model-copy-unmodified")
    assert copies["numbers"]["changed"] == ["broken/model.py"]
    assert v["labels-not-constant"] and v["splits-disjoint"]


def test_cli_project_form_and_errors(project, tmp_path):
    from dlzoo.cli import cli

    run_dir = project / "runs" / "r"
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text("[train]\noverfit_steps = 2\n")
    result = CliRunner().invoke(cli, ["doctor", str(run_dir), "--json"])
    data = json.loads(result.output)
    assert data["config"].endswith("runs/r/config.toml") and data["package"] == "proj"
    assert result.exit_code == (0 if data["passed"] else 1)
    bad = CliRunner().invoke(cli, ["doctor", str(project), "-f", "torch"])
    assert bad.exit_code == 2 and "applies to ARCH" in bad.output
    with pytest.raises(ZooError, match="not inside a dlzoo-generated project"):
        run_project_checks(tmp_path)
    (run_dir / "config.toml").write_text("[optim]\nlr = -1\n")
    with pytest.raises(ZooError, match="optim.lr must be > 0"):
        run_project_checks(run_dir)
