import os
import zlib

# Conformance compares fp32 to 1e-5: on GPU/TPU JAX's default matmul precision is not full fp32
# (and torch may use TF32), so ask both for full precision before either is imported.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")

import numpy as np
import pytest

from dlzoo.zoo import from_pretrained, hub

from .harness import CASES, save_reference


@pytest.fixture(autouse=True)
def _torch_seeded_per_test(request):
    """torch's global generator seeded from the test's id, and restored after it: a test draws
    the same numbers whichever tests ran before it in its worker (see save_reference)."""
    try:
        import torch
    except ImportError:  # the keras-tensorflow session has no torch
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
        yield


@pytest.fixture(scope="session")
def references(tmp_path_factory):
    """case name -> (folder in the published layout, transformers model), built lazily."""
    built = {}

    def get(name: str):
        if name not in built:
            folder = tmp_path_factory.mktemp(name)
            built[name] = (folder, save_reference(CASES[name], folder))
        return built[name]

    return get


@pytest.fixture(scope="session")
def canonical(references):
    """case name -> (arch, config, canonical tensors) of the reference checkpoint."""
    cache = {}

    def get(name: str):
        if name not in cache:
            arch, config, tensors, _ = hub.load_checkpoint(references(name)[0])
            cache[name] = (arch, config, tensors)
        return cache[name]

    return get


@pytest.fixture
def handle(references):
    """A fresh handle for (case, framework): tests may train or step it."""

    def make(name: str, framework: str, **kwargs):
        return from_pretrained(references(name)[0], framework=framework, **kwargs)

    return make


def copy_tensors(tensors: dict) -> dict:
    return {k: np.array(v, copy=True) for k, v in tensors.items()}
