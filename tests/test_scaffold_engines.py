"""The engines of generated flax, equinox, haiku and keras projects: what their own test suites do
not reach. Dropout on (the tiny ViT has none) and batch norm (ResNet) both resume bit-exactly
from saved model and optimizer state; the learning rate follows ``OptimConfig.lr_at`` step by
step across warmup and decay; no step after the first compiles; bfloat16 compute trains; strict loading
refuses weights of another shape in one line.

Each framework's two projects run in one subprocess, imported the way a user runs them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import rotation

from dlzoo.scaffold import generate as g

FRAMEWORKS = ("flax", "equinox", "haiku", "keras")

CHECK = r'''
import importlib, json, logging, sys
import jax
import numpy as np


class Compiles(logging.Handler):
    """Counts jax's "Compiling ..." log lines (jax_log_compiles)."""
    count = 0

    def emit(self, record):
        Compiles.count += "Compiling" in record.getMessage()


jax.config.update("jax_log_compiles", True)
logging.getLogger("jax").addHandler(Compiles())

report = {}
for pkg in sys.argv[1:]:
    config = importlib.import_module(pkg + ".config")
    data = importlib.import_module(pkg + ".data")
    Engine = importlib.import_module(pkg + ".engine").Engine
    sets = ["train.batch_size=8", "optim.warmup_fraction=0.3", "optim.clip_norm=0.5"]
    if config.ARCH == "vit":
        sets += ["model.dropout=0.2", "model.attention_dropout=0.2"]
    cfg = config.load_config(None, sets)
    dataset = data.load_dataset(cfg.data, seed=cfg.seed, channels=cfg.model.num_channels)
    loader = data.Loader(dataset.train, dataset, 8, seed=cfg.seed, augment=True, max_shift=2)
    total = 10
    out = {}

    # 1. uninterrupted: 6 steps; interrupted after 3, state through numpy into a fresh Engine
    a = Engine(cfg, cfg.model, total_steps=total)
    logs_a = [a.train_step(loader.at_step(0))]
    compiled = Compiles.count
    logs_a += [a.train_step(loader.at_step(s)) for s in range(1, 6)]
    out["compiles_after_first_step"] = Compiles.count - compiled
    b = Engine(cfg, cfg.model, total_steps=total)
    logs_b = [b.train_step(loader.at_step(s)) for s in range(3)]
    model, optim = b.model_state(), b.optimizer_state()
    c = Engine(config.load_config(None, sets + ["seed=5"]), cfg.model, total_steps=total)
    c.cfg = cfg   # the same run config, but weights built from another seed and overwritten
    c.load_model_state({k: v.copy() for k, v in model.items()})
    c.load_optimizer_state({k: v.copy() for k, v in optim.items()})
    c.step = 3
    logs_b += [c.train_step(loader.at_step(s)) for s in range(3, 6)]
    out["resume_logs_equal"] = logs_a == logs_b
    sa, sc = a.model_state(), c.model_state()
    out["resume_weights_equal"] = sorted(sa) == sorted(sc) and all(sa[k].tobytes() == sc[k].tobytes() for k in sa)
    oa, oc = a.optimizer_state(), c.optimizer_state()
    out["resume_optimizer_equal"] = sorted(oa) == sorted(oc) and all(oa[k].tobytes() == oc[k].tobytes() for k in oa)
    if config.ARCH == "resnet":
        init = Engine(cfg, cfg.model, total_steps=total).model_state()
        out["batch_stats_move"] = any(k.endswith(".mean") and not np.array_equal(sa[k], init[k]) for k in sa)

    # 2. dropout is on in training and differs step to step, and is off in evaluation
    if config.ARCH == "vit":
        no_drop = Engine(config.load_config(None, sets[:3]), cfg.model.replace(dropout=0.0, attention_dropout=0.0), total_steps=total)
        out["dropout_changes_loss"] = no_drop.train_step(loader.at_step(0))["loss"] != logs_a[0]["loss"]
        batch = loader.at_step(7)
        out["eval_deterministic"] = bool(np.array_equal(a.predict(batch["pixel_values"]), a.predict(batch["pixel_values"])))

    # 3. learning rate of each step is lr_at(step), over warmup (3 steps) and decay
    out["lr_max_rel_error"] = max(abs(log["lr"] - cfg.optim.lr_at(s, total)) / cfg.optim.lr_at(s, total)
                                  for s, log in enumerate(logs_a))
    out["grad_norm_over_clip"] = logs_a[0]["grad_norm"] > cfg.optim.clip_norm   # reported before clipping

    # 5. bfloat16 compute: finite loss, float32 probabilities
    bf = Engine(config.load_config(None, sets + ["train.precision=bfloat16"]), cfg.model, total_steps=total)
    first = bf.train_step(loader.at_step(0))
    probs = bf.predict(loader.at_step(1)["pixel_values"])
    out["bf16_ok"] = bool(np.isfinite(first["loss"]) and probs.dtype == np.float32 and np.allclose(probs.sum(-1), 1, atol=1e-3))
    out["bf16_differs"] = first["loss"] != logs_a[0]["loss"]

    # 6. strict loading refuses another shape, naming it
    wrong = dict(sa)
    wrong["head.kernel"] = np.zeros((sa["head.kernel"].shape[0], 3), np.float32)
    try:
        a.load_model_state(wrong)
        out["strict_error"] = None
    except config.UserError as error:
        out["strict_error"] = str(error)
    report[pkg] = out
print("REPORT " + json.dumps(report))
'''


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_engine_resumes_exactly_follows_the_schedule_and_compiles_once(framework, tmp_path):
    rotation.only_today(framework, FRAMEWORKS)
    packages = []
    for arch in ("vit", "resnet"):
        result = g.new_project(f"e_{framework}_{arch}", arch=arch, framework=framework, parent=tmp_path, annotate="none")
        packages.append((result["path"], result["package"]))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(path for path, _ in packages),
        "KERAS_BACKEND": "jax",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    done = subprocess.run(
        [sys.executable, "-c", CHECK, *[pkg for _, pkg in packages]], capture_output=True, text=True, env=env, timeout=900
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.split("REPORT ", 1)[1])
    for pkg, out in report.items():
        assert out["resume_logs_equal"] and out["resume_weights_equal"] and out["resume_optimizer_equal"], (pkg, out)
        assert out["lr_max_rel_error"] < 1e-5, (pkg, out)
        assert out["grad_norm_over_clip"], (pkg, out)
        assert out["compiles_after_first_step"] == 0, (pkg, out)  # the learning rate and step are arrays
        assert out["bf16_ok"] and out["bf16_differs"], (pkg, out)
        assert out["strict_error"] and "head.kernel" in out["strict_error"], (pkg, out)
        if pkg.endswith("vit"):
            assert out["dropout_changes_loss"] and out["eval_deterministic"], (pkg, out)
        else:
            assert out["batch_stats_move"], (pkg, out)
