"""torchvision and timm, the reference implementations of torchvision- and timm-named checkpoints.

PyPI's torchvision wheels link the CUDA build of torch. Beside torch's CPU build (the one CI pins)
their C extension cannot load, and ``import torchvision`` then fails in its
``_meta_registrations`` with "operator torchvision::nms does not exist". The model definitions
used here (``torchvision.models.resnet``; timm's ResNet and ViT, which import torchvision) are pure
Python and call none of those ops, so when the extension is unusable the two op schemas that
torchvision's import registers fake kernels for are declared first. No torchvision op ever runs.

Both packages live outside site-packages, in the folder ``DLZOO_VISION_REFS`` names (default
``.vision-refs`` at the repository root), because transformers imports torchvision whenever it is
importable and would fail the same way in every other process. CI installs them with:

    pip install --no-deps --target .vision-refs torchvision==0.28.0 timm==1.0.31

(torchvision 0.28.0 is the release built for torch 2.13.0; timm's other dependencies, pyyaml,
huggingface_hub and safetensors, are already installed.)
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDER = Path(os.environ.get("DLZOO_VISION_REFS", ROOT / ".vision-refs"))
INSTALL = f"pip install --no-deps --target {FOLDER} torchvision==0.28.0 timm==1.0.31"


def _declare_torchvision_ops_if_unloadable(package: Path) -> None:
    import torch

    if hasattr(torch.ops.torchvision, "nms"):
        return
    try:
        torch.ops.load_library(str(next(package.glob("_C*.so"))))
        return
    except (StopIteration, OSError, RuntimeError):
        pass
    library = torch.library.Library("torchvision", "DEF")  # kept alive by the module global below
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    globals()["_LIBRARY"] = library


def vision_references():
    """(torchvision, timm), or a pytest skip that says how to install them."""
    if FOLDER.is_dir() and str(FOLDER) not in sys.path:
        sys.path.insert(0, str(FOLDER))
    spec = importlib.util.find_spec("torchvision")
    if spec is None or importlib.util.find_spec("timm") is None:
        pytest.skip(f"torchvision and timm are not installed in {FOLDER}; install them with: {INSTALL}")
    if "torchvision" not in sys.modules:
        _declare_torchvision_ops_if_unloadable(Path(spec.origin).parent)
    import timm
    import torchvision

    return torchvision, timm
