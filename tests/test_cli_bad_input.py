"""Every CLI command over a table of bad inputs: each ends with a non-zero exit, exactly one line on
stderr starting with ``error:``, nothing on stdout, no traceback, and no file created or changed.

The cases are refused before any work starts, so the whole table runs in seconds and needs no
framework (the fixtures -- a canonical file and a published folder -- are written with numpy).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dlzoo.cli import cli
from dlzoo.zoo import get_config, hub, weights

MARKED = "import math\n\nx = math.sqrt(2)  # theory: layer-norm\n"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    config = get_config("gpt", "tiny")
    tensors = weights.random_tensors("gpt", config, seed=0)
    weights.save(root / "w.safetensors", "gpt", config, tensors)
    hub.export("gpt", config, tensors, root / "published")
    (root / "existing.safetensors").write_bytes(b"mine")
    (root / "existing.png").write_bytes(b"mine")
    (root / "existing.md").write_text("mine")
    (root / "afile").write_text("a file, not a folder")
    (root / "adir").mkdir()
    (root / "full").mkdir()
    (root / "full" / "notes.txt").write_text("mine")
    (root / "plain.py").write_text("x = 1\n")
    (root / "marked.py").write_text(MARKED)
    (root / "unknown.py").write_text("x = 1  # theory: no-such-concept\n")
    (root / "binary.py").write_bytes(b"\xff\xfe\x00\x01")
    (root / "m.jsonl").write_text("".join(f'{{"step": {i}, "loss": {1.0 / i}}}\n' for i in range(1, 60)))
    (root / "empty.jsonl").write_text("")
    (root / "notjson.jsonl").write_text("not json\n")
    return root


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): ("dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()) for p in sorted(root.rglob("*"))
    }


# (args, fragment expected in the error line). Exit status 2 (bad input) unless listed in EXIT_1.
CASES = {
    "global": [
        (["nosuch"], "No such command 'nosuch'"),
        (["--bogus"], "No such option '--bogus'"),
    ],
    "list": [
        (["list", "extra"], "unexpected extra argument"),
        (["list", "--bogus"], "No such option '--bogus'"),
    ],
    "info": [
        (["info"], "Missing argument 'ARCH'"),
        (["info", "lstm"], "unknown architecture 'lstm'; expected one of: bert, gpt, resnet, vit"),
        (["info", "vit", "-p", "Q/16"], "unknown vit preset 'Q/16'; expected one of: tiny, Ti/16"),
        (["info", "gpt", "--seq-len", "0"], "'--seq-len': 0 is not in the range x>=1"),
        (["info", "gpt", "--seq-len", "abc"], "'abc' is not a valid integer"),
        (["info", "gpt", "-p", "124M", "--seq-len", "5000"], "exceeds the gpt 124M context of 1024 tokens"),
        (["info", "bert", "-p", "base", "--seq-len", "513"], "exceeds the bert base context of 512 tokens"),
        (["info", "vit", "-p", "B/16", "--image-size", "384"], "a vit preset fixes its image size (B/16: 224 px"),
        (["info", "gpt", "--image-size", "32"], "--image-size applies to resnet"),
        (["info", "resnet", "--seq-len", "3"], "--seq-len applies to bert and gpt"),
        (["info", "resnet", "--image-size", "-5"], "'--image-size': -5 is not in the range x>=1"),
        (["info", "gpt", "--devices", "0"], "'--devices': 0 is not in the range x>=1"),
        (["info", "gpt", "--devices", "4", "--sharding", "zero2"], "'--sharding': 'zero2' is not one of 'data', 'fsdp'"),
    ],
    "convert": [
        (["convert", "w.safetensors"], "Missing argument 'DST'"),
        (["convert", "missing.safetensors", "out.safetensors"], "missing.safetensors: no such file or folder"),
        (["convert", "./missing", "out.safetensors"], "./missing: no such file or folder"),
        (["convert", "nested/dir/missing", "out.safetensors"], "nested/dir/missing: no such file or folder"),
        (["convert", "plain.py", "out.safetensors"], "plain.py: expected a state dict"),
        (["convert", "w.safetensors", "out.safetensors"], "is already a canonical file"),
        (["convert", "w.safetensors", "full"], "full exists and is not an empty folder"),
        (["convert", "w.safetensors", "afile"], "afile is an existing file; expected a new folder name"),
        (["convert", "w.safetensors", "afile/out"], "afile is a file, not a folder"),
        (["convert", "w.safetensors", "missing_dir/out"], "folder missing_dir does not exist"),
        (["convert", "w.safetensors", "out", "--overwrite"], "--overwrite applies to a .safetensors destination"),
        (["convert", "published", "out"], "must end in .safetensors when converting a checkpoint"),
        (["convert", "published", "existing.safetensors"], "existing.safetensors already exists"),
        (["convert", "published", "afile/x.safetensors"], "afile is a file, not a folder"),
        (["convert", "published", "missing_dir/x.safetensors"], "folder missing_dir does not exist"),
        (["convert", "published", "adir"], "must end in .safetensors"),
    ],
    "bench": [
        (["bench"], "Missing argument 'ARCH'"),
        (["bench", "nope"], "unknown architecture 'nope'"),
        (["bench", "gpt", "--seq-len", "5000"], "exceeds the gpt context"),
        (["bench", "gpt", "--image-size", "64"], "does not apply to gpt"),
        (["bench", "resnet", "--seq-len", "8"], "does not apply to resnet"),
        (["bench", "gpt", "-f", "mxnet"], "unknown implementation(s) mxnet"),
        (["bench", "gpt", "--trials", "2"], "--trials"),
        (["bench", "gpt", "--set", "nonsense"], "--set expects FIELD=VALUE"),
        (["bench", "gpt", "--set", "no_field=3"], "no field(s) no_field"),
        (["bench", "gpt", "--batch", "0"], "--batch"),
    ],
    "recommend": [
        (["recommend", "--need", "nope"], "unknown need 'nope'; expected one of: onnx-export"),
        (["recommend", "--arch", "nope"], "unknown architecture 'nope'"),
        (["recommend", "--device", "h100"], "--device design a training run and need --task"),
        (["recommend", "--dataset-size", "100"], "need --task"),
        (["recommend", "--task", "image-classification"], "--task needs --dataset-size"),
    ],
    "new": [
        (["new"], "Missing argument 'NAME'"),
        (["new", "p"], "Missing option '--arch'"),
        (["new", "p", "--arch", "vit", "-f", "torch", "--dataset-size", "100"], "a training design needs --input-size"),
        (
            ["new", "p", "--arch", "bert", "-f", "torch", "--dataset-size", "9", "--input-size", "8", "--budget-hours", "1"],
            "the bert mlm task has no design rules yet",
        ),
        (["new", "p", "--arch", "vit", "--need", "nope"], "unknown need 'nope'; expected one of: onnx-export"),
        (["new", "p", "--arch", "vit", "-f", "torch", "--need", "tpu"], "--need asks the engineer agent to choose"),
        (["new", "p", "--arch", "vit", "-f", "mxnet"], "unknown framework 'mxnet'"),
        (["new", "p", "--arch", "vit", "-f", "torch", "-p", "huge"], "unknown vit preset 'huge'"),
        (["new", "p", "--arch", "vit", "-f", "torch", "--task", "segmentation"], "--task 'segmentation' is not available"),
        (["new", "p", "--arch", "vit", "-f", "torch", "--annotate", "all"], "'all' is not one of 'none', 'brief', 'full'"),
        (["new", "../p", "--arch", "vit", "-f", "torch"], "contains a path separator"),
        (["new", "..", "--arch", "vit", "-f", "torch"], "is not a plain folder name"),
        (["new", "", "--arch", "vit", "-f", "torch"], "project name is empty"),
        (["new", "full", "--arch", "vit", "-f", "torch"], "full exists and is not empty"),
        (["new", "afile", "--arch", "vit", "-f", "torch"], "afile exists and is a file"),
        (["new", "p", "--arch", "vit", "-f", "torch", "-w", "w.safetensors"], "holds gpt weights; the project is --arch vit"),
        (["new", "p", "--arch", "vit", "-f", "torch", "-w", "existing.md"], "expected a state dict"),
        (["new", "p", "--arch", "vit", "-f", "torch", "-w", "w.safetensors", "-p", "B/16"], "pass --preset or --weights, not both"),
    ],
    "migrate": [
        (["migrate"], "Missing argument 'PROJECT'"),
        (["migrate", "nosuchdir", "--to", "flax"], "nosuchdir is not a folder; expected a project written by dlzoo new"),
        (["migrate", "adir", "--to", "flax"], "was not generated by dlzoo new (no .dlzoo.json)"),
    ],
    "verify": [
        (["verify"], "Missing argument 'ARCH'"),
        (["verify", "lstm"], "unknown architecture 'lstm'"),
        (["verify", "gpt", "-f", "mxnet"], "unknown framework 'mxnet'; expected one of: torch, flax, equinox, haiku, keras"),
        (["verify", "gpt", "-p", "nope"], "unknown gpt preset 'nope'"),
        (["verify", "gpt", "--tol", "-1"], "'--tol': -1.0 is not in the range x>=0"),
        (["verify", "gpt", "--tol", "nan"], "tol must be >= 0, got nan"),
        (["verify", "gpt", "--seed", "-1"], "'--seed': -1 is not in the range x>=0"),
        (["verify", "gpt", "--weights", "w.safetensors", "--preset", "base"], "drop --preset"),
        (["verify", "gpt", "--weights", "missing.safetensors"], "missing.safetensors: no such file or folder"),
        (["verify", "gpt", "--weights", "./missing"], "./missing: no such file or folder"),
        (["verify", "gpt", "--weights", "plain.py"], "plain.py: expected a state dict"),
        (["verify", "gpt", "--weights", "existing.safetensors"], "corrupt, truncated or not a safetensors file"),
        (["verify", "bert", "--weights", "w.safetensors"], "holds 'gpt' weights, but verify was asked for 'bert'"),
        (["verify", "bert", "--weights", "published"], "holds 'gpt' weights, but verify was asked for 'bert'"),
    ],
    "explain": [
        (["explain"], "expected a TOPIC"),
        (["explain", "quantum chromodynamics"], "nearest: "),
        (["explain", "sdpa", "--list"], "--list takes no TOPIC"),
        (["explain", "sdpa", "--brief", "--json"], "--brief shortens a concept's text"),
        (["explain", "sdpa", "--level", "expert"], "'expert' is not one of 'intro', 'standard', 'deep'"),
        (["explain", "sdpa", "--level", "deep", "--json"], "--level applies to a concept's text"),
        (["explain", "sdpa", "--framework", "flax"], "--framework applies to --paper"),
        (["explain", "sdpa", "--paper", "bert"], "give TOPIC or --paper ID, not both"),
        (["explain", "--paper", "no-such-paper"], "no-such-paper"),
        (["explain", "--paper", "bert", "--framework", "mxnet"], "--framework must be one of"),
        (["explain", "--paper", "bert", "--brief"], "--brief shortens a concept's text"),
    ],
    "ask": [
        (["ask"], "Missing argument 'QUESTION'"),
        (["ask", ""], "QUESTION is empty"),
        (["ask", "   ", "--json"], "QUESTION is empty"),
        (["ask", "warmup", "--top", "0"], "'--top' / '-k': 0 is not in the range 1<=x<=10"),
    ],
    "annotate": [
        (["annotate"], "expected FILE, or --arch and --framework"),
        (["annotate", "missing.py"], "missing.py does not exist"),
        (["annotate", "adir"], "adir is not a text file"),
        (["annotate", "binary.py"], "binary.py is not a text file"),
        (["annotate", "plain.py"], "plain.py has no `# theory: <id>` markers"),
        (["annotate", "unknown.py"], "no theory entry for 'no-such-concept'"),
        (["annotate", "marked.py", "--level", "huge"], "'huge' is not one of 'brief', 'full'"),
        (["annotate", "marked.py", "--arch", "gpt"], "give FILE, or --arch and --framework, not both"),
        (["annotate", "marked.py", "--overwrite"], "--overwrite applies to --theory-md"),
        (["annotate", "--arch", "gpt"], "expected FILE, or --arch and --framework"),
        (["annotate", "--arch", "gpt", "--framework", "mxnet"], "unknown framework 'mxnet'"),
        (["annotate", "--arch", "lstm", "--framework", "torch"], "unknown architecture 'lstm'"),
        (["annotate", "--arch", "gpt", "--framework", "torch", "--theory-md", "missing_dir/T.md"], "folder missing_dir does not exist"),
        (["annotate", "--arch", "gpt", "--framework", "torch", "--theory-md", "afile/T.md"], "afile is a file, not a folder"),
        (["annotate", "--arch", "gpt", "--framework", "torch", "--theory-md", "existing.md"], "existing.md already exists"),
        (["annotate", "--arch", "gpt", "--framework", "torch", "--theory-md", "T.md", "--level", "full"], "--level applies to printing"),
        (["annotate", "plain.py", "--theory-md", "T.md"], "plain.py has no `# theory: <id>` markers"),
        (["annotate", "--theory-md", "T.md"], "--theory-md needs FILE or both --arch and --framework"),
    ],
    "diagnose": [
        (["diagnose"], "Missing argument 'LOG'"),
        (["diagnose", "missing.jsonl"], "training log missing.jsonl does not exist"),
        (["diagnose", "adir"], "adir is a directory"),
        (["diagnose", "empty.jsonl"], "no training lines"),
        (["diagnose", "notjson.jsonl"], "is not a JSON object"),
        (["diagnose", "binary.py"], "binary.py is a binary file"),
        (["diagnose", "m.jsonl", "--plot", "missing_dir/x.png"], "folder missing_dir does not exist"),
        (["diagnose", "m.jsonl", "--plot", "x.xyz"], "x.xyz: a plot must end in .png, .svg or .pdf, not '.xyz'"),
        (["diagnose", "m.jsonl", "--plot", "plotname"], "plotname: a plot must end in .png, .svg or .pdf"),
        (["diagnose", "m.jsonl", "--plot", "adir"], "adir is a folder; expected a plot name"),
        (["diagnose", "m.jsonl", "--plot", "afile/x.png"], "afile is a file, not a folder"),
        (["diagnose", "m.jsonl", "--plot", "existing.png"], "existing.png already exists"),
        (["diagnose", "missing.jsonl", "--plot", "new.png"], "training log missing.jsonl does not exist"),
        (["diagnose", "m.jsonl", "--overwrite"], "--overwrite applies to --plot"),
    ],
    "doctor": [
        (["doctor", "gpt"], "ARCH needs --framework/-f"),
        (["doctor", "-f", "torch"], "missing argument 'ARCH'"),
        (["doctor", "lstm", "-f", "torch"], "unknown architecture 'lstm'"),
        (["doctor", "gpt", "-f", "mxnet"], "unknown framework 'mxnet'"),
        (["doctor", "gpt", "-f", "torch", "-p", "nope"], "unknown gpt preset 'nope'"),
        (["doctor", "gpt", "-f", "torch", "--seed", "-1"], "'--seed': -1 is not in the range x>=0"),
        (["doctor", "gpt", "--arch", "bert", "-f", "torch"], "ARCH 'gpt' and --arch 'bert' differ"),
        (["doctor", "--arch", "gtp", "--framework", "torch"], "unknown architecture 'gtp'"),
    ],
    "mcp": [
        (["mcp", "--root", "missing_dir"], "--root missing_dir: not an existing folder"),
        (["mcp", "--root", "afile"], "--root afile: not an existing folder"),
        (["mcp", "--max-params", "0"], "'--max-params': 0 is not in the range x>=1"),
        (["mcp", "--http", "0.0.0.0:8765"], "the server listens on loopback only"),
        (["mcp", "--http", "port"], "expected [HOST:]PORT"),
        (["mcp", "--http", "127.0.0.1:70000"], "expected [HOST:]PORT"),
    ],
}
# Not bad input but "ran and found nothing": exit 1 (docs/cli.md).
EXIT_1 = {("annotate", "plain.py"), ("annotate", "plain.py", "--theory-md", "T.md")}
ALL = [(command, args, fragment) for command, cases in CASES.items() for args, fragment in cases]


def test_every_command_is_in_the_table():
    assert set(cli.commands) <= set(CASES), f"add bad inputs for: {sorted(set(cli.commands) - set(CASES))}"


@pytest.mark.parametrize("command,args,fragment", ALL, ids=[" ".join(a) or "-" for _, a, _ in ALL])
def test_bad_input_is_one_error_line_and_changes_nothing(workdir, monkeypatch, command, args, fragment):
    monkeypatch.chdir(workdir)
    before = _snapshot(workdir)
    result = CliRunner().invoke(cli, args, prog_name="dlzoo")
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == (1 if tuple(args) in EXIT_1 else 2), result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0], lines[0]
    assert result.stdout == "" and "Traceback" not in result.output
    assert _snapshot(workdir) == before


def _without(module: str, tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh process in which ``module`` cannot be imported (as if not installed)."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(f"import sys\nsys.modules[{module!r}] = None\n")
    environ = {**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "dlzoo.cli", *args], capture_output=True, text=True, env=environ, cwd=tmp_path, timeout=300
    )


@pytest.mark.parametrize("args", [["verify", "vit"], ["verify", "gpt", "-f", "keras"], ["doctor", "gpt", "-f", "keras"]])
def test_missing_keras_backend_fails_at_once_naming_the_extra(tmp_path, args):
    pytest.importorskip("keras")
    result = _without("tensorflow", tmp_path, *args, KERAS_BACKEND="tensorflow")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [result.stderr.strip()], "one line: nothing ran before the check"
    assert result.stderr.startswith("error: keras with backend tensorflow (KERAS_BACKEND) needs tensorflow")
    assert "pip install 'dlzoo[keras-tensorflow]'" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


def test_missing_framework_names_its_extra(tmp_path):
    # optax may be missing too (the no-framework session): the line names what is missing first
    for command in (["verify", "gpt", "-f", "equinox"], ["doctor", "gpt", "-f", "equinox"]):
        result = _without("equinox", tmp_path, *command)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: framework 'equinox' needs equinox"), result.stderr
        assert lines[0].endswith("install it with: pip install 'dlzoo[equinox]'"), lines[0]
