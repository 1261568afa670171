"""The PyTorch models: shapes, parameter counts, the canonical mapping, initialisation, modes,
and the properties every implementation must have (causality, padding, batch-norm statistics).

Numerics against `transformers` live in conformance/ (`pytest conformance -k torch`).
"""

import math
import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch backend needs torch (pip install 'dlzoo[torch]')")

from dlzoo.zoo import canonical_spec, count_params, get_config, load  # noqa: E402
from dlzoo.zoo.configs import ZooError  # noqa: E402
from dlzoo.zoo.torch import MODELS, build  # noqa: E402
from dlzoo.zoo.torch.layers import MLP, Attention  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "gpt": get_config("gpt", "tiny"),
    "bert": get_config("bert", "tiny", vocab_size=512, max_positions=64, mlm_head=True, num_classes=3),
    "vit": get_config("vit", "tiny"),
    "resnet": get_config("resnet", "tiny"),
    "resnet-basic": get_config("resnet", "tiny", block="basic"),
}


def arch_of(case: str) -> str:
    return case.split("-")[0]


def inputs_for(case: str, seed: int = 0, batch: int = 2, length: int = 12) -> dict[str, np.ndarray]:
    rng, config = np.random.default_rng(seed), TINY[case]
    if arch_of(case) in ("gpt", "bert"):
        return {"input_ids": rng.integers(0, config.vocab_size, (batch, length)).astype(np.int32)}
    size = config.image_size if arch_of(case) == "vit" else 32
    return {"pixel_values": rng.normal(size=(batch, size, size, config.num_channels)).astype(np.float32)}


_handles = {}


def handle(case: str):
    """One tiny model per case for the whole module (tests that change weights build their own)."""
    if case not in _handles:
        _handles[case] = load(arch_of(case), "torch", TINY[case], seed=0)
    return _handles[case]


# --------------------------------------------------------------------------- shapes and counts

EXPECTED_SHAPES = {
    "gpt": {"logits": (2, 12, 256)},
    "bert": {"last_hidden_state": (2, 12, 128), "pooler_output": (2, 128), "mlm_logits": (2, 12, 512), "logits": (2, 3)},
    "vit": {"logits": (2, 10)},
    "resnet": {"logits": (2, 10)},
    "resnet-basic": {"logits": (2, 10)},
}


@pytest.mark.parametrize("case", list(TINY))
def test_tiny_output_shapes_and_dtypes(case):
    outputs = handle(case).apply(inputs_for(case))
    assert {k: v.shape for k, v in outputs.items()} == EXPECTED_SHAPES[case]
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in outputs.values())


def test_forward_features_and_head_compose():
    for case in ("vit", "resnet"):
        model = handle(case).native
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            assert torch.equal(model.forward_head(model.forward_features(x)), model(x)["logits"])
    features = handle("resnet").native.forward_features(torch.randn(1, 3, 32, 32))
    assert features.shape == (1, 64, 4, 4)  # two stages: /4 stem, /2 second stage; 16 * 4 channels


# Published counts (transformers' models): PITFALLS.md.
PUBLISHED = [
    ("bert", "base", 109_482_240),
    ("gpt", "124M", 124_439_808),
    ("vit", "B/16", 86_567_656),
    ("resnet", "50", 25_557_032),
    ("resnet", "18", 11_689_512),
]


@pytest.mark.parametrize("arch,preset,published", PUBLISHED)
def test_full_size_parameter_counts(arch, preset, published):
    config = get_config(arch, preset)
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = MODELS[arch](config)
    # parameters() lists a tied weight once, as published counts do.
    assert sum(p.numel() for p in model.parameters()) == count_params(arch, config) == published


