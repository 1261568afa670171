"""The checkpoints people actually have, in every framework, against their reference implementation:
ViT at other resolutions (transformers' interpolate_pos_encoding), fine-tuning starts (backbones,
new heads), torchvision- and timm-named state dicts (torchvision / timm), wrapper prefixes, and
GELU spellings (transformers)."""

import json

import numpy as np
import pytest

from dlzoo.zoo import from_pretrained, hub, load

from .harness import CASES, FRAMEWORKS, _perturb, _torch_in, assert_outputs_close, framework_id
from .vision_refs import vision_references

torch = pytest.importorskip("torch", reason="the references are torch models")
transformers = pytest.importorskip("transformers", reason="the ViT/BERT/ResNet references are transformers models")


def _images(height: int, width: int, seed: int = 0, batch: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, height, width, 3)).astype(np.float32)


def _run(model, pixel_values, **kwargs) -> np.ndarray:
    """Logits of a transformers, torchvision or timm model for NHWC numpy images."""
    images = _torch_in({"pixel_values": pixel_values})["pixel_values"]
    with torch.no_grad():
        if isinstance(model, transformers.PreTrainedModel):
            return model(pixel_values=images, **kwargs).logits.numpy()
        return model(images).numpy()


# --------------------------------------------------------------------------- ViT at other resolutions


