"""dlzoo new: safety of the command, the zoo code it copies, and every generated project's own tests.

The generated projects' suites run in subprocesses (each project is its own package, imported the
way a user runs it). One architecture per framework runs its full suite; which one rotates with
DLZOO_SCAFFOLD_ROTATION (default: the day), so both are covered across runs.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rotation

from dlzoo.scaffold import generate as g
from dlzoo.zoo.configs import ZooError, get_config
from dlzoo.zoo.frameworks import FRAMEWORKS

ARCHS = ("resnet", "vit")
PAIRS = [(arch, framework) for arch in ARCHS for framework in FRAMEWORKS]
ZOO = Path(g.__file__).resolve().parents[1] / "zoo"
ROTATION = int(os.environ.get("DLZOO_SCAFFOLD_ROTATION", datetime.date.today().toordinal()))
SUITE_ARCH = {framework: ARCHS[(ROTATION + i) % 2] for i, framework in enumerate(FRAMEWORKS)}
FRAMEWORK_MODULES = ("torch", "jax", "jaxlib", "flax", "equinox", "haiku", "keras", "tensorflow", "optax")


def _env(project: Path) -> dict[str, str]:
    # The keras projects run their jitted stateless step on the jax backend.
    return {**os.environ, "PYTHONPATH": str(project), "KERAS_BACKEND": "jax", "PYTHONDONTWRITEBYTECODE": "1"}


@pytest.fixture(scope="module")
def projects(tmp_path_factory) -> dict[tuple[str, str], Path | Exception]:
    """All ten image projects, generated once (a pair whose generation fails holds the error)."""
    root = tmp_path_factory.mktemp("projects")
    out: dict[tuple[str, str], Path | Exception] = {}
    for arch, framework in PAIRS:
        try:
            result = g.new_project(f"p_{framework}_{arch}", arch=arch, framework=framework, parent=root)
            out[(arch, framework)] = Path(result["path"])
        except ZooError as error:
            out[(arch, framework)] = error
    return out


def _project(projects, arch: str, framework: str) -> Path:
    found = projects[(arch, framework)]
    if isinstance(found, Exception):
        pytest.fail(f"dlzoo new --arch {arch} --framework {framework} failed: {found}")
    return found


# --------------------------------------------------------------------------- generated code


@pytest.mark.parametrize("arch,framework", PAIRS)
def test_copied_model_code_is_the_zoo_file_modulo_imports(projects, arch, framework):
    project = _project(projects, arch, framework)
    provenance = json.loads((project / ".dlzoo.json").read_text())
    pkg = provenance["package"]
    relative_import = re.compile(r"^\s*from \.+[\w.]* import ")
    for target, source in g.copied_sources(arch, framework):
        zoo_text = (ZOO / source).read_text()
        copied = (project / pkg / target).read_text()
        record = provenance["copied"][f"{pkg}/{target}"]
        assert record["source"] == f"zoo/{source}"
        assert record["sha256_source"] == hashlib.sha256(zoo_text.encode()).hexdigest()
        assert record["sha256"] == hashlib.sha256(copied.encode()).hexdigest()
        ours, theirs = g.strip_annotations(copied).splitlines(), zoo_text.splitlines()
        assert len(ours) == len(theirs), f"{target}: line count differs from zoo/{source}"
        for number, (a, b) in enumerate(zip(ours, theirs), start=1):
            if a != b:  # only relative imports may differ, and only in the module they name
                assert relative_import.match(a) and relative_import.match(b), f"{target}:{number}: {a!r} != {b!r}"
                assert a.split(" import ")[1] == b.split(" import ")[1], f"{target}:{number}"


@pytest.mark.parametrize("arch,framework", PAIRS)
def test_generated_project_is_complete_and_lint_clean(projects, arch, framework):
    project = _project(projects, arch, framework)
    provenance = json.loads((project / ".dlzoo.json").read_text())
    pkg = provenance["package"]
    expected = {
        f"{pkg}/{f}.py"
        for f in (
            "__init__",
            "configs",
            "layers",
            "model",
            "canonical",
            "config",
            "data",
            "engine",
            "checkpoint",
            "train",
            "evaluate",
            "predict",
        )
    }
    expected |= {"pyproject.toml", "README.md", ".gitignore", "tests/test_project.py"}
    assert expected <= set(provenance["written"])
    for relative, digest in provenance["written"].items():
        assert hashlib.sha256((project / relative).read_bytes()).hexdigest() == digest, relative
    assert (provenance["arch"], provenance["framework"], provenance["preset"]) == (arch, framework, "tiny")
    pyproject = (project / "pyproject.toml").read_text()
    for dep in g.COMMON_DEPS + g.FRAMEWORK_DEPS[framework]:
        assert f'"{dep}"' in pyproject
    others = {d.split(">")[0] for f in FRAMEWORKS if f != framework for d in g.FRAMEWORK_DEPS[f]}
    others -= {d.split(">")[0] for d in g.FRAMEWORK_DEPS[framework]}
    assert not any(f'"{name}>' in pyproject for name in others), "another framework's dependency"
    lint = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--config", str(ZOO.parent / "pyproject.toml"), str(project)],
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 0, lint.stdout


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_other_project_imports_and_predicts(projects, framework):
    """The architecture whose suite does not run today: its package imports as a user runs it and
    its Engine maps images to probabilities (the suite's own tests cover the other one)."""
    rotation.only_today(framework, FRAMEWORKS)
    code = """
import importlib, json, sys
import numpy as np
out = {}
for path in sys.argv[1:]:
    sys.path.insert(0, path)
    pkg = json.load(open(path + "/.dlzoo.json"))["package"]
    config, engine, _ = (importlib.import_module(f"{pkg}.{m}") for m in ("config", "engine", "train"))
    importlib.import_module(f"{pkg}.evaluate"); importlib.import_module(f"{pkg}.predict")
    cfg = config.load_config()
    size = cfg.data.image_size
    probs = engine.Engine(cfg, cfg.model, total_steps=1).predict(np.zeros((2, size, size, cfg.model.num_channels), np.float32))
    out[pkg] = [list(probs.shape), float(probs.sum())]
print(json.dumps(out))
"""
    other = next(arch for arch in ARCHS if arch != SUITE_ARCH[framework])
    paths = [str(_project(projects, other, framework))]
    done = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True, timeout=600, env=_env(Path(paths[0])))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(result) == [f"p_{framework}_{other}"]
    for shape, total in result.values():
        assert shape == [2, 10] and total == pytest.approx(2.0, rel=1e-5)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_generated_project_suite_passes(projects, framework):
    """The project's own tests: shapes, one step lowers the loss, save/load, exact resume after
    SIGKILL, one-line errors. The architecture rotates (SUITE_ARCH)."""
    rotation.only_today(framework, FRAMEWORKS)
    arch = SUITE_ARCH[framework]
    project = _project(projects, arch, framework)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests"],
        cwd=project,
        env=_env(project),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, f"{arch}/{framework}:\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}"


