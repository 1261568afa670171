"""A real short training run of a zoo model, logged with MetricsLogger and read by diagnose.

GPT tiny (torch) learns byte-level next-token prediction on a fixed corpus (the source of the
standard library's json package): with a sane learning rate the run is healthy and diagnose
must say nothing; with a far too high one it must flag the instability.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dlzoo.agents.diagnose import diagnose_file  # noqa: E402
from dlzoo.agents.metrics import MetricsLogger, read_metrics  # noqa: E402

STEPS, BATCH, LENGTH = 40, 8, 32
UNSTABLE = {"non-finite", "divergence", "loss-spike", "lr-too-high", "exploding-gradients"}


def _corpus() -> np.ndarray:
    text = Path(json.__file__).read_bytes()
    return np.frombuffer(text, dtype=np.uint8).astype(np.int64)


def _train(path: Path, lr: float, warmup: int = 5) -> Path:
    import dlzoo

    model = dlzoo.create_model("gpt", framework="torch", config="tiny", seed=0, dropout=0.0, attention_dropout=0.0)
    model.train()
    data = torch.from_numpy(_corpus())
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = lambda step: min(1.0, (step + 1) / warmup)  # noqa: E731  linear warmup, then constant
    with MetricsLogger(path, num_classes=model.config.vocab_size, total_steps=STEPS, warmup_steps=warmup) as log:
        for step in range(STEPS):
            for group in optimizer.param_groups:
                group["lr"] = lr * schedule(step)
            starts = torch.randint(0, len(data) - LENGTH - 1, (BATCH,), generator=generator)
            batch = torch.stack([data[s : s + LENGTH + 1] for s in starts])
            logits = model(batch[:, :-1])["logits"]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
            optimizer.step()
            log.log(step=step, loss=loss, lr=optimizer.param_groups[0]["lr"], grad_norm=grad_norm)
    return path


def test_sane_learning_rate_is_healthy(tmp_path):
    path = _train(tmp_path / "sane.jsonl", lr=3e-3)
    run = read_metrics(path)
    losses = [r["loss"] for r in run.train]
    assert losses[0] == pytest.approx(math.log(256), abs=0.3)
    assert losses[-1] < losses[0] - 1.0, "the sane run must actually learn"
    assert diagnose_file(path) == []


def test_far_too_high_learning_rate_is_flagged(tmp_path):
    path = _train(tmp_path / "hot.jsonl", lr=3.0)
    kinds = {f.kind for f in diagnose_file(path)}
    assert kinds & UNSTABLE, kinds