@pytest.mark.parametrize("framework", FRAMEWORKS, ids=framework_id)
@pytest.mark.parametrize("size", [(48, 64), (24, 24), (40, 16)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_vit_interpolate_pos_encoding_matches_transformers(size, framework, references, handle):
    """Apply-time resizing: the tiny ViT trained at 32x32 (a 4x4 grid) on 48x64, 24x24, 40x16."""
    _, model = references("vit")
    images = _images(*size)
    want = _run(model, images, interpolate_pos_encoding=True)
    got = handle("vit", framework).apply({"pixel_values": images, "interpolate_pos_encoding": True})
    assert_outputs_close(got, {"logits": want}, what=f"{framework} vit {size}")


@pytest.mark.parametrize("framework", FRAMEWORKS, ids=framework_id)
def test_vit_loaded_at_another_image_size_resizes_once(framework, references):
    folder, model = references("vit")
    h = from_pretrained(folder, framework=framework, image_size=48)
    assert h.config.image_size == 48
    assert h.load_report.resized == {"pos_embed": [[1, 17, 32], [1, 37, 32]]}
    assert "resized pos_embed [1, 17, 32] -> [1, 37, 32]" in h.load_report.summary()
    images = _images(48, 48, seed=1)
    want = _run(model, images, interpolate_pos_encoding=True)
    assert_outputs_close(h.apply({"pixel_values": images}), {"logits": want}, what=f"{framework} vit@48")


def test_vit_without_the_flag_refuses_another_size(handle):
    with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
        handle("vit", "torch").apply({"pixel_values": _images(48, 48)})


# --------------------------------------------------------------------------- fine-tuning starts


def _hf_backbone(kind: str, folder):
    """A transformers backbone without any head, saved in the published layout."""
    if kind == "vit":
        config = transformers.ViTConfig(
            image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37
        )
        model = _perturb(transformers.ViTModel(config, add_pooling_layer=False))
    elif kind == "bert":
        config = transformers.BertConfig(
            vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37, max_position_embeddings=64
        )
        model = _perturb(transformers.BertModel(config))
    else:
        config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[16, 32], depths=[1, 2], layer_type="bottleneck")
        model = _perturb(transformers.ResNetModel(config))
    model.save_pretrained(folder)
    return model


def _features(kind: str, model, inputs) -> dict:
    with torch.no_grad():
        out = model(**_torch_in(inputs))
    if kind == "vit":
        return {"features": out.last_hidden_state[:, 0].numpy()}
    if kind == "bert":
        return {"features": out.pooler_output.numpy(), "last_hidden_state": out.last_hidden_state.numpy()}
    return {"features": out.pooler_output.flatten(1).numpy()}


@pytest.mark.parametrize("framework", FRAMEWORKS, ids=framework_id)
@pytest.mark.parametrize("kind", ["vit", "bert", "resnet"])
def test_backbone_checkpoint_gets_a_fresh_seeded_head(kind, framework, tmp_path):
    """ViTModel / BertModel / ResNetModel + num_classes=3: the backbone equals transformers', the
    head is the architecture's init drawn from the seed, and the report says which is which."""
    model = _hf_backbone(kind, tmp_path / kind)
    h = from_pretrained(tmp_path / kind, framework=framework, num_classes=3, seed=7)
    report = h.load_report
    head = "classifier" if kind == "bert" else "head"
    assert sorted(report.initialised) == [f"{head}.bias", f"{head}.kernel"]
    assert set(report.loaded) | set(report.initialised) == set(h.state_dict())
    inputs = CASES["bert"].inputs(0) if kind == "bert" else {"pixel_values": _images(*(32, 32) if kind == "vit" else (40, 40))}
    want = _features(kind, model, inputs)
    weights = h.state_dict()
    want["logits"] = want.pop("features") @ weights[f"{head}.kernel"] + weights[f"{head}.bias"]
    got = h.apply(inputs)
    got = {k: got[k] for k in want}
    assert_outputs_close(got, want, what=f"{framework} {kind} backbone")
    # Seeded and framework-independent: the same seed gives the same head, another seed another.
    torch_weights = from_pretrained(tmp_path / kind, framework="torch", num_classes=3, seed=7).state_dict()
    np.testing.assert_array_equal(weights[f"{head}.kernel"], torch_weights[f"{head}.kernel"])
    other = from_pretrained(tmp_path / kind, framework="torch", num_classes=3, seed=8).state_dict()
    assert not np.array_equal(other[f"{head}.kernel"], torch_weights[f"{head}.kernel"])


def test_fresh_heads_follow_the_architectures_init(tmp_path):
    _hf_backbone("vit", tmp_path / "vit")
    _hf_backbone("resnet", tmp_path / "resnet")
    vit = from_pretrained(tmp_path / "vit", num_classes=500).state_dict()
    resnet = from_pretrained(tmp_path / "resnet", num_classes=500).state_dict()
    # ViT: normal(0.02) truncated at 2 std, zero bias (dlzoo's and transformers' ViT init)
    assert abs(vit["head.kernel"].std() - 0.02) < 1e-3 and np.abs(vit["head.kernel"]).max() <= 0.04 / 0.8796 + 1e-6
    assert not vit["head.bias"].any()
    # ResNet: torch's nn.Linear default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for kernel and bias
    bound = 1 / np.sqrt(resnet["head.kernel"].shape[0])  # fan_in: the last stage's 32 channels
    assert np.abs(resnet["head.kernel"]).max() <= bound and np.abs(resnet["head.kernel"]).max() > 0.9 * bound
    assert np.abs(resnet["head.bias"]).max() <= bound and resnet["head.bias"].any()


@pytest.mark.parametrize("case", ["vit", "resnet", "bert-cls"])
def test_another_number_of_classes_replaces_the_head(case, references):
    folder, model = references(case)
    h = from_pretrained(folder, num_classes=4)
    head = "classifier" if case == "bert-cls" else "head"
    assert sorted(h.load_report.initialised) == [f"{head}.bias", f"{head}.kernel"]
    published = {"vit": "classifier.weight", "resnet": "classifier.1.weight", "bert-cls": "classifier.weight"}[case]
    assert published in h.load_report.ignored
    assert h.apply(CASES[case].inputs(0))["logits"].shape[1] == 4


def test_classification_start_from_a_pretraining_checkpoint(references):
    """BertForPreTraining + num_classes: the MLM head is dropped (as BertForSequenceClassification
    drops it), the pooler is loaded, the classifier is fresh."""
    folder, _ = references("bert")
    h = from_pretrained(folder, num_classes=2)
    assert not h.config.mlm_head and h.config.pooler
    assert sorted(h.load_report.initialised) == ["classifier.bias", "classifier.kernel"]
    assert "cls.predictions.transform.dense.weight" in h.load_report.ignored


def test_num_labels_is_accepted_with_a_deprecation_message(references):
    folder, _ = references("vit")
    with pytest.warns(FutureWarning, match="num_labels is deprecated in dlzoo; use num_classes"):
        h = from_pretrained(folder, num_labels=3)
    assert h.config.num_classes == 3


def test_backbone_without_num_classes_says_what_to_pass(tmp_path):
    _hf_backbone("vit", tmp_path / "vit")
    with pytest.raises(hub.HubError, match=r"bare ViTModel\): pass num_classes=N") as info:
        from_pretrained(tmp_path / "vit")
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- torchvision / timm names


@pytest.fixture(scope="module")
def vision(tmp_path_factory):
    """torchvision's and timm's models with perturbed batch-norm statistics and affine parameters
    (their own init elsewhere, which keeps activations of order one), saved as .pth and .safetensors."""
    tv, timm = vision_references()
    from safetensors.torch import save_file
    from timm.models.vision_transformer import VisionTransformer
    from torchvision.models.resnet import Bottleneck, ResNet

    folder = tmp_path_factory.mktemp("vision")
    torch.manual_seed(0)
    models = {
        "torchvision-resnet18": tv.models.resnet18(num_classes=5),
        "torchvision-bottleneck": ResNet(Bottleneck, [1, 2, 1, 1], num_classes=7),
        "timm-resnet": timm.create_model("resnet26", num_classes=6),
        "timm-vit": VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0, num_classes=10),
        "timm-vit-ti": timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=3),
    }
    gen = torch.Generator().manual_seed(1)
    built = {}
    for name, model in models.items():
        with torch.no_grad():
            for key, tensor in model.state_dict().items():
                if key.endswith("running_var"):
                    tensor.copy_(0.5 + torch.rand(tensor.shape, generator=gen))
                elif key.endswith(("running_mean", "bias")) or (tensor.ndim == 1 and key.endswith("weight")):
                    tensor.add_(0.2 * torch.randn(tensor.shape, generator=gen))
                elif key in ("cls_token", "pos_embed"):
                    tensor.add_(0.1 * torch.randn(tensor.shape, generator=gen))
        model.eval()
        torch.save(model.state_dict(), folder / f"{name}.pth")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / f"{name}.safetensors")
        built[name] = model
    return folder, built


