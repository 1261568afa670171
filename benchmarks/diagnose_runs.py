"""Real training runs of the zoo's torch models with known pathologies, for `dlzoo diagnose`.

    python benchmarks/diagnose_runs.py --set tuning  [--only NAME ...] [--out tests/data/runs]
    python benchmarks/diagnose_runs.py --set heldout

Each run trains a zoo model (`dlzoo.create_model(..., framework="torch")`) for a few hundred
steps on CPU (seconds to a minute each) and logs it with `MetricsLogger` (loss, lr, the global
gradient norm before clipping, per-layer gradient norms, validation loss and accuracy), with one
fault put in on purpose: a learning rate far too high or too low, a learning rate ramp that ends
far too high, too little data (overfitting), corrupted batches, a forgotten `zero_grad()`,
shuffled labels, a deep stack initialised far too large; healthy control runs have none.

The truth about each run is written to `<set>/manifest.json` beside the logs: what was done to
it, which finding kinds name its pathology, and where the pathology begins (its onset step).
Where the fault is put in at a known step (a corrupted batch, a fault from step 0) that step is
the onset; where the run itself decides when the fault shows (a slow blow-up, the best
validation step of an overfitting run) the onset is read off the run by a rule stated in the
manifest entry, a rule that is not the detector's.

The held-out set (other seeds, corpora, models, optimizers and magnitudes) was generated and
committed before any detector was tuned on the tuning set; `tests/test_master_diagnose_runs.py`
scores both.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Spec:
    name: str
    arch: str  # gpt | vit | resnet
    steps: int = 300
    lr: float = 3e-3
    warmup: int = 0  # linear warmup steps (declared in the meta line)
    schedule: str = "cosine"  # cosine | constant | ramp (linear from 0 to lr over all steps)
    optimizer: str = "adamw"  # adamw | sgd (momentum 0.9)
    weight_decay: float = 0.01
    batch: int = 16
    seed: int = 0
    corpus: str = "json"  # gpt: a standard-library package's source, as bytes
    num_layers: int | None = None
    init_scale: float = 1.0  # multiplies every weight matrix after the zoo's init
    zero_grad: bool = True
    bad_batches: tuple[int, ...] = ()  # steps whose batch is corrupted
    shuffle_labels: bool = False
    random_labels: bool = False  # images: every batch gets fresh random labels (no signal at all)
    trainable: str | None = None  # train only the parameters whose name ends with this (the rest frozen)
    train_subset: int | None = None  # images: train on only this many examples
    eval_every: int = 20
    clip: float | None = None
    note: str = ""
    healthy: bool = False
    expected: list[dict] = field(default_factory=list)  # [{"kinds": [...], "onset": int | rule}]
    forbidden: list[str] = field(default_factory=list)  # kinds that would misname the cause


# Onset rules for pathologies whose start the run decides (not the detector's rules).
BEST_VAL = "best_val"  # the eval step with the lowest validation loss
LOSS_MIN = "loss_min"  # the last step, between the lowest 11-step centred mean loss and the highest
# one after it (or the first NaN), where that mean is within 10% of its lowest
PLATEAU_START = "plateau_start"  # the first step from which the 11-step centred mean stays within 5% of the
# median loss of the last quarter


def _specs() -> dict[str, list[Spec]]:
    tuning = [
        Spec("gpt_healthy", "gpt", lr=3e-3, warmup=20, healthy=True, note="AdamW 3e-3, 20-step warmup, cosine"),
        Spec(
            "vit_digits_healthy",
            "vit",
            steps=400,
            lr=1e-3,
            warmup=20,
            batch=64,
            healthy=True,
            note="classifier on digits whose training loss approaches zero",
        ),
        Spec(
            "vit_digits_long_healthy",
            "vit",
            steps=600,
            lr=2e-3,
            warmup=30,
            batch=64,
            seed=5,
            healthy=True,
            note="600 steps: the training loss sits near zero for the last half",
        ),
        Spec(
            "resnet_digits_healthy_seed0",
            "resnet",
            steps=300,
            lr=3e-3,
            batch=64,
            healthy=True,
            note="ResNet classifier on digits, no warmup",
        ),
        Spec(
            "gpt_constant_lr_healthy", "gpt", steps=300, lr=1e-3, schedule="constant", seed=2, healthy=True, note="AdamW at a constant 1e-3"
        ),
        Spec(
            "gpt_lr_far_too_high",
            "gpt",
            lr=0.1,
            schedule="constant",
            note="AdamW at 0.1 without warmup: the loss jumps above ln V at step 2, then the model "
            "collapses onto the unigram plateau and stays there",
            expected=[
                {"kinds": ["divergence", "lr-too-high", "non-finite", "early-instability"], "onset": 1},
                {"kinds": ["plateau"], "onset": PLATEAU_START},
            ],
        ),
        Spec(
            "gpt_sgd_ramp_blowup",
            "gpt",
            steps=400,
            lr=4.0,
            schedule="ramp",
            optimizer="sgd",
            weight_decay=0.0,
            note="SGD whose learning rate ramps linearly from 0 to 4: learns, creeps up, blows up to NaN",
            expected=[{"kinds": ["divergence", "lr-too-high", "non-finite"], "onset": LOSS_MIN}],
        ),
        Spec("gpt_lr_too_low", "gpt", lr=1e-5, schedule="constant", note="AdamW at 1e-5", expected=[{"kinds": ["lr-too-low"], "onset": 0}]),
        Spec(
            "vit_overfit",
            "vit",
            steps=400,
            lr=1e-3,
            batch=32,
            train_subset=64,
            weight_decay=0.0,
            eval_every=10,
            note="64 training images, no weight decay",
            expected=[{"kinds": ["overfitting"], "onset": BEST_VAL}],
        ),
        Spec(
            "vit_bad_batches",
            "vit",
            steps=300,
            lr=1e-3,
            batch=64,
            bad_batches=(120, 220),
            note="two batches fed unnormalised pixels (0..16) with random labels",
            expected=[{"kinds": ["loss-spike"], "onset": 120}, {"kinds": ["loss-spike"], "onset": 220}],
        ),
        Spec(
            "gpt_no_zero_grad",
            "gpt",
            lr=1e-3,
            warmup=10,
            zero_grad=False,
            note="optimizer.zero_grad() never called: gradients accumulate",
            expected=[{"kinds": ["accumulating-gradients"], "onset": 0}],
            forbidden=["lr-too-high"],
        ),
        Spec(
            "vit_shuffled_labels",
            "vit",
            steps=400,
            lr=1e-3,
            batch=64,
            train_subset=256,
            shuffle_labels=True,
            weight_decay=0.0,
            note="256 training images whose labels were shuffled",
            expected=[{"kinds": ["broken-labels"], "onset": 0}],
        ),
        Spec(
            "gpt_deep_bad_init",
            "gpt",
            num_layers=8,
            lr=1e-3,
            warmup=20,
            init_scale=50.0,
            note="8 blocks, every weight matrix 50x the zoo's init (std 1 instead of 0.02)",
            expected=[{"kinds": ["abnormal-initial-loss"], "onset": 0}],
            forbidden=["lr-too-high"],
        ),
        # Added after the first held-out measurement, to tune the lr-too-low rule against: two
        # plateaus at chance that a higher learning rate would not fix, and a slow language model
        # whose cosine schedule makes its crawl look like convergence.
        Spec(
            "vit_random_labels",
            "vit",
            steps=300,
            lr=1e-3,
            batch=64,
            warmup=20,
            random_labels=True,
            note="every batch gets fresh random labels (a label pipeline with its own random stream): nothing to learn",
            expected=[{"kinds": ["plateau", "broken-labels"], "onset": 0}],
            forbidden=["lr-too-low"],
        ),
        Spec(
            "vit_frozen_but_head_bias",
            "vit",
            steps=300,
            lr=1e-3,
            batch=64,
            warmup=20,
            trainable="head.bias",
            note="every parameter but the output bias frozen (requires_grad=False): the gradient path is cut",
            expected=[{"kinds": ["plateau"], "onset": 0}],
            forbidden=["lr-too-low"],
        ),
        Spec(
            "gpt_lr_too_low_cosine",
            "gpt",
            steps=300,
            lr=2e-5,
            warmup=20,
            seed=4,
            corpus="email",
            note="AdamW at 2e-5 with a cosine decay: the crawl slows as the rate decays",
            expected=[{"kinds": ["lr-too-low"], "onset": 0}],
        ),
    ]
    heldout = [
        Spec(
            "gpt_healthy_argparse",
            "gpt",
            corpus="argparse",
            seed=1,
            steps=400,
            lr=1e-3,
            warmup=40,
            batch=12,
            healthy=True,
            note="AdamW 1e-3, 40-step warmup, another corpus and seed",
        ),
        Spec(
            "resnet_digits_healthy",
            "resnet",
            steps=300,
            lr=3e-3,
            warmup=10,
            batch=64,
            seed=1,
            healthy=True,
            note="ResNet classifier on digits",
        ),
        Spec(
            "vit_digits_warmup50_healthy",
            "vit",
            steps=300,
            lr=2e-3,
            warmup=50,
            batch=32,
            seed=2,
            healthy=True,
            note="declared 50-step warmup",
        ),
        Spec(
            "gpt_clipped_healthy",
            "gpt",
            corpus="argparse",
            seed=3,
            lr=2e-3,
            warmup=10,
            clip=1.0,
            healthy=True,
            note="gradient clipping at 1",
        ),
        Spec(
            "gpt_lr_high_in_warmup",
            "gpt",
            corpus="argparse",
            seed=1,
            lr=0.3,
            warmup=30,
            note="AdamW warming up to 0.3: within a few steps the model collapses onto the unigram plateau and stays there",
            expected=[{"kinds": ["plateau", "lr-too-high"], "onset": PLATEAU_START}],
        ),
        Spec(
            "vit_adam_ramp_blowup",
            "vit",
            steps=400,
            lr=0.1,
            schedule="ramp",
            batch=64,
            seed=1,
            note="AdamW whose learning rate ramps linearly from 0 to 0.1: learns, then slowly loses it",
            expected=[{"kinds": ["divergence", "lr-too-high", "non-finite"], "onset": LOSS_MIN}],
        ),
        Spec(
            "vit_lr_too_low",
            "vit",
            steps=300,
            lr=3e-6,
            schedule="constant",
            batch=64,
            seed=1,
            note="AdamW at 3e-6",
            expected=[{"kinds": ["lr-too-low"], "onset": 0}],
        ),
        Spec(
            "resnet_overfit",
            "resnet",
            steps=400,
            lr=3e-3,
            batch=32,
            train_subset=48,
            weight_decay=0.0,
            eval_every=10,
            seed=2,
            note="48 training images, no weight decay",
            expected=[{"kinds": ["overfitting"], "onset": BEST_VAL}],
        ),
        Spec(
            "gpt_bad_batches",
            "gpt",
            corpus="argparse",
            seed=4,
            lr=2e-3,
            warmup=10,
            bad_batches=(90, 200),
            note="two batches of uniformly random bytes",
            expected=[{"kinds": ["loss-spike"], "onset": 90}, {"kinds": ["loss-spike"], "onset": 200}],
        ),
        Spec(
            "vit_no_zero_grad_sgd",
            "vit",
            steps=300,
            lr=0.01,
            schedule="constant",
            optimizer="sgd",
            batch=64,
            zero_grad=False,
            seed=3,
            note="SGD with momentum, optimizer.zero_grad() never called",
            expected=[{"kinds": ["accumulating-gradients"], "onset": 0}],
            forbidden=["lr-too-high"],
        ),
        Spec(
            "resnet_shuffled_labels",
            "resnet",
            steps=400,
            lr=3e-3,
            batch=64,
            train_subset=192,
            shuffle_labels=True,
            weight_decay=0.0,
            seed=3,
            note="192 training images whose labels were shuffled",
            expected=[{"kinds": ["broken-labels"], "onset": 0}],
        ),
        Spec(
            "vit_deep_bad_init",
            "vit",
            num_layers=8,
            steps=300,
            lr=1e-3,
            warmup=10,
            batch=64,
            init_scale=60.0,
            seed=4,
            note="8 blocks, every weight matrix 60x the zoo's init",
            expected=[{"kinds": ["abnormal-initial-loss"], "onset": 0}],
            forbidden=["lr-too-high"],
        ),
    ]
    return {"tuning": tuning, "heldout": heldout}


# ---------------------------------------------------------------------------------------------
# data


def _corpus(name: str) -> np.ndarray:
    import importlib

    module = importlib.import_module(name)
    files = sorted(Path(module.__file__).parent.glob("*.py")) if module.__file__.endswith("__init__.py") else [Path(module.__file__)]
    text = b"".join(f.read_bytes() for f in files)
    return np.frombuffer(text, dtype=np.uint8).astype(np.int64)


def _digits(arch: str, seed: int):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = x.reshape(-1, 1, 8, 8).astype(np.float32)
    if arch == "resnet":
        x = np.kron(x, np.ones((1, 1, 2, 2), dtype=np.float32))  # 16x16: room for the stem's strides
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    raw = x.copy()
    mean, std = x[:1400].mean(), x[:1400].std()
    x = (x - mean) / std
    return (x[:1400], y[:1400], raw[:1400]), (x[1400:], y[1400:])


# ---------------------------------------------------------------------------------------------
# training


def _model(spec: Spec):
    import torch

    import dlzoo

    overrides: dict = {}
    if spec.num_layers:
        overrides["num_layers"] = spec.num_layers
    if spec.arch == "gpt":
        overrides.update(dropout=0.0, attention_dropout=0.0)
    elif spec.arch == "vit":
        overrides.update(image_size=8, patch_size=2, num_channels=1, num_classes=10)
    else:
        overrides.update(num_channels=1, num_classes=10)
    model = dlzoo.create_model(spec.arch, framework="torch", config="tiny", seed=spec.seed, **overrides)
    if spec.init_scale != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim >= 2:
                    p.mul_(spec.init_scale)
    return model


def _group(name: str) -> str:
    """Per-layer gradient norms are logged per top-level module (per block for the stacks)."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] in ("blocks", "stages") else parts[0]


