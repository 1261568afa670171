"""Published checkpoints: every storage variant people have, loaded exactly, and exported back so
that transformers loads it and gives the same outputs."""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="published checkpoints are written by transformers, which needs torch")
transformers = pytest.importorskip("transformers", reason="the reference checkpoints are built with transformers")

from dlzoo.zoo import from_pretrained, hub  # noqa: E402
from dlzoo.zoo.files import OutputExistsError  # noqa: E402
from dlzoo.zoo.reference import sample_inputs, transformers_model, transformers_outputs  # noqa: E402


def _gpt2(n_layer=2):
    config = transformers.GPT2Config(vocab_size=61, n_embd=16, n_layer=n_layer, n_head=2, n_positions=32, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval()


def _bert():
    config = transformers.BertConfig(
        vocab_size=61, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24, max_position_embeddings=32
    )
    torch.manual_seed(0)
    return transformers.BertForPreTraining(config).eval()


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids.astype(np.int64))).logits.numpy()


IDS = np.random.default_rng(0).integers(0, 61, (2, 9)).astype(np.int32)


def _write_config(model, folder):
    folder.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(folder / "config.json")


def test_half_precision_storage_is_upcast(tmp_path):
    model = _gpt2()
    model.half().save_pretrained(tmp_path / "fp16")
    _, tensors = hub.read_checkpoint(tmp_path / "fp16", upcast=False)
    assert tensors["transformer.wte.weight"].dtype == np.float16
    handle = from_pretrained(tmp_path / "fp16", framework="torch")
    assert handle.state_dict()["wte.embedding"].dtype == np.float32
    np.testing.assert_allclose(handle.apply({"input_ids": IDS})["logits"], _logits(model.float(), IDS), atol=1e-5)


def test_bfloat16_storage_is_upcast_exactly(tmp_path):
    model = _gpt2()
    model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    _, _, tensors, _ = hub.load_checkpoint(tmp_path / "bf16")
    want = model.transformer.wte.weight.float().detach().numpy()
    assert np.array_equal(tensors["wte.embedding"], want)


def test_sharded_safetensors_with_an_index(tmp_path):
    model = _gpt2()
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    files = os.listdir(tmp_path / "sharded")
    assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) > 1
    handle = from_pretrained(tmp_path / "sharded")
    np.testing.assert_allclose(handle.apply({"input_ids": IDS})["logits"], _logits(model, IDS), atol=1e-5)


def test_pytorch_model_bin_with_legacy_names_and_buffers(tmp_path):
    """The original GPT-2 upload: pytorch_model.bin, no 'transformer.' prefix, causal-mask buffers."""
    model = _gpt2()
    state = {k.removeprefix("transformer."): v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    for i in range(2):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(32, 32)).view(1, 1, 32, 32)
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    folder = tmp_path / "bin"
    _write_config(model, folder)
    torch.save(state, folder / "pytorch_model.bin")
    arch, _, _, ignored = hub.load_checkpoint(folder)
    assert arch == "gpt" and "h.0.attn.bias" in ignored and "h.1.attn.masked_bias" in ignored
    handle = from_pretrained(folder)
    np.testing.assert_allclose(handle.apply({"input_ids": IDS})["logits"], _logits(model, IDS), atol=1e-5)


def test_bert_tf_era_names_and_heads_are_detected(tmp_path):
    """bert-base-uncased's first upload: LayerNorm.gamma/beta, MLM and next-sentence heads."""
    model = _bert()
    state = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
        for k, v in model.state_dict().items()
    }
    state["cls.predictions.decoder.weight"] = model.bert.embeddings.word_embeddings.weight
    folder = tmp_path / "bert"
    _write_config(model, folder)
    torch.save(state, folder / "pytorch_model.bin")
    arch, config, _, ignored = hub.load_checkpoint(folder)
    assert arch == "bert" and config.pooler and config.mlm_head and config.num_classes == 0
    assert "cls.seq_relationship.weight" in ignored
    inputs = sample_inputs("bert", config)
    got = from_pretrained(folder).apply(inputs)
    want = transformers_outputs("bert", model, inputs)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=1e-5, err_msg=key)


def test_pickles_are_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    folder = tmp_path / "evil"
    _write_config(_gpt2(), folder)
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"wte.weight": Payload()}, f)
    with pytest.raises(hub.HubError, match="weights_only=True"):
        hub.load_checkpoint(folder)
    assert not marker.exists()