VISION = {"torchvision-resnet18": 40, "torchvision-bottleneck": 40, "timm-resnet": 40, "timm-vit": 32, "timm-vit-ti": 32}


@pytest.mark.parametrize("framework", FRAMEWORKS, ids=framework_id)
@pytest.mark.parametrize("name", list(VISION))
def test_torchvision_and_timm_state_dicts_match_their_models(name, framework, vision):
    folder, models = vision
    images = _images(VISION[name], VISION[name], seed=3)
    want = _run(models[name], images)
    extra = {"num_heads": 4} if name == "timm-vit" else {}  # width 32 names no ViT size
    h = from_pretrained(folder / f"{name}.pth", framework=framework, **extra)
    assert h.load_report.layout == ("timm" if "vit" in name else "torchvision")
    assert_outputs_close(h.apply({"pixel_values": images}), {"logits": want}, what=f"{framework} {name}")


@pytest.mark.parametrize("name", list(VISION))
def test_safetensors_and_pth_load_the_same(name, vision):
    folder, _ = vision
    extra = {"num_heads": 4} if name == "timm-vit" else {}
    a = from_pretrained(folder / f"{name}.pth", **extra).state_dict()
    b = from_pretrained(folder / f"{name}.safetensors", **extra).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_inferred_configs(vision):
    folder, _ = vision
    resnet = from_pretrained(folder / "torchvision-bottleneck.pth")
    assert (resnet.config.block, resnet.config.depths, resnet.config.widths, resnet.config.num_classes) == (
        "bottleneck",
        (1, 2, 1, 1),
        (64, 128, 256, 512),
        7,
    )
    vit = from_pretrained(folder / "timm-vit-ti.pth")
    assert (vit.config.num_heads, vit.config.hidden_size, vit.config.layer_norm_eps, vit.config.image_size) == (3, 192, 1e-6, 32)
    assert any("ViT-Ti" in note for note in vit.load_report.notes)
    with pytest.raises(hub.HubError, match="does not match resnet preset '50'"):
        from_pretrained(folder / "torchvision-resnet18.pth", preset="50")
    assert from_pretrained(folder / "torchvision-resnet18.pth", preset="18").config.depths == (2, 2, 2, 2)


