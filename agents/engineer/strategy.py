"""Training-strategy design: from the task, the data, the input size, the time budget and the
device, an architecture and preset plus every training setting, each with its reason and the
rows of facts.toml (``[[rule]]``) it rests on.

The recipes are published ones, not invented here: DeiT's AdamW recipe for vision models trained
from scratch (Touvron et al., 2021; Wightman et al., 2021 show it trains ResNet-50 too), BERT's
fine-tuning recipe (Devlin et al., 2019), GPT-3's and nanoGPT's for language models, and for
dlzoo's tiny presets on digits-scale data the defaults dlzoo measured (benchmarks/
scaffold_quality.py). A recipe's learning rate is moved to the chosen batch with the
square-root rule for Adam (Malladi et al., 2022). The model size is the largest the data supports
(``size-caps``) whose recipe fits the budget on the device (zoo/estimates.py: FLOPs over the
device's dense peak at the stated utilisation); memory decides the batch and whether activation
checkpointing is needed.

``design_training(...)`` returns the ``--json`` dict of ``dlzoo recommend --task``; its
``overrides`` are ``--set`` keys of the generated project's config (SCAFFOLD: config.py), which
``dlzoo new`` can write into the project.
"""

from __future__ import annotations

import math
from typing import Any

from ...zoo import estimates
from ...zoo.configs import ZooError, check_arch, get_config
from .costs import default_utilisation
from .devices import resolve
from .facts import load

TASKS: dict[str, tuple[str, ...]] = {
    "image-classification": ("resnet", "vit"),
    "text-classification": ("bert",),
    "language-modeling": ("gpt",),
}
# Model sizes in increasing order. ViT presets are rebuilt at the input size (see _vit_config).
LADDER = {
    "resnet": ["tiny", "18", "34", "50", "101", "152"],
    "vit": ["tiny", "Ti/16", "S/16", "B/16", "L/16"],
    "bert": ["tiny", "mini", "small", "medium", "base", "large"],
    "gpt": ["tiny", "124M", "medium", "large", "xl"],
}
# The largest preset each size cap allows (rule size-caps).
CAPS = {"resnet": {"tiny": "tiny", "small": "18", "medium": "50"}, "vit": {"tiny": "tiny", "small": "Ti/16", "medium": "S/16"}}
# Generated projects split each class 70/10/20 into train/validation/test (SCAFFOLD: data.py).
TRAIN_FRACTION = 0.7
RESNET_MIN_SIZE = 32  # the stem (stride 4) and a stride-2 stage need 32 px to keep a 4 x 4 map


class _Decisions:
    def __init__(self):
        self.items: list[dict[str, Any]] = []
        self.rules: list[str] = []

    def add(self, name: str, value: Any, reason: str, *rules: str) -> Any:
        table = load()
        for r in rules:
            if r not in table.rules and r not in table.facts:
                raise KeyError(f"strategy cites unknown rule {r!r}")  # a developer error
            if r not in self.rules:
                self.rules.append(r)
        self.items.append({"name": name, "value": value, "reason": reason, "rules": list(rules)})
        return value


def _pow2_floor(x: float) -> int:
    return 1 << max(0, int(math.floor(math.log2(max(1.0, x)))))


def _positive(name: str, value, kind=int) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0 or (kind is int and value != int(value)):
        raise ZooError(f"--{name} must be a positive {'integer' if kind is int else 'number'}, got {value!r}")