@pytest.mark.parametrize(
    "problem,fragment",
    [
        ("no-config", "no config.json"),
        ("no-weights", "no weights"),
        ("bad-type", "model_type 'llama'"),
        ("missing-tensor", "missing 1: h.1.mlp.c_fc.weight"),
        ("missing-shard", "shard"),
    ],
)
def test_broken_checkpoints_fail_in_one_line(tmp_path, problem, fragment):
    model = _gpt2()
    folder = tmp_path / problem
    model.save_pretrained(folder, max_shard_size="20KB" if problem == "missing-shard" else "10GB")
    if problem == "no-config":
        (folder / "config.json").unlink()
    elif problem == "no-weights":
        for f in folder.glob("*.safetensors"):
            f.unlink()
    elif problem == "bad-type":
        data = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**data, "model_type": "llama"}))
    elif problem == "missing-tensor":
        from safetensors.numpy import load_file, save_file

        tensors = load_file(folder / "model.safetensors")
        tensors.pop("transformer.h.1.mlp.c_fc.weight")
        save_file(tensors, folder / "model.safetensors")
    else:
        sorted(folder.glob("model-*.safetensors"))[-1].unlink()
    with pytest.raises(hub.HubError, match=fragment) as info:
        hub.load_checkpoint(folder)
    assert "\n" not in str(info.value)


def _offline_env(tmp_path):
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_CACHE": str(tmp_path / "hf-home" / "hub")}


