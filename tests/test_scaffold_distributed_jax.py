"""Multi-device training in generated flax, equinox, haiku and keras projects, on 4 CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=4``, set before jax is imported, so each
framework runs in its own subprocess, importing the project the way a user does).

For each framework, against the single-device engine on the same global batches:
- data parallel over 4 devices gives the same losses, gradient norms and weights (fp32 tolerance);
- FSDP-style sharding (``dist.strategy = "fsdp"``) gives the data-parallel numbers, with the
  parameters and optimizer state really split: fewer bytes on each device;
- 2 micro-batches of gradient accumulation give the 1-micro-batch numbers;
- no step after the first compiles again (the state keeps its layout);
- a checkpoint written at 4 devices loads bit for bit at 1 and at 2 devices and continues as the
  4-device run does;
- too many devices, or a batch that does not split, is one clear UserError.
The same on a GPT (flax) and a masked-LM BERT (haiku), whose token loss makes accumulation weigh
micro-batches by their counted tokens, is marked slow. The training CLI refuses a bad
``dist.devices`` in one line and resumes a 4-device FSDP run at 2 devices.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rotation

from dlzoo.scaffold import generate as g

FRAMEWORKS = ("flax", "equinox", "haiku", "keras")
DEVICES = 4

CHECK = r'''
import importlib, json, sys
import jax
import numpy as np

assert jax.device_count() == 4, jax.devices()
compiles = []   # one entry per XLA compilation
jax.monitoring.register_event_duration_secs_listener(
    lambda event, seconds, **kwargs: compiles.append(event) if event == "/jax/core/compile/backend_compile_duration" else None)

report = {}
for pkg in sys.argv[1:]:
    config = importlib.import_module(pkg + ".config")
    data = importlib.import_module(pkg + ".data")
    Engine = importlib.import_module(pkg + ".engine").Engine
    text = config.ARCH in ("gpt", "bert")
    base = ["train.batch_size=8", "optim.warmup_fraction=0.0", "optim.lr=0.003"]
    if text:
        # no dropout: micro-batches draw other masks than the whole batch
        base += ["data.max_bytes=100000", "data.max_eval_rows=16", "model.dropout=0.0", "model.attention_dropout=0.0"]
    cfg = config.load_config(None, base)
    if text:
        dataset = data.load_dataset(cfg.data, seed=cfg.seed, vocab_size=cfg.model.vocab_size)
        loader = data.Loader(dataset.train, dataset, 8, seed=cfg.seed)
    else:
        dataset = data.load_dataset(cfg.data, seed=cfg.seed, channels=cfg.model.num_channels)
        loader = data.Loader(dataset.train, dataset, 8, seed=cfg.seed, augment=True, max_shift=2)
    total = 10

    def engine(*sets):
        c = config.load_config(None, base + list(sets))
        return Engine(c, c.model, total_steps=total)

    def train(e, steps, start=0):
        return [e.train_step(loader.at_step(s)) for s in range(start, start + steps)]

    def compare(logs_a, logs_b, e_a, e_b):
        """Largest relative differences of the logged numbers and of the weights."""
        rel = lambda x, y: abs(x - y) / max(abs(x), abs(y), 1e-12)
        wa, wb = e_a.model_state(), e_b.model_state()
        assert sorted(wa) == sorted(wb)
        return {"loss": max(rel(a["loss"], b["loss"]) for a, b in zip(logs_a, logs_b)),
                "grad_norm": max(rel(a["grad_norm"], b["grad_norm"]) for a, b in zip(logs_a, logs_b)),
                "lr_equal": [a["lr"] for a in logs_a] == [b["lr"] for b in logs_b],
                # in units of one learning-rate step: Adam moves every weight by about lr per step
                "weights_max": float(max(np.max(np.abs(wa[k] - wb[k])) for k in wa)) / e_a.cfg.optim.lr,
                "weights_p999": float(np.quantile(np.concatenate([np.abs(wa[k] - wb[k]).ravel() for k in wa]), 0.999))
                / e_a.cfg.optim.lr}

    out = {}
    one = engine()
    logs_one = train(one, 3)
    four = engine("dist.devices=4")
    logs_four = [four.train_step(loader.at_step(0))]
    compiled = len(compiles)
    logs_four += train(four, 2, start=1)
    out["recompiles_data"] = len(compiles) - compiled
    out["data_vs_one"] = compare(logs_one, logs_four, one, four)
    fsdp = engine("dist.devices=4", "dist.strategy=fsdp")
    logs_fsdp = [fsdp.train_step(loader.at_step(0))]
    compiled = len(compiles)
    logs_fsdp += train(fsdp, 2, start=1)
    out["recompiles_fsdp"] = len(compiles) - compiled
    out["fsdp_vs_data"] = compare(logs_four, logs_fsdp, four, fsdp)
    out["placement_one"], out["placement_data"], out["placement_fsdp"] = one.placement(), four.placement(), fsdp.placement()
    accum = engine("dist.grad_accum_steps=2")
    out["accum_vs_one"] = compare(logs_one, train(accum, 3), one, accum)

    # a checkpoint of the 4-device FSDP run, read back at 1 and at 2 devices
    saved_model, saved_optim = fsdp.model_state(), fsdp.optimizer_state()
    next_four = train(fsdp, 2, start=3)
    resumed = {}
    for sets in (["dist.devices=1"], ["dist.devices=2", "dist.strategy=fsdp"]):
        e = engine("seed=7", *sets)   # other initial weights, all overwritten
        e.cfg = config.load_config(None, base + sets)
        e.load_model_state({k: v.copy() for k, v in saved_model.items()})
        e.load_optimizer_state({k: v.copy() for k, v in saved_optim.items()})
        e.step = 3
        m, o = e.model_state(), e.optimizer_state()
        exact = (sorted(m) == sorted(saved_model) and all(m[k].tobytes() == saved_model[k].tobytes() for k in m)
                 and sorted(o) == sorted(saved_optim) and all(o[k].tobytes() == saved_optim[k].tobytes() for k in o))
        resumed[" ".join(sets)] = {"exact": exact, **compare(next_four, train(e, 2, start=3), fsdp, e)}
    out["resumed"] = resumed

    errors = {}
    for sets in (["dist.devices=8"], ["dist.devices=4", "dist.grad_accum_steps=4"], ["dist.devices=0", "train.batch_size=6"]):
        try:
            engine(*sets)
            errors[" ".join(sets)] = None
        except config.UserError as error:
            errors[" ".join(sets)] = str(error)
    out["errors"] = errors
    report[pkg] = out
print("REPORT " + json.dumps(report))
'''


def _env(paths: list[str]) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(paths),
        "KERAS_BACKEND": "jax",
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES}",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def _check(projects: list[tuple[str, str, str]], tmp_path: Path) -> None:
    packages = []
    for framework, arch, task in projects:
        result = g.new_project(f"d_{framework}_{arch}", arch=arch, framework=framework, task=task, parent=tmp_path, annotate="none")
        packages.append((result["path"], result["package"]))
    done = subprocess.run(
        [sys.executable, "-c", CHECK, *[pkg for _, pkg in packages]],
        capture_output=True,
        text=True,
        env=_env([path for path, _ in packages]),
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.split("REPORT ", 1)[1])
    for pkg, out in report.items():
        # fp32: the devices sum partial gradients in another order; Adam's updates stay within ~1e-6 of lr
        for name in ("data_vs_one", "fsdp_vs_data", "accum_vs_one"):
            numbers = out[name]
            assert numbers["lr_equal"], (pkg, name, numbers)
            assert numbers["loss"] < 1e-5 and numbers["grad_norm"] < 1e-5, (pkg, name, numbers)
            # Adam divides by the root of the gradient's second moment: a weight whose gradient is
            # ~1e-8 moves by a visibly different fraction of lr when that gradient changes in its
            # last bits, so the largest difference is a few % of one step; nearly all are far below
            assert numbers["weights_p999"] < 0.01 and numbers["weights_max"] < 0.25, (pkg, name, numbers)
        assert out["recompiles_data"] == 0 and out["recompiles_fsdp"] == 0, (pkg, out)
        one, data, fsdp = out["placement_one"], out["placement_data"], out["placement_fsdp"]
        assert one["devices"] == 1 and data["devices"] == fsdp["devices"] == DEVICES, (pkg, out)
        assert data["params"]["sharded_arrays"] == 0 and data["params"]["max_bytes_per_device"] == data["params"]["bytes"]
        assert fsdp["params"]["sharded_arrays"] > 0, (pkg, fsdp)
        assert fsdp["params"]["max_bytes_per_device"] < 0.6 * fsdp["params"]["bytes"], (pkg, fsdp)
        assert fsdp["optimizer"]["max_bytes_per_device"] < 0.6 * fsdp["optimizer"]["bytes"], (pkg, fsdp)
        for sets, numbers in out["resumed"].items():
            assert numbers["exact"], (pkg, sets)
            assert numbers["loss"] < 1e-5 and numbers["grad_norm"] < 1e-5 and numbers["lr_equal"], (pkg, sets, numbers)
            assert numbers["weights_p999"] < 0.01 and numbers["weights_max"] < 0.25, (pkg, sets, numbers)
        errors = out["errors"]
        assert "dist.devices is 8 but 4 cpu device(s) are visible" in errors["dist.devices=8"], errors
        assert (
            "train.batch_size 8 must divide by dist.grad_accum_steps x dist.devices = 16"
            in errors["dist.devices=4 dist.grad_accum_steps=4"]
        ), errors  # config.py's check
        assert (
            "train.batch_size 6 must divide by dist.grad_accum_steps x dist.devices = 4 (dist.devices=0 is 4 here)"
            in errors["dist.devices=0 train.batch_size=6"]
        ), errors  # the engine's, once the device count is known


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_multi_device_steps_equal_the_single_device_step(framework, tmp_path):
    rotation.only_today(framework, FRAMEWORKS)
    _check([(framework, "vit", "image-classification")], tmp_path)


@pytest.mark.slow
def test_token_loss_accumulates_by_counted_tokens(tmp_path):
    """GPT and masked-LM BERT: micro-batches hold different numbers of counted tokens, so each
    must weigh in by its token count, not as a mean of means."""
    _check([("flax", "gpt", "lm"), ("haiku", "bert", "mlm")], tmp_path)


def test_train_cli_devices_error_and_resume_on_fewer_devices(tmp_path):
    """The training command: a bad dist.devices is one error line; a 4-device FSDP run resumed at
    2 devices from a middle checkpoint ends where the uninterrupted run ends (fp32), each step
    logged once."""
    result = g.new_project("d_cli", arch="vit", framework="flax", parent=tmp_path, annotate="none")
    env, cwd = _env([result["path"]]), tmp_path
    pkg = result["package"]

    def train(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", f"{pkg}.train", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)

    bad = train("--set", "dist.devices=8")
    assert bad.returncode == 2 and bad.stderr.startswith("error: dist.devices is 8 but 4 cpu device(s) are visible")
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    bad = train("--set", "dist.strategy=zero3")
    assert bad.returncode == 2 and "dist.strategy is 'zero3'; expected one of: data, fsdp" in bad.stderr, bad.stderr

    # one epoch of digits: about 10 steps of 128, a checkpoint every 3
    sets = [
        "train.batch_size=128",
        "train.epochs=1",
        "train.eval_every=3",
        "train.keep_last=10",
        "optim.lr=0.003",
        "dist.devices=4",
        "dist.strategy=fsdp",
    ]
    args = [f"--set={a}" for a in sets]
    done = train(*args, "--set=run.name=whole")
    assert done.returncode == 0, done.stderr[-3000:]
    shutil.copytree(tmp_path / "runs" / "whole", tmp_path / "runs" / "cut")
    checkpoints = sorted((tmp_path / "runs" / "cut" / "checkpoints").glob("step_*"))
    for later in checkpoints[1:]:  # as if the run had died after its first checkpoint
        shutil.rmtree(later)
    resumed = train("--resume", "--set=run.name=cut", "--set=dist.devices=2", "--set=dist.strategy=data")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed" in resumed.stderr and "at step 3/" in resumed.stderr, resumed.stderr

    def final(run: str) -> dict[str, np.ndarray]:
        from safetensors.numpy import load_file

        last = sorted((tmp_path / "runs" / run / "checkpoints").glob("step_*"))[-1]
        return load_file(str(last / "model.safetensors"))

    whole, cut = final("whole"), final("cut")
    assert sorted(whole) == sorted(cut)
    for name, value in whole.items():  # Adam: a ~0 gradient turns fp32 noise into a visible fraction of lr
        np.testing.assert_allclose(cut[name], value, atol=0.25 * 0.003, rtol=0, err_msg=name)
    records = [json.loads(line) for line in (tmp_path / "runs" / "cut" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["type"] == "train"]
    assert steps == sorted(set(steps)) and len(steps) == max(steps) + 1
    losses = {r["step"]: r["loss"] for r in records if r["type"] == "train"}
    reference = {
        json.loads(line)["step"]: json.loads(line)["loss"]
        for line in (tmp_path / "runs" / "whole" / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["type"] == "train"
    }
    np.testing.assert_allclose([losses[k] for k in sorted(reference)], [reference[k] for k in sorted(reference)], rtol=1e-4)