@pytest.mark.parametrize("preset", ["tiny", "18", "50"])
def test_resnet_blocks_follow_the_config_layout(preset):
    """Every block's channels, stride (on the 3x3 conv: v1.5) and projection shortcut are the
    ones ResNetConfig.layout() states."""
    config = get_config("resnet", preset)
    with torch.device("meta"):
        model = MODELS["resnet"](config)
    assert [len(stage.blocks) for stage in model.stages] == [len(s) for s in config.layout()]
    for stage, stage_layout in zip(model.stages, config.layout()):
        for block, (n_in, width, n_out, stride) in zip(stage.blocks, stage_layout):
            convs = [block.conv1, block.conv2] + ([block.conv3] if config.block == "bottleneck" else [])
            assert convs[0].in_channels == n_in and convs[-1].out_channels == n_out
            assert all(c.out_channels == width for c in convs[:-1])
            strided = block.conv2 if config.block == "bottleneck" else block.conv1
            assert [c.stride for c in convs] == [(stride, stride) if c is strided else (1, 1) for c in convs]
            if stride != 1 or n_in != n_out:
                assert block.downsample.conv.stride == (stride, stride)
                assert (block.downsample.conv.in_channels, block.downsample.conv.out_channels) == (n_in, n_out)
            else:
                assert block.downsample is None


# --------------------------------------------------------------------------- canonical mapping


@pytest.mark.parametrize("case", list(TINY))
def test_state_dict_is_the_canonical_spec(case):
    h = handle(case)
    spec = canonical_spec(h.arch, h.config)
    tensors = h.state_dict()
    assert set(tensors) == set(spec)
    assert {k: v.shape for k, v in tensors.items()} == {k: s.shape for k, s in spec.items()}
    assert all(v.dtype == np.float32 for v in tensors.values())


@pytest.mark.parametrize("case", list(TINY))
def test_canonical_round_trip_is_bit_exact(case, tmp_path):
    arch, config = arch_of(case), TINY[case]
    rng = np.random.default_rng(3)
    # Random values everywhere (running variances positive), so a transposed square kernel or a
    # swapped q/k/v would show.
    tensors = {
        k: (rng.uniform(0.5, 2.0, s.shape) if k.endswith(".var") else rng.normal(size=s.shape)).astype(np.float32)
        for k, s in canonical_spec(arch, config).items()
    }
    h = load(arch, "torch", config, weights=tensors, seed=5)
    back = h.state_dict()
    assert all(np.array_equal(back[k], tensors[k]) for k in tensors)
    back[next(iter(back))][...] = 0  # the state dict is a copy, not a view of the parameters
    assert np.array_equal(h.state_dict()[next(iter(back))], tensors[next(iter(back))])
    reloaded = load(arch, "torch", weights=h.save(tmp_path / "w.safetensors"))
    assert all(np.array_equal(v, tensors[k]) for k, v in reloaded.state_dict().items())
    x = inputs_for(case)
    assert all(np.array_equal(reloaded.apply(x)[k], v) for k, v in h.apply(x).items())


def test_linear_and_conv_layouts():
    """kernel[i, o] multiplies input i into output o; conv kernels are HWIO."""
    h = handle("vit")
    tensors = h.state_dict()
    model = h.native
    assert np.array_equal(tensors["blocks.0.attn.qkv.kernel"], model.blocks[0].attn.qkv.weight.detach().numpy().T)
    assert np.array_equal(tensors["patch_embed.kernel"], model.patch_embed.weight.detach().numpy().transpose(2, 3, 1, 0))
    assert tensors["patch_embed.kernel"].shape == (8, 8, 3, 64)


# --------------------------------------------------------------------------- initialisation


def test_build_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = load("gpt", "torch", "tiny", seed=7).state_dict()
    assert torch.equal(torch.rand(3), expected_next)
    b = load("gpt", "torch", "tiny", seed=7).state_dict()
    c = load("gpt", "torch", "tiny", seed=8).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["wte.embedding"], c["wte.embedding"])


