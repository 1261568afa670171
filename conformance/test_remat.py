"""Activation checkpointing (``remat=True`` on every config) in every framework: the same
outputs, the same gradients in train mode with dropout on (the recomputation must draw the same
dropout masks), batch-norm statistics updated once, and the checkpoint really in place (a
``checkpoint`` region per block in the JAX frameworks' traced program; fewer tensors saved for
the backward pass in torch)."""

import numpy as np
import pytest

from dlzoo.zoo import get_config, load

from .harness import FRAMEWORKS, assert_grads_close, cotangents, framework_id

# Dropout on everywhere (ViT's tiny preset has none) so that the masks are part of the check.
CONFIGS = {
    "gpt": {},
    "bert": {"mlm_head": True, "vocab_size": 256, "hidden_size": 64, "num_heads": 4, "mlp_dim": 128, "max_positions": 64},
    "vit": {"dropout": 0.1, "attention_dropout": 0.1},
    "resnet": {},
}
REMAT_RTOL = 1e-6  # recomputation reorders nothing in torch; XLA may fuse the recomputed ops differently


def _inputs(arch: str) -> dict:
    rng = np.random.default_rng(0)
    if arch in ("gpt", "bert"):
        return {"input_ids": rng.integers(0, 200, (2, 12)).astype(np.int32)}
    return {"pixel_values": rng.standard_normal((2, 32, 32, 3)).astype(np.float32)}


@pytest.fixture(scope="module")
def pairs():
    """(arch, framework) -> (handle without remat, handle with remat), the same weights."""
    built = {}

    def get(arch: str, framework: str):
        if (arch, framework) not in built:
            config = get_config(arch, "tiny", **CONFIGS[arch])
            plain = load(arch, framework, config=config, seed=0)
            built[arch, framework] = plain, load(arch, framework, config=config.replace(remat=True), weights=plain.state_dict())
        return built[arch, framework]

    return get


@pytest.mark.parametrize("framework", FRAMEWORKS, ids=framework_id)
@pytest.mark.parametrize("arch", list(CONFIGS))
def test_remat_changes_neither_outputs_nor_gradients(arch, framework, pairs):
    plain, remat = pairs(arch, framework)
    inputs = _inputs(arch)
    # train mode: dropout on, batch norm on batch statistics (eval mode runs the same code paths)
    want = plain.apply(inputs, train=True, seed=3)
    got = remat.apply(inputs, train=True, seed=3)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=f"{framework} {arch} {k}")
    cots = cotangents(want)
    assert_grads_close(
        remat.vjp(inputs, cots, train=True, seed=3),
        plain.vjp(inputs, cots, train=True, seed=3),
        rtol=REMAT_RTOL,
        what=f"{framework} {arch}",
    )
    # train-mode applies above updated batch-norm statistics once in both (torch: not again on recompute)
    a, b = plain.state_dict(), remat.state_dict()
    for k in a:
        np.testing.assert_array_equal(b[k], a[k], err_msg=f"{framework} {arch} {k}")


def test_torch_batch_norm_statistics_update_once_under_remat():
    """torch's checkpoint reruns the block's forward in the backward pass: without care a batch
    norm would fold the same batch into its running statistics twice."""
    torch = pytest.importorskip("torch", reason="the torch model")
    from dlzoo.zoo.torch.resnet import ResNet

    states = []
    for remat in (False, True):
        model = ResNet(get_config("resnet", "tiny", remat=remat), generator=torch.Generator().manual_seed(0)).train()
        model(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)))["logits"].sum().backward()
        states.append(model.state_dict())
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k
    assert int(states[1]["stages.0.blocks.0.bn1.num_batches_tracked"]) == 1


REMAT_PRIMITIVES = ("remat2", "checkpoint")  # jax.checkpoint's primitive, named so by jax 0.4-0.10 / later


def _count(jaxpr) -> int:
    """``jax.checkpoint`` regions in a jaxpr and the jaxprs nested in it (not inside a region)."""
    count = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in REMAT_PRIMITIVES:
            count += 1
            continue
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    count += _count(inner)
    return count


def _forward_jaxpr(framework: str, handle, inputs):
    import jax

    key = jax.random.key(0)
    if framework == "flax":
        from flax import nnx

        from dlzoo.zoo.flax import _call

        graphdef, state = nnx.split(handle.native)
        return jax.make_jaxpr(lambda state, x: _call(nnx.merge(graphdef, state), x, False, key))(state, inputs)
    if framework == "equinox":
        from dlzoo.zoo.equinox import _forward

        module, state = handle.native
        return jax.make_jaxpr(lambda x: _forward(handle.arch, module, state, x, key, True)[0])(inputs)
    if framework == "haiku":
        transformed, params, state = handle.native
        return jax.make_jaxpr(lambda x: transformed.apply(params, state, key, **x, is_training=False)[0])(inputs)
    model = handle.native  # keras on jax
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    return jax.make_jaxpr(lambda x: model.stateless_call(trainable, non_trainable, x, training=False)[0])(inputs)


@pytest.mark.parametrize("framework", [f for f in FRAMEWORKS if f != "torch"], ids=framework_id)
@pytest.mark.parametrize("arch", list(CONFIGS))
def test_jax_frameworks_checkpoint_every_block(arch, framework, pairs):
    if framework == "keras":
        import keras

        if keras.backend.backend() != "jax":
            pytest.skip("the traced program is read on keras' jax backend; other backends are checked by their gradients")
    plain, remat = pairs(arch, framework)
    inputs = _inputs(arch)
    blocks = len(plain.config.block_names())
    assert _count(_forward_jaxpr(framework, plain, inputs).jaxpr) == 0
    assert _count(_forward_jaxpr(framework, remat, inputs).jaxpr) == blocks


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_torch_keeps_fewer_tensors_for_backward(arch, pairs):
    torch = pytest.importorskip("torch", reason="the torch model")
    from dlzoo.zoo.torch import _torch_inputs

    saved = []
    for handle in pairs(arch, "torch"):
        total = [0]

        def pack(t, total=total):
            total[0] += t.numel() * t.element_size()
            return t

        handle.native.train()
        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                outputs = handle.native(**_torch_inputs(arch, _inputs(arch), torch.device("cpu")))
        finally:
            handle.native.eval()
        saved.append(total[0])
        del outputs
    plain, remat = saved
    # without remat (or with a no-op) the two are equal; the heads' tensors are saved in both
    assert remat < plain, f"{arch}: {remat} bytes saved for backward with remat vs {plain} without"


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_remat_must_be_a_bool(arch):
    from dlzoo.zoo import ConfigError

    with pytest.raises(ConfigError, match="remat must be true or false"):
        get_config(arch, "tiny", remat="yes")
    assert get_config(arch, "tiny").remat is False


def test_a_saved_file_loads_with_remat_switched(tmp_path):
    """remat is how training runs, not what the weights are: a file saved without it loads into a
    config with it (and back); any other difference is still refused."""
    from dlzoo.zoo import WeightsError

    config = get_config("gpt", "tiny")
    load("gpt", "torch", config=config).save(tmp_path / "gpt.safetensors")
    assert load("gpt", "torch", config=config.replace(remat=True), weights=tmp_path / "gpt.safetensors").config.remat is True
    with pytest.raises(WeightsError, match="differs from the requested"):
        load("gpt", "torch", config=config.replace(remat=True, dropout=0.2), weights=tmp_path / "gpt.safetensors")
