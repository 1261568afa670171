"""``dlzoo verify``: the same weights in every installed framework, compared output by output
against PyTorch and against `transformers` -- conformance, for anyone porting a model.

The result depends only on the arguments, never on which frameworks are selected: random weights
come from numpy with the given seed (``weights.random_tensors``), not from one framework's
initialiser, and the references always run, whether or not ``frameworks`` names them: torch (or,
without torch, the first installed framework in ``FRAMEWORKS`` order) and transformers when
installed.

The transformers reference is evaluated in float64 (the same model, ``.double()``): its answer
is then exact to ~1e-12 whatever kernels, thread counts or attention path the machine picks, and
each row reports that framework's own float32 error. transformers' float32 evaluation is
reported beside it (``reference.float32_diffs``): the float32 noise floor of the model at hand.
For a published folder (or hub id) the reference is the checkpoint as transformers itself loads
it, never rebuilt from dlzoo's reading of it. The tolerance, max abs diff <= tol x max(1, output
scale), was set by measurement (docs/cli.md).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable

import numpy as np

from dlzoo.zoo import hub, weights
from dlzoo.zoo.configs import ZooError, check_arch, get_config
from dlzoo.zoo.frameworks import check_framework, installed_frameworks, require
from dlzoo.zoo.handle import load
from dlzoo.zoo.reference import sample_inputs, transformers_model, transformers_model_from_folder, transformers_outputs


def _weights(arch: str, preset: str, source: str | None, seed: int):
    """(config, canonical tensors, description, published folder or None)."""
    if source is None:
        config = get_config(arch, preset)
        return config, weights.random_tensors(arch, config, seed), f"random (numpy, seed {seed})", None
    path, folder = Path(source).expanduser(), None
    if path.is_file() and path.suffix == ".safetensors":  # canonical; anything else is read as published
        file_arch, config, tensors = weights.load(path)
    else:
        file_arch, config, tensors, _ = hub.load_checkpoint(source)
        if not path.is_file():  # a folder or hub id in transformers' layout: its own reference
            folder = hub.resolve(source)
    if file_arch != arch:
        raise hub.HubError(f"{source} holds {file_arch!r} weights, but verify was asked for {arch!r}")
    return config, tensors, str(source), folder


def _label(framework: str) -> str:
    if framework == "keras":
        import keras

        return f"keras ({keras.backend.backend()})"
    return framework


def _compare(got: dict, want: dict, tol: float) -> tuple[dict, bool]:
    diffs, passed = {}, True
    for key in sorted(set(got) & set(want)):
        a, b = np.asarray(got[key], np.float64), np.asarray(want[key], np.float64)
        diffs[key] = float(np.max(np.abs(a - b))) if a.shape == b.shape else float("inf")
        passed &= diffs[key] <= tol * max(1.0, float(np.max(np.abs(b))))
    return diffs, passed and set(got) == set(want)


def run_verify(
    arch: str,
    preset: str | None = None,
    source: str | None = None,
    tol: float = 1e-5,
    seed: int = 0,
    frameworks: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Run the same weights in ``frameworks`` (default: every installed one) and compare every
    output with torch's and transformers' (the references, used whenever installed).

    Weights: ``source`` (a canonical file, a published folder or a hub id), else random from
    ``preset`` (default "tiny") and ``seed``. A pair passes when max |a - b| <= tol * max(1, max |b|).
    Returns the report of docs/cli.md. Raises ZooError, before any work, for an unknown arch or
    framework, a framework that is not importable (naming the extra to install), tol < 0, seed < 0,
    or both ``source`` and ``preset``.
    """
    check_arch(arch)
    if not tol >= 0:  # also refuses NaN
        raise ZooError(f"tol must be >= 0, got {tol}")
    if seed < 0:
        raise ZooError(f"seed must be >= 0, got {seed}")
    if source is not None and preset is not None:
        raise ZooError("--weights carries its own config; drop --preset (it applies to random weights only)")
    for framework in frameworks or ():
        check_framework(framework)
    # the arguments first (cheap, numpy only: a bad preset or path is the user's first fix), then
    # the environment, then the work
    config, tensors, described, folder = _weights(arch, preset or "tiny", source, seed)
    installed = installed_frameworks()
    if frameworks:
        for framework in frameworks:
            require(framework)  # names the extra to install
    frameworks = list(dict.fromkeys(frameworks or installed))
    if not frameworks:
        raise ZooError("no framework is installed; install one, e.g. pip install 'dlzoo[torch]'")
    reference = "torch" if "torch" in installed else installed[0]
    to_run = list(dict.fromkeys([*frameworks, reference]))
    for framework in to_run:
        require(framework)  # every backend importable (keras: its backend too) before any work
    inputs = sample_inputs(arch, config, seed=seed)
    outputs, labels, notes = {}, {}, [f"weights: {described}"]
    for framework in to_run:
        if progress is not None:
            progress(f"running {arch} in {framework} ...")
        handle = load(arch, framework, config=config, weights=tensors)
        outputs[framework] = handle.apply(inputs)
        labels[framework] = _label(framework)
    if reference != "torch":
        notes.append(f"torch is not installed: frameworks are compared with {reference}, and not with transformers")
    if reference not in frameworks:
        notes.append(f"{reference} ran as the reference only (not among the selected frameworks)")
    hf_outputs, reference_info = None, None
    if reference == "torch" and importlib.util.find_spec("transformers") is not None:
        if progress is not None:
            progress(f"running {arch} in transformers ...")
        if folder is not None:  # the checkpoint as transformers itself reads it, not as dlzoo did
            model, source_note = transformers_model_from_folder(arch, config, folder), f"loaded from {folder}"
        else:
            model, source_note = transformers_model(arch, config, tensors), "holding the same tensors"
        float32 = transformers_outputs(arch, model, inputs)
        hf_outputs = transformers_outputs(arch, model.double(), inputs)
        floor, _ = _compare(float32, hf_outputs, tol)
        reference_info = {
            "implementation": "transformers",
            "class": type(model).__name__,
            "dtype": "float64",
            "source": source_note,
            "float32_diffs": floor,
        }
        del model
        notes.append(
            f"reference: transformers' {reference_info['class']} {source_note}, evaluated in float64; "
            "transformers in float32 is "
            + ", ".join(f"{k} {v:.2e}" for k, v in floor.items())
            + " from it (this model's float32 noise floor)"
        )
    elif reference == "torch":
        notes.append("transformers is not installed: no comparison against the reference implementation")
    rows = []
    for framework in frameworks:
        if hf_outputs is not None:
            diffs, ok = _compare(outputs[framework], hf_outputs, tol)
            rows.append({"framework": labels[framework], "against": "transformers", "diffs": diffs, "passed": ok})
        if framework != reference:
            diffs, ok = _compare(outputs[framework], outputs[reference], tol)
            rows.append({"framework": labels[framework], "against": labels[reference], "diffs": diffs, "passed": ok})
    if not rows:
        notes.append("only one framework and no reference implementation: nothing to compare")
    return {
        "arch": arch,
        "config": config.to_dict(),
        "params": weights.count_params(arch, config),
        "tol": tol,
        "frameworks": [labels[f] for f in frameworks],
        "rows": rows,
        "reference": reference_info,
        "notes": notes,
        "passed": bool(rows) and all(r["passed"] for r in rows),
    }
