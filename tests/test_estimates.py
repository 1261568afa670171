"""zoo/estimates.py against measurements of the torch models.

FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over the forward pass and, separately, the
backward pass, with the math attention backend (the flash kernels are not counted the same way).

Activation memory: a ``TorchDispatchMode`` sees every tensor an aten op returns during the
forward pass and the loss (cross-entropy on the logits, as training computes it); it adds the
bytes of each new storage when it first appears and subtracts them when the storage is freed
(a weakref finalizer: torch keeps one Python object per live storage), so it tracks exactly the
live bytes of tensors allocated inside the window, like tracemalloc does for Python objects. The
peak of that count is compared with the estimate (activations, plus the 16-bit weight copies
that autocast makes inside the window under bf16). Parameters and the input batch exist before
the window and are not counted.
"""

from __future__ import annotations

import contextlib
import weakref

import pytest

torch = pytest.importorskip("torch", reason="the measurements run the torch models")
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_leaves  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from dlzoo.zoo.configs import get_config  # noqa: E402
from dlzoo.zoo.estimates import EstimateError, flops, max_batch_size, memory, step_time, workload  # noqa: E402
from dlzoo.zoo.spec import count_params  # noqa: E402
from dlzoo.zoo.torch import build  # noqa: E402

# Small configs that differ in what the estimate has to get right: dropout on and off, depth,
# width, sequence length, image size, block type, an MLM head.
CASES = [
    ("gpt", {}, 32),
    ("gpt", dict(dropout=0.0, attention_dropout=0.0), 64),
    ("gpt", dict(num_layers=4, hidden_size=128, mlp_dim=512), 48),
    ("bert", {}, 32),
    ("bert", dict(dropout=0.0, attention_dropout=0.0), 64),
    ("bert", dict(mlm_head=True, num_classes=0), 32),
    ("bert", dict(num_classes=3), 32),
    ("vit", {}, None),
    ("vit", dict(dropout=0.1, attention_dropout=0.1), None),
    ("vit", dict(image_size=64, patch_size=8), None),
    ("resnet", {}, 32),
    ("resnet", dict(block="basic", depths=(2, 2, 2), widths=(8, 16, 32)), 64),
    ("resnet", dict(depths=(1, 1, 1, 1), widths=(8, 8, 16, 16)), 64),
]
IDS = [f"{arch}-{i}" for i, (arch, _, _) in enumerate(CASES)]


def _options(arch: str, size: int | None) -> dict:
    if arch in ("gpt", "bert"):
        return {"seq_len": size}
    return {"image_size": size} if arch == "resnet" else {}


def _inputs(arch: str, config, batch: int, size: int | None) -> dict:
    g = torch.Generator().manual_seed(0)
    if arch in ("gpt", "bert"):
        return {"input_ids": torch.randint(0, config.vocab_size, (batch, size), generator=g)}
    side = config.image_size if arch == "vit" else size
    return {"pixel_values": torch.randn(batch, config.num_channels, side, side, generator=g)}


def _loss(outputs: dict) -> torch.Tensor:
    key = "logits" if "logits" in outputs else "mlm_logits" if "mlm_logits" in outputs else None
    if key is None:
        return sum(v.float().sum() for v in outputs.values())
    logits = outputs[key].reshape(-1, outputs[key].shape[-1]).float()
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long))


@pytest.mark.parametrize(("arch", "overrides", "size"), CASES, ids=IDS)
def test_flops_match_torch_flop_counter(arch, overrides, size):
    config = get_config(arch, "tiny", **overrides)
    model = build(arch, config).train()
    batch = 2
    inputs = _inputs(arch, config, batch, size)
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as forward:
            loss = _loss(model(**inputs))
        with FlopCounterMode(display=False) as backward:
            loss.backward()
    est = flops(arch, config, **_options(arch, size))
    assert est.forward == pytest.approx(forward.get_total_flops() / batch, rel=0.02)
    assert est.backward == pytest.approx(backward.get_total_flops() / batch, rel=0.02)
    assert est.train == est.forward + est.backward


def test_flops_per_token_and_the_6n_rule():
    # Kaplan et al. (2020): training costs about 6N FLOPs per token plus the attention term
    # 6 * 2 * n_layers * context * d; with the embeddings and LM head counted as we count them.
    config = get_config("gpt", "124M")
    f = flops("gpt", config)
    n = count_params("gpt", config) - config.vocab_size * config.hidden_size - config.context_length * config.hidden_size
    kaplan = 6 * n + 6 * 2 * config.num_layers * config.context_length * config.hidden_size
    head = 6 * config.vocab_size * config.hidden_size
    assert f.train_per_token == pytest.approx(kaplan + head, rel=0.02)
    assert flops("resnet", get_config("resnet", "50")).forward_per_token is None
    # the published ResNet-50 figure: 4.1 GMACs at 224 px
    assert flops("resnet", get_config("resnet", "50")).forward == pytest.approx(2 * 4.1e9, rel=0.02)


@pytest.mark.parametrize(("arch", "overrides", "size"), CASES, ids=IDS)
def test_parameter_counts_are_exact(arch, overrides, size):
    config = get_config(arch, "tiny", **overrides)
    assert memory(arch, config, **_options(arch, size)).params == sum(p.numel() for p in build(arch, config).parameters())


@pytest.mark.parametrize(
    ("arch", "preset", "count"),
    [
        ("bert", "base", 109_482_240),
        ("gpt", "124M", 124_439_808),
        ("resnet", "50", 25_557_032),
        ("resnet", "18", 11_689_512),
        ("vit", "B/16", 86_567_656),
    ],
)
def test_parameter_counts_match_published(arch, preset, count):
    # transformers' models with random init (PITFALLS.md)
    assert memory(arch, get_config(arch, preset)).params == count


