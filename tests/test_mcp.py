"""`dlzoo mcp`: the tools through an in-process MCP client of the official SDK (results equal to the
CLI's --json output, one-line tool errors, the root/size/pickle rules, resources), and one round
trip with the server as a stdio subprocess."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("mcp", reason="the MCP server needs the mcp extra (pip install 'dlzoo[mcp]')")

import anyio  # noqa: E402
from mcp import Client, StdioServerParameters  # noqa: E402
from mcp.shared.exceptions import MCPError  # noqa: E402

from dlzoo import mcp_server  # noqa: E402
from dlzoo.cli import cli  # noqa: E402
from dlzoo.mcp_server import TOOLS, Policy, build_server  # noqa: E402
from dlzoo.zoo import get_config, weights  # noqa: E402
from dlzoo.zoo.handle import installed_frameworks  # noqa: E402
from dlzoo.zoo.spec import canonical_spec  # noqa: E402

BUILT_IN = {"list", "info", "explain", "ask", "annotate", "diagnose", "doctor", "verify", "convert", "recommend", "migrate"}
OPTIONAL = {"new": "dlzoo.scaffold.generate:new_project"}
HEAVY = ("torch", "jax", "flax", "keras", "tensorflow", "haiku", "equinox", "transformers")


def _present(tool: str) -> bool:
    return mcp_server._provided(OPTIONAL[tool])


def _absent_reason(tool: str) -> str:
    module, function = OPTIONAL[tool].split(":")
    return f"{module}.{function} is not in this dlzoo version (it arrives with `dlzoo {tool}`)"


def calls(policy: Policy, *requests):
    """Call tools in order through one in-process client; returns the CallToolResults."""

    async def go():
        async with Client(build_server(policy)) as client:
            return [await client.call_tool(name, args) for name, args in requests]

    return anyio.run(go)


def call(policy: Policy, name: str, args: dict | None = None):
    return calls(policy, (name, args or {}))[0]


def ok(result) -> dict:
    assert not result.is_error, result.content[0].text
    data = result.structured_content
    assert json.loads(result.content[0].text) == (data["result"] if set(data) == {"result"} else data)
    return data


def error(result) -> str:
    assert result.is_error and result.structured_content is None
    text = result.content[0].text
    assert text.startswith("error: ") and "\n" not in text and "Traceback" not in text, text
    return text


def cli_json(*args, code=0):
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == code, result.output
    return json.loads(result.stdout)


@pytest.fixture
def policy(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    return Policy.create(root)


def canonical_file(path: Path, arch="gpt", preset="tiny", seed=0) -> Path:
    config = get_config(arch, preset)
    rng = np.random.default_rng(seed)
    tensors = {n: (0.02 * rng.standard_normal(s.shape)).astype(np.float32) for n, s in canonical_spec(arch, config).items()}
    return weights.save(path, arch, config, tensors)


# --------------------------------------------------------------------------- listing and arguments


def test_tools_listed_with_schemas(policy):
    async def go():
        async with Client(build_server(policy)) as client:
            return (await client.list_tools()).tools

    tools = {t.name: t for t in anyio.run(go)}
    expected = BUILT_IN | {name for name in OPTIONAL if _present(name)}
    assert set(tools) == expected
    for tool in tools.values():
        schema = tool.input_schema
        assert schema["type"] == "object" and schema["additionalProperties"] is False and tool.description
        assert set(schema["required"]) <= set(schema["properties"])
    assert tools["info"].input_schema["properties"]["arch"]["enum"] == ["bert", "gpt", "resnet", "vit"]
    assert tools["migrate"].annotations.read_only_hint is False
    assert tools["list"].annotations.read_only_hint and tools["convert"].annotations.destructive_hint is False


@pytest.mark.parametrize(
    "name, args, message",
    [
        ("info", {}, "'arch' is a required property"),
        ("info", {"arch": "gpt", "preset": 5}, "argument 'preset': 5 is not of type 'string'"),
        ("info", {"arch": "lstm"}, "argument 'arch': 'lstm' is not one of"),
        ("info", {"arch": "gpt", "colour": "red"}, "'colour' was unexpected"),
        ("info", {"arch": "gpt", "seq_len": 0}, "argument 'seq_len': 0 is less than the minimum of 1"),
        ("info", {"arch": "gpt", "preset": "huge"}, "unknown gpt preset 'huge'"),
        ("ask", {"question": "   "}, "argument 'question'"),
        ("ask", {"question": "why?", "top": 11}, "argument 'top'"),
        ("explain", {}, "expected a TOPIC"),
        ("explain", {"topic": "flux capacitor"}, "no theory entry for 'flux capacitor'"),
        ("explain", {"paper": "no-such-paper"}, "no-such-paper"),
        ("explain", {"paper": "bert", "framework": "jax"}, "argument 'framework'"),
        ("explain", {"topic": "adamw", "paper": "adam"}, "give topic or paper, not both"),
        ("explain", {"topic": "adamw", "framework": "all"}, "framework applies to paper"),
        ("annotate", {}, "give file, or arch and framework"),
        ("doctor", {"arch": "gpt", "framework": "mxnet"}, "argument 'framework'"),
        ("verify", {"arch": "gpt", "frameworks": ["torch", "torch"]}, "non-unique elements"),
        ("convert", {"src": "x"}, "'dst' is a required property"),
        ("no-such-tool", {}, "unknown tool 'no-such-tool'"),
    ],
)
def test_bad_arguments_are_one_line_tool_errors(policy, name, args, message):
    assert message in error(call(policy, name, args))


def test_the_server_keeps_serving_after_an_internal_error(policy, monkeypatch):
    def broken(policy, args):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setitem(TOOLS, "list", mcp_server.Tool("list", "broken", mcp_server._schema({}), broken))
    first, second = calls(policy, ("list", {}), ("info", {"arch": "gpt"}))
    assert error(first) == "error: internal error in list: RuntimeError: boom second line (please report it)"
    assert ok(second)["params"] > 0


# --------------------------------------------------------------------------- results equal the CLI's --json


def test_list_info_explain_ask_equal_the_cli_json(policy):
    results = calls(
        policy,
        ("list", {}),
        ("info", {"arch": "resnet", "preset": "50", "image_size": 160, "batch_size": 8, "precision": "bf16", "device": "h100"}),
        ("explain", {"topic": "pre-ln"}),
        ("explain", {"list": True}),
        ("explain", {"paper": "list"}),
        ("explain", {"paper": "transformer", "framework": "all"}),
        ("ask", {"question": "why warm up the learning rate?", "top": 2}),
        ("ask", {"question": "what is the capital of France?"}),
    )
    data = [ok(r) for r in results]
    assert data[0] == cli_json("list")
    assert data[1] == cli_json(
        "info", "resnet", "-p", "50", "--image-size", "160", "--batch-size", "8", "--precision", "bf16", "--device", "h100"
    )
    assert data[1]["params"] == 25_557_032
    assert data[2] == cli_json("explain", "pre-ln") and data[2]["zoo_lines"]
    assert data[3]["result"] == cli_json("explain", "--list")
    assert data[4]["result"] == cli_json("explain", "--paper", "list")
    assert data[5] == cli_json("explain", "--paper", "transformer", "--framework", "all")
    assert data[6] == cli_json("ask", "why warm up the learning rate?", "--top", "2")
    assert not data[6]["declined"] and len(data[6]["answers"]) == 2
    assert data[7] == cli_json("ask", "what is the capital of France?", code=1) and data[7]["declined"]


def test_annotate_prints_and_writes_theory_md_only_as_a_new_file(policy):
    model = policy.root / "model.py"
    model.write_text("import torch\n\nx = torch.softmax(s, -1)  # theory: scaled-dot-product-attention\n")
    printed, by_zoo, written, again = calls(
        policy,
        ("annotate", {"file": "model.py", "level": "full"}),
        ("annotate", {"arch": "gpt", "framework": "torch"}),
        ("annotate", {"file": "model.py", "theory_md": "."}),
        ("annotate", {"file": "model.py", "theory_md": "THEORY.md"}),
    )
    data = ok(printed)
    assert data["text"] == CliRunner().invoke(cli, ["annotate", str(model), "--level", "full"]).stdout
    assert data["markers"] == [{"line": 3, "concept": "scaled-dot-product-attention"}]
    assert "Scaled dot-product attention" in data["text"]
    assert ok(by_zoo)["file"].endswith(os.path.join("torch", "gpt.py")) and ok(by_zoo)["markers"]
    assert ok(written)["theory_md"] == str(policy.root / "THEORY.md")
    before = (policy.root / "THEORY.md").read_text()
    assert "## Scaled dot-product attention" in before
    assert "already exists; the server never overwrites" in error(again)
    assert (policy.root / "THEORY.md").read_text() == before


def _metrics(path: Path) -> Path:
    rng = np.random.default_rng(0)
    lines = [
        {"type": "train", "step": s, "loss": float(4 * np.exp(-s / 60) + 0.5) * (1 + 0.01 * rng.standard_normal())} for s in range(300)
    ]
    lines[200]["loss"] *= 5
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_diagnose_equals_the_cli_and_writes_a_new_plot_only(policy):
    metrics = _metrics(policy.root / "metrics.jsonl")
    first, plotted, again, not_png, bad = calls(
        policy,
        ("diagnose", {"metrics": "metrics.jsonl"}),
        ("diagnose", {"metrics": "metrics.jsonl", "plot": "run.png"}),
        ("diagnose", {"metrics": "metrics.jsonl", "plot": "run.png"}),
        ("diagnose", {"metrics": "metrics.jsonl", "plot": "run.jpg"}),
        ("diagnose", {"metrics": "missing.jsonl"}),
    )
    data = ok(first)
    assert data == cli_json("diagnose", str(metrics)) and data["findings"]
    with_plot = ok(plotted)
    assert with_plot.pop("plot") == str(policy.root / "run.png") and with_plot == data
    png = (policy.root / "run.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "already exists" in error(again) and (policy.root / "run.png").read_bytes() == png
    assert "expected a file name ending in .png, .svg, .pdf" in error(not_png)
    assert "no such file or folder" in error(bad)


@pytest.mark.skipif("torch" not in installed_frameworks(), reason="doctor runs a zoo model; this case uses torch")
def test_doctor_equals_the_cli_and_refuses_large_presets(policy, tmp_path):
    good, large = calls(
        policy, ("doctor", {"arch": "gpt", "framework": "torch"}), ("doctor", {"arch": "gpt", "framework": "torch", "preset": "medium"})
    )
    data = ok(good)
    assert data == cli_json("doctor", "gpt", "-f", "torch") and data["passed"]
    assert "354,823,168 parameters, above this server's limit of 130,000,000" in error(large)
    small = Policy.create(policy.root, max_params=100_000)
    assert "--max-params" in error(call(small, "doctor", {"arch": "gpt", "framework": "torch"}))


def test_a_missing_framework_names_its_extra(policy, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "haiku" else find_spec(name, *a))
    assert "pip install 'dlzoo[haiku]'" in error(call(policy, "doctor", {"arch": "gpt", "framework": "haiku"}))


# --------------------------------------------------------------------------- weights: verify and convert


@pytest.mark.skipif("torch" not in installed_frameworks(), reason="verify compares against torch; this case needs it")
def test_verify_equals_the_cli_with_a_preset_and_with_weights_under_the_root(policy, monkeypatch):
    canonical_file(policy.root / "gpt.safetensors")
    preset, weighted, both = calls(
        policy,
        ("verify", {"arch": "gpt", "frameworks": ["torch"]}),
        ("verify", {"arch": "gpt", "weights": "gpt.safetensors", "frameworks": ["torch"]}),
        ("verify", {"arch": "gpt", "preset": "tiny", "weights": "gpt.safetensors"}),
    )
    data = ok(preset)
    assert data == cli_json("verify", "gpt", "-f", "torch") and data["passed"]
    data = ok(weighted)
    assert data["passed"] and data["notes"][0] == f"weights: {policy.root / 'gpt.safetensors'}"
    assert data == cli_json("verify", "gpt", "-f", "torch", "--weights", str(policy.root / "gpt.safetensors"))
    assert "drop --preset" in error(both)


def test_weights_are_counted_from_headers_before_loading(policy, monkeypatch):
    canonical_file(policy.root / "gpt.safetensors")
    monkeypatch.setattr(weights, "load", lambda *a, **k: pytest.fail("loaded a file above the limit"))
    small = Policy.create(policy.root, max_params=1000)
    message = error(call(small, "verify", {"arch": "gpt", "weights": "gpt.safetensors"}))
    assert "has 120,576 parameters, above this server's limit of 1,000" in message
    assert "120,576 parameters" in error(call(small, "convert", {"src": "gpt.safetensors", "dst": "out"}))


def test_convert_round_trip_equals_the_cli_and_never_overwrites(policy):
    canonical_file(policy.root / "gpt.safetensors")
    published, back, again, existing = calls(
        policy,
        ("convert", {"src": "gpt.safetensors", "dst": "published"}),
        ("convert", {"src": "published", "dst": "back.safetensors"}),
        ("convert", {"src": "published", "dst": "back.safetensors"}),
        ("convert", {"src": "gpt.safetensors", "dst": "published"}),
    )
    data = ok(published)
    assert data["direction"] == "canonical->published" and (policy.root / "published" / "config.json").is_file()
    data = ok(back)
    assert data["direction"] == "published->canonical" and data["params"] == 120_576
    expected = cli_json("convert", str(policy.root / "published"), str(policy.root / "cli.safetensors"))
    assert {**data, "dst": None} == {**expected, "dst": None}
    a, b = (weights.load(policy.root / f)[2] for f in ("gpt.safetensors", "back.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    stamp = (policy.root / "back.safetensors").stat().st_mtime_ns
    assert "already exists" in error(again) and (policy.root / "back.safetensors").stat().st_mtime_ns == stamp
    assert "already exists" in error(existing)


def test_pickle_checkpoints_are_refused_unread(policy, monkeypatch):
    from dlzoo.zoo import hub

    monkeypatch.setattr(hub, "_read_bin", lambda *a: pytest.fail("a pickle file was read"))
    folder = policy.root / "bin"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    (policy.root / "model.bin").write_bytes(b"\x80\x04")
    (policy.root / "resnet.pth").write_bytes(b"\x80\x04")
    (policy.root / "state").mkdir()
    (policy.root / "state" / "resnet50.pth").write_bytes(b"\x80\x04")
    for name, args in [
        ("convert", {"src": "bin", "dst": "x.safetensors"}),
        ("convert", {"src": "resnet.pth", "dst": "x.safetensors"}),
        ("convert", {"src": "state", "dst": "x.safetensors", "arch": "resnet"}),
        ("verify", {"arch": "gpt", "weights": "bin"}),
        ("verify", {"arch": "gpt", "weights": "model.bin"}),
    ]:
        assert "pickle" in error(call(policy, name, args))
    assert not (policy.root / "x.safetensors").exists()


def test_hub_ids_are_refused_unless_allowed(policy, monkeypatch):
    from dlzoo.zoo import hub

    monkeypatch.setattr(hub, "resolve", lambda name: pytest.fail("the hub was contacted"))
    message = error(call(policy, "convert", {"src": "openai-community/gpt2", "dst": "gpt2.safetensors"}))
    assert "hub downloads are off; start the server with --allow-hub" in message


# --------------------------------------------------------------------------- the root


@pytest.mark.parametrize(
    "name, args",
    [
        ("annotate", {"file": "../outside.py"}),
        ("annotate", {"file": "link/outside.py"}),
        ("annotate", {"arch": "gpt", "framework": "torch", "theory_md": "link/THEORY.md"}),
        ("annotate", {"arch": "gpt", "framework": "torch", "theory_md": "dangling.md"}),
        ("diagnose", {"metrics": "/etc/passwd"}),
        ("diagnose", {"metrics": "metrics.jsonl", "plot": "../run.png"}),
        ("convert", {"src": "gpt.safetensors", "dst": "link/out"}),
        ("convert", {"src": "../gpt.safetensors", "dst": "x.safetensors"}),
        ("verify", {"arch": "gpt", "weights": "link/gpt.safetensors"}),
    ],
)
def test_paths_outside_the_root_are_refused_symlinks_included(policy, tmp_path, name, args):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "outside.py").write_text("x = 1  # theory: layer-norm\n")
    (tmp_path / "outside.py").write_text("x = 1  # theory: layer-norm\n")
    canonical_file(outside / "gpt.safetensors")
    canonical_file(policy.root / "gpt.safetensors")
    canonical_file(tmp_path / "gpt.safetensors")
    _metrics(policy.root / "metrics.jsonl")
    (policy.root / "link").symlink_to(outside)
    (policy.root / "dangling.md").symlink_to(outside / "written-through-a-link.md")
    before = sorted(p.name for p in outside.iterdir())
    message = error(call(policy, name, args))
    assert "outside the server's root" in message or "already exists" in message, message
    assert sorted(p.name for p in outside.iterdir()) == before


def test_writes_need_an_existing_folder(policy):
    canonical_file(policy.root / "gpt.safetensors")
    assert "creates no folders" in error(call(policy, "convert", {"src": "gpt.safetensors", "dst": "a/b/published"}))
    assert not (policy.root / "a").exists()


def test_policy_rejects_a_missing_root_and_the_cli_says_so_in_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["mcp", "--root", str(tmp_path / "missing")])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "not an existing folder" in result.output
    result = CliRunner().invoke(cli, ["mcp", "--http", "0.0.0.0:8765"])
    assert result.exit_code == 2 and "loopback only" in result.output


# --------------------------------------------------------------------------- commands other branches add


def test_a_command_this_version_lacks_is_unlisted_and_a_clear_error(policy, monkeypatch):
    absent = mcp_server.Tool(
        "new", "x", mcp_server._schema({"name": {"type": "string"}}), mcp_server._new, provider="dlzoo.no_such_module:new_project"
    )
    monkeypatch.setitem(TOOLS, "new", absent)

    async def go():
        async with Client(build_server(policy)) as client:
            return (await client.list_tools()).tools, await client.call_tool("new", {"name": "p"})

    tools, result = anyio.run(go)
    assert "new" not in {t.name for t in tools}
    assert "new is not available in this version of dlzoo (dlzoo.no_such_module:new_project is missing)" in error(result)


@pytest.mark.skipif(not _present("new"), reason=_absent_reason("new"))
def test_new_writes_a_project_under_the_root_only(policy):
    made, again, escaping = calls(
        policy,
        ("new", {"name": "digits_vit", "arch": "vit", "framework": "torch"}),
        ("new", {"name": "digits_vit", "arch": "vit", "framework": "torch"}),
        ("new", {"name": "../escape", "arch": "vit", "framework": "torch"}),
    )
    data = ok(made)
    assert Path(data["path"]) == policy.root / "digits_vit" and (policy.root / "digits_vit" / ".dlzoo.json").is_file()
    assert data["framework"] == "torch" and data["arch"] == "vit"
    assert "already exists" in error(again)
    error(escaping)
    assert not (policy.root.parent / "escape").exists()


def test_recommend_equals_the_cli_json(policy):
    ranked, designed, unknown, half = calls(
        policy,
        ("recommend", {"needs": ["onnx-export", "beginner-friendly"]}),
        ("recommend", {"task": "image-classification", "dataset_size": 1797, "input_size": 8, "budget_hours": 0.1, "device": "a100"}),
        ("recommend", {"needs": ["no-such-need"]}),
        ("recommend", {"task": "image-classification"}),
    )
    data = ok(ranked)
    assert data == cli_json("recommend", "--need", "onnx-export", "--need", "beginner-friendly")
    assert data["training"] is None and data["frameworks"]["ranking"][0]["eligible"]
    data = ok(designed)
    assert data == cli_json(
        "recommend",
        "--task",
        "image-classification",
        "--dataset-size",
        "1797",
        "--input-size",
        "8",
        "--budget-hours",
        "0.1",
        "--device",
        "a100",
    )
    assert data["training"]["arch"] in ("resnet", "vit")
    assert "no-such-need" in error(unknown)
    assert "--task needs --dataset-size, --input-size, --budget-hours" in error(half)


@pytest.mark.skipif(not _present("new"), reason=_absent_reason("new"))
def test_migrate_writes_a_new_project_under_the_root_only(policy, tmp_path):
    (policy.root / "plain").mkdir()
    made, migrated, again, escaping, not_ours = calls(
        policy,
        ("new", {"name": "p", "arch": "vit", "framework": "torch"}),
        ("migrate", {"project": "p", "to": "flax"}),
        ("migrate", {"project": "p", "to": "flax"}),
        ("migrate", {"project": "p", "to": "haiku", "out": "../p_haiku"}),
        ("migrate", {"project": "plain", "to": "flax"}),
    )
    ok(made)
    data = ok(migrated)
    assert data["from"] == "torch" and data["to"] == "flax" and Path(data["out"]) == policy.root / "p_flax"
    assert (policy.root / "p_flax" / ".dlzoo.json").is_file()
    assert "already exists" in error(again)
    assert "outside the server's root" in error(escaping) and not (tmp_path / "p_haiku").exists()
    error(not_ours)


# --------------------------------------------------------------------------- resources


def test_resources_are_the_knowledge_base_papers_and_docs(policy):
    from dlzoo.agents.papers import FRAMEWORKS as PAPER_FRAMEWORKS, load_papers, render_paper
    from dlzoo.agents.theory import load_knowledge, render

    async def go():
        async with Client(build_server(policy)) as client:
            listing = (await client.list_resources()).resources
            templates = (await client.list_resource_templates()).resource_templates
            texts = [
                (await client.read_resource(uri)).contents[0].text
                for uri in ("dlzoo://knowledge/layer-norm", "dlzoo://papers/resnet", "dlzoo://docs/mcp.md")
            ]
            refused = []
            for uri in ("dlzoo://knowledge/nope", "dlzoo://docs/../README.md", "file:///etc/passwd"):
                with pytest.raises(MCPError) as caught:
                    await client.read_resource(uri)
                refused.append(str(caught.value))
            return listing, templates, texts, refused

    listing, templates, texts, refused = anyio.run(go)
    uris = {str(r.uri) for r in listing}
    assert {f"dlzoo://knowledge/{i}" for i in load_knowledge()} <= uris
    assert {f"dlzoo://papers/{i}" for i in load_papers()} <= uris
    assert "dlzoo://docs/mcp.md" in uris and "dlzoo://docs/cli.md" in uris
    assert {t.name for t in templates} == {"knowledge", "papers", "docs"}
    assert texts[0] == render(load_knowledge()["layer-norm"], "deep")
    assert texts[1] == render_paper(load_papers()["resnet"], PAPER_FRAMEWORKS)
    assert texts[2] == (Path(mcp_server.__file__).parents[1] / "docs" / "mcp.md").read_text()
    assert all("unknown resource" in r for r in refused)


# --------------------------------------------------------------------------- the server as a process


def test_building_and_listing_imports_no_deep_learning_framework(tmp_path):
    code = (
        "import sys, anyio; from mcp import Client; from dlzoo.mcp_server import Policy, build_server\n"
        "async def go():\n"
        "    async with Client(build_server(Policy.create('.'))) as c:\n"
        "        await c.list_tools(); await c.call_tool('explain', {'topic': 'adamw'})\n"
        "anyio.run(go)\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_stdio_round_trip(policy):
    params = StdioServerParameters(command=sys.executable, args=["-m", "dlzoo.cli", "mcp", "--root", str(policy.root)])

    async def go():
        started = time.perf_counter()
        async with Client(params, mode="legacy") as client:  # the initialize handshake desktop clients use
            tools = (await client.list_tools()).tools
            ready = time.perf_counter() - started
            info = await client.call_tool("info", {"arch": "vit", "preset": "B/16"})
            bad = await client.call_tool("info", {"arch": "vit", "preset": "Z/3"})
            escape = await client.call_tool("annotate", {"file": "/etc/hostname"})
            again = await client.call_tool("list", {})
        return tools, ready, info, bad, escape, again

    tools, ready, info, bad, escape, again = anyio.run(go)
    assert {t.name for t in tools} >= BUILT_IN
    assert ok(info) == cli_json("info", "vit", "-p", "B/16") and ok(info)["params"] == 86_567_656
    assert "Z/3" in error(bad) and "outside the server's root" in error(escape)
    assert ok(again)["archs"]
    print(f"stdio: initialize + tools/list answered {ready:.2f} s after launch")


def test_streamable_http_round_trip(policy):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "dlzoo.cli", "mcp", "--http", f"127.0.0.1:{port}", "--root", str(policy.root)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, server.stderr.read()
                time.sleep(0.1)

        async def go():
            async with Client(f"http://127.0.0.1:{port}/mcp") as client:
                return (
                    {t.name for t in (await client.list_tools()).tools},
                    await client.call_tool("ask", {"question": "what does layer norm normalise?"}),
                    await client.call_tool("diagnose", {"metrics": "../x.jsonl"}),
                )

        names, answered, refused = anyio.run(go)
    finally:
        server.terminate()
        server.wait(30)
    assert names >= BUILT_IN
    assert ok(answered) == cli_json("ask", "what does layer norm normalise?")
    assert "outside the server's root" in error(refused)