def test_gpt_init_scales_residual_projections():
    config = get_config("gpt", "tiny", hidden_size=256, num_layers=8, num_heads=4, mlp_dim=1024)
    model = build("gpt", config, seed=0)
    residual_std = 0.02 / math.sqrt(2 * config.num_layers)
    out = torch.cat([torch.cat([b.attn.out.weight.flatten(), b.mlp.out.weight.flatten()]) for b in model.blocks])
    qkv = torch.cat([b.attn.qkv.weight.flatten() for b in model.blocks])
    assert out.std().item() == pytest.approx(residual_std, rel=0.02)
    assert qkv.std().item() == pytest.approx(0.02, rel=0.02)
    assert model.wte.weight.std().item() == pytest.approx(0.02, rel=0.02)
    assert all(torch.count_nonzero(b.attn.qkv.bias) == 0 for b in model.blocks)


@pytest.mark.parametrize("arch", ["bert", "vit"])
def test_truncated_normal_init(arch):
    config = get_config(arch, "tiny", hidden_size=256, num_heads=4, mlp_dim=1024, **({"vocab_size": 512} if arch == "bert" else {}))
    model = build(arch, config, seed=0)
    w = torch.cat([b.mlp.fc.weight.flatten() for b in model.blocks])
    assert w.std().item() == pytest.approx(0.02, rel=0.02)
    # Truncated at two standard deviations of the underlying normal (std 0.02 / 0.8796).
    assert w.abs().max().item() <= 2 * 0.02 / 0.8796 + 1e-7
    assert w.abs().max().item() > 0.04


def test_resnet_init_is_kaiming_fan_out():
    model = build("resnet", get_config("resnet", "18"), seed=0)
    conv = model.stages[3].blocks[1].conv1  # 3x3, 512 -> 512
    fan_out = 3 * 3 * 512
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / fan_out), rel=0.02)
    bn = model.stages[3].blocks[1].bn2
    assert torch.equal(bn.weight, torch.ones(512)) and torch.equal(bn.running_var, torch.ones(512))


def test_zero_init_residual_makes_blocks_identities():
    config = get_config("resnet", "tiny", zero_init_residual=True)
    plain, zeroed = build("resnet", TINY["resnet"], seed=0), build("resnet", config, seed=0)
    for stage in zeroed.stages:
        for block in stage.blocks:
            assert torch.count_nonzero(block.bn3.weight) == 0
            assert torch.count_nonzero(block.bn1.weight) == block.bn1.num_features
    block = zeroed.stages[1].blocks[1]  # no projection: 64 -> 64
    assert block.downsample is None
    x = torch.relu(torch.randn(2, 64, 4, 4))
    with torch.no_grad():
        assert torch.equal(block(x), x)
        assert not torch.equal(plain.stages[1].blocks[1](x), x)


# --------------------------------------------------------------------------- modes and properties


def test_dropout_only_in_train_mode_and_seeded():
    h = load("gpt", "torch", "tiny", dropout=0.2, attention_dropout=0.2)
    x = inputs_for("gpt")
    eval_a, eval_b = h.apply(x)["logits"], h.apply(x)["logits"]
    train_a, train_b = h.apply(x, train=True, seed=1)["logits"], h.apply(x, train=True, seed=1)["logits"]
    train_c = h.apply(x, train=True, seed=2)["logits"]
    assert np.array_equal(eval_a, eval_b)
    assert np.array_equal(train_a, train_b)
    assert not np.allclose(train_a, eval_a, atol=1e-3) and not np.allclose(train_a, train_c, atol=1e-3)
    assert not h.native.training  # back in eval mode after a training call


