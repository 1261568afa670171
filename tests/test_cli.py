"""The command line: schemas, one-line errors, light start-up, and the verify / convert jobs."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import dlzoo
from dlzoo.cli import cli as app
from dlzoo.zoo import count_params, get_config
from dlzoo.zoo.handle import installed_frameworks

runner = CliRunner()
HEAVY = ("torch", "jax", "flax", "keras", "tensorflow", "haiku", "equinox", "transformers")


def _run(*args):
    return subprocess.run([sys.executable, "-m", "dlzoo.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("args", [["--help"], ["list"], ["list", "--json"], ["info", "resnet", "-p", "50"]])
def test_start_up_imports_no_deep_learning_framework(args):
    code = (
        "import sys; from click.testing import CliRunner; from dlzoo.cli import cli; "
        f"r = CliRunner().invoke(cli, {args!r}); assert r.exit_code == 0, r.output; "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_list_json_schema():
    data = json.loads(runner.invoke(app, ["list", "--json"]).stdout)
    assert [a["arch"] for a in data["archs"]] == ["bert", "gpt", "resnet", "vit"]
    for entry in data["archs"]:
        for preset in entry["presets"]:
            assert preset["params"] == count_params(entry["arch"], get_config(entry["arch"], preset["name"]))
    assert {f["name"] for f in data["frameworks"]} == {"torch", "flax", "equinox", "haiku", "keras"}
    assert all(isinstance(f["installed"], bool) for f in data["frameworks"])


@pytest.mark.parametrize(
    "arch,preset,params,gflops",
    [
        ("resnet", "50", 25_557_032, 8.18),  # 4.09 GMACs at 224x224 (He et al., 2016 report 3.8-4.1)
        ("resnet", "18", 11_689_512, 3.63),  # 1.8 GMACs
        ("vit", "B/16", 86_567_656, 35.1),  # 17.6 GMACs (Dosovitskiy et al., 2021)
    ],
)
def test_info_json_params_and_flops(arch, preset, params, gflops):
    result = runner.invoke(app, ["info", arch, "--preset", preset, "--json"])
    data = json.loads(result.stdout)
    assert data["params"] == params and isinstance(data["params"], int)
    assert data["flops_forward"] == pytest.approx(gflops * 1e9, rel=0.01)
    assert data["training_state_bytes"] == 16 * params
    config = get_config(arch, preset)
    assert type(config).from_dict(data["config"]) == config


needs_torch = pytest.mark.skipif(
    "torch" not in installed_frameworks(), reason="convert and verify compare against torch, which is not installed"
)


def test_convert_round_trip_and_the_overwrite_policy(tmp_path):
    from dlzoo.zoo import hub, weights

    config = get_config("bert", "tiny", mlm_head=True)
    tensors = weights.random_tensors("bert", config, seed=2)
    published = hub.export("bert", config, tensors, tmp_path / "published")
    canonical = tmp_path / "bert.safetensors"
    data = json.loads(runner.invoke(app, ["convert", str(published), str(canonical), "--json"]).stdout)
    assert data["direction"] == "published->canonical" and data["params"] == count_params("bert", config)
    back = runner.invoke(app, ["convert", str(canonical), str(tmp_path / "again"), "--json"])
    assert json.loads(back.stdout)["direction"] == "canonical->published"
    _, _, again = weights.load(canonical)
    assert all(np.array_equal(again[k], v) for k, v in tensors.items())
    assert hub.read_checkpoint(tmp_path / "again")[1].keys() == hub.read_checkpoint(published)[1].keys()
    before = canonical.read_bytes()
    refused = _run("convert", str(published), str(canonical))
    assert refused.returncode == 2 and "already exists" in refused.stderr and canonical.read_bytes() == before
    other = hub.export("bert", config, weights.random_tensors("bert", config, seed=3), tmp_path / "other")
    replaced = runner.invoke(app, ["convert", str(other), str(canonical), "--overwrite"])
    assert replaced.exit_code == 0 and canonical.read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "bert.safetensors", "other", "published"]


def test_version_and_bare_command():
    assert runner.invoke(app, ["--version"]).stdout == f"dlzoo {dlzoo.__version__}\n"
    bare = runner.invoke(app, [])
    assert bare.exit_code == 0 and bare.stdout.startswith("Usage: dlzoo") and bare.stderr == ""


def test_list_shows_aliases_and_the_keras_backend():
    env = {**os.environ, "KERAS_BACKEND": "torch", "COLUMNS": "200"}
    text = subprocess.run([sys.executable, "-m", "dlzoo.cli", "list"], capture_output=True, text=True, env=env).stdout
    assert "124M (124.44M; aka gpt2, small)" in text and "50 (25.56M; aka resnet50)" in text
    if "keras" in installed_frameworks():
        assert "keras (backend torch: KERAS_BACKEND" in text
    data = json.loads(
        subprocess.run([sys.executable, "-m", "dlzoo.cli", "list", "--json"], capture_output=True, text=True, env=env, check=True).stdout
    )
    keras = next(f for f in data["frameworks"] if f["name"] == "keras")
    assert keras["backend"] == "torch" and keras["backend_source"] == "KERAS_BACKEND"
    assert keras["backend_installed"] == (importlib.util.find_spec("torch") is not None)


def test_diagnose_reports_the_path_it_wrote(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("m.jsonl").write_text("".join(f'{{"step": {i}, "loss": {1.0 / i}}}\n' for i in range(1, 60)))
    result = runner.invoke(app, ["diagnose", "m.jsonl", "--plot", "curves.svg"])
    assert result.exit_code == 0, result.output
    assert result.stdout.rstrip().endswith("plot: curves.svg") and Path("curves.svg").read_text().startswith("<?xml")
    again = runner.invoke(app, ["diagnose", "m.jsonl", "--plot", "curves.svg", "--overwrite"])
    assert again.exit_code == 0 and sorted(os.listdir()) == ["curves.svg", "m.jsonl"]


@needs_torch
def test_verify_passes_and_reports_every_framework():
    result = runner.invoke(app, ["verify", "gpt", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] and report["params"] == count_params("gpt", get_config("gpt", "tiny"))
    frameworks = {row["framework"].split(" ")[0] for row in report["rows"]}
    assert frameworks == set(installed_frameworks())
    assert all(row["diffs"]["logits"] <= 1e-5 for row in report["rows"])


@needs_torch
def test_verify_reference_is_float64_and_repeats_exactly():
    """The transformers reference runs in float64, so kernel choices cannot move it; its float32
    evaluation is reported as the model's noise floor. Two runs give identical numbers."""
    pytest.importorskip("transformers", reason="the reference implementation is transformers")
    from dlzoo.verify import run_verify

    first = run_verify("gpt", frameworks=["torch"])
    assert first["reference"]["dtype"] == "float64" and first["reference"]["class"] == "GPT2LMHeadModel"
    floor = first["reference"]["float32_diffs"]["logits"]
    assert 0 < floor <= 1e-5  # float32 is not exact, and is within the tolerance of the exact answer
    assert first["rows"] == run_verify("gpt", frameworks=["torch"])["rows"]


@needs_torch
@pytest.mark.skipif("flax" not in installed_frameworks(), reason="compares flax selected alone and with torch")
def test_verify_does_not_depend_on_the_frameworks_selected():
    alone = json.loads(runner.invoke(app, ["verify", "gpt", "-f", "flax", "--json"]).stdout)
    both = json.loads(runner.invoke(app, ["verify", "gpt", "-f", "torch", "-f", "flax", "--json"]).stdout)
    flax_rows = [row for row in both["rows"] if row["framework"] == "flax"]
    assert alone["rows"] == flax_rows and {r["against"] for r in flax_rows} == {"torch", "transformers"}
    assert alone["notes"][0] == both["notes"][0] == "weights: random (numpy, seed 0)"
    assert "torch ran as the reference only (not among the selected frameworks)" in alone["notes"]
    assert not any("not installed" in note for note in alone["notes"])


@needs_torch
def test_verify_fails_when_a_pair_exceeds_the_tolerance():
    result = runner.invoke(app, ["verify", "bert", "-f", "torch", "--tol", "1e-12", "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert not report["passed"] and any(not row["passed"] for row in report["rows"])
