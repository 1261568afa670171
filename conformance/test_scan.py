"""``scan_layers=True`` (GPT, BERT, ViT) in the JAX frameworks (flax, equinox, haiku, keras on
jax): the identical transformer blocks run as ONE ``jax.lax.scan`` body instead of an unrolled
loop. The same weights give the same
outputs in eval and in train mode with dropout on (each layer draws the keys it draws in the
loop), the same gradients, with and without ``remat``; the canonical parameter layout is
unchanged, so a file saved from either setting loads into the other; the traced program holds
one scan and does not grow with depth. torch and keras on torch or tensorflow run the loop
whatever the flag (docs/architecture.md): they are checked to accept it and compute the same
thing."""

import numpy as np
import pytest

from dlzoo.zoo import get_config, load
from dlzoo.zoo.frameworks import keras_backend

from .harness import FRAMEWORKS, assert_grads_close, cotangents, framework_id

JAX_FRAMEWORKS = [f for f in FRAMEWORKS if f in ("flax", "equinox", "haiku") or (f == "keras" and keras_backend()[0] == "jax")]
# Three layers (the tiny presets have two) and dropout on everywhere, so that the per-layer keys
# and masks are part of the check.
CONFIGS = {
    "gpt": {"num_layers": 3},
    "bert": {"num_layers": 3, "mlm_head": True, "num_classes": 3, "vocab_size": 256, "hidden_size": 64, "num_heads": 4, "mlp_dim": 128},
    "vit": {"num_layers": 3, "dropout": 0.1, "attention_dropout": 0.1},
}
# A scan body may fuse differently from the unrolled blocks (measured: bit-identical here).
SCAN_RTOL = 1e-6
# Each case compiles several programs (20-40 s under load): `nox -s ci` checks GPT in every JAX
# framework, `nox -s conformance` (no `-m` filter) every architecture.
ARCHS = [pytest.param(arch, marks=() if arch == "gpt" else pytest.mark.slow) for arch in CONFIGS]
SLOW = pytest.mark.slow


def _inputs(arch: str) -> dict:
    rng = np.random.default_rng(0)
    if arch == "gpt":
        return {"input_ids": rng.integers(0, 200, (2, 12)).astype(np.int32)}
    if arch == "bert":
        mask = np.ones((2, 12), np.int32)
        mask[1, 8:] = 0  # padding: the attention bias is an input of every layer
        return {"input_ids": rng.integers(0, 200, (2, 12)).astype(np.int32), "attention_mask": mask}
    return {"pixel_values": rng.standard_normal((2, 32, 32, 3)).astype(np.float32)}


def _assert_close(got: dict, want: dict, what: str):
    assert sorted(got) == sorted(want), what
    for k in want:
        scale = max(1.0, float(np.max(np.abs(want[k]))))
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=SCAN_RTOL * scale, err_msg=f"{what} {k}")


@pytest.fixture(scope="module")
def handles():
    """(arch, framework, remat, scan) -> a handle; every one holds the same weights."""
    built: dict = {}

    def get(arch: str, framework: str, *, remat: bool = False, scan: bool = False):
        key = arch, framework, remat, scan
        if key not in built:
            config = get_config(arch, "tiny", **CONFIGS[arch])
            weights = None if key[2:] == (False, False) else get(arch, framework).state_dict()
            built[key] = load(arch, framework, config=config.replace(remat=remat, scan_layers=scan), weights=weights, seed=0)
        return built[key]

    return get


@pytest.mark.parametrize("framework", JAX_FRAMEWORKS, ids=framework_id)
@pytest.mark.parametrize("arch", ARCHS)
def test_scan_changes_neither_outputs_nor_gradients(arch, framework, handles):
    plain, scanned = handles(arch, framework), handles(arch, framework, scan=True)
    inputs = _inputs(arch)
    _assert_close(scanned.apply(inputs), plain.apply(inputs), f"{framework} {arch} eval")
    want = plain.apply(inputs, train=True, seed=3)
    _assert_close(scanned.apply(inputs, train=True, seed=3), want, f"{framework} {arch} train")
    # a different seed gives different masks: the comparison above is not between dropout-free runs
    assert any(not np.array_equal(plain.apply(inputs, train=True, seed=4)[k], want[k]) for k in want)
    cots = cotangents(want)
    for train in (False, True):
        assert_grads_close(
            scanned.vjp(inputs, cots, train=train, seed=3),
            plain.vjp(inputs, cots, train=train, seed=3),
            rtol=SCAN_RTOL,
            what=f"{framework} {arch} train={train}",
        )


@SLOW
@pytest.mark.parametrize("framework", JAX_FRAMEWORKS, ids=framework_id)
@pytest.mark.parametrize("arch", list(CONFIGS))
def test_scan_composes_with_remat(arch, framework, handles):
    plain, both = handles(arch, framework), handles(arch, framework, remat=True, scan=True)
    inputs = _inputs(arch)
    want = plain.apply(inputs, train=True, seed=3)
    _assert_close(both.apply(inputs, train=True, seed=3), want, f"{framework} {arch} remat+scan")
    cots = cotangents(want)
    assert_grads_close(
        both.vjp(inputs, cots, train=True, seed=3), plain.vjp(inputs, cots, train=True, seed=3), rtol=SCAN_RTOL, what=f"{framework} {arch}"
    )
    # the checkpoint is really there: one region, inside the scan body
    from .test_remat import _count, _forward_jaxpr

    assert _count(_forward_jaxpr(framework, both, inputs).jaxpr) == 1


