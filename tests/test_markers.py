"""Every framework's model files carry the same theory markers as the torch files, so that
annotation and THEORY.md read the same whichever framework a project uses."""

import re
from pathlib import Path

import pytest

ZOO = Path(__file__).resolve().parents[1] / "zoo"
MARKER = re.compile(r"#\s*theory:\s*([a-z0-9-]+)")
# The bf16 cast sits in the model files of the JAX frameworks and in the backend for torch/keras.
PLACEMENT_ONLY = {"mixed-precision"}


def _markers(framework: str, arch: str) -> set[str]:
    files = [ZOO / framework / f"{arch}.py", ZOO / framework / "layers.py"]
    return {m for f in files if f.exists() for m in MARKER.findall(f.read_text())} - PLACEMENT_ONLY


@pytest.mark.parametrize("framework", ["flax", "equinox", "haiku", "keras"])
@pytest.mark.parametrize("arch", ["gpt", "bert", "vit", "resnet"])
def test_markers_match_the_torch_files(framework, arch):
    want = _markers("torch", arch)
    assert want, "the torch file carries no markers"
    assert want <= _markers(framework, arch), f"missing in {framework}/{arch}: {sorted(want - _markers(framework, arch))}"
