"""The command line: schemas, one-line errors, light start-up, and the verify / convert jobs."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from dlzoo.cli import cli as app
from dlzoo.zoo import count_params, get_config
from dlzoo.zoo.handle import installed_frameworks

runner = CliRunner()
HEAVY = ("torch", "jax", "flax", "keras", "tensorflow", "haiku", "equinox", "transformers")


def _run(*args):
    return subprocess.run([sys.executable, "-m", "dlzoo.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("args", [["--help"], ["list"], ["list", "--json"], ["info", "resnet", "-p", "50"]])
def test_start_up_imports_no_deep_learning_framework(args):
    code = ("import sys; from click.testing import CliRunner; from dlzoo.cli import cli; "
            f"r = CliRunner().invoke(cli, {args!r}); assert r.exit_code == 0, r.output; "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
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


@pytest.mark.parametrize("arch,preset,params,gflops", [
    ("resnet", "50", 25_557_032, 8.18),   # 4.09 GMACs at 224x224 (He et al., 2016 report 3.8-4.1)
    ("resnet", "18", 11_689_512, 3.63),   # 1.8 GMACs
    ("vit", "B/16", 86_567_656, 35.1),    # 17.6 GMACs (Dosovitskiy et al., 2021)
])
def test_info_json_params_and_flops(arch, preset, params, gflops):
    result = runner.invoke(app, ["info", arch, "--preset", preset, "--json"])
    data = json.loads(result.stdout)
    assert data["params"] == params and isinstance(data["params"], int)
    assert data["flops_forward"] == pytest.approx(gflops * 1e9, rel=0.01)
    assert data["training_state_bytes"] == 16 * params
    config = get_config(arch, preset)
    assert type(config).from_dict(data["config"]) == config


@pytest.mark.parametrize("args,fragment", [
    (["info", "lstm"], "unknown architecture 'lstm'; expected one of: bert, gpt, resnet, vit"),
    (["info", "vit", "-p", "Q/16"], "unknown vit preset 'Q/16'; expected one of: tiny, Ti/16"),
    (["verify", "gpt", "-f", "mxnet"], "unknown framework 'mxnet'; expected one of: torch, flax, equinox, haiku, keras"),
    (["convert", "/nonexistent/folder", "out.safetensors"], "neither an existing folder nor a hub id"),
])
def test_bad_input_is_one_line_with_the_valid_choices(args, fragment):
    result = _run(*args)
    assert result.returncode == 2
    assert fragment in result.stderr and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


needs_torch = pytest.mark.skipif("torch" not in installed_frameworks(),
                                 reason="convert and verify compare against torch, which is not installed")


@needs_torch
def test_convert_round_trip_and_no_overwrite(tmp_path):
    from dlzoo.zoo import hub, load

    handle = load("bert", "torch", config="tiny", mlm_head=True, seed=2)
    published = hub.export("bert", handle.config, handle.state_dict(), tmp_path / "published")
    result = runner.invoke(app, ["convert", str(published), str(tmp_path / "bert.safetensors"), "--json"])
    data = json.loads(result.stdout)
    assert data["direction"] == "published->canonical" and data["params"] == handle.num_params
    back = runner.invoke(app, ["convert", str(tmp_path / "bert.safetensors"), str(tmp_path / "again"), "--json"])
    assert json.loads(back.stdout)["direction"] == "canonical->published"
    assert (tmp_path / "again" / "model.safetensors").is_file()
    before = (tmp_path / "bert.safetensors").read_bytes()
    refused = _run("convert", str(published), str(tmp_path / "bert.safetensors"))
    assert refused.returncode == 2 and "already exists" in refused.stderr
    assert (tmp_path / "bert.safetensors").read_bytes() == before


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
def test_verify_fails_when_a_pair_exceeds_the_tolerance():
    result = runner.invoke(app, ["verify", "bert", "-f", "torch", "--tol", "1e-12", "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert not report["passed"] and any(not row["passed"] for row in report["rows"])