def _primitives(jaxpr, name: str) -> int:
    """How many equations named ``name`` a jaxpr holds, nested jaxprs included."""
    count = 0
    for eqn in jaxpr.eqns:
        count += eqn.primitive.name == name
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    count += _primitives(inner, name)
    return count


@pytest.mark.parametrize("framework", JAX_FRAMEWORKS, ids=framework_id)
@pytest.mark.parametrize("arch", list(CONFIGS))
def test_the_traced_program_holds_one_scan_whatever_the_depth(arch, framework):
    """An unrolled loop has a dot_general per projection per layer; the scanned program has one
    scan whose body holds one layer's, so its size does not change with the number of layers."""
    from .test_remat import _forward_jaxpr

    inputs = _inputs(arch)
    counts = {}
    for layers in (2, 4):
        for scan in (False, True):
            config = get_config(arch, "tiny", **{**CONFIGS[arch], "num_layers": layers, "scan_layers": scan})
            jaxpr = _forward_jaxpr(framework, load(arch, framework, config=config), inputs).jaxpr
            counts[layers, scan] = _primitives(jaxpr, "scan"), _primitives(jaxpr, "dot_general")
    assert counts[2, True][0] == counts[4, True][0] == 1
    assert counts[2, False][0] == counts[4, False][0] == 0
    assert counts[2, True][1] == counts[4, True][1]  # one body, whatever the depth
    per_layer = counts[2, False][1] - counts[2, True][1]  # the loop runs the body twice, the scan once
    assert per_layer >= 4 and counts[4, False][1] - counts[2, False][1] == 2 * per_layer


@pytest.mark.parametrize("framework", JAX_FRAMEWORKS, ids=framework_id)
@pytest.mark.parametrize("arch", ARCHS)
def test_a_saved_file_loads_with_scan_switched(arch, framework, handles, tmp_path):
    plain, scanned = handles(arch, framework), handles(arch, framework, scan=True)
    assert sorted(scanned.state_dict()) == sorted(plain.state_dict())  # the canonical per-layer layout
    inputs = _inputs(arch)
    for source, target in ((scanned, plain), (plain, scanned)):
        path = tmp_path / f"{source.config.scan_layers}.safetensors"
        source.save(path)
        loaded = load(arch, framework, config=target.config, weights=path)
        assert loaded.config.scan_layers is target.config.scan_layers
        for k, v in source.state_dict().items():
            np.testing.assert_array_equal(loaded.state_dict()[k], v, err_msg=k)
        _assert_close(loaded.apply(inputs), source.apply(inputs), f"{framework} {arch} loaded")


@SLOW
@pytest.mark.parametrize("framework", JAX_FRAMEWORKS, ids=framework_id)
@pytest.mark.parametrize("arch", list(CONFIGS))
def test_per_block_outputs_and_generation_keep_the_loop(arch, framework, handles):
    plain, scanned = handles(arch, framework), handles(arch, framework, scan=True)
    inputs = _inputs(arch)
    _assert_close(scanned.block_outputs(inputs), plain.block_outputs(inputs), f"{framework} {arch} block outputs")
    if arch == "gpt":
        ids = inputs["input_ids"][:, :5]
        np.testing.assert_array_equal(scanned.generate(ids, max_new_tokens=4), plain.generate(ids, max_new_tokens=4))


@SLOW
@pytest.mark.parametrize("framework", JAX_FRAMEWORKS, ids=framework_id)
def test_scan_under_bfloat16_compute(framework):
    """The compute-dtype policy reaches the scan body (haiku: its custom getter)."""
    config = get_config("gpt", "tiny", **CONFIGS["gpt"])
    plain = load("gpt", framework, config=config, compute_dtype="bfloat16")
    scanned = load("gpt", framework, config=config.replace(scan_layers=True), weights=plain.state_dict(), compute_dtype="bfloat16")
    inputs = _inputs("gpt")
    got, want = scanned.apply(inputs)["logits"], plain.apply(inputs)["logits"]
    np.testing.assert_allclose(got, want, rtol=0, atol=2**-7 * max(1.0, float(np.abs(want).max())))


@pytest.mark.parametrize("framework", [f for f in FRAMEWORKS if f not in JAX_FRAMEWORKS], ids=framework_id)
def test_frameworks_without_scan_accept_the_flag(framework, tmp_path):
    config = get_config("gpt", "tiny", **CONFIGS["gpt"])
    plain = load("gpt", framework, config=config)
    flagged = load("gpt", framework, config=config.replace(scan_layers=True), weights=plain.state_dict())
    inputs = _inputs("gpt")
    _assert_close(flagged.apply(inputs), plain.apply(inputs), framework)


@pytest.mark.parametrize("arch", ["gpt", "bert", "vit", "resnet"])
def test_scan_layers_is_a_bool_and_resnet_has_none(arch):
    from dlzoo.zoo import ConfigError

    if arch == "resnet":
        with pytest.raises(ConfigError, match="has no field"):
            get_config(arch, "tiny", scan_layers=True)
        return
    with pytest.raises(ConfigError, match="scan_layers must be true or false"):
        get_config(arch, "tiny", scan_layers="yes")
    assert get_config(arch, "tiny").scan_layers is False
