"""Generated torch projects on several processes (issue 17): torchrun with 2 gloo CPU processes.

A BERT masked-LM project (the loss counts a different number of masked tokens on each process,
so the split has to weight them right) trains 4 steps on one process, under DDP, under FSDP2
and under DDP with 2 accumulated micro-batches, all on the same global batches; the saved
weights, optimizer moments and logged losses agree within fp32 tolerance. A checkpoint written
by FSDP at 2 processes resumes at 1. Process 0 alone writes metrics.jsonl. A global batch that
does not divide over the processes is one error line. A ViT project checks the image loop.

The weights are compared with atol 1e-4 (5% of the learning rate): AdamW's first updates are
lr * g / (|g| + eps), so a gradient that is ~0 turns fp32 reduction-order noise into an update
of up to lr; the losses and the moments agree to ~1e-7.
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
from safetensors.numpy import load_file

from dlzoo.scaffold import generate as g

TEXT = ["train.max_steps=4", "train.eval_every=2", "train.batch_size=8", "data.max_bytes=200000", "data.max_eval_rows=16",
        "model.dropout=0.0", "model.attention_dropout=0.0", "train.threads=1"]
IMAGE = ["train.batch_size=8", "train.epochs=1", "data.augment=false", "train.threads=1"]


def _env(project: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(project), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}


def train(project: Path, processes: int, *sets: str, resume: bool = False) -> subprocess.CompletedProcess:
    """``python -m PKG.train`` (1 process) or under torchrun (``--standalone``: a free port)."""
    pkg = json.loads((project / ".dlzoo.json").read_text())["package"]
    launch = [] if processes == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    args = [sys.executable, *launch, "-m", f"{pkg}.train", *(["--resume"] if resume else [])]
    for item in sets:
        args += ["--set", item]
    return subprocess.run(args, cwd=project, env=_env(project), capture_output=True, text=True, timeout=600)


def checkpoint(project: Path, run: str, step: int) -> tuple[dict, dict]:
    folder = project / "runs" / run / "checkpoints" / f"step_{step:06d}"
    return load_file(folder / "model.safetensors"), load_file(folder / "optimizer.safetensors")


def metrics(project: Path, run: str) -> list[dict]:
    return [json.loads(line) for line in (project / "runs" / run / "metrics.jsonl").read_text().splitlines()]


def assert_same_training(project: Path, run: str, reference: str, step: int) -> None:
    (model, moments), (ref_model, ref_moments) = checkpoint(project, run, step), checkpoint(project, reference, step)
    assert model.keys() == ref_model.keys() and moments.keys() == ref_moments.keys()  # the same checkpoint format
    for name in ref_model:
        np.testing.assert_allclose(model[name], ref_model[name], atol=1e-4, rtol=0, err_msg=f"{run} vs {reference}: {name}")
    for name in ref_moments:
        np.testing.assert_allclose(moments[name], ref_moments[name], atol=1e-6, rtol=1e-4, err_msg=f"{run} vs {reference}: {name}")
    losses = [r["loss"] for r in metrics(project, run) if r["type"] == "train"]
    ref_losses = [r["loss"] for r in metrics(project, reference) if r["type"] == "train"]
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-6)


@pytest.fixture(scope="module")
def mlm(tmp_path_factory) -> Path:
    """A bert MLM project and its runs: one process, DDP, FSDP, DDP with 2 micro-batches."""
    result = g.new_project("dist_mlm", arch="bert", task="mlm", framework="torch", parent=tmp_path_factory.mktemp("dist"))
    project = Path(result["path"])
    for processes, name, extra in ((1, "single", []), (2, "ddp", []), (2, "fsdp", ["dist.strategy=fsdp"]),
                                   (2, "accum", ["dist.grad_accum_steps=2"])):
        run = train(project, processes, *TEXT, f"run.name={name}", *extra)
        assert run.returncode == 0, run.stderr[-3000:]
    return project


def test_ddp_equals_one_process(mlm):
    assert_same_training(mlm, "ddp", "single", 4)
    assert_same_training(mlm, "ddp", "single", 2)


def test_fsdp_equals_ddp(mlm):
    assert_same_training(mlm, "fsdp", "ddp", 4)


def test_two_micro_batches_equal_one(mlm):
    assert_same_training(mlm, "accum", "ddp", 4)


def test_process_0_alone_writes_metrics(mlm):
    for run in ("single", "ddp", "fsdp", "accum"):
        records = metrics(mlm, run)
        assert [r["type"] for r in records].count("meta") == 1
        assert [r["step"] for r in records if r["type"] == "train"] == [0, 1, 2, 3], run
        assert [r["step"] for r in records if r["type"] == "eval"] == [2, 4], run


def test_fsdp_checkpoint_resumes_on_one_process(mlm):
    """FSDP's step-2 checkpoint, resumed by one process, ends where the 2-process run ended."""
    runs = mlm / "runs"
    shutil.copytree(runs / "fsdp", runs / "resumed")
    shutil.rmtree(runs / "resumed" / "checkpoints" / "step_000004")
    run = train(mlm, 1, "run.name=resumed", resume=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "resumed" in run.stderr and "at step 2/4" in run.stderr
    assert_same_training(mlm, "resumed", "fsdp", 4)
    assert [r["step"] for r in metrics(mlm, "resumed") if r["type"] == "train"] == [0, 1, 2, 3]


def test_indivisible_global_batch_is_one_error_line(mlm):
    run = train(mlm, 2, *TEXT, "run.name=bad", "train.batch_size=7")
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "train.batch_size 7" in errors[0] and "multiple of 2" in errors[0], run.stderr[-2000:]
    assert f"{mlm.name}/" not in run.stderr  # no traceback through the project's code (torchrun adds its own summary)
    assert not (mlm / "runs" / "bad").exists()


def test_vit_ddp_equals_one_process(tmp_path):
    result = g.new_project("dist_vit", arch="vit", framework="torch", parent=tmp_path)
    project = Path(result["path"])
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "tiny.npz", x=rng.integers(0, 256, (60, 8, 8), dtype=np.uint8), y=np.arange(60) % 10)
    data = ["data.source=npz", f"data.path={tmp_path / 'tiny.npz'}"]
    for processes, name in ((1, "single"), (2, "ddp")):
        run = train(project, processes, *IMAGE, *data, f"run.name={name}")
        assert run.returncode == 0, run.stderr[-3000:]
    steps = [r["step"] for r in metrics(project, "ddp") if r["type"] == "train"]
    assert steps == list(range(len(steps))) and steps  # 42 training images // 8: 5 steps, each logged once
    assert_same_training(project, "ddp", "single", len(steps))