def _lr_at(spec: Spec, step: int) -> float:
    if spec.schedule == "ramp":
        return spec.lr * (step + 1) / spec.steps
    if step < spec.warmup:
        return spec.lr * (step + 1) / spec.warmup
    if spec.schedule == "constant":
        return spec.lr
    progress = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
    return spec.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _round(x: float) -> float:
    return float(f"{x:.5g}") if math.isfinite(x) else x


def train(spec: Spec, path: Path) -> dict:
    """Train one run, write its metrics to ``path``; returns the manifest entry."""
    import torch
    import torch.nn.functional as F

    from dlzoo.agents.metrics import MetricsLogger

    torch.manual_seed(spec.seed)
    rng = np.random.default_rng(spec.seed)
    model = _model(spec)
    if spec.trainable:
        for name, p in model.named_parameters():
            p.requires_grad_(name.endswith(spec.trainable))
    params = list(model.named_parameters())
    if spec.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=0.9, weight_decay=spec.weight_decay)
    else:
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec.lr, weight_decay=spec.weight_decay)

    if spec.arch == "gpt":
        data = _corpus(spec.corpus)
        split = int(0.9 * len(data))
        train_data, val_data = data[:split], data[split:]
        length = model.config.context_length
        num_classes = model.config.vocab_size
        val_starts = np.random.default_rng(1000).integers(0, len(val_data) - length - 1, 32)
        val_batch = torch.from_numpy(np.stack([val_data[s : s + length + 1] for s in val_starts]))
        counts = np.bincount(train_data, minlength=256) / len(train_data)
        unigram_bits = float(-(counts[counts > 0] * np.log2(counts[counts > 0])).sum())

        def batch_at(step):
            if step in spec.bad_batches:
                return torch.from_numpy(rng.integers(0, 256, (spec.batch, length + 1)))
            starts = rng.integers(0, len(train_data) - length - 1, spec.batch)
            return torch.from_numpy(np.stack([train_data[s : s + length + 1] for s in starts]))

        def loss_of(batch):
            logits = model(batch[:, :-1])["logits"]
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)), logits

        def evaluate():
            with torch.no_grad():
                loss, logits = loss_of(val_batch)
                accuracy = (logits.argmax(-1) == val_batch[:, 1:]).float().mean()
            return float(loss), float(accuracy)
    else:
        (x, y, raw), (vx, vy) = _digits(spec.arch, spec.seed)
        if spec.train_subset:
            x, y, raw = x[: spec.train_subset], y[: spec.train_subset], raw[: spec.train_subset]
        if spec.shuffle_labels:
            y = rng.permutation(y)
        num_classes = 10
        vx_t, vy_t = torch.from_numpy(vx), torch.from_numpy(vy)

        def batch_at(step):
            idx = rng.choice(len(x), size=min(spec.batch, len(x)), replace=False)
            if step in spec.bad_batches:  # a shard that skipped normalisation, labels scrambled
                return torch.from_numpy(raw[idx]), torch.from_numpy(rng.integers(0, 10, len(idx)))
            if spec.random_labels:
                return torch.from_numpy(x[idx]), torch.from_numpy(rng.integers(0, 10, len(idx)))
            return torch.from_numpy(x[idx]), torch.from_numpy(y[idx])

        def loss_of(batch):
            logits = model(batch[0])["logits"]
            return F.cross_entropy(logits, batch[1]), logits

        def evaluate():
            model.eval()
            with torch.no_grad():
                logits = model(vx_t)["logits"]
                loss = F.cross_entropy(logits, vy_t)
                accuracy = (logits.argmax(-1) == vy_t).float().mean()
            model.train()
            return float(loss), float(accuracy)

    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    meta = {"num_classes": num_classes, "total_steps": spec.steps, "batch_size": spec.batch, "arch": spec.arch, "framework": "torch"}
    if spec.warmup:
        meta["warmup_steps"] = spec.warmup
    if spec.arch == "gpt":  # as a generated project logs it (runs made before this lack it)
        meta["data"] = {"unigram_entropy_bits_per_token": unigram_bits}
    model.train()
    losses, evals = [], []
    with MetricsLogger(path, **meta) as log:
        for step in range(spec.steps):
            lr = _lr_at(spec, step)
            for g in optimizer.param_groups:
                g["lr"] = lr
            loss, _ = loss_of(batch_at(step))
            if spec.zero_grad:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grads = {}
            for name, p in params:
                if p.grad is not None:
                    grads[_group(name)] = grads.get(_group(name), 0.0) + float(p.grad.pow(2).sum())
            total = math.sqrt(sum(grads.values()))
            if spec.clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), spec.clip)
            optimizer.step()
            value = loss.item()
            losses.append(value)
            log.log(
                step=step,
                loss=_round(value),
                lr=_round(lr),
                grad_norm=_round(total),
                grad_norms={k: _round(math.sqrt(v)) for k, v in grads.items()},
            )
            if (step + 1) % spec.eval_every == 0 or step == spec.steps - 1:
                val_loss, val_accuracy = evaluate()
                evals.append((step, val_loss))
                log.log_eval(step=step, val_loss=_round(val_loss), val_accuracy=_round(val_accuracy))
    return _entry(spec, path, np.array(losses), evals)


