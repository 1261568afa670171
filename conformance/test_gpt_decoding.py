"""GPT with padding and incremental decoding, in every framework, against transformers.

Left-padded batches give transformers' logits on every real token (position ids from the mask,
as transformers' generate derives them); greedy ``generate`` equals transformers' greedy
``generate`` token for token, with and without left padding; logits computed step by step with
each framework's own key/value cache equal a full recompute; and the sampling filters keep
exactly the tokens transformers' TopK/TopP warpers keep."""

import copy

import numpy as np
import pytest

from .harness import FORWARD_TOL, FRAMEWORKS, _torch_in, assert_outputs_close, framework_id, max_abs

GPT_CASES = ["gpt", "gpt-untied"]
B, T = 3, 12


def _left_padded(seed: int, vocab: int = 99) -> tuple[np.ndarray, np.ndarray]:
    """Ids [B, T] and a mask with rows left-padded by 0, 3 and 7 tokens (padding ids random)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (B, T)).astype(np.int32)
    mask = np.ones((B, T), np.int32)
    for row, pad in enumerate((0, 3, 7)):
        mask[row, :pad] = 0
    return ids, mask


def _transformers_logits(model, ids, mask) -> np.ndarray:
    import torch

    tin = _torch_in({"input_ids": ids, "attention_mask": mask})
    positions = (tin["attention_mask"].cumsum(-1) - 1).masked_fill(tin["attention_mask"] == 0, 0)
    with torch.no_grad():
        return model(**tin, position_ids=positions).logits.numpy()


def _transformers_greedy(model, ids, mask, new: int) -> np.ndarray:
    import torch

    model = copy.deepcopy(model)
    model.generation_config.eos_token_id = None  # run all `new` steps, as dlzoo's generate does
    model.generation_config.pad_token_id = 0
    with torch.no_grad():
        out = model.generate(**_torch_in({"input_ids": ids, "attention_mask": mask}), max_new_tokens=new, do_sample=False)
    return out.numpy()


@pytest.mark.parametrize("framework", FRAMEWORKS, ids=framework_id)
@pytest.mark.parametrize("case", GPT_CASES)
def test_left_padded_forward_matches_transformers(case, framework, references, handle):
    _, model = references(case)
    ids, mask = _left_padded(10)
    want = _transformers_logits(model, ids, mask)
    got = handle(case, framework).apply({"input_ids": ids, "attention_mask": mask})["logits"]
    real = mask.astype(bool)
    assert_outputs_close({"logits": got[real]}, {"logits": want[real]}, what=f"{framework} {case} padded")


@pytest.mark.parametrize("framework", FRAMEWORKS, ids=framework_id)
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
@pytest.mark.parametrize("case", GPT_CASES)
def test_greedy_generate_matches_transformers(case, padded, framework, references, handle):
    _, model = references(case)
    ids, mask = _left_padded(11)
    if not padded:
        mask = np.ones_like(mask)
    want = _transformers_greedy(model, ids, mask, new=20)
    got = handle(case, framework).generate(ids, mask if padded else None, max_new_tokens=20)
    assert got.dtype == np.int32 and got.shape == want.shape == (B, T + 20)
    np.testing.assert_array_equal(got, want, err_msg=f"{framework} {case}")


# --- each framework's own cache, used natively -------------------------------------------------


def _prefill_then_steps(step, ids, mask, cache, split):
    """Logits [B, T, V]: ``step(ids, mask, cache) -> (logits, cache)`` over the first ``split``
    tokens, then over one token at a time."""
    logits, cache = step(ids[:, :split], mask[:, :split], cache)
    chunks = [np.asarray(logits)]
    for t in range(split, ids.shape[1]):
        logits, cache = step(ids[:, t : t + 1], mask[:, t : t + 1], cache)
        chunks.append(np.asarray(logits))
    return np.concatenate(chunks, 1)


def _torch_cached(h, ids, mask, split):
    import torch
    from dlzoo.zoo.torch.gpt import KVCache

    def step(ids, mask, cache):  # the cache object is filled in place
        with torch.no_grad():
            return h.native(torch.from_numpy(ids).long(), torch.from_numpy(mask).long(), cache=cache)["logits"], cache

    return _prefill_then_steps(step, ids, mask, KVCache(h.config.num_layers), split)


def _flax_cached(h, ids, mask, split):
    import jax
    from flax import nnx
    from dlzoo.zoo.flax.gpt import KVCache

    graphdef, state = nnx.split(h.native)

    @jax.jit
    def step(ids, mask, cache):  # one jitted step: cache pytree in, cache pytree out
        out = nnx.merge(graphdef, state)(ids, mask, cache=cache)
        return out["logits"], out["cache"]

    return _prefill_then_steps(step, ids, mask, KVCache.empty(h.config, ids.shape[0], ids.shape[1]), split)


def _equinox_cached(h, ids, mask, split):
    import equinox as eqx
    import jax
    from dlzoo.zoo.equinox.gpt import KVCache

    module, _ = h.native

    @eqx.filter_jit
    def step(ids, mask, cache):  # one row per vmapped call, each with its own cache
        out = jax.vmap(lambda i, m, c: module(i, m, cache=c))(ids, mask, cache)
        return out["logits"], out["cache"]

    cache = jax.vmap(lambda _: KVCache.empty(h.config, ids.shape[1]))(np.arange(ids.shape[0]))
    return _prefill_then_steps(step, ids, mask, cache, split)


def _haiku_cached(h, ids, mask, split):
    import jax
    from dlzoo.zoo.haiku.gpt import KVCache

    transformed, params, state = h.native

    @jax.jit
    def step(ids, mask, cache):
        out, _ = transformed.apply(params, state, None, ids, mask, cache=cache)
        return out["logits"], out["cache"]

    return _prefill_then_steps(step, ids, mask, KVCache.empty(h.config, ids.shape[0], ids.shape[1]), split)


def _keras_cached(h, ids, mask, split):
    from keras import ops
    from dlzoo.zoo.keras.gpt import KVCache

    def step(ids, mask, cache):
        logits, cache = h.native.call_with_cache(ids, mask, cache)
        return ops.convert_to_numpy(logits), cache

    return _prefill_then_steps(step, ids, mask, KVCache.empty(h.config, ids.shape[0], ids.shape[1]), split)


CACHED = {"torch": _torch_cached, "flax": _flax_cached, "equinox": _equinox_cached, "haiku": _haiku_cached, "keras": _keras_cached}


@pytest.mark.parametrize("framework", FRAMEWORKS, ids=framework_id)
@pytest.mark.parametrize("case", GPT_CASES)
def test_cached_logits_equal_full_recompute(case, framework, handle):
    """Prefill 5 tokens, then one token at a time through the framework's own cache: every
    position's logits equal one forward pass over the whole (left-padded) sequence."""
    h = handle(case, framework)
    ids, mask = _left_padded(12)
    full = h.apply({"input_ids": ids, "attention_mask": mask})["logits"]
    cached = CACHED[framework](h, ids, mask, split=5)
    real = mask.astype(bool)
    assert_outputs_close({"logits": cached[real]}, {"logits": full[real]}, tol=FORWARD_TOL, what=f"{framework} {case} cached")