def _seed_hub_cache(tmp_path, repo_id, model):
    """Lay a checkpoint out exactly as huggingface_hub caches a download (blobs, snapshots, refs)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf-home" / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    model.save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_hub_ids_resolve_through_huggingface_hub(tmp_path):
    model = _gpt2()
    _seed_hub_cache(tmp_path, "someone/tiny-gpt2", model)
    code = (
        "import numpy as np, sys; from dlzoo.zoo import from_pretrained; "
        "h = from_pretrained('someone/tiny-gpt2'); "
        f"np.save(sys.argv[1], h.apply({{'input_ids': np.array({IDS.tolist()}, np.int32)}})['logits'])"
    )
    out = tmp_path / "logits.npy"
    subprocess.run([sys.executable, "-c", code, str(out)], env=_offline_env(tmp_path), check=True)
    np.testing.assert_allclose(np.load(out), _logits(model, IDS), atol=1e-5)


def test_unknown_hub_id_offline_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "dlzoo.cli", "convert", "nobody/nothing", str(tmp_path / "x.safetensors")],
        env=_offline_env(tmp_path),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "could not download 'nobody/nothing'" in result.stderr
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("arch,preset", [("bert", "tiny"), ("gpt", "tiny"), ("vit", "tiny"), ("resnet", "tiny")])
def test_export_loads_in_transformers_with_the_same_outputs(tmp_path, arch, preset):
    from dlzoo.zoo import load

    overrides = {"mlm_head": True, "num_classes": 0, "vocab_size": 500} if arch == "bert" else {}
    handle = load(arch, "torch", config=preset, seed=4, **overrides)
    folder = hub.export(arch, handle.config, handle.state_dict(), tmp_path / "published")
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]
    model = transformers_model(arch, handle.config, handle.state_dict())
    inputs = sample_inputs(arch, handle.config)
    want = transformers_outputs(arch, model, inputs)
    got = handle.apply(inputs)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=1e-5, err_msg=key)
    # and back: published -> canonical is the identity on these weights
    _, config, tensors, _ = hub.load_checkpoint(folder)
    assert config == handle.config
    assert all(np.array_equal(tensors[k], v) for k, v in handle.state_dict().items())


def test_export_refuses_to_overwrite(tmp_path):
    from dlzoo.zoo import load

    handle = load("gpt", "torch")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not an empty folder"):
        hub.export("gpt", handle.config, handle.state_dict(), tmp_path / "taken")
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"


# --- untied output heads ------------------------------------------------------------------------


def _untied_gpt2():
    config = transformers.GPT2Config(
        vocab_size=61, n_embd=16, n_layer=1, n_head=2, n_positions=32, bos_token_id=0, eos_token_id=0, tie_word_embeddings=False
    )
    torch.manual_seed(1)
    return transformers.GPT2LMHeadModel(config).eval()


def _untied_bert_mlm():
    config = transformers.BertConfig(
        vocab_size=61,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=32,
        tie_word_embeddings=False,
    )
    torch.manual_seed(2)
    model = transformers.BertForMaskedLM(config).eval()
    with torch.no_grad():  # a trained decoder bias: transformers >= 5 applies the decoder's own
        model.cls.predictions.decoder.bias.normal_()
    return model


@pytest.mark.parametrize("build, head", [(_untied_gpt2, "lm_head.kernel"), (_untied_bert_mlm, "mlm.decoder.kernel")])
def test_untied_heads_load_their_own_matrix(tmp_path, build, head):
    model = build()
    model.save_pretrained(tmp_path / "untied")
    arch, config, tensors, _ = hub.load_checkpoint(tmp_path / "untied")
    assert config.tie_word_embeddings is False and head in tensors
    # The spec counts the head. transformers >= 5 keeps an unused cls.predictions.bias beside
    # the untied decoder's own bias; dlzoo counts the parameters the model applies.
    unused = 0
    if arch == "bert" and model.cls.predictions.decoder.bias is not model.cls.predictions.bias:
        unused = model.cls.predictions.bias.numel()
    from dlzoo.zoo import count_params

    assert count_params(arch, config) == sum(t.size for t in tensors.values()) == model.num_parameters() - unused
    handle = from_pretrained(tmp_path / "untied", framework="torch")
    inputs = sample_inputs(arch, config)
    want = transformers_outputs(arch, model, inputs)
    got = handle.apply(inputs)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=1e-5, err_msg=key)
    # export writes tie_word_embeddings=false and the head; transformers reads the same model back
    folder = hub.export(arch, config, tensors, tmp_path / "again")
    assert json.loads((folder / "config.json").read_text())["tie_word_embeddings"] is False
    again = transformers_model(arch, config, tensors)
    for key, value in transformers_outputs(arch, again, inputs).items():
        np.testing.assert_allclose(value, want[key], atol=1e-6, err_msg=key)
    _, config_back, tensors_back, _ = hub.load_checkpoint(folder)
    assert config_back == config and all(np.array_equal(tensors_back[k], v) for k, v in tensors.items())


@pytest.mark.parametrize(
    "published_head, embedding",
    [
        ("lm_head.weight", "transformer.wte.weight"),
        ("cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight"),
    ],
)
def test_tied_checkpoint_with_a_different_head_names_both_tensors(tmp_path, published_head, embedding):
    from safetensors.numpy import load_file, save_file

    model = _gpt2() if published_head.startswith("lm_head") else _bert()
    model.save_pretrained(tmp_path / "tied")
    tensors = load_file(str(tmp_path / "tied" / "model.safetensors"))
    tensors[published_head] = tensors[embedding] + 0.5  # a stale or retrained head the config says is tied
    save_file(tensors, str(tmp_path / "tied" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(hub.HubError) as error:
        hub.load_checkpoint(tmp_path / "tied")
    message = str(error.value)
    assert published_head in message and embedding in message and "tie_word_embeddings" in message
    assert "\n" not in message
    tensors[published_head] = tensors[embedding].copy()  # an equal copy is what tied files hold
    save_file(tensors, str(tmp_path / "tied" / "model.safetensors"), metadata={"format": "pt"})
    assert hub.load_checkpoint(tmp_path / "tied")[1].tie_word_embeddings is True


def test_verify_compares_against_the_folder_not_dlzoos_reading_of_it(tmp_path, monkeypatch):
    """verify --weights FOLDER runs transformers on the folder itself: an untied checkpoint
    passes, and a loader that silently dropped the head (the bug this guards) would fail."""
    from dlzoo.verify import run_verify

    _untied_gpt2().save_pretrained(tmp_path / "untied")
    report = run_verify("gpt", source=str(tmp_path / "untied"), frameworks=["torch"])
    assert report["passed"], report
    assert any("loaded from" in note for note in report["notes"])

    real = hub.load_checkpoint

    def drops_the_head(*args, **kwargs):  # the old behaviour: the head silently tied to wte
        arch, config, tensors, ignored = real(*args, **kwargs)
        kept = {k: v for k, v in tensors.items() if k != "lm_head.kernel"}
        return arch, config.replace(tie_word_embeddings=True), kept, ignored

    monkeypatch.setattr(hub, "load_checkpoint", drops_the_head)
    report = run_verify("gpt", source=str(tmp_path / "untied"), frameworks=["torch"])
    assert not report["passed"] and report["rows"][0]["diffs"]["logits"] > 1e-2


def test_convert_prints_and_returns_the_load_report(tmp_path):
    """A backbone (ViTModel) converted with a new head at another resolution, behind a DDP prefix."""
    config = transformers.ViTConfig(
        image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24
    )
    transformers.ViTModel(config, add_pooling_layer=False).save_pretrained(tmp_path / "saved")
    from safetensors.torch import load_file

    # save_pretrained writes the published names (transformers 5's in-memory names differ)
    state = load_file(tmp_path / "saved" / "model.safetensors")
    (tmp_path / "backbone").mkdir()
    config.to_json_file(tmp_path / "backbone" / "config.json")
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "backbone" / "model.pth")
    command = [
        sys.executable,
        "-m",
        "dlzoo.cli",
        "convert",
        str(tmp_path / "backbone"),
        str(tmp_path / "v.safetensors"),
        "--num-classes",
        "3",
        "--image-size",
        "32",
        "--seed",
        "5",
    ]
    data = json.loads(subprocess.run(command + ["--json"], capture_output=True, text=True, check=True).stdout)
    report = data["report"]
    assert (report["layout"], report["stripped_prefixes"], sorted(report["initialised"])) == (
        "transformers",
        ["module."],
        ["head.bias", "head.kernel"],
    )
    assert report["resized"] == {"pos_embed": [[1, 5, 16], [1, 17, 16]]} and data["config"]["num_classes"] == 3
    text = subprocess.run(command[:5] + [str(tmp_path / "w.safetensors")] + command[6:], capture_output=True, text=True, check=True).stdout
    assert "stripped wrapper prefix 'module.'" in text and "freshly initialised" in text and "resized pos_embed" in text


def test_wrapper_prefixes_strip_nested_and_only_when_every_name_has_one():
    from dlzoo.zoo.checkpoints import common_prefix, strip_wrappers

    x = np.zeros(1)
    assert strip_wrappers({"module._orig_mod.a.b": x, "module._orig_mod.c": x}) == ({"a.b": x, "c": x}, ["module.", "_orig_mod."])
    assert strip_wrappers({"module.a": x, "b": x})[1] == []
    assert common_prefix(["model.backbone.conv1.weight", "model.backbone.fc.bias"]) == "model.backbone."
    assert common_prefix(["conv1.weight", "fc.bias"]) == ""


@pytest.mark.parametrize("n_in,n_out", [(4, 6), (14, 24), (14, 7), (3, 1), (5, 5), (2, 9)])
def test_bicubic_matrix_is_torchs_bicubic(n_in, n_out):
    """Rows sum to one (Keys' kernel interpolates constants exactly) and the matrix equals
    torch's F.interpolate(mode="bicubic", align_corners=False) on a one-hot basis."""
    from dlzoo.zoo.configs import bicubic_resize_matrix

    matrix = np.asarray(bicubic_resize_matrix(n_in, n_out))
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-12)
    basis = torch.eye(n_in, dtype=torch.float64)[:, None, :, None].expand(n_in, 1, n_in, 1)
    torch_matrix = torch.nn.functional.interpolate(basis, size=(n_out, 1), mode="bicubic", align_corners=False)
    np.testing.assert_allclose(matrix, torch_matrix[:, 0, :, 0].numpy().T, atol=1e-12)


def test_canonical_file_with_a_new_head_and_resolution(tmp_path):
    from dlzoo.zoo import load

    load("vit", "torch", config="tiny", seed=1).save(tmp_path / "v.safetensors")
    h = from_pretrained(tmp_path / "v.safetensors", num_classes=4, image_size=48)
    report = h.load_report
    assert (report.layout, sorted(report.initialised), report.ignored) == (
        "dlzoo",
        ["head.bias", "head.kernel"],
        ["head.bias", "head.kernel"],
    )
    assert report.resized == {"pos_embed": [[1, 17, 64], [1, 37, 64]]}
    assert h.apply({"pixel_values": np.zeros((1, 48, 48, 3), np.float32)})["logits"].shape == (1, 4)
