"""The handle's compiled paths compile once: a changing learning rate or repeated calls with the
same shapes never recompile (a schedule that recompiles costs seconds per step instead of ms)."""

import contextlib
import os

import numpy as np
import pytest

from dlzoo.zoo import installed_frameworks, load

JAX_FRAMEWORKS = [f for f in ("flax", "equinox", "haiku") if f in installed_frameworks()]
if "keras" in installed_frameworks() and os.environ.get("KERAS_BACKEND") == "jax":
    JAX_FRAMEWORKS.append("keras")


@contextlib.contextmanager
def _count_compiles():
    import jax
    from jax._src import dispatch

    compiles = []

    def listener(event, duration, **kwargs):
        if event == dispatch.BACKEND_COMPILE_EVENT:
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield compiles
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


@pytest.mark.parametrize("framework", JAX_FRAMEWORKS)
def test_adamw_step_compiles_once_across_learning_rates(framework):
    handle = load("gpt", framework, config="tiny")
    inputs = {"input_ids": np.arange(16, dtype=np.int32).reshape(2, 8)}
    cotangents = {"logits": np.ones((2, 8, handle.config.vocab_size), np.float32)}
    handle.adamw_step(inputs, cotangents, lr=1e-3)
    handle.apply(inputs)
    before = handle.state_dict()
    with _count_compiles() as compiles:
        for lr in (2e-3, 3e-3, 5e-4):
            handle.adamw_step(inputs, cotangents, lr=lr)
        handle.apply(inputs)
        handle.apply(inputs)
    assert compiles == [], f"{framework}: {len(compiles)} compilations for new learning rates / repeated apply"
    assert any(not np.array_equal(before[k], v) for k, v in handle.state_dict().items())  # the steps did step
