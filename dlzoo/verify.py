"""``dlzoo verify``: the same weights in every installed framework, compared output by output
against PyTorch and against `transformers` — conformance, for anyone porting a model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from dlzoo.zoo import hub, weights
from dlzoo.zoo.configs import ZooError, check_arch, get_config
from dlzoo.zoo.handle import check_framework, installed_frameworks, load
from dlzoo.zoo.reference import sample_inputs, transformers_model, transformers_outputs


def _weights(arch: str, preset: str, source: str | None, seed: int, frameworks: list[str]):
    if source is None:
        config = get_config(arch, preset)
        builder = "torch" if "torch" in frameworks else frameworks[0]
        return config, load(arch, builder, config=config, seed=seed).state_dict(), f"random init ({builder}, seed {seed})"
    path = Path(source)
    if path.is_file():
        file_arch, config, tensors = weights.load(path)
    else:
        file_arch, config, tensors, _ = hub.load_checkpoint(source)
    if file_arch != arch:
        raise hub.HubError(f"{source} holds {file_arch!r} weights, but verify was asked for {arch!r}")
    return config, tensors, str(source)


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


def run_verify(arch: str, preset: str = "tiny", source: str | None = None, tol: float = 1e-5,
               seed: int = 0, frameworks: list[str] | None = None, progress=None) -> dict:
    check_arch(arch)
    installed = installed_frameworks()
    if frameworks:
        for framework in frameworks:
            check_framework(framework)
        absent = [f for f in frameworks if f not in installed]
        if absent:
            raise ZooError(f"not installed: {', '.join(absent)}; installed frameworks: {', '.join(installed) or 'none'}")
    frameworks = list(frameworks or installed)
    if not frameworks:
        raise ZooError("no framework is installed; install one, e.g. pip install 'dlzoo[torch]'")
    config, tensors, described = _weights(arch, preset, source, seed, frameworks)
    inputs = sample_inputs(arch, config, seed=seed)
    outputs, labels, notes = {}, {}, [f"weights: {described}"]
    for framework in frameworks:
        if progress is not None:
            progress(f"running {arch} in {framework} ...")
        handle = load(arch, framework, config=config, weights=tensors)
        outputs[framework] = handle.apply(inputs)
        labels[framework] = _label(framework)
    rows = []
    reference = "torch" if "torch" in outputs else None
    if reference is None:
        notes.append("torch is not installed: frameworks are compared with each other only through transformers")
    has_transformers = importlib.util.find_spec("transformers") is not None and "torch" in installed
    hf_outputs = None
    if has_transformers:
        if progress is not None:
            progress(f"running {arch} in transformers ...")
        hf_outputs = transformers_outputs(arch, transformers_model(arch, config, tensors), inputs)
    else:
        notes.append("transformers is not installed: no comparison against the reference implementation")
    for framework in frameworks:
        if hf_outputs is not None:
            diffs, ok = _compare(outputs[framework], hf_outputs, tol)
            rows.append({"framework": labels[framework], "against": "transformers", "diffs": diffs, "passed": ok})
        if reference and framework != reference:
            diffs, ok = _compare(outputs[framework], outputs[reference], tol)
            rows.append({"framework": labels[framework], "against": "torch", "diffs": diffs, "passed": ok})
    if not rows:
        notes.append("only one framework and no reference implementation: nothing to compare")
    return {"arch": arch, "config": config.to_dict(), "params": weights.count_params(arch, config), "tol": tol,
            "frameworks": [labels[f] for f in frameworks], "rows": rows, "notes": notes,
            "passed": bool(rows) and all(r["passed"] for r in rows)}