def _vit_config(preset: str, size: int, num_classes: int | None):
    """ViT ``preset`` rebuilt for ``size`` px: the preset's own patch when it divides the size and
    leaves at least 16 patches, else 16 px patches from 128 px up (the ViT paper's 224/16), else
    a quarter of the side (4 x 4 = 16 patches)."""
    base = get_config("vit", preset)
    patch = base.patch_size
    if size % patch or (size // patch) ** 2 < 16:
        patch = 16 if size >= 128 and size % 16 == 0 else max(1, size // 4)
        while size % patch:
            patch -= 1
    overrides = {"image_size": size, "patch_size": patch}
    if num_classes:
        overrides["num_classes"] = num_classes
    return base.replace(**overrides)


def _model(arch: str, preset: str, size: int, num_classes: int | None):
    if arch == "vit":
        return _vit_config(preset, size, num_classes)
    config = get_config(arch, preset)
    if arch == "resnet" and num_classes:
        config = config.replace(num_classes=num_classes)
    if arch == "bert" and num_classes:
        config = config.replace(num_classes=num_classes)
    if arch == "gpt" and size > config.context_length and preset == "tiny":
        config = config.replace(context_length=size)
    return config


def _size_cap(arch: str, examples: int) -> tuple[str | None, str]:
    caps = load().rule("size-caps").value
    if arch not in CAPS:
        return None, ""
    if examples < caps["tiny_below"]:
        return CAPS[arch]["tiny"], f"fewer than {caps['tiny_below']:,} examples"
    if examples < caps["small_below"]:
        return CAPS[arch]["small"], f"fewer than {caps['small_below']:,} examples"
    if examples < caps["medium_below"]:
        return CAPS[arch]["medium"], f"fewer than {caps['medium_below']:,} examples"
    return None, ""


def design_training(
    task: str,
    *,
    dataset_size: int,
    input_size: int,
    budget_hours: float,
    device: str = "cpu",
    arch: str | None = None,
    num_classes: int | None = None,
    utilisation: float | None = None,
) -> dict[str, Any]:
    """The recommended architecture, preset and training settings (schema in docs/engineer.md).

    ``dataset_size``: labelled examples (images or texts) the user has, before the project's
    train/validation/test split; for language modeling, tokens. ``input_size``: image side in
    pixels, or tokens per example. ``budget_hours``: training time on ``device`` (cpu, a100,
    h100, h200). Raises ZooError for an unknown task, device or arch, an arch that does not do
    the task, non-positive numbers, or a sequence longer than the architecture's context.
    """
    if task not in TASKS:
        raise ZooError(f"unknown task {task!r}; expected one of: {', '.join(TASKS)}")
    _positive("dataset-size", dataset_size)
    _positive("input-size", input_size)
    _positive("budget-hours", budget_hours, float)
    if num_classes is not None:
        _positive("num-classes", num_classes)
    if arch is not None and check_arch(arch) not in TASKS[task]:
        raise ZooError(f"--arch {arch} does not do {task}; use one of: {', '.join(TASKS[task])}")
    d = _Decisions()
    precision = "fp32"
    target = resolve(device, "fp32")
    if not target.device.measured:
        precision = d.add(
            "precision",
            "bf16",
            "mixed precision in bfloat16: fp32 master weights, 16-bit matmuls on "
            f"the {target.device.name}'s tensor cores, no loss scaling needed",
            "mixed-precision",
        )
        target = resolve(device, "bf16")
    else:
        d.add("precision", "fp32", "float32 on the CPU: 16-bit matmuls are no faster there without bf16 units", "mixed-precision")
    if utilisation is not None and not 0 < utilisation <= 1:
        raise ZooError(f"--utilisation must be in (0, 1], got {utilisation}")
    u = utilisation
    if task == "image-classification":
        return _image(d, task, dataset_size, input_size, budget_hours, target, u, precision, arch, num_classes)
    if task == "text-classification":
        return _text_classification(d, task, dataset_size, input_size, budget_hours, target, u, precision, num_classes)
    return _language_model(d, task, dataset_size, input_size, budget_hours, target, u, precision)


# --------------------------------------------------------------------------- shared pieces


def _fit(arch, config, opts, *, desired: int, target, precision: str, d: _Decisions, why: str, rules: tuple):
    """The batch: ``desired`` if it fits the device without checkpointing, else with it, else the
    largest power of two that fits. Returns (batch, checkpointing)."""
    if target.memory_bytes is None:  # the CPU: host memory is not modelled as the limit
        d.add("batch_size", desired, why, *rules)
        d.add("activation_checkpointing", False, "not needed: the CPU's host memory is not the limit here", "checkpointing")
        return desired, False
    plain = estimates.max_batch_size(arch, config, device_bytes=target.memory_bytes, precision=precision, **opts)
    if plain >= desired:
        d.add("batch_size", desired, why, *rules)
        d.add(
            "activation_checkpointing",
            False,
            f"not needed: batch {desired} fits the {target.device.name} (up to {plain} without it)",
            "checkpointing",
        )
        return desired, False
    ckpt = estimates.max_batch_size(arch, config, device_bytes=target.memory_bytes, precision=precision, checkpointing=True, **opts)
    if ckpt >= desired:
        d.add("batch_size", desired, why, *rules)
        d.add(
            "activation_checkpointing",
            True,
            f"needed: batch {desired} needs it on the {target.device.name} (up to {plain} without, {ckpt} with); "
            "it costs one extra forward pass",
            "checkpointing",
        )
        return desired, True
    batch = _pow2_floor(max(plain, ckpt))
    if max(plain, ckpt) < 1:
        raise ZooError(
            f"{arch} does not fit the {target.device.name} even at batch 1 with activation checkpointing; "
            "choose a smaller model or a device with more memory"
        )
    use_ckpt = plain < batch
    d.add(
        "batch_size",
        batch,
        f"{why}, but only {batch} fits the {target.device.name} ({'with' if use_ckpt else 'without'} activation checkpointing)",
        *rules,
        "checkpointing",
    )
    d.add(
        "activation_checkpointing", use_ckpt, "needed to fit the batch" if use_ckpt else "does not help enough to matter", "checkpointing"
    )
    return batch, use_ckpt


def _sqrt_lr(d: _Decisions, base_lr: float, base_batch: int, batch: int, recipe_rule: str, recipe: str) -> float:
    lr = base_lr * math.sqrt(batch / base_batch)
    d.add(
        "lr",
        float(f"{lr:.3g}"),
        f"{recipe}: {base_lr:g} at batch {base_batch}, scaled by sqrt({batch}/{base_batch}) for Adam",
        recipe_rule,
        "adam-sqrt-scaling",
    )
    d.items[-1]["scaling_rule"] = {
        "rule": "sqrt",
        "base_lr": base_lr,
        "base_batch": base_batch,
        "formula": f"lr = {base_lr:g} * sqrt(batch / {base_batch})",
    }
    return float(f"{lr:.3g}")


def _result(d: _Decisions, task, arch, preset, config, overrides, report, epochs, steps, budget_hours, notes):
    hours = report["device"]["step_seconds"] * steps / 3600 if "device" in report else None
    if hours is not None and hours > budget_hours * 1.0001:
        notes.append(
            f"even this plan needs about {hours:.2f} h, over the {budget_hours:g} h budget: train fewer epochs or use a faster device"
        )
    return {
        "task": task,
        "arch": arch,
        "preset": preset,
        "model_config": config.to_dict(),
        "decisions": d.items,
        "overrides": overrides,
        "epochs": epochs,
        "steps": steps,
        "estimated_hours": hours,
        "budget_hours": budget_hours,
        "costs": report,
        "notes": notes,
        "rules": load().cite(d.rules),
    }


def _plan_epochs(arch, config, opts, batch, target, u, train_examples, budget_hours, ckpt):
    step = estimates.step_time(arch, config, batch_size=batch, peak_flops=target.peak_flops, utilisation=u, checkpointing=ckpt, **opts)
    steps_per_epoch = max(1, math.ceil(train_examples / batch))
    return budget_hours * 3600 / (step * steps_per_epoch), steps_per_epoch


# --------------------------------------------------------------------------- image classification


def _image(d, task, n, size, budget_hours, target, u, precision, arch, num_classes):
    table = load()
    train_n = max(1, int(n * TRAIN_FRACTION))
    vit_min = table.rule("vit-data-scale").value["vit_min_images"]
    notes: list[str] = []
    if arch is None:
        arch = "vit" if n >= vit_min else "resnet"
        d.add(
            "arch",
            arch,
            (
                f"{n:,} images: at this scale a ViT matches or beats a ResNet of similar cost"
                if arch == "vit"
                else f"{n:,} images (< {vit_min:,}): trained from scratch, ResNets beat ViTs below "
                "ImageNet-21k scale without heavy augmentation"
            ),
            "vit-data-scale",
        )
    else:
        d.add("arch", arch, "as requested", "vit-data-scale")
        if arch == "vit" and n < vit_min:
            notes.append(
                f"a ViT trained from scratch on {n:,} images (< {vit_min:,}) usually trails a ResNet; "
                "start from published weights (--weights) or use strong augmentation (DeiT, AugReg)"
            )
            d.rules += [r for r in ("augreg", "deit-recipe") if r not in d.rules]
    side = size
    if arch == "resnet" and size < RESNET_MIN_SIZE:
        side = RESNET_MIN_SIZE
        notes.append(
            f"images of {size} px are upsampled to {RESNET_MIN_SIZE} px (data.image_size): ResNet's stem "
            "divides the side by 4 and each later stage by 2"
        )
    if arch == "resnet" and side < 64 and n >= 10_000:
        notes.append(
            f"at {side} px the ImageNet stem (7x7/2 conv + max-pool) leaves a {max(1, side // 4)} px map after "
            "the stem; CIFAR ResNets (He et al., Sec. 4.2) use a 3x3 stem without pooling, which dlzoo's "
            "ResNet does not offer"
        )
    if u is None:
        u = default_utilisation(arch, target)[0]
    small = n < table.rule("size-caps").value["tiny_below"]
    digits = table.rule("dlzoo-digits").value
    deit = table.rule("deit-recipe").value
    if small:
        recipe, recipe_rule = "dlzoo's measured digits recipe for the tiny presets", "dlzoo-digits"
        base_lr, base_batch = digits[f"{arch}_lr"], digits["batch"]
        target_epochs, epochs_rule = digits[f"{arch}_epochs"], "dlzoo-digits"
        epoch_reason = f"dlzoo's digits runs reach >= 95% in {target_epochs} epochs"
    else:
        recipe, recipe_rule = "DeiT's AdamW recipe", "deit-recipe"
        base_lr, base_batch = deit["lr"], deit["batch"]
        target_epochs, epochs_rule, epoch_reason = _image_epochs(arch, n)
    cap, cap_why = _size_cap(arch, n)
    ladder = LADDER[arch][: LADDER[arch].index(cap) + 1] if cap else LADDER[arch]
    if not small:
        ladder = ladder[1:]  # dlzoo's tiny presets are toys for digits-scale data
    min_fraction = table.rule("resnet50-throughput").value["min_schedule_fraction"]
    steps_floor = table.rule("steps-per-epoch").value["min_steps_per_epoch"]
    desired = min(base_batch, _pow2_floor(train_n / steps_floor))
    # The largest preset that affords at least half the schedule in the budget (a shorter schedule
    # costs little accuracy: resnet50-throughput); else the smallest, with the epochs it affords.
    chosen, fits = None, False
    for preset in reversed(ladder):
        config = _model(arch, preset, side, num_classes)
        opts = {} if arch == "vit" else {"image_size": side}
        batch = min(
            desired,
            max(
                1, estimates.max_batch_size(arch, config, device_bytes=target.memory_bytes, precision=precision, checkpointing=True, **opts)
            )
            if target.memory_bytes
            else desired,
        )
        affordable, _ = _plan_epochs(arch, config, opts, batch, target, u, train_n, budget_hours, False)
        chosen = (preset, config, opts)
        if affordable >= min_fraction * target_epochs:
            fits = True
            break
    preset, config, opts = chosen
    larger = LADDER[arch][LADDER[arch].index(preset) + 1 :] if preset in LADDER[arch] else []
    why = (
        f"the largest {arch} preset that trains at least {min_fraction:.0%} of the {target_epochs}-epoch schedule "
        f"in {budget_hours:g} h on the {target.device.name}"
    )
    if not fits:
        why = (
            f"the smallest {arch} preset for this data: even it trains less than {min_fraction:.0%} of the "
            f"{target_epochs}-epoch schedule in {budget_hours:g} h"
        )
        notes.append(
            f"{budget_hours:g} h on the {target.device.name} is short for {n:,} images: expect an undertrained "
            "model; a larger budget, a faster device or fewer images would help"
        )
    elif cap and preset == cap:
        why = f"the largest {arch} preset the data supports ({cap_why})"
    elif not larger:
        why = f"the largest {arch} preset"
    d.add("preset", preset, why, "size-caps", "vit-data-scale" if arch == "vit" else "resnet-recipe", "resnet50-throughput")
    batch, ckpt = _fit(
        arch,
        config,
        opts,
        desired=desired,
        target=target,
        precision=precision,
        d=d,
        why=f"{recipe} uses {base_batch}; at most the training set / {steps_floor} "
        f"({train_n:,} / {steps_floor}) for enough updates per epoch",
        rules=(recipe_rule, "steps-per-epoch", "small-batch"),
    )
    d.add(
        "optimizer",
        "AdamW",
        "decoupled weight decay; the generated projects train with AdamW",
        "adamw",
        recipe_rule,
        *(("rsb",) if arch == "resnet" and not small else ()),
    )
    lr = _sqrt_lr(d, base_lr, base_batch, batch, recipe_rule, recipe)
    affordable, steps_per_epoch = _plan_epochs(arch, config, opts, batch, target, u, train_n, budget_hours, ckpt)
    epochs = max(1, min(target_epochs, int(affordable)))
    d.add(
        "epochs",
        epochs,
        epoch_reason if epochs == target_epochs else f"{epoch_reason}, but {budget_hours:g} h affords about {affordable:.0f}",
        epochs_rule,
    )
    warmup = digits["warmup_fraction"] if small else min(0.1, deit["warmup_epochs"] / epochs)
    d.add(
        "warmup_fraction",
        round(warmup, 4),
        "dlzoo's measured digits recipe" if small else f"{deit['warmup_epochs']} warmup epochs (at most 10% of the run)",
        recipe_rule,
        "goyal-warmup",
    )
    d.add("schedule", "cosine", "linear warmup then cosine decay to 1% of the peak lr (the projects' schedule)", "cosine", recipe_rule)
    wd = digits["weight_decay"] if small else deit["weight_decay"]
    d.add("weight_decay", wd, f"{recipe}", recipe_rule, "adamw")
    ls = table.rule("label-smoothing").value["label_smoothing"]
    d.add(
        "label_smoothing",
        ls,
        "regularises the classifier (skip it if this model will be a distillation teacher)",
        "label-smoothing",
        recipe_rule,
    )
    shift = max(1, round(table.rule("crop-augmentation").value["shift_fraction"] * side))
    d.add(
        "augmentation",
        f"random shifts up to {shift} px, no flips",
        "label-preserving translations; flips only for mirror-invariant classes (a mirrored digit is no digit)"
        + ("; a ViT from scratch also wants RandAugment / Mixup / CutMix, which the projects lack" if arch == "vit" else ""),
        "crop-augmentation",
        *(("deit-recipe", "augreg") if arch == "vit" else ()),
    )
    overrides: dict[str, Any] = {
        "optim.lr": lr,
        "optim.weight_decay": wd,
        "optim.warmup_fraction": round(warmup, 4),
        "optim.label_smoothing": ls,
        "train.epochs": epochs,
        "train.batch_size": batch,
        "train.precision": "bfloat16" if precision == "bf16" else "float32",
        "data.image_size": side,
        "data.augment": True,
        "data.max_shift": shift,
    }
    if arch == "vit":
        dropout = 0.0 if small else table.rule("vit-dropout").value["dropout_small_data"]
        if n >= vit_min:
            dropout = 0.0
        d.add(
            "dropout",
            dropout,
            "dlzoo's measured digits recipe keeps the tiny preset's 0.0"
            if small
            else ("ViT used dropout 0.1 below JFT scale" if dropout else "no dropout at JFT scale"),
            "vit-dropout",
            recipe_rule,
        )
        overrides.update({"model.dropout": dropout, "model.image_size": config.image_size, "model.patch_size": config.patch_size})
    else:
        d.add("dropout", None, "ResNets use batch normalisation and no dropout", "resnet-recipe")
    if num_classes:
        overrides["model.num_classes"] = num_classes
    report = _report(arch, config, opts, batch, precision, target, u, ckpt)
    return _result(d, task, arch, preset, config, overrides, report, epochs, epochs * steps_per_epoch, budget_hours, notes)


def _image_epochs(arch: str, n: int) -> tuple[int, str, str]:
    """Epochs from scratch by data scale: the published schedules at ImageNet-1k, ImageNet-21k
    and JFT-300M scale (and CIFAR scale for ResNets)."""
    table = load()
    if arch == "vit":
        v = table.rule("vit-schedule").value
        if n < 5_000_000:
            return v["epochs_1k"], "vit-schedule", "ViT / DeiT train 300 epochs at ImageNet-1k scale"
        if n < 100_000_000:
            return v["epochs_21k"], "vit-schedule", "ViT trains 90 epochs at ImageNet-21k scale"
        return v["epochs_jft"], "vit-schedule", "ViT trains 7 epochs at JFT-300M scale"
    if n < 1_000_000:
        return table.rule("resnet-recipe").value["epochs_cifar"], "resnet-recipe", "ResNets on CIFAR-scale data train about 160 epochs"
    if n < 10_000_000:
        return table.rule("resnet-recipe").value["epochs_imagenet"], "resnet-recipe", "the ImageNet ResNet schedule is 90 epochs"
    if n < 100_000_000:
        return table.rule("bit-schedule").value["epochs_21k"], "bit-schedule", "BiT ResNets train 90 epochs on ImageNet-21k"
    return table.rule("bit-schedule").value["epochs_jft"], "bit-schedule", "BiT ResNets train 40 epochs on JFT-300M"


def _report(arch, config, opts, batch, precision, target, u, ckpt) -> dict:
    from .costs import cost_report

    return cost_report(
        arch, config, batch_size=batch, precision=precision, device=target.device.key, utilisation=u, checkpointing=ckpt, **opts
    )


# --------------------------------------------------------------------------- text


def _text_classification(d, task, n, seq, budget_hours, target, u, precision, num_classes):
    table = load()
    rec = table.rule("bert-finetune").value
    if seq > 512:
        raise ZooError(f"--input-size {seq} is longer than BERT's context of 512 tokens; truncate or chunk the texts")
    train_n = max(1, int(n * TRAIN_FRACTION))
    if u is None:
        u = default_utilisation("bert", target)[0]
    d.add("arch", "bert", "fine-tune a pre-trained BERT encoder (start from published weights with --weights)", "bert-finetune")
    ladder = LADDER["bert"]
    if n < rec["large_min_examples"]:
        ladder = ladder[: ladder.index("base") + 1]
    chosen = None
    for preset in reversed(ladder):
        config = _model("bert", preset, seq, num_classes or 2)
        batch = rec["batch"]
        affordable, _ = _plan_epochs("bert", config, {"seq_len": seq}, batch, target, u, train_n, budget_hours, False)
        chosen = (preset, config)
        if affordable >= rec["epochs"]:
            break
    preset, config = chosen
    opts = {"seq_len": seq}
    d.add(
        "preset",
        preset,
        f"the largest BERT whose {rec['epochs']}-epoch fine-tuning fits {budget_hours:g} h"
        + (
            f"; BERT-large fine-tuning is unstable below about {rec['large_min_examples']:,} examples"
            if n < rec["large_min_examples"]
            else ""
        ),
        "bert-finetune",
    )
    batch, ckpt = _fit(
        "bert",
        config,
        opts,
        desired=rec["batch"],
        target=target,
        precision=precision,
        d=d,
        why="BERT's fine-tuning batch",
        rules=("bert-finetune",),
    )
    d.add("optimizer", "AdamW", "BERT's optimizer, weight decay decoupled", "bert-finetune", "adamw")
    lr = rec["lr"] if batch == rec["batch"] else _sqrt_lr(d, rec["lr"], rec["batch"], batch, "bert-finetune", "BERT fine-tuning")
    if batch == rec["batch"]:
        d.add("lr", lr, "the middle of BERT's fine-tuning grid (5e-5, 3e-5, 2e-5)", "bert-finetune")
    affordable, steps_per_epoch = _plan_epochs("bert", config, opts, batch, target, u, train_n, budget_hours, ckpt)
    epochs = max(1, min(rec["epochs"], int(affordable)))
    d.add("epochs", epochs, "BERT fine-tunes for 2-4 epochs", "bert-finetune")
    d.add("warmup_fraction", rec["warmup_fraction"], "linear warmup over the first 10% of steps", "bert-finetune")
    d.add("schedule", "cosine", "BERT decays linearly to 0; the projects' cosine decay is the close equivalent", "bert-finetune", "cosine")
    d.add("weight_decay", rec["weight_decay"], "BERT's weight decay", "bert-finetune")
    d.add("label_smoothing", 0.0, "BERT fine-tunes with plain cross-entropy", "bert-finetune")
    d.add("dropout", rec["dropout"], "BERT's dropout", "bert-finetune")
    d.add("augmentation", None, "none: text has no standard label-preserving augmentation here", "bert-finetune")
    overrides = {
        "optim.lr": lr,
        "optim.weight_decay": rec["weight_decay"],
        "optim.warmup_fraction": rec["warmup_fraction"],
        "optim.label_smoothing": 0.0,
        "train.epochs": epochs,
        "train.batch_size": batch,
        "train.precision": "bfloat16" if precision == "bf16" else "float32",
        "model.dropout": rec["dropout"],
    }
    report = _report("bert", config, opts, batch, precision, target, u, ckpt)
    return _result(
        d,
        task,
        "bert",
        preset,
        config,
        overrides,
        report,
        epochs,
        epochs * steps_per_epoch,
        budget_hours,
        ["generated text projects follow issue 12; these overrides use the image projects' config keys"],
    )


def _language_model(d, task, tokens, seq, budget_hours, target, u, precision):
    table = load()
    if seq > 1024:
        raise ZooError(f"--input-size {seq} is longer than GPT-2's context of 1024 tokens")
    if u is None:
        u = default_utilisation("gpt", target)[0]
    chin = table.rule("chinchilla").value["tokens_per_param"]
    passes = table.rule("data-constrained").value["max_epochs"]
    gpt3 = table.rule("gpt3-recipe").value
    nano = table.rule("nanogpt-small").value
    d.add("arch", "gpt", "a decoder-only language model", "gpt3-recipe")
    chosen = None
    for preset in reversed(LADDER["gpt"]):
        config = _model("gpt", preset, seq, None)
        if seq > config.context_length:
            continue
        params = estimates.memory("gpt", config, seq_len=seq).params
        f = estimates.flops("gpt", config, seq_len=seq)
        train_tokens = min(tokens * passes, chin * params)
        hours = train_tokens * f.train_per_token / (target.peak_flops * u) / 3600
        chosen = (preset, config, params, train_tokens)
        if params * chin <= tokens * passes and hours <= budget_hours:
            break
    preset, config, params, train_tokens = chosen
    d.add(
        "preset",
        preset,
        f"the largest GPT whose compute-optimal run ({chin} tokens per parameter, at most "
        f"{passes} passes over {tokens:,} tokens) fits {budget_hours:g} h",
        "chinchilla",
        "data-constrained",
    )
    small = params < 50_000_000
    recipe_rule = "nanogpt-small" if small else "gpt3-recipe"
    base_lr, base_batch = (
        (nano["lr"], nano["batch"]) if small else (gpt3["lr_by_preset"].get(preset, gpt3["lr"]), gpt3["batch_tokens"] // seq)
    )
    opts = {"seq_len": seq}
    desired = min(base_batch, _pow2_floor(tokens / seq / 32))
    batch, ckpt = _fit(
        "gpt",
        config,
        opts,
        desired=max(1, desired),
        target=target,
        precision=precision,
        d=d,
        why=("nanoGPT's small-model batch" if small else "GPT-3's 0.5M-token batch") + " (sequences)",
        rules=(recipe_rule,),
    )
    d.add("optimizer", "AdamW", f"beta2 {nano['beta2'] if small else gpt3['beta2']}", recipe_rule, "adamw")
    lr = _sqrt_lr(
        d, base_lr, base_batch, batch, recipe_rule, "nanoGPT's small-model recipe" if small else f"GPT-3's recipe at this size ({preset})"
    )
    notes = ["generated text projects follow issue 12; these overrides use the image projects' config keys"]
    if batch < base_batch:
        notes.append(
            f"the recipe's batch is {base_batch} sequences; accumulate gradients over "
            f"{math.ceil(base_batch / batch)} steps to reach it (the projects do not accumulate yet)"
        )
    steps = max(1, math.ceil(train_tokens / (batch * seq)))
    epochs = max(1, round(train_tokens / tokens))
    d.add(
        "epochs",
        epochs,
        f"{train_tokens:,.0f} training tokens ({chin} per parameter, at most {passes} passes)",
        "chinchilla",
        "data-constrained",
    )
    d.add("warmup_fraction", round(min(0.1, 2000 / steps), 4), "2,000 warmup steps, at most 10% of the run", recipe_rule)
    d.add("schedule", "cosine", "cosine decay to 10% of the peak over the whole run", recipe_rule, "chinchilla")
    d.add("weight_decay", 0.1, "GPT-3's weight decay", "gpt3-recipe")
    d.add("label_smoothing", 0.0, "language models train on plain next-token cross-entropy", "gpt3-recipe")
    dropout = nano["dropout"] if tokens < chin * params else 0.0
    d.add(
        "dropout",
        dropout,
        "data-limited: regularise as nanoGPT does on small corpora"
        if dropout
        else "enough data for one pass: no dropout, as in compute-optimal runs",
        "nanogpt-small",
        "chinchilla",
    )
    overrides = {
        "optim.lr": lr,
        "optim.weight_decay": 0.1,
        "optim.warmup_fraction": round(min(0.1, 2000 / steps), 4),
        "optim.min_lr_ratio": 0.1,
        "optim.beta2": nano["beta2"] if small else gpt3["beta2"],
        "optim.label_smoothing": 0.0,
        "train.epochs": epochs,
        "train.batch_size": batch,
        "train.precision": "bfloat16" if precision == "bf16" else "float32",
        "model.dropout": dropout,
        "model.attention_dropout": dropout,
    }
    report = _report("gpt", config, opts, batch, precision, target, u, ckpt)
    return _result(d, task, "gpt", preset, config, overrides, report, epochs, steps, budget_hours, notes)


def overrides_toml(design: dict[str, Any]) -> str:
    """The design's ``overrides`` as a TOML file the generated project reads with ``--config``
    (or that ``dlzoo new`` can write as the project's config), each section's keys commented with
    the decisions' reasons."""
    reasons = {d["name"]: d["reason"] for d in design["decisions"]}
    names = {
        "optim.lr": "lr",
        "optim.weight_decay": "weight_decay",
        "optim.warmup_fraction": "warmup_fraction",
        "optim.label_smoothing": "label_smoothing",
        "train.epochs": "epochs",
        "train.batch_size": "batch_size",
        "train.precision": "precision",
        "data.max_shift": "augmentation",
        "model.dropout": "dropout",
    }
    sections: dict[str, list[str]] = {}
    for key, value in design["overrides"].items():
        section, name = key.split(".", 1)
        text = "true" if value is True else "false" if value is False else repr(value) if not isinstance(value, str) else f'"{value}"'
        why = reasons.get(names.get(key, ""), "")
        sections.setdefault(section, []).append(f"{name} = {text}" + (f"  # {why}" if why else ""))
    head = [f"# dlzoo recommend: {design['task']}, {design['arch']} {design['preset']}; rules in docs/engineer.md"]
    body = [line for section, lines in sections.items() for line in ["", f"[{section}]", *lines]]
    return "\n".join(head + body) + "\n"
