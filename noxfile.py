"""The test matrix. `nox -l` lists exactly these sessions (tests/test_nox.py holds this table to it):

    session            installs                                  runs
    core               dlzoo[test], no deep-learning framework   CLI, configs, weights, agents; every framework's extra named
    torch              dlzoo[torch,test,reference]               torch backend, hub, API, its generated projects
    flax               dlzoo[flax,test]                          flax backend, API, its generated projects
    equinox            dlzoo[equinox,test]                       equinox backend, API, its generated projects
    haiku              dlzoo[haiku,test]                         haiku backend, API, its generated projects
    keras-jax          dlzoo[keras-jax,test]                     keras on jax, API, its generated projects
    keras-torch        dlzoo[keras-torch,test]                   keras on torch, API
    keras-tensorflow   dlzoo[keras-tensorflow,test]              keras on tensorflow, API
    conformance        dlzoo[all,test,reference] + tensorflow    transformers/torchvision/timm and cross-framework conformance
    scaffold           dlzoo[all,test]                           dlzoo new, every generated project's own tests, multi-device, slow runs
    lint               ruff                                      ruff check, ruff format --check
    ci                 dlzoo[all,test,reference] + tensorflow    what CI runs: everything above in one environment, then
                                                                 core and one single-framework session (rotating daily)

Installs honour PIP_CONSTRAINT (CI pins the CPU build of torch through .ci/constraints.txt).
Measured times per session are in CONTRIBUTING.md.
"""

from __future__ import annotations

import datetime
import os

import nox

nox.options.sessions = ["ci"]
nox.options.reuse_existing_virtualenvs = True

PYTEST = ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider"]
PARALLEL = ["-n", "2"]
FRAMEWORKS = ("torch", "flax", "equinox", "haiku")
KERAS_BACKENDS = ("jax", "torch", "tensorflow")
# Test files that need no deep-learning framework (they skip framework cases cleanly).
CORE_TESTS = [
    "tests/test_configs.py",
    "tests/test_weights.py",
    "tests/test_cli.py",
    "tests/test_cli_bad_input.py",
    "tests/test_master_knowledge.py",
    "tests/test_master_ask.py",
    "tests/test_master_papers.py",
    "tests/test_master_diagnose.py",
    "tests/test_engineer.py",
    "tests/test_isolation.py",
    "tests/test_nox.py",
]
# What every single-framework session runs besides its own backend's tests.
SHARED_TESTS = ["tests/test_isolation.py", "tests/test_api.py"]
BACKEND_TESTS = {
    "torch": ["tests/test_torch_models.py", "tests/test_hub.py"],
    "flax": ["tests/test_flax.py"],
    "equinox": ["tests/test_equinox.py"],
    "haiku": ["tests/test_haiku.py"],
    "keras": ["tests/test_keras.py"],
}
# torchvision and timm, the references for torchvision/timm-named checkpoints. PyPI's torchvision
# links CUDA torch, so beside the CPU build its C ops cannot load and importing it fails; and
# transformers imports torchvision whenever it can. So they go outside site-packages, found by
# conformance/vision_refs.py through DLZOO_VISION_REFS (0.28.0 is the torchvision of torch 2.13).
VISION_REFS = ["torchvision==0.28.0", "timm==1.0.31"]
# Generated projects (they pin KERAS_BACKEND=jax for keras projects).
SCAFFOLD_TESTS = (
    "test_scaffold.py",
    "test_scaffold_text.py",
    "test_scaffold_engines.py",
    "test_scaffold_distributed_jax.py",
    "test_scaffold_distributed_torch.py",
)
# Tests marked slow (long training runs) run in the scaffold session, not in ci.
NOT_SLOW = ["-m", "not slow"]


def _pytest(session, *args, env=None, parallel=True):
    session.run(*PYTEST, *(PARALLEL if parallel else []), *args, *session.posargs, env=env or {})


def _vision_refs(session) -> dict:
    target = f"{session.virtualenv.location}/vision-refs"
    session.run("python", "-m", "pip", "install", "--quiet", "--no-deps", "--target", target, *VISION_REFS)
    return {"DLZOO_VISION_REFS": target}


@nox.session
def core(session):
    """No deep-learning framework installed: the CLI, configs, weights and both agents work, and
    every framework's absence is one error line naming its extra."""
    session.install("-e", ".[test]")
    _pytest(session, *CORE_TESTS, env={"DLZOO_EXPECT_FRAMEWORKS": ""})


