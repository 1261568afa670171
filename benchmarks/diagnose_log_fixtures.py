"""Training logs written by the libraries themselves, for `dlzoo diagnose`'s format readers.

    python benchmarks/diagnose_log_fixtures.py [--out tests/data/logs] [--only keras lightning hf tensorboard derived]

Each log comes from a short real run (seconds on CPU) logged by the library's own logger, so the
readers are tested on exactly what users have:

- keras/: Keras 3 `CSVLogger` (training.csv), `model.fit(...).history` dumped with json
  (history.json) and the `TensorBoard` callback (tb/, train/ and validation/ event files) of a
  small dense classifier on 100 digits images for 60 epochs: it overfits (epoch-based logs).
- lightning/: PyTorch Lightning's `CSVLogger` (version_0/metrics.csv, hparams.yaml) of the
  zoo's torch ViT on digits with a `LearningRateMonitor`: healthy.
- hf/: Hugging Face `Trainer` (checkpoint-*/trainer_state.json and config.json only, no weights)
  of a 2-layer GPT-2 from a config on byte-level text at a far too high learning rate.
- tensorboard/: `torch.utils.tensorboard.SummaryWriter` scalars (Loss/train, Loss/val, lr) of
  the zoo's torch ViT on digits with two corrupted batches (steps 60 and 130).
- derived/: one real overfitting run (tests/data/runs/tuning/vit_overfit.jsonl) written as a
  plain CSV (step, loss, lr, val_loss, val_accuracy) and as JSON lines that carry loss and
  val_loss on the same line (as many loggers write them).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _digits(n_train: int | None = None, seed: int = 0):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = (x[order] / 16.0).astype(np.float32), y[order].astype(np.int64)
    x = (x - x[:1400].mean()) / x[:1400].std()
    train, val = (x[:1400], y[:1400]), (x[1400:], y[1400:])
    if n_train:
        train = (train[0][:n_train], train[1][:n_train])
    return train, val


def keras_logs(out: Path) -> None:
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    keras.utils.set_random_seed(0)
    (x, y), (vx, vy) = _digits(n_train=100)
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(256, activation="relu"), keras.layers.Dense(256, activation="relu"), keras.layers.Dense(10)]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )
    target = out / "keras"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    history = model.fit(
        x,
        y,
        validation_data=(vx, vy),
        epochs=60,
        batch_size=32,
        verbose=0,
        callbacks=[keras.callbacks.CSVLogger(str(target / "training.csv")), keras.callbacks.TensorBoard(log_dir=str(target / "tb"))],
    )
    (target / "history.json").write_text(json.dumps({k: [float(v) for v in vs] for k, vs in history.history.items()}))


def lightning_logs(out: Path) -> None:
    import lightning as L
    import torch
    import torch.nn.functional as F

    import dlzoo

    torch.manual_seed(0)
    (x, y), (vx, vy) = _digits()

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.save_hyperparameters({"num_classes": 10, "lr": 1e-3})
            self.model = dlzoo.create_model(
                "vit", framework="torch", config="tiny", image_size=8, patch_size=2, num_channels=1, num_classes=10
            )

        def forward(self, images):
            return self.model(images.view(-1, 1, 8, 8))["logits"]

        def training_step(self, batch, _):
            loss = F.cross_entropy(self(batch[0]), batch[1])
            self.log("train_loss", loss, on_step=True, on_epoch=True)
            return loss

        def validation_step(self, batch, _):
            logits = self(batch[0])
            self.log("val_loss", F.cross_entropy(logits, batch[1]))
            self.log("val_acc", (logits.argmax(-1) == batch[1]).float().mean())

        def configure_optimizers(self):
            optimizer = torch.optim.AdamW(self.parameters(), lr=1e-3)
            return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 220)}

    def loader(a, b, shuffle):
        data = torch.utils.data.TensorDataset(torch.from_numpy(a), torch.from_numpy(b))
        return torch.utils.data.DataLoader(data, batch_size=64, shuffle=shuffle)

    target = out / "lightning"
    shutil.rmtree(target, ignore_errors=True)
    logger = L.pytorch.loggers.CSVLogger(str(out), name="lightning")
    trainer = L.Trainer(
        max_epochs=10,
        logger=logger,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        callbacks=[L.pytorch.callbacks.LearningRateMonitor(logging_interval="step")],
    )
    trainer.fit(Module(), loader(x, y, True), loader(vx, vy, False))


def hf_logs(out: Path) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    torch.manual_seed(0)
    text = np.frombuffer(Path(json.__file__).read_bytes(), dtype=np.uint8).astype(np.int64)
    starts = np.random.default_rng(0).integers(0, len(text) - 65, 600)
    examples = [{"input_ids": torch.from_numpy(text[s : s + 64]), "labels": torch.from_numpy(text[s : s + 64])} for s in starts]
    config = GPT2Config(vocab_size=256, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    model = GPT2LMHeadModel(config)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            max_steps=120,
            per_device_train_batch_size=8,
            learning_rate=0.05,
            warmup_steps=10,
            logging_steps=1,
            eval_strategy="steps",
            eval_steps=20,
            per_device_eval_batch_size=16,
            save_strategy="steps",
            save_steps=120,
            report_to=[],
            seed=0,
            use_cpu=True,
            disable_tqdm=True,
        )
        trainer = Trainer(model=model, args=args, train_dataset=examples[:500], eval_dataset=examples[500:])
        trainer.train()
        checkpoint = Path(tmp) / "checkpoint-120"
        target = out / "hf" / "checkpoint-120"
        shutil.rmtree(out / "hf", ignore_errors=True)
        target.mkdir(parents=True)
        for name in ("trainer_state.json", "config.json"):  # the logs only: no weights, no pickles
            shutil.copy(checkpoint / name, target / name)


def tensorboard_logs(out: Path) -> None:
    import torch
    import torch.nn.functional as F
    from torch.utils.tensorboard import SummaryWriter

    import dlzoo

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    (x, y), (vx, vy) = _digits()
    model = dlzoo.create_model("vit", framework="torch", config="tiny", image_size=8, patch_size=2, num_channels=1, num_classes=10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    target = out / "tensorboard"
    shutil.rmtree(target, ignore_errors=True)
    writer = SummaryWriter(str(target / "run"))
    images = lambda a: torch.from_numpy(a).view(-1, 1, 8, 8)  # noqa: E731
    for step in range(200):
        idx = rng.choice(len(x), 64, replace=False)
        batch, labels = images(x[idx]), torch.from_numpy(y[idx])
        if step in (60, 130):  # a shard that skipped normalisation, its labels scrambled
            batch, labels = batch * 8 + 4, torch.from_numpy(rng.integers(0, 10, 64))
        loss = F.cross_entropy(model(batch)["logits"], labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        writer.add_scalar("Loss/train", loss.item(), step)
        writer.add_scalar("lr", optimizer.param_groups[0]["lr"], step)
        if (step + 1) % 20 == 0:
            with torch.no_grad():
                writer.add_scalar("Loss/val", F.cross_entropy(model(images(vx))["logits"], torch.from_numpy(vy)).item(), step)
    writer.close()


def derived_logs(out: Path) -> None:
    from dlzoo.agents.metrics import read_metrics

    run = read_metrics(ROOT / "tests" / "data" / "runs" / "tuning" / "vit_overfit.jsonl")
    target = out / "derived"
    target.mkdir(parents=True, exist_ok=True)
    evals = {r["step"]: r for r in run.eval}
    with open(target / "overfit.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["step", "loss", "lr", "val_loss", "val_accuracy"])
        for r in run.train:
            e = evals.get(r["step"], {})
            writer.writerow([r["step"], r["loss"], r["lr"], e.get("val_loss", ""), e.get("val_accuracy", "")])
    with open(target / "overfit_val_on_train_lines.jsonl", "w") as file:
        file.write(json.dumps({"type": "meta", "num_classes": 10}) + "\n")
        for r in run.train:
            line = {"step": r["step"], "loss": r["loss"], "lr": r["lr"]}
            if r["step"] in evals:
                line.update(val_loss=evals[r["step"]]["val_loss"], val_accuracy=evals[r["step"]]["val_accuracy"])
            file.write(json.dumps(line) + "\n")
    with open(target / "epochs.jsonl", "w") as file:  # another logger's JSON lines: epoch, no type
        for epoch, k in enumerate(range(0, len(run.train), 20)):
            chunk = [r["loss"] for r in run.train[k : k + 20]]
            e = evals.get(run.train[min(k + 19, len(run.train) - 1)]["step"], {})
            file.write(
                json.dumps(
                    {
                        "epoch": epoch,
                        "train_loss": float(np.mean(chunk)),
                        "val_loss": e.get("val_loss", math.nan),
                        "val_acc": e.get("val_accuracy"),
                    }
                )
                + "\n"
            )


WRITERS = {"keras": keras_logs, "lightning": lightning_logs, "hf": hf_logs, "tensorboard": tensorboard_logs, "derived": derived_logs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "logs")
    parser.add_argument("--only", nargs="*", choices=sorted(WRITERS), default=None)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    for name in args.only or WRITERS:
        WRITERS[name](args.out)
        print(f"wrote {args.out / name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