def test_torchvision_file_beside_a_transformers_config_is_read_as_torchvision(vision, tmp_path):
    folder, models = vision
    hf = transformers.ResNetConfig(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2], layer_type="basic")
    hf.save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes((folder / "torchvision-resnet18.pth").read_bytes())
    h = from_pretrained(tmp_path)
    assert h.load_report.layout == "torchvision" and "config.json ('resnet') ignored" in h.load_report.summary()
    images = _images(40, 40, seed=4)
    assert_outputs_close(h.apply({"pixel_values": images}), {"logits": _run(models["torchvision-resnet18"], images)})


def test_timm_vit_at_another_image_size_and_a_new_head(vision):
    """Resized at load and given a new head: the backbone still equals timm's features, run at
    the new size with timm's own position-embedding resampling (bicubic, the same kernel)."""
    folder, models = vision
    model = models["timm-vit-ti"]
    h = from_pretrained(folder / "timm-vit-ti.safetensors", image_size=48, num_classes=2)
    assert h.load_report.resized["pos_embed"] == [[1, 5, 192], [1, 10, 192]]
    assert sorted(h.load_report.initialised) == ["head.bias", "head.kernel"]
    from timm.layers import resample_abs_pos_embed

    images = _images(48, 48, seed=5)
    with torch.no_grad():
        x = model.patch_embed.proj(_torch_in({"pixel_values": images})["pixel_values"]).flatten(2).transpose(1, 2)
        pos = resample_abs_pos_embed(model.pos_embed, (3, 3), num_prefix_tokens=1, antialias=False)
        x = torch.cat([model.cls_token.expand(2, -1, -1), x], 1) + pos
        features = model.norm(model.blocks(x))[:, 0].numpy()
    weights = h.state_dict()
    want = features @ weights["head.kernel"] + weights["head.bias"]
    assert_outputs_close(h.apply({"pixel_values": images}), {"logits": want})


# --------------------------------------------------------------------------- wrapper prefixes


@pytest.mark.parametrize("wrap", ["compile", "ddp", "ddp+compile"])
def test_wrapper_prefixes_are_stripped_and_reported(wrap, references, tmp_path):
    folder, model = references("resnet")
    state = (torch.compile(model) if "compile" in wrap else model).state_dict()  # compile is lazy: no compilation
    if "ddp" in wrap:  # DistributedDataParallel.state_dict() prefixes "module." (no process group needed to say so)
        state = {f"module.{k}": v for k, v in state.items()}
    torch.save(state, tmp_path / "model.pth")
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    h = from_pretrained(tmp_path)
    assert (
        h.load_report.stripped_prefixes == {"compile": ["_orig_mod."], "ddp": ["module."], "ddp+compile": ["module.", "_orig_mod."]}[wrap]
    )
    inputs = CASES["resnet"].inputs(0)
    assert_outputs_close(h.apply(inputs), {"logits": _run(model, inputs["pixel_values"])})


def test_an_unknown_prefix_is_named_instead_of_listing_every_key(references, tmp_path):
    folder, model = references("resnet")
    torch.save({f"model.backbone.{k}": v for k, v in model.state_dict().items()}, tmp_path / "model.pth")
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(hub.HubError, match="start with 'model.backbone.'") as info:
        from_pretrained(tmp_path)
    message = str(info.value)
    assert "\n" not in message and len(message) < 1200 and message.count("model.backbone.") < 10


# --------------------------------------------------------------------------- GELU spellings


def _gpt2_with(activation: str, folder):
    config = transformers.GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64, activation_function=activation)
    model = _perturb(transformers.GPT2LMHeadModel(config))
    model.save_pretrained(folder)
    return model


@pytest.mark.parametrize("activation", ["gelu_new", "gelu_pytorch_tanh", "gelu_python_tanh", "gelu_fast", "gelu_accurate"])
def test_tanh_gelu_spellings_load_and_match_transformers(activation, tmp_path):
    model = _gpt2_with(activation, tmp_path)
    inputs = CASES["gpt"].inputs(0)
    assert_outputs_close(from_pretrained(tmp_path).apply(inputs), CASES["gpt"].reference(model, inputs), what=activation)


@pytest.mark.parametrize("activation", ["gelu", "gelu_python"])
def test_exact_gelu_spellings_load_and_match_transformers(activation, tmp_path):
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        num_labels=10,
        hidden_act=activation,
    )
    model = _perturb(transformers.ViTForImageClassification(config))
    model.save_pretrained(tmp_path)
    images = _images(32, 32)
    assert_outputs_close(from_pretrained(tmp_path).apply({"pixel_values": images}), {"logits": _run(model, images)})


