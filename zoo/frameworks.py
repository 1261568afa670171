"""The framework registry: which backends exist and which are installed, found without
importing any framework (or numpy), so the CLI can list them cheaply.

Keras runs on another framework: ``keras_backend()`` says which one it will use (``KERAS_BACKEND``,
else keras' default tensorflow when installed, else jax, then torch, chosen by dlzoo) and
``require("keras")`` checks that backend is importable too, before any work starts. When dlzoo
chooses the backend, it says so through the ``dlzoo`` logger at INFO level -- silent in a library
unless logging is configured; the CLI shows it once as a ``note:`` line on stderr.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

from .configs import ZooError

FRAMEWORKS: tuple[str, ...] = ("torch", "flax", "equinox", "haiku", "keras")
# What each backend needs importable; used to list installed frameworks without importing them.
_REQUIRES = {
    "torch": ("torch",),
    "flax": ("flax", "optax"),
    "equinox": ("equinox", "optax"),
    "haiku": ("haiku", "optax"),
    "keras": ("keras",),
}
KERAS_BACKENDS: tuple[str, ...] = ("jax", "torch", "tensorflow")
# The pip extra that installs each framework (keras: per backend).
EXTRAS = {
    "torch": "torch",
    "flax": "flax",
    "equinox": "equinox",
    "haiku": "haiku",
    "keras": "keras-jax",
    **{f"keras/{b}": f"keras-{b}" for b in KERAS_BACKENDS},
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or deliberately hidden package counts as absent
        return False


def check_framework(framework: str) -> str:
    if framework not in FRAMEWORKS:
        raise ZooError(f"unknown framework {framework!r}; expected one of: {', '.join(FRAMEWORKS)}")
    return framework


def installed_frameworks() -> list[str]:
    """Frameworks whose packages are importable, found without importing them (keras counts when
    keras is; whether its backend is importable is ``require``'s question)."""
    return [f for f in FRAMEWORKS if all(_installed(m) for m in _REQUIRES[f]) and _backend_exists(f)]


def _backend_exists(framework: str) -> bool:
    return importlib.util.find_spec(f"{__package__}.{framework}") is not None


def keras_backend() -> tuple[str | None, str]:
    """(backend name or None, where the choice comes from), without importing keras."""
    if "keras" in sys.modules:
        return sys.modules["keras"].backend.backend(), "keras is already imported"
    chosen = os.environ.get("KERAS_BACKEND")
    if chosen:
        return chosen, "KERAS_BACKEND"
    if _installed("tensorflow"):
        return "tensorflow", "keras' default"
    for name in ("jax", "torch"):
        if _installed(name):
            return name, "chosen by dlzoo: KERAS_BACKEND is unset and tensorflow is not installed"
    return None, "none installed"


def choose_keras_backend() -> str:
    """Set ``KERAS_BACKEND`` when it is unset and keras' default (tensorflow) is not installed,
    before keras is imported; log the choice. Returns the backend keras will use."""
    name, source = keras_backend()
    if name is None:
        raise ZooError(
            "keras needs a backend and none is installed; install one with: "
            "pip install 'dlzoo[keras-jax]' (or keras-torch, keras-tensorflow)"
        )
    if source.startswith("chosen"):
        import logging

        os.environ["KERAS_BACKEND"] = name
        logging.getLogger("dlzoo").info(
            f"KERAS_BACKEND is unset and tensorflow is not installed; keras runs "
            f"on {name} (set KERAS_BACKEND=jax|torch|tensorflow to choose)"
        )
    return name


def require(framework: str) -> None:
    """Raise a ZooError naming the extra to install when ``framework`` (for keras: also its
    backend) is not importable. Cheap: nothing is imported."""
    check_framework(framework)
    missing = [m for m in _REQUIRES[framework] if not _installed(m)]
    if missing:
        raise ZooError(
            f"framework {framework!r} needs {', '.join(missing)}, which is not installed; "
            f"install it with: pip install 'dlzoo[{EXTRAS[framework]}]'"
        )
    if not _backend_exists(framework):
        raise ZooError(
            f"framework {framework!r} has no dlzoo implementation in this version; available: {', '.join(installed_frameworks())}"
        )
    if framework == "keras":
        name, source = keras_backend()
        if name is None:
            raise ZooError(
                "keras needs a backend and none is installed; install one with: "
                "pip install 'dlzoo[keras-jax]' (or keras-torch, keras-tensorflow)"
            )
        if name not in KERAS_BACKENDS:
            raise ZooError(
                f"keras backend {name!r} ({source}) is not supported by dlzoo; set KERAS_BACKEND to one of: {', '.join(KERAS_BACKENDS)}"
            )
        if not _installed(name):
            others = [b for b in KERAS_BACKENDS if b != name and _installed(b)]
            raise ZooError(
                f"keras with backend {name} ({source}) needs {name}, which is not installed; "
                f"install it with: pip install 'dlzoo[{EXTRAS['keras/' + name]}]'"
                + (f", or set KERAS_BACKEND={others[0]}" if others else "")
            )


def backend(framework: str):
    require(framework)
    return importlib.import_module(f"{__package__}.{framework}")