def _single(session, framework: str, extra: str, env: dict):
    session.install("-e", f".[{extra},test{',reference' if framework == 'torch' else ''}]")
    expected = "keras" if framework.startswith("keras") else framework
    # keras' torch backend is torch itself, so dlzoo's torch models are installed there too
    env = {"DLZOO_EXPECT_FRAMEWORKS": "torch,keras" if framework == "keras-torch" else expected, **env}
    files = BACKEND_TESTS["keras" if framework.startswith("keras") else framework]
    _pytest(session, *files, *SHARED_TESTS, env=env)
    if framework != "keras-torch" and framework != "keras-tensorflow":
        # the framework's generated projects (keras projects run on jax)
        _pytest(session, "tests/test_scaffold.py", "-k", expected, env=env)


def _framework_session(framework: str):
    def session_function(session):
        _single(session, framework, framework, {})

    session_function.__doc__ = f"Only {framework} installed: its backend, the API, its generated projects, the others' errors."
    return session_function


def _keras_session(backend: str):
    def session_function(session):
        _single(session, f"keras-{backend}", f"keras-{backend}", {"KERAS_BACKEND": backend})

    session_function.__doc__ = f"Only keras on {backend} installed: the keras backend, the API, the others' errors."
    return session_function


for _framework in FRAMEWORKS:
    nox.session(name=_framework)(_framework_session(_framework))
for _backend in KERAS_BACKENDS:
    nox.session(name=f"keras-{_backend}")(_keras_session(_backend))


@nox.session
def conformance(session):
    """transformers, torchvision and timm against dlzoo, and every framework against torch; keras
    on each backend."""
    session.install("-e", ".[all,test,reference]", "tensorflow-cpu")
    refs = _vision_refs(session)
    _pytest(session, "conformance", "-k", "not keras", env={"KERAS_BACKEND": "jax", **refs})
    for backend in KERAS_BACKENDS:
        _pytest(session, "conformance", "-k", "keras", env={"KERAS_BACKEND": backend, **refs})


@nox.session
def scaffold(session):
    """dlzoo new: command safety, copied zoo code, and every framework's generated project running
    its own tests (shapes, learning, save/load, exact resume after SIGKILL); text projects (gpt lm,
    bert mlm and classify) in tests/test_scaffold_text.py; multi-device training; the slow runs."""
    # tokenizers: what a project generated with --tokenizer declares (ci has it through transformers)
    session.install("-e", ".[all,test]", "tokenizers")
    _pytest(session, *(f"tests/{name}" for name in SCAFFOLD_TESTS), "tests/test_engineer_projects.py", env={"KERAS_BACKEND": "jax"})


@nox.session
def lint(session):
    """ruff check and ruff format --check over the whole tree."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


def rotating_framework(day: datetime.date | None = None) -> str:
    """The single-framework session CI runs today: one per day, in turn."""
    names = [*FRAMEWORKS, *(f"keras-{b}" for b in KERAS_BACKENDS)]
    return names[(day or datetime.date.today()).toordinal() % len(names)]


@nox.session
def ci(session):
    """Everything in one environment (the suite and conformance with keras on jax, then every
    keras case on each backend; tests marked slow run in scaffold), then core and today's
    single-framework session."""
    session.install("-e", ".[all,test,reference]", "tensorflow-cpu")
    refs = _vision_refs(session)
    # generated projects' heavy tests for two frameworks a day (tests/rotation.py); scaffold runs all
    rotate = {"DLZOO_PROJECT_FRAMEWORKS": "2"}
    _pytest(session, "tests", "conformance", "-k", "not keras", *NOT_SLOW, "--durations=25", env={"KERAS_BACKEND": "jax", **refs, **rotate})
    for backend in KERAS_BACKENDS:
        # every test with keras in its id: test_keras.py, and the keras cases of the shared tests;
        # generated keras projects pin KERAS_BACKEND=jax, so they run once, in the jax pass
        skip = [] if backend == "jax" else [f"--ignore=tests/{name}" for name in SCAFFOLD_TESTS]
        env = {"KERAS_BACKEND": backend, **refs, **rotate}
        _pytest(session, "tests", "conformance", "-k", "keras", *skip, *NOT_SLOW, env=env)
    session.notify("core")
    session.notify(os.environ.get("DLZOO_CI_FRAMEWORK") or rotating_framework())
    session.notify("lint")