def _other_form(arch: str):
    """A transformers model of ``arch`` built with the GELU form its architecture does not use."""
    if arch == "bert":
        config = transformers.BertConfig(
            vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, hidden_act="gelu_new"
        )
        return _perturb(transformers.BertForPreTraining(config), seed=5)
    if arch == "vit":
        config = transformers.ViTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            num_labels=10,
            hidden_act="gelu_pytorch_tanh",
        )
        return _perturb(transformers.ViTForImageClassification(config), seed=5)
    config = transformers.GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64, activation_function="gelu")
    return _perturb(transformers.GPT2LMHeadModel(config), seed=5)


@pytest.fixture(scope="module")
def other_form(tmp_path_factory):
    """arch -> (folder, transformers model) with the other GELU form, built once per module."""
    built = {}

    def get(arch: str):
        if arch not in built:
            folder = tmp_path_factory.mktemp(f"{arch}-other-gelu")
            model = _other_form(arch)
            model.save_pretrained(folder)
            built[arch] = (folder, model)
        return built[arch]

    return get


@pytest.mark.parametrize("framework", FRAMEWORKS, ids=framework_id)
@pytest.mark.parametrize("arch,form", [("bert", "tanh"), ("vit", "tanh"), ("gpt", "exact")])
def test_the_other_gelu_form_loads_into_the_config_and_matches_transformers(arch, form, framework, other_form, tmp_path):
    """BERT with gelu_new, ViT with gelu_pytorch_tanh, GPT-2 with the exact gelu: the form is read
    into the config's ``gelu`` field, every framework computes it, and exporting writes it back."""
    folder, model = other_form(arch)
    h = from_pretrained(folder, framework=framework)
    assert h.config.gelu == form
    inputs = CASES[arch].inputs(0)
    want = CASES[arch].reference(model, inputs)
    assert_outputs_close(h.apply(inputs), want, what=f"{arch} {form} GELU in {framework}")
    exported = hub.config_to_hf(arch, h.config)
    key = "activation_function" if arch == "gpt" else "hidden_act"
    assert hub.GELU_FORMS[exported[key]] == form


@pytest.mark.parametrize("arch", ["bert", "vit", "gpt"])
def test_the_default_gelu_form_would_not_match(arch, other_form):
    """The two forms differ by far more than the tolerance at these weights: the test above can fail."""
    folder, model = other_form(arch)
    _, config, tensors, _ = hub.load_checkpoint(folder)
    default = "tanh" if arch == "gpt" else "exact"
    inputs = CASES[arch].inputs(0)
    got = load(arch, "torch", config=config.replace(gelu=default), weights=tensors).apply(inputs)
    want = CASES[arch].reference(model, inputs)
    assert max(float(np.max(np.abs(got[k] - want[k]))) for k in want) > 1e-4


@pytest.mark.parametrize(
    "activation,fragment",
    [
        ("quick_gelu", "x \\* sigmoid\\(1.702 x\\)"),
        ("relu", "implements the exact GELU"),
        ("gelu_10", "clipped"),
    ],
)
def test_other_activations_are_a_clear_error(activation, fragment, references, tmp_path):
    folder, _ = references("gpt")
    config = json.loads((folder / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "activation_function": activation}))
    (tmp_path / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(hub.HubError, match=fragment) as info:
        from_pretrained(tmp_path)
    assert "\n" not in str(info.value)


def test_gelu_field_is_validated():
    from dlzoo.zoo.configs import ConfigError, get_config

    for arch in ("bert", "gpt", "vit"):
        with pytest.raises(ConfigError, match='gelu must be "exact"'):
            get_config(arch, "tiny", gelu="gelu_new")


# --------------------------------------------------------------------------- raw transformers state dicts


def _raw_state_dict(kind: str, folder):
    """A transformers model built from dlzoo's tiny preset, saved as its bare in-memory
    ``state_dict()`` (transformers 5's in-memory ViT names; no config.json)."""
    from safetensors.torch import save_file

    from dlzoo.zoo.configs import get_config

    cls = {"vit": transformers.ViTForImageClassification, "bert": transformers.BertModel, "gpt": transformers.GPT2LMHeadModel}[kind]
    model = _perturb(cls(transformers.AutoConfig.for_model(**hub.config_to_hf(kind, get_config(kind, "tiny")))))
    folder.mkdir()
    # the tied LM head is the token embedding: safetensors stores a tensor once
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}, folder / "weights.safetensors")
    return model, folder / "weights.safetensors"


