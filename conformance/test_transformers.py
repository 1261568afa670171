"""Every framework against the reference implementations in `transformers`."""

import numpy as np
import pytest

from dlzoo.zoo import hub

from .harness import CASES, FRAMEWORKS, GRAD_RTOL, _torch_in, assert_grads_close, assert_outputs_close, cotangents, framework_id


@pytest.mark.parametrize("framework", FRAMEWORKS, ids=framework_id)
@pytest.mark.parametrize("case", list(CASES))
def test_forward_matches_transformers(case, framework, references, handle):
    _, model = references(case)
    inputs = CASES[case].inputs(0)
    want = CASES[case].reference(model, inputs)
    got = handle(case, framework).apply(inputs)
    assert_outputs_close(got, want, what=f"{framework} {case}")


def _hf_outputs(case, model, inputs):
    """The reference outputs as differentiable torch tensors (same names as the handle's)."""
    tin = _torch_in(inputs)
    if CASES[case].arch == "bert":
        out = model.bert(**tin)
        result = {"last_hidden_state": out.last_hidden_state}
        if out.pooler_output is not None:  # BertForMaskedLM has no pooler
            result["pooler_output"] = out.pooler_output
        if hasattr(model, "cls"):
            result["mlm_logits"] = model.cls.predictions(out.last_hidden_state)
        else:
            result["logits"] = model.classifier(out.pooler_output)
        return result
    return {"logits": model(**tin).logits}


def _hf_grads_canonical(case, model, inputs, cots, tmp_path):
    """Gradients of sum(outputs * cotangents) in transformers, in canonical names: the gradients
    are written into a copy of the model and saved with save_pretrained, so transformers' own
    save-time naming and dlzoo's checkpoint import do the mapping (no second mapping to trust)."""
    import copy
    import torch

    model = copy.deepcopy(model)
    model.zero_grad()
    outputs = _hf_outputs(case, model, inputs)
    loss = sum((outputs[k] * torch.from_numpy(cots[k])).sum() for k in outputs)
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.grad if p.grad is not None else torch.zeros_like(p))
    model.save_pretrained(tmp_path / "grads")
    _, _, grads, _ = hub.load_checkpoint(tmp_path / "grads")
    return grads


@pytest.mark.parametrize("case", list(CASES))
def test_torch_gradients_match_transformers(case, references, handle, tmp_path):
    _, model = references(case)
    inputs = CASES[case].inputs(2)
    h = handle(case, "torch")
    cots = cotangents(h.apply(inputs))
    trainable = {k for k, s in __import__("dlzoo").zoo.canonical_spec(h.arch, h.config).items() if s.trainable}
    want = {k: v for k, v in _hf_grads_canonical(case, model, inputs, cots, tmp_path).items() if k in trainable}
    assert_grads_close(h.vjp(inputs, cots), want, GRAD_RTOL, what=f"torch {case}")


@pytest.mark.parametrize("case", ["resnet", "resnet-basic"])
def test_torch_batch_norm_train_mode_matches_transformers(case, references, handle):
    """Train mode: outputs use batch statistics, and the running statistics written afterwards
    (momentum, unbiased variance) equal transformers' for every batch norm."""
    import copy
    import json
    import torch

    folder, model = references(case)
    model = copy.deepcopy(model).train()
    inputs = CASES[case].inputs(3)
    with torch.no_grad():
        want = model(**_torch_in(inputs)).logits.numpy()
    h = handle(case, "torch")
    before = h.state_dict()
    got = h.apply(inputs, train=True)["logits"]
    assert_outputs_close({"logits": got}, {"logits": want}, what=f"torch {case} train")
    hf_config = json.loads((folder / "config.json").read_text())
    _, hf_after, _ = hub.to_canonical("resnet", hf_config, {n: t.numpy() for n, t in model.state_dict().items()})
    ours = h.state_dict()
    stats = [k for k in ours if k.endswith((".mean", ".var"))]
    assert stats and all(not np.array_equal(ours[k], before[k]) for k in stats), "running statistics did not move"
    for key in stats:
        np.testing.assert_allclose(ours[key], hf_after[key], rtol=1e-5, atol=1e-6, err_msg=key)


def _hf_block_outputs(case, model, inputs) -> dict:
    """transformers' ``hidden_states`` by dlzoo block name: entry i + 1 is block i's output.
    ResNet reports one state per stage (its last block); GPT-2 replaces the last state by
    ``ln_f`` of it, so that block is read with a forward hook on the last ``GPT2Block``."""
    import torch

    arch = CASES[case].arch
    base = {"bert": "bert", "gpt": "transformer", "vit": "vit", "resnet": "resnet"}[arch]
    base = getattr(model, base)
    captured = {}
    hook = None
    if arch == "gpt":
        hook = base.h[-1].register_forward_hook(lambda _m, _i, out: captured.__setitem__("last", out[0] if isinstance(out, tuple) else out))
    try:
        with torch.no_grad():
            states = [t.numpy() for t in base(**_torch_in(inputs), output_hidden_states=True).hidden_states[1:]]
    finally:
        if hook is not None:
            hook.remove()
    if arch == "resnet":
        depths = model.config.depths
        return {f"stages.{s}.blocks.{depths[s] - 1}": state.transpose(0, 2, 3, 1) for s, state in enumerate(states)}
    if arch == "gpt":
        states[-1] = captured["last"].numpy()
    return {f"blocks.{i}": state for i, state in enumerate(states)}


@pytest.mark.parametrize("framework", FRAMEWORKS, ids=framework_id)
@pytest.mark.parametrize("case", list(CASES))
def test_block_outputs_match_transformers_hidden_states(case, framework, references, handle):
    """The residual stream after every block (what doctor's activation-scale check reads)."""
    _, model = references(case)
    inputs = CASES[case].inputs(7)
    want = _hf_block_outputs(case, model, inputs)
    h = handle(case, framework)
    got = h.block_outputs(inputs)
    assert list(got) == h.config.block_names()
    if CASES[case].arch == "resnet":  # transformers reports stage ends; every block is held to torch
        got = {name: got[name] for name in want}
    assert_outputs_close(got, want, what=f"{framework} {case} block outputs")