# --- sampling ---------------------------------------------------------------------------------


def _filter(framework: str, logits: np.ndarray, temperature, top_k, top_p) -> np.ndarray:
    if framework == "torch":
        import torch
        from dlzoo.zoo.torch.gpt import filter_logits

        return filter_logits(torch.from_numpy(logits), temperature, top_k, top_p).numpy()
    if framework == "keras":
        from keras import ops
        from dlzoo.zoo.keras.gpt import filter_logits

        return ops.convert_to_numpy(filter_logits(ops.convert_to_tensor(logits), temperature, top_k, top_p))
    import importlib
    import jax

    filter_logits = importlib.import_module(f"dlzoo.zoo.{framework}.gpt").filter_logits
    if framework == "equinox":  # equinox maps one example: vmap over the rows
        return np.asarray(jax.vmap(lambda x: filter_logits(x, temperature, top_k, top_p))(logits))
    return np.asarray(filter_logits(logits, temperature, top_k, top_p))


@pytest.mark.parametrize("framework", FRAMEWORKS, ids=framework_id)
@pytest.mark.parametrize(
    "temperature, top_k, top_p", [(0.7, None, None), (1.0, 5, None), (1.3, None, 0.9), (0.8, 20, 0.5), (1.0, None, 0.05), (2.0, 1, None)]
)
def test_sampling_filters_match_transformers_warpers(framework, temperature, top_k, top_p):
    """Temperature, then top-k, then top-p, as transformers' generate applies its warpers."""
    import torch
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    logits = np.random.default_rng(3).standard_normal((6, 99)).astype(np.float32) * 3
    want = TemperatureLogitsWarper(temperature)(None, torch.from_numpy(logits))
    if top_k is not None:
        want = TopKLogitsWarper(top_k)(None, want)
    if top_p is not None:
        want = TopPLogitsWarper(top_p)(None, want)
    want = want.numpy()
    got = _filter(framework, logits, temperature, top_k, top_p)
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want), err_msg=f"{framework}: kept tokens differ")
    kept = ~np.isneginf(want)
    assert max_abs(got[kept], want[kept]) <= 1e-6