@pytest.mark.parametrize("framework", FRAMEWORKS, ids=framework_id)
@pytest.mark.parametrize("kind", ["vit", "bert", "gpt"])
def test_raw_transformers_state_dict_with_a_preset_matches_transformers(kind, framework, tmp_path):
    model, path = _raw_state_dict(kind, tmp_path / kind)
    h = from_pretrained(path, framework=framework, preset="tiny")
    assert any("no config.json" in note for note in h.load_report.notes)
    if kind == "vit":
        inputs = {"pixel_values": _images(32, 32)}
        want = {"logits": _run(model, inputs["pixel_values"])}
    else:
        config = h.config
        rng = np.random.default_rng(0)
        inputs = {"input_ids": rng.integers(0, config.vocab_size, (2, 8)), "attention_mask": np.ones((2, 8), np.int64)}
        with torch.no_grad():
            out = model(**_torch_in(inputs))
        want = {"logits": out.logits.numpy()} if kind == "gpt" else {"last_hidden_state": out.last_hidden_state.numpy()}
    got = h.apply(inputs)
    assert_outputs_close({k: got[k] for k in want}, want, what=f"{framework} raw {kind} state dict")


def test_raw_transformers_state_dict_without_a_preset_says_what_to_pass(tmp_path):
    _, path = _raw_state_dict("vit", tmp_path / "vit")
    with pytest.raises(hub.HubError, match="transformers-named vit weights and no config.json; name the preset"):
        from_pretrained(path, framework="torch")
    with pytest.raises(hub.HubError, match="holds transformers-named vit weights, not 'bert'"):
        from_pretrained(path, framework="torch", arch="bert", preset="tiny")


# torchvision's ResNet is 64-512 wide with a 64-wide stem; the smallest such, one block a stage.
VISION_REFERENCE_CONFIGS = {
    "resnet": {"block": "basic", "depths": (1, 1, 1, 1), "widths": (64, 128, 256, 512), "stem_width": 64},
    "vit": {"layer_norm_eps": 1e-6},
}


@pytest.mark.parametrize("arch", ["resnet", "vit"])
def test_vision_model_holds_the_canonical_weights(arch, vision):
    """``reference.vision_model`` (dlzoo bench's torchvision/timm references) builds the reference
    from canonical tensors: its state dict reads back to the same tensors, and its logits are
    dlzoo's (a ResNet with perturbed batch-norm statistics; a ViT with timm's eps 1e-6)."""
    from dlzoo.zoo import get_config
    from dlzoo.zoo.reference import vision_model

    config = get_config(arch, "tiny", **VISION_REFERENCE_CONFIGS[arch])
    source = load(arch, "torch", config=config, seed=2)
    _perturb(source.native)
    model = vision_model(arch, config, source.state_dict())
    path = vision[0] / f"roundtrip-{arch}.pth"
    torch.save(model.state_dict(), path)
    back = from_pretrained(path, **({"num_heads": config.num_heads} if arch == "vit" else {}))
    assert back.config == config
    for k, v in source.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], v, err_msg=k)
    size = config.image_size if arch == "vit" else 40
    images = _images(size, size, seed=5)
    assert_outputs_close(source.apply({"pixel_values": images}), {"logits": _run(model, images)}, what=f"vision_model {arch}")


@pytest.mark.parametrize("arch", ["resnet", "vit"])
def test_bench_runs_the_vision_reference(arch, vision):
    from dlzoo.zoo import ZooError
    from dlzoo.zoo.bench import run

    reference = "torchvision" if arch == "resnet" else "timm"
    report = run(
        arch, "tiny", batch=2, image_size=32, implementations=["torch", reference], trials=3, overrides=VISION_REFERENCE_CONFIGS[arch]
    )
    assert [r["implementation"] for r in report["results"]] == ["torch", reference]
    with pytest.raises(ZooError, match=f"{reference} holds no gpt model"):
        run("gpt", "tiny", batch=2, seq_len=8, implementations=[reference], trials=3)