def test_batch_norm_train_mode_updates_running_statistics():
    h = load("resnet", "torch", "tiny")
    x = inputs_for("resnet")
    before = h.state_dict()
    h.vjp(x, {"logits": np.ones((2, 10), np.float32)}, train=True)
    assert all(np.array_equal(v, before[k]) for k, v in h.state_dict().items())  # vjp changes nothing
    train_out = h.apply(x, train=True)["logits"]
    after = h.state_dict()
    # torch convention: running = (1 - m) * running + m * batch, unbiased variance.
    batch = torch.from_numpy(x["pixel_values"]).permute(0, 3, 1, 2)
    with torch.no_grad():
        stem = h.native.stem.conv(batch)
    m = h.config.bn_momentum
    np.testing.assert_allclose(after["stem.bn.mean"], m * stem.mean((0, 2, 3)).numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(after["stem.bn.var"], (1 - m) + m * stem.var((0, 2, 3), unbiased=True).numpy(), rtol=1e-5)
    assert not np.allclose(train_out, h.apply(x)["logits"], atol=1e-4)


@pytest.mark.parametrize("position", [0, 5, 10])
def test_gpt_never_sees_the_future(position):
    h = handle("gpt")
    x = inputs_for("gpt")
    changed = {"input_ids": x["input_ids"].copy()}
    changed["input_ids"][:, position + 1 :] = (changed["input_ids"][:, position + 1 :] + 1) % 256
    a, b = h.apply(x)["logits"], h.apply(changed)["logits"]
    assert np.array_equal(a[:, : position + 1], b[:, : position + 1])
    assert not np.allclose(a[:, position + 1 :], b[:, position + 1 :])


def test_shared_attention_causal_flag_equals_a_causal_bias():
    """GPT's is_causal and BERT's additive bias are two doors into the same attention."""
    attn = Attention(16, 4, dropout=0.0, attention_dropout=0.0).eval()
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(0))
    future = torch.triu(torch.ones(5, 5, dtype=torch.bool), diagonal=1)
    bias = torch.zeros(5, 5).masked_fill(future, torch.finfo(torch.float32).min)[None, None]  # (1, 1, T, T)
    with torch.no_grad():
        causal, biased, full = attn(x, is_causal=True), attn(x, attn_bias=bias), attn(x)
        first_alone = attn(x[:, :1])  # (B, 1, C)
    torch.testing.assert_close(causal, biased, atol=1e-6, rtol=0)
    torch.testing.assert_close(causal[:, :1], first_alone, atol=1e-6, rtol=0)  # it sees only itself
    assert not torch.allclose(causal, full, atol=1e-4)


def test_gelu_flavour_is_chosen_per_model():
    assert {b.mlp.approximate for b in handle("gpt").native.blocks} == {"tanh"}  # GPT-2's "gelu_new"
    assert {b.mlp.approximate for case in ("bert", "vit") for b in handle(case).native.blocks} == {"none"}
    with pytest.raises(ZooError, match="approximate"):
        MLP(16, 64, approximate="erf", dropout=0.0)


def test_bert_padding_is_invisible_and_type_ids_default_to_zero():
    h = handle("bert")
    x = inputs_for("bert")
    mask = np.ones_like(x["input_ids"])
    mask[0, 7:], mask[1, 3:] = 0, 0
    noise = np.where(mask == 1, x["input_ids"], (x["input_ids"] + 17) % 512).astype(np.int32)
    a = h.apply({**x, "attention_mask": mask})
    b = h.apply({"input_ids": noise, "attention_mask": mask})
    for row, n in ((0, 7), (1, 3)):
        np.testing.assert_allclose(a["last_hidden_state"][row, :n], b["last_hidden_state"][row, :n], atol=1e-6)
    np.testing.assert_allclose(a["pooler_output"], b["pooler_output"], atol=1e-6)
    np.testing.assert_allclose(a["logits"], b["logits"], atol=1e-6)
    zeros = h.apply({**x, "token_type_ids": np.zeros_like(x["input_ids"])})
    assert all(np.array_equal(zeros[k], v) for k, v in h.apply(x).items())


def test_batch_rows_are_independent():
    for case in ("gpt", "vit", "resnet"):
        x = inputs_for(case, batch=3)
        key = next(iter(x))
        other = {key: x[key].copy()}
        other[key][1:] = inputs_for(case, seed=9, batch=3)[key][1:]
        a, b = handle(case).apply(x), handle(case).apply(other)
        np.testing.assert_allclose(a["logits"][0], b["logits"][0], atol=1e-6)