def _onset(rule, losses: np.ndarray, evals) -> int:
    if isinstance(rule, int):
        return rule
    if rule == BEST_VAL:
        finite = [(s, v) for s, v in evals if math.isfinite(v)]
        return int(min(finite, key=lambda sv: sv[1])[0])
    finite = np.isfinite(losses)
    end = int(np.flatnonzero(~finite)[0]) if not finite.all() else len(losses)
    mean = np.convolve(np.pad(losses[:end], 5, mode="edge"), np.ones(11) / 11, mode="valid")
    if rule == LOSS_MIN:
        low = int(np.argmin(mean))
        top = end - 1 if end < len(losses) else low + int(np.argmax(mean[low:]))
        return low + int(np.flatnonzero(mean[low : top + 1] <= 1.1 * mean[low])[-1])
    if rule == PLATEAU_START:
        level = np.median(losses[-len(losses) // 4 :])
        outside = np.flatnonzero(np.abs(mean - level) > 0.05 * level)
        return int(outside[-1] + 1) if len(outside) else 0
    raise ValueError(rule)


def _entry(spec: Spec, path: Path, losses: np.ndarray, evals) -> dict:
    expected = [
        {
            "kinds": e["kinds"],
            "onset": _onset(e["onset"], losses, evals),
            "onset_rule": e["onset"] if isinstance(e["onset"], str) else "step where the fault was put in",
        }
        for e in spec.expected
    ]
    return {
        "file": path.name,
        "arch": spec.arch,
        "steps": spec.steps,
        "healthy": spec.healthy,
        "note": spec.note,
        "expected": expected,
        "forbidden": spec.forbidden,
        "first_loss": _round(float(losses[0])),
        "last_loss": _round(float(losses[-1])),
        "final_val_loss": _round(evals[-1][1]) if evals else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=("tuning", "heldout"), required=True)
    parser.add_argument("--only", nargs="*", default=None, help="run only these names (manifest entries merge)")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "runs")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # a shared CPU: one thread per run
    out = args.out / args.set
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() and args.only else {}
    for spec in _specs()[args.set]:
        if args.only and spec.name not in args.only:
            continue
        start = time.perf_counter()
        manifest[spec.name] = train(spec, out / f"{spec.name}.jsonl")
        entry = manifest[spec.name]
        print(
            f"{spec.name:32s} {time.perf_counter() - start:5.1f}s  loss {entry['first_loss']} -> "
            f"{entry['last_loss']}  val {entry['final_val_loss']}  expected {entry['expected']}",
            file=sys.stderr,
        )
    out.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps(dict(sorted(manifest.items())), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
