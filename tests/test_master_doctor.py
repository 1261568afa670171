"""doctor: passes on a real zoo model, and each check fails on a model with the bug it targets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from dlzoo.agents import doctor
from dlzoo.agents.cli import register
from dlzoo.zoo import installed_frameworks
from dlzoo.zoo.configs import get_config


class FakeGPT:
    """A numpy bigram LM (embedding, then output projection) with switchable bugs, behind the
    handle's interface."""

    framework = "numpy"

    def __init__(self, config, *, leak=False, scale=0.02, dead=False, noisy=False):
        rng = np.random.default_rng(0)
        self.config, self.leak, self.dead, self.noisy = config, leak, dead, noisy
        self.params = {"wte.embedding": (scale * rng.standard_normal((config.vocab_size, 32))).astype(np.float32),
                       "head.kernel": (scale * rng.standard_normal((32, config.vocab_size))).astype(np.float32),
                       "unused.kernel": np.ones((2, 2), np.float32)}
        self.calls = 0

    def _hidden(self, ids):
        e = self.params["wte.embedding"][ids]                       # (B, T, D)
        if self.leak:                                               # every position sees the whole sequence
            e = e + e.mean(axis=1, keepdims=True)
        return e

    def apply(self, inputs, train=False, seed=0):
        self.calls += 1
        logits = self._hidden(inputs["input_ids"]) @ self.params["head.kernel"]
        if self.noisy:
            logits = logits + 1e-3 * np.random.default_rng(self.calls).standard_normal(logits.shape)
        return {"logits": logits.astype(np.float32)}

    def vjp(self, inputs, cotangents, train=False, seed=0):
        ids, g = inputs["input_ids"], cotangents["logits"]       # g: (B, T, V)
        w = self.params["head.kernel"]
        head = np.einsum("btv,btd->dv", g, self._hidden(ids))       # through the output projection
        embedding = np.zeros_like(self.params["wte.embedding"])
        np.add.at(embedding, ids, g @ w.T)                          # through the lookup (leak ignored)
        grads = {"wte.embedding": embedding, "head.kernel": head.astype(np.float32),
                 "unused.kernel": np.zeros((2, 2), np.float32)}
        if not self.dead:
            grads["unused.kernel"] += 1.0
        return grads

    def state_dict(self):
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, tensors):
        self.params = {k: np.asarray(v, np.float32) for k, v in tensors.items()}
        return self


CONFIG = get_config("gpt", "tiny")


def checks(handle):
    rng = np.random.default_rng(0)
    task = doctor._Task("gpt", CONFIG, rng)
    return {
        "initial-loss": doctor._initial_loss(task, handle),
        "every-parameter-gets-gradient": doctor._gradient_coverage(task, handle, rng)[0],
        "no-future-leak": doctor._causal(task, handle, rng, CONFIG),
        "eval-deterministic": doctor._deterministic(task, handle),
        "overfit-one-batch": doctor._overfit(task, handle, steps=60, lr=0.05),
    }


def test_fake_healthy_model_passes():
    assert {k: c.passed for k, c in checks(FakeGPT(CONFIG)).items()} == dict.fromkeys(checks(FakeGPT(CONFIG)), True)


@pytest.mark.parametrize("bug, failing", [
    ({"leak": True}, "no-future-leak"),
    ({"scale": 3.0}, "initial-loss"),
    ({"dead": True}, "every-parameter-gets-gradient"),
    ({"noisy": True}, "eval-deterministic"),
])
def test_each_bug_fails_its_check(bug, failing):
    result = checks(FakeGPT(CONFIG, **bug))
    assert result[failing].passed is False, result[failing]
    assert result[failing].meaning


def test_overfit_fails_when_the_gradient_is_wrong():
    class WrongSign(FakeGPT):
        def vjp(self, inputs, cotangents, train=False, seed=0):
            return {k: -v for k, v in super().vjp(inputs, cotangents).items()}

    rng = np.random.default_rng(0)
    task = doctor._Task("gpt", CONFIG, rng)
    check = doctor._overfit(task, WrongSign(CONFIG), steps=20, lr=0.05)
    assert check.passed is False and check.numbers["final_loss"] > check.numbers["initial_loss"]


@pytest.mark.parametrize("framework", [f for f in installed_frameworks() if f == "torch"])
def test_doctor_cli_on_a_real_model(framework):
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["doctor", "--arch", "gpt", "--framework", framework, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    names = {c["name"]: c for c in report["checks"]}
    assert report["passed"] and set(names) == {"initial-loss", "every-parameter-gets-gradient", "no-future-leak",
                                               "eval-deterministic", "activation-scale", "overfit-one-batch"}
    assert names["no-future-leak"]["numbers"]["max_abs_diff"] <= 1e-5
    assert abs(names["initial-loss"]["numbers"]["loss"] - np.log(CONFIG.vocab_size)) < 0.1
    assert names["overfit-one-batch"]["numbers"]["steps_taken"] < doctor.OVERFIT_STEPS


def test_doctor_cli_errors_are_one_line():
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["doctor", "--arch", "gtp", "--framework", "torch"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "unknown architecture" in lines[0]