@pytest.mark.parametrize("framework", FRAMEWORKS, ids=framework_id)
def test_sampled_tokens_come_from_the_filtered_set(framework, handle):
    """Each sampled token is among the top-k of the logits a full recompute gives at its step,
    and inside the top-p nucleus; the same seed gives the same tokens; top_k=1 is greedy."""
    h = handle("gpt", framework)
    ids, mask = _left_padded(13)
    new = 6
    sampled = h.generate(ids, mask, max_new_tokens=new, temperature=1.5, top_k=4, seed=5)
    np.testing.assert_array_equal(sampled, h.generate(ids, mask, max_new_tokens=new, temperature=1.5, top_k=4, seed=5))
    full_mask = np.concatenate([mask, np.ones((B, new), np.int32)], 1)
    logits = h.apply({"input_ids": sampled, "attention_mask": full_mask})["logits"]
    for t in range(T, T + new):
        top4 = np.argsort(-logits[:, t - 1], axis=-1)[:, :4]
        assert all(sampled[b, t] in top4[b] for b in range(B)), f"step {t}: a token outside the top 4"
    nucleus = h.generate(ids, mask, max_new_tokens=new, temperature=1.0, top_p=0.3, seed=6)
    logits = h.apply({"input_ids": nucleus, "attention_mask": full_mask})["logits"]
    for t in range(T, T + new):
        probs = np.exp(logits[:, t - 1] - logits[:, t - 1].max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        for b in range(B):
            above = probs[b][probs[b] > probs[b, nucleus[b, t]]].sum()  # mass of more likely tokens
            assert above < 0.3 + 1e-5, f"step {t} row {b}: token outside the 0.3 nucleus"
    greedy = h.generate(ids, mask, max_new_tokens=new)
    np.testing.assert_array_equal(h.generate(ids, mask, max_new_tokens=new, temperature=0.9, top_k=1, seed=7), greedy)


@pytest.mark.parametrize("framework", FRAMEWORKS, ids=framework_id)
def test_sampling_follows_the_softmax(framework, handle):
    """One new token for 2,000 copies of one prompt at temperature 1.3: every token's frequency
    is within 5 standard errors of softmax(logits / 1.3)."""
    h = handle("gpt", framework)
    n = 2000
    prompt = _left_padded(14)[0][:1]
    logits = h.apply({"input_ids": prompt})["logits"][0, -1].astype(np.float64) / 1.3
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    tokens = h.generate(np.repeat(prompt, n, 0), max_new_tokens=1, temperature=1.3, seed=8)[:, -1]
    freq = np.bincount(tokens, minlength=probs.size) / n
    bound = 5 * np.sqrt(probs * (1 - probs) / n) + 1.0 / n
    assert np.all(np.abs(freq - probs) <= bound), np.max(np.abs(freq - probs) - bound)
