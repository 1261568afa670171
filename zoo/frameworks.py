"""The framework registry: which backends exist and which are installed, found without
importing any framework (or numpy), so the CLI can list them cheaply."""

from __future__ import annotations

import importlib
import importlib.util

from .configs import ZooError

FRAMEWORKS: tuple[str, ...] = ("torch", "flax", "equinox", "haiku", "keras")
# What each backend needs importable; used to list installed frameworks without importing them.
_REQUIRES = {"torch": ("torch",), "flax": ("flax", "optax"), "equinox": ("equinox", "optax"),
             "haiku": ("haiku", "optax"), "keras": ("keras",)}


def check_framework(framework: str) -> str:
    if framework not in FRAMEWORKS:
        raise ZooError(f"unknown framework {framework!r}; expected one of: {', '.join(FRAMEWORKS)}")
    return framework


def installed_frameworks() -> list[str]:
    """Frameworks whose packages are importable, found without importing them."""
    return [f for f in FRAMEWORKS if all(importlib.util.find_spec(m) for m in _REQUIRES[f])
            and _backend_exists(f)]


def _backend_exists(framework: str) -> bool:
    return importlib.util.find_spec(f"{__package__}.{framework}") is not None


def backend(framework: str):
    check_framework(framework)
    missing = [m for m in _REQUIRES[framework] if importlib.util.find_spec(m) is None]
    if missing:
        raise ZooError(f"framework {framework!r} needs {', '.join(missing)}, which is not installed; "
                       f"install it with: pip install 'dlzoo[{framework}]'")
    if not _backend_exists(framework):
        raise ZooError(f"framework {framework!r} has no dlzoo implementation in this version; "
                       f"available: {', '.join(installed_frameworks())}")
    return importlib.import_module(f"{__package__}.{framework}")