def test_metrics_are_read_by_dlzoo_diagnose(projects, tmp_path):
    from dlzoo.agents.diagnose import diagnose
    from dlzoo.agents.metrics import read_metrics

    project = _project(projects, "resnet", "torch")
    sets = ["train.epochs=2", "train.batch_size=128", "train.threads=1", f"run.out_dir={tmp_path}", "run.name=r"]
    done = subprocess.run(
        [sys.executable, "-m", "p_torch_resnet.train", *[f"--set={s}" for s in sets]],
        cwd=project,
        env=_env(project),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"test accuracy 0\.\d{4} \(\d+ images", done.stdout), done.stdout
    run = read_metrics(tmp_path / "r" / "metrics.jsonl")
    steps = run.meta["total_steps"]
    assert run.num_classes == 10 and run.meta["arch"] == "resnet" and run.meta["framework"] == "torch"
    assert [r["step"] for r in run.train] == list(range(steps))
    assert all({"loss", "lr", "grad_norm", "throughput"} <= set(r) for r in run.train)
    assert [r["step"] for r in run.eval] == [steps // 2, steps] and all("val_accuracy" in r for r in run.eval)
    diagnose(run)  # reads without error; the findings themselves depend on the two-epoch run
    state = json.loads(next((tmp_path / "r" / "checkpoints").glob("step_*/state.json")).read_text())
    assert state["data"]["classes"] == [str(i) for i in range(10)]
    # The checkpoint's model file is a dlzoo canonical file: dlzoo reads it (in another framework, too).
    from dlzoo.zoo import weights

    arch, config, tensors = weights.load(next((tmp_path / "r" / "checkpoints").glob("step_*/model.safetensors")))
    assert arch == "resnet" and config == get_config("resnet", "tiny") and len(tensors) > 0


# --------------------------------------------------------------------------- the command's safety


@pytest.mark.parametrize("name", ["", " ", "a/b", "/abs", "..", "a..b", ".", "-x", "a\\b", "~"])
def test_bad_names_are_refused(tmp_path, name):
    with pytest.raises(ZooError):
        g.new_project(name, arch="vit", framework="torch", parent=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "name,package,adjusted",
    [
        ("digits_vit", "digits_vit", False),
        ("My-Project 2", "my_project_2", False),
        ("2cool", "project_2cool", False),
        ("class", "class_project", True),
        ("json", "json_project", True),
        ("torch", "torch_project", True),
        ("tests", "tests_project", True),
        ("match", "match_project", True),
    ],
)
def test_package_names(name, package, adjusted):
    found, note = g.package_name(name)
    assert found == package and found.isidentifier()
    assert (note is not None and "shadow" in note) == adjusted


def test_non_empty_folder_is_refused_and_force_keeps_user_files(tmp_path):
    target = tmp_path / "proj"
    target.mkdir()
    (target / "README.md").write_text("my notes\n")
    (target / "data.csv").write_text("1,2\n")
    with pytest.raises(ZooError, match="not empty"):
        g.new_project("proj", arch="resnet", framework="torch", parent=tmp_path)
    assert sorted(p.name for p in target.iterdir()) == ["README.md", "data.csv"]
    result = g.new_project("proj", arch="resnet", framework="torch", parent=tmp_path, force=True)
    assert result["kept"] == ["README.md"]
    assert (target / "README.md").read_text() == "my notes\n" and (target / "data.csv").read_text() == "1,2\n"
    assert (target / "README.md.dlzoo-new").read_text().startswith("# proj")
    # Again with --force: our unchanged files are replaced, an edited one is kept.
    (target / "proj" / "train.py").write_text("# my edits\n")
    (target / "proj" / "data.py").unlink()
    result = g.new_project("proj", arch="resnet", framework="torch", parent=tmp_path, force=True)
    assert set(result["kept"]) == {"README.md", "proj/train.py"}
    assert (target / "proj" / "train.py").read_text() == "# my edits\n"
    assert (target / "proj" / "train.py.dlzoo-new").read_text().startswith('"""Train')
    assert (target / "proj" / "data.py").is_file() and not (target / "proj" / "config.py.dlzoo-new").exists()
    assert not [p for p in tmp_path.iterdir() if p.name != "proj"], "no temporary folder left behind"


def test_a_failure_part_way_leaves_nothing(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(g, "_write_theory", broken)  # runs after every other file is rendered
    with pytest.raises(RuntimeError):
        g.new_project("proj", arch="vit", framework="torch", parent=tmp_path, annotate="full")
    assert list(tmp_path.iterdir()) == []


def test_templates_render_sandboxed_and_strict():
    from jinja2.exceptions import SecurityError, UndefinedError

    env = g._environment()
    with pytest.raises(UndefinedError):
        env.from_string("{{ missing }}").render()
    with pytest.raises(SecurityError):
        env.from_string("{{ ''.__class__.__mro__[1].__subclasses__() }}").render()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"arch": "gpt", "framework": "torch", "task": "mlm"}, "--task"),
        ({"arch": "vit", "framework": "mxnet"}, "unknown framework"),
        ({"arch": "vit", "framework": "torch", "preset": "huge"}, "unknown vit preset"),
        ({"arch": "vit", "framework": "torch", "task": "segmentation"}, "--task"),
        ({"arch": "vit", "framework": "torch", "annotate": "verbose"}, "--annotate"),
        ({"arch": "vit", "framework": None, "needs": ("nope",)}, "unknown need 'nope'; expected one of: onnx-export"),
        ({"arch": "vit", "framework": "torch", "needs": ("tpu",)}, "--need asks the engineer agent to choose the framework"),
    ],
)
def test_user_errors(tmp_path, kwargs, message):
    with pytest.raises(ZooError, match=re.escape(message)):
        g.new_project("proj", parent=tmp_path, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_cli_is_fast_imports_no_framework_and_errors_in_one_line(tmp_path):
    code = f"""
import json, resource, sys, time
sys.argv = ["dlzoo", "new", "--arch", "vit", "--framework", "equinox", "--json", "proj"]
from dlzoo.cli import main
try:
    main()
except SystemExit as exit:
    assert not exit.code, exit.code
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({{"cpu": usage.ru_utime + usage.ru_stime,
                  "frameworks": sorted(m for m in sys.modules if m.split(".")[0] in {FRAMEWORK_MODULES!r})}}))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    *printed, last = done.stdout.strip().splitlines()
    report, result = json.loads(last), json.loads("\n".join(printed))
    assert report["frameworks"] == [], report
    assert report["cpu"] < 2.0, f"dlzoo new took {report['cpu']:.2f} s of CPU"
    assert result["package"] == "proj" and result["framework"] == "equinox"
    assert result["next"] == [
        "cd proj && python -m pip install -e '.[test]'",
        "python -m proj.train",
        "python -m proj.evaluate runs/default",
    ]
    dlzoo = [sys.executable, "-m", "dlzoo.cli"]
    for args, expected in [
        (["new", "--arch", "vit", "-f", "mxnet", "other"], "unknown framework 'mxnet'"),
        (["new", "--arch", "vit", "-f", "torch", "proj"], "not empty"),
        (["new", "--arch", "vit", "-f", "torch", "../escape"], "path separator"),
    ]:
        done = subprocess.run(dlzoo + args, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and done.stderr.startswith("error: ") and expected in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["proj"]


# --------------------------------------------------------------------------- annotations


def test_annotate_levels(tmp_path):
    zoo_model = (ZOO / "torch" / "vit.py").read_text()
    none = g.new_project("a_none", arch="vit", framework="torch", parent=tmp_path, annotate="none")
    assert (Path(none["path"]) / "a_none" / "model.py").read_text() == g.adapt_imports(zoo_model, "vit")
    assert not (Path(none["path"]) / "THEORY.md").exists()
    brief = g.new_project("a_brief", arch="vit", framework="torch", parent=tmp_path, annotate="brief")
    text = (Path(brief["path"]) / "a_brief" / "model.py").read_text()
    notes = [line for line in text.splitlines() if line.lstrip().startswith("#   | ")]
    markers = [line for line in zoo_model.splitlines() if "# theory:" in line]
    assert len(notes) >= len(markers) and all(len(line) <= 120 for line in notes)
    assert any("Patch embedding" in line for line in notes)
    engine = (Path(brief["path"]) / "a_brief" / "engine.py").read_text()
    assert any("AdamW" in line and line.lstrip().startswith("#   | ") for line in engine.splitlines())
    full = g.new_project("a_full", arch="vit", framework="torch", parent=tmp_path, annotate="full")
    theory = (Path(full["path"]) / "THEORY.md").read_text()
    links = re.findall(r"\]\((a_full/[\w/]+\.py)#L(\d+)\)", theory)
    assert links and {path for path, _ in links} >= {"a_full/model.py", "a_full/engine.py"}
    for path, line in links:  # every link points at a marked line of the written project
        lines = (Path(full["path"]) / path).read_text().splitlines()
        window = lines[max(0, int(line) - 8) : int(line)]
        assert any("# theory:" in w for w in window), (path, line)


# --------------------------------------------------------------------------- --weights


def _canonical(arch: str, config, seed: int = 0) -> dict[str, np.ndarray]:
    from dlzoo.zoo.spec import canonical_spec

    rng = np.random.default_rng(seed)
    return {name: rng.normal(0, 0.02, spec.shape).astype(np.float32) for name, spec in canonical_spec(arch, config).items()}


def test_weights_from_a_canonical_file_and_a_published_folder(tmp_path):
    from dlzoo.zoo import hub, weights

    config = get_config("vit", "tiny", num_classes=5)
    tensors = _canonical("vit", config)
    file = weights.save(tmp_path / "vit5.safetensors", "vit", config, tensors)
    hub.export("vit", config, tensors, tmp_path / "published")
    for source in (file, tmp_path / "published"):
        name = f"w_{Path(source).stem}"
        result = g.new_project(name, arch="vit", framework="torch", parent=tmp_path, weights=str(source))
        assert result["weights"]["fresh"] == ["head.kernel", "head.bias"]
        assert any("head is freshly initialised" in n for n in result["notes"])
        arch, saved_config, saved = weights.load(tmp_path / name / "weights" / "init.safetensors")
        assert saved_config == config and all(np.array_equal(saved[k], tensors[k]) for k in tensors)
        assert 'init_weights: str = "weights/init.safetensors"' in (tmp_path / name / name / "config.py").read_text()
    project = tmp_path / "w_vit5"
    done = subprocess.run(
        [sys.executable, "-m", "w_vit5.train", "--fast-dev-run", "--set=train.threads=1"],
        cwd=project,
        env=_env(project),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "freshly initialised: head.bias, head.kernel" in done.stderr and "fast-dev-run ok" in done.stdout


def test_weights_errors(tmp_path, monkeypatch):
    from dlzoo.zoo import weights

    config = get_config("resnet", "tiny")
    file = weights.save(tmp_path / "resnet.safetensors", "resnet", config, _canonical("resnet", config))
    with pytest.raises(ZooError, match="holds resnet weights"):
        g.new_project("p", arch="vit", framework="torch", parent=tmp_path, weights=str(file))
    with pytest.raises(ZooError, match="not both"):
        g.new_project("p", arch="resnet", framework="torch", parent=tmp_path, weights=str(file), preset="18")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ZooError, match="expected a state dict"):
        g.new_project("p", arch="vit", framework="torch", parent=tmp_path, weights=str(tmp_path / "notes.txt"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ZooError, match="HF_HUB_OFFLINE"):
        g.new_project("p", arch="vit", framework="torch", parent=tmp_path, weights="google/vit-base-patch16-224")
    assert not (tmp_path / "p").exists()


def test_without_framework_the_engineer_chooses_and_says_why(tmp_path):
    """dlzoo new without --framework: the engineer agent's choice for the stated needs, its reasons
    printed and written into the README (issue: engineer agent, framework choice)."""
    from dlzoo.agents.engineer.frameworks import choose_framework as engineer_choice
    from dlzoo.scaffold.generate import new_project, summary_text

    result = new_project("picked", arch="vit", framework=None, needs=("onnx-export",), parent=tmp_path)
    expected, reasons = engineer_choice("vit", ("onnx-export",))
    assert result["framework"] == expected and expected in ("torch", "keras")
    assert result["framework_choice"] == reasons and reasons
    readme = (tmp_path / "picked" / "README.md").read_text()
    assert "## Why" in readme and reasons[0] in readme
    assert reasons[0] in summary_text(result)


def test_design_flags_write_the_engineer_recommendation(tmp_path):
    """dlzoo new --dataset-size/--input-size/--budget-hours: the engineer agent's training design
    is written as recommended.toml, which the project's own config loader accepts, and explained
    in the README."""
    import importlib
    import sys

    from dlzoo.agents.engineer.strategy import design_training

    result = g.new_project(
        "designed", arch="resnet", framework="torch", parent=tmp_path, design={"dataset_size": 1797, "input_size": 8, "budget_hours": 0.1}
    )
    design = design_training("image-classification", arch="resnet", dataset_size=1797, input_size=8, budget_hours=0.1)
    assert result["recommended"]["overrides"] == design["overrides"]
    assert "## Recommended training settings" in (tmp_path / "designed" / "README.md").read_text()
    sys.path.insert(0, str(tmp_path / "designed"))
    try:
        config = importlib.import_module("designed.config").load_config(tmp_path / "designed" / "recommended.toml")
    finally:
        sys.path.remove(str(tmp_path / "designed"))
    assert config.optim.lr == pytest.approx(design["overrides"]["optim.lr"])
    assert config.train.batch_size == design["overrides"]["train.batch_size"]
