"""The test matrix.

    nox -s ci                      everything in one environment (what CI and the README run)
    nox -s torch flax equinox haiku    one framework each, only its extra installed
    nox -s "keras(backend='jax')"  Keras per backend (jax, torch, tensorflow)
    nox -s conformance             cross-framework and transformers conformance, every backend
    nox -s core lint
    nox -s scaffold                dlzoo new and the generated projects' own test suites

Installs honour PIP_CONSTRAINT (CI pins the CPU build of torch through .ci/constraints.txt).
"""

import nox

nox.options.sessions = ["ci"]
nox.options.reuse_existing_virtualenvs = True

KERAS_BACKENDS = {"jax": ["jax"], "torch": ["torch"], "tensorflow": ["tensorflow-cpu"]}
PYTEST = ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2"]


def _pytest(session, *args, env=None):
    session.run(*PYTEST, *args, *session.posargs, env=env or {})


@nox.session
def core(session):
    """Configs, weights, CLI and agents with no deep-learning framework installed."""
    session.install("-e", ".[test]")
    _pytest(session, "tests/test_configs.py", "tests/test_weights.py", "tests/test_cli.py")


@nox.session
@nox.parametrize("framework", ["torch", "flax", "equinox", "haiku"])
def framework(session, framework):
    """One framework with only its own extra (plus the reference for torch's hub tests)."""
    extras = "torch,test,reference" if framework == "torch" else f"{framework},test"
    session.install("-e", f".[{extras}]")
    files = [f"tests/test_{framework}.py" if framework != "torch" else "tests/test_torch_models.py"]
    if framework == "torch":
        files.append("tests/test_hub.py")
    _pytest(session, *files)


@nox.session
@nox.parametrize("backend", list(KERAS_BACKENDS))
def keras(session, backend):
    session.install("-e", ".[keras,test]", *KERAS_BACKENDS[backend])
    _pytest(session, "tests/test_keras.py", env={"KERAS_BACKEND": backend})


@nox.session
def conformance(session):
    session.install("-e", ".[all,test,reference]", "tensorflow-cpu")
    _pytest(session, "conformance", "-k", "not keras", env={"KERAS_BACKEND": "jax"})
    for backend in KERAS_BACKENDS:
        _pytest(session, "conformance", "-k", "keras", env={"KERAS_BACKEND": backend})


@nox.session
def ci(session):
    """Every test in one environment: the suite, then every Keras test and conformance case per backend."""
    session.install("-e", ".[all,test,reference]", "tensorflow-cpu", "scikit-learn")
    _pytest(session, "tests", "conformance", "-k", "not keras", env={"KERAS_BACKEND": "jax"})
    for backend in KERAS_BACKENDS:
        # every test with keras in its id: test_keras.py, and the keras cases of the shared tests
        _pytest(session, "tests", "conformance", "-k", "keras", env={"KERAS_BACKEND": backend})


@nox.session
def scaffold(session):
    """dlzoo new: command safety, copied zoo code, and every framework's generated project running
    its own tests (shapes, learning, save/load, exact resume after SIGKILL)."""
    session.install("-e", ".[all,test]", "ruff")
    _pytest(session, "tests/test_scaffold.py", env={"KERAS_BACKEND": "jax"})


@nox.session
def lint(session):
    session.install("ruff")
    session.run("ruff", "check", "dlzoo", "zoo", "agents", "scaffold", "conformance", "tests", "noxfile.py")
