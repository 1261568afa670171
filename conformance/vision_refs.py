"""torchvision and timm, the reference implementations of torchvision- and timm-named checkpoints,
for the tests: ``dlzoo.zoo.reference.vision_references`` imports them (its docstring says why
beside the CPU build of torch that needs care), from the folder ``DLZOO_VISION_REFS`` names
(default ``.vision-refs`` at the repository root). CI installs them with:

    pip install --no-deps --target .vision-refs torchvision==0.28.0 timm==1.0.31

(torchvision 0.28.0 is the release built for torch 2.13.0; timm's other dependencies, pyyaml,
huggingface_hub and safetensors, are already installed.)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dlzoo.zoo.reference import VISION_REFS_ENV, vision_references_installed

ROOT = Path(__file__).resolve().parents[1]
FOLDER = Path(os.environ.get(VISION_REFS_ENV, ROOT / ".vision-refs"))
INSTALL = f"pip install --no-deps --target {FOLDER} torchvision==0.28.0 timm==1.0.31"


def vision_references():
    """(torchvision, timm), or a pytest skip that says how to install them."""
    if not vision_references_installed(FOLDER):
        pytest.skip(f"torchvision and timm are not installed in {FOLDER}; install them with: {INSTALL}")
    from dlzoo.zoo.reference import vision_references as imported

    return imported(FOLDER)