def test_apply_converts_nhwc_to_torch_nchw():
    h = handle("vit")
    x = inputs_for("vit")
    with torch.no_grad():
        native = h.native(torch.from_numpy(x["pixel_values"]).permute(0, 3, 1, 2))["logits"].numpy()
    assert np.array_equal(h.apply(x)["logits"], native)


def test_bfloat16_compute_returns_float32_close_to_float32():
    for case in ("gpt", "bert", "vit", "resnet"):
        fp32 = handle(case)
        bf16 = load(arch_of(case), "torch", TINY[case], compute_dtype="bfloat16")
        x = inputs_for(case)
        if case == "bert":
            x["attention_mask"] = np.ones_like(x["input_ids"])
            x["attention_mask"][0, 5:] = 0
        want, got = fp32.apply(x), bf16.apply(x)
        assert all(p.dtype == torch.float32 for p in bf16.native.parameters())  # autocast, fp32 weights
        for k, v in want.items():
            assert got[k].dtype == np.float32
            scale = float(np.abs(v).max())
            assert 0 < np.abs(got[k] - v).max() <= 3e-2 * scale, (case, k)


# --------------------------------------------------------------------------- gradients and AdamW


def test_vjp_returns_canonical_gradients_of_every_trainable_tensor():
    h = handle("bert")
    x = inputs_for("bert")
    outputs = h.apply(x)
    rng = np.random.default_rng(1)
    cots = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in outputs.items()}
    grads = h.vjp(x, cots)
    spec = canonical_spec("bert", h.config)
    assert set(grads) == {k for k, s in spec.items() if s.trainable}
    assert all(grads[k].shape == spec[k].shape for k in grads)
    # Directional derivative along the classifier kernel equals the finite difference.
    direction = rng.normal(size=spec["classifier.kernel"].shape).astype(np.float32)
    tensors, eps = h.state_dict(), 1e-2
    shifted = load("bert", "torch", h.config, weights={**tensors, "classifier.kernel": tensors["classifier.kernel"] + eps * direction})
    objective = sum(float((shifted.apply(x)[k].astype(np.float64) - outputs[k]).ravel() @ cots[k].ravel()) for k in outputs)
    assert objective / eps == pytest.approx(float((grads["classifier.kernel"] * direction).sum()), rel=1e-3)


def test_adamw_step_decays_decoupled_and_moves_against_the_gradient():
    h = load("gpt", "torch", "tiny")
    x = inputs_for("gpt")
    before = h.state_dict()
    zero = {"logits": np.zeros((2, 12, 256), np.float32)}
    lr, wd = 1e-2, 0.1
    h.adamw_step(x, zero, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    after = h.state_dict()
    # Zero gradient: only the decoupled decay acts, p <- p * (1 - lr * wd).
    np.testing.assert_allclose(after["wte.embedding"], before["wte.embedding"] * (1 - lr * wd), rtol=1e-6)
    cots = {"logits": np.random.default_rng(2).normal(size=(2, 12, 256)).astype(np.float32)}
    grads = h.vjp(x, cots)
    h.adamw_step(x, cots, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    # First Adam step: each coordinate with a clear gradient moves by lr against its sign.
    delta = h.state_dict()["ln_f.bias"] - after["ln_f.bias"]
    clear = np.abs(grads["ln_f.bias"]) > 1e-3
    np.testing.assert_allclose(delta[clear], -lr * np.sign(grads["ln_f.bias"][clear]), rtol=1e-3)


# --------------------------------------------------------------------------- code conventions


def test_theory_markers_use_known_ids():
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split("## Theory markers", 1)[1].split("```")[1]
    known = set(block.split())
    used = set()
    for path in (ROOT / "zoo" / "torch").glob("*.py"):
        used |= set(re.findall(r"# theory: ([\w-]+)", path.read_text()))
    assert used and used <= known, sorted(used - known)