class _LiveBytes(TorchDispatchMode):
    """Live bytes of the storages created by aten ops inside the mode, and their peak."""

    def __init__(self, existing):
        super().__init__()
        self.existing = {id(t.untyped_storage()) for t in existing}
        self.live: dict[int, int] = {}
        self.current = self.peak = 0

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = id(storage)  # stable while the storage lives: torch preserves its Python object
                if key not in self.live and key not in self.existing:
                    self.live[key] = storage.nbytes()
                    self.current += storage.nbytes()
                    weakref.finalize(storage, self._free, key)
        self.peak = max(self.peak, self.current)
        return out


def _measured_peak(arch, config, batch, size, *, bf16: bool) -> int:
    model = build(arch, config).train()
    inputs = _inputs(arch, config, batch, size)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with sdpa_kernel(SDPBackend.MATH), autocast:
        mode = _LiveBytes([*model.parameters(), *model.buffers(), *inputs.values()])
        with mode:
            _loss(model(**inputs))
    return mode.peak


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize(("arch", "overrides", "size"), CASES, ids=IDS)
def test_activation_memory_within_15_percent_of_measured_peak(arch, overrides, size, precision):
    config = get_config(arch, "tiny", **overrides)
    batch = 8
    measured = _measured_peak(arch, config, batch, size, bf16=precision == "bf16")
    est = memory(arch, config, batch_size=batch, precision=precision, kernels="reference", **_options(arch, size))
    assert est.activation_bytes + est.weight_copy_bytes == pytest.approx(measured, rel=0.15)


def test_checkpointing_and_precision_shrink_memory_and_grow_the_batch():
    vit = get_config("vit", "B/16")
    plain = memory("vit", vit, batch_size=8, kernels="fused")
    ckpt = memory("vit", vit, batch_size=8, kernels="fused", checkpointing=True)
    assert ckpt.activation_bytes < plain.activation_bytes / 4
    # GPT-2's fp32 logits and their log-softmax (1024 x 50257 x 8 bytes per example) are outside
    # the blocks: checkpointing cannot remove them
    config = get_config("gpt", "124M")
    plain = memory("gpt", config, batch_size=8, kernels="fused")
    ckpt = memory("gpt", config, batch_size=8, kernels="fused", checkpointing=True)
    bf16 = memory("gpt", config, batch_size=8, kernels="fused", precision="bf16")
    assert ckpt.activation_bytes_per_example > 1024 * 50257 * 8 > plain.activation_bytes_per_example / 3
    assert bf16.activation_bytes < plain.activation_bytes
    assert bf16.weight_copy_bytes > 0 and plain.weight_copy_bytes == 0
    assert plain.gradient_bytes + plain.optimizer_bytes == 12 * plain.params
    gib80 = 80 * 10**9
    b_plain = max_batch_size("gpt", config, device_bytes=gib80)
    b_ckpt = max_batch_size("gpt", config, device_bytes=gib80, checkpointing=True)
    assert 0 < b_plain < b_ckpt
    # the batch found fits and one more does not
    fits = memory("gpt", config, batch_size=b_plain, kernels="fused").total_bytes
    over = memory("gpt", config, batch_size=b_plain + 1, kernels="fused").total_bytes
    assert fits <= 0.9 * gib80 < over
    assert max_batch_size("gpt", get_config("gpt", "xl"), device_bytes=8 * 10**9) == 0


def test_step_time_is_flops_over_delivered_throughput():
    config = get_config("vit", "B/16")
    f = flops("vit", config)
    t = step_time("vit", config, batch_size=256, peak_flops=989e12, utilisation=0.4)
    assert t == pytest.approx(256 * f.train / (989e12 * 0.4))
    t_ckpt = step_time("vit", config, batch_size=256, peak_flops=989e12, utilisation=0.4, checkpointing=True)
    assert t_ckpt == pytest.approx(t * (f.train + f.forward) / f.train)


@pytest.mark.parametrize(
    ("arch", "kwargs", "message"),
    [
        ("vit", {"seq_len": 10}, "seq_len does not apply to vit"),
        ("resnet", {"seq_len": 10}, "seq_len does not apply to resnet"),
        ("gpt", {"image_size": 32}, "image_size does not apply to gpt"),
        ("bert", {"image_size": 32}, "image_size does not apply to bert"),
        ("vit", {"image_size": 64}, "ViT's image size is part of its config"),
        ("gpt", {"seq_len": 65}, "longer than the gpt context of 64"),
        ("bert", {"seq_len": 513}, "longer than the bert context of 512"),
        ("gpt", {"seq_len": 0}, "positive integer"),
    ],
)
def test_options_that_do_not_apply_are_refused(arch, kwargs, message):
    with pytest.raises(EstimateError, match=message):
        workload(arch, get_config(arch, "tiny" if arch != "bert" else "tiny"), **kwargs)
    with pytest.raises(EstimateError, match=message):
        memory(arch, get_config(arch, "tiny"), **kwargs)


def test_bad_precision_kernels_batch_and_utilisation_are_refused():
    config = get_config("gpt", "tiny")
    with pytest.raises(EstimateError, match="unknown precision 'fp8'"):
        memory("gpt", config, precision="fp8")
    with pytest.raises(EstimateError, match="unknown kernels"):
        memory("gpt", config, kernels="triton")
    with pytest.raises(EstimateError, match="batch_size must be a positive integer"):
        memory("gpt", config, batch_size=0)
    with pytest.raises(EstimateError, match="utilisation must be in"):
        step_time("gpt", config, batch_size=1, peak_flops=1e12, utilisation=1.5)
