"""doctor: passes on a real zoo model, and each check fails on a model with the bug it targets."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from dlzoo.agents import doctor
from dlzoo.cli import cli
from dlzoo.zoo import installed_frameworks
from dlzoo.zoo.configs import get_config


class FakeGPT:
    """A numpy bigram LM (embedding, then output projection) with switchable bugs, behind the
    handle's interface."""

    framework = "numpy"

    def __init__(self, config, *, leak=False, scale=0.02, dead=False, noisy=False):
        rng = np.random.default_rng(0)
        self.config, self.leak, self.dead, self.noisy = config, leak, dead, noisy
        self.params = {
            "wte.embedding": (scale * rng.standard_normal((config.vocab_size, 32))).astype(np.float32),
            "head.kernel": (scale * rng.standard_normal((32, config.vocab_size))).astype(np.float32),
            "unused.kernel": np.ones((2, 2), np.float32),
        }
        self.calls = 0

    def _hidden(self, ids):
        e = self.params["wte.embedding"][ids]  # (B, T, D)
        if self.leak:  # every position sees the whole sequence
            e = e + e.mean(axis=1, keepdims=True)
        return e

    def apply(self, inputs, train=False, seed=0):
        self.calls += 1
        logits = self._hidden(inputs["input_ids"]) @ self.params["head.kernel"]
        if self.noisy:
            logits = logits + 1e-3 * np.random.default_rng(self.calls).standard_normal(logits.shape)
        return {"logits": logits.astype(np.float32)}

    def vjp(self, inputs, cotangents, train=False, seed=0):
        ids, g = inputs["input_ids"], cotangents["logits"]  # g: (B, T, V)
        w = self.params["head.kernel"]
        head = np.einsum("btv,btd->dv", g, self._hidden(ids))  # through the output projection
        embedding = np.zeros_like(self.params["wte.embedding"])
        np.add.at(embedding, ids, g @ w.T)  # through the lookup (leak ignored)
        grads = {"wte.embedding": embedding, "head.kernel": head.astype(np.float32), "unused.kernel": np.zeros((2, 2), np.float32)}
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


@pytest.mark.parametrize(
    "bug, failing",
    [
        ({"leak": True}, "no-future-leak"),
        ({"scale": 3.0}, "initial-loss"),
        ({"dead": True}, "every-parameter-gets-gradient"),
        ({"noisy": True}, "eval-deterministic"),
    ],
)
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


EXPECTED_CHECKS = {"initial-loss", "every-parameter-gets-gradient", "eval-deterministic", "activation-scale", "overfit-one-batch"}
# One architecture per framework keeps the suite short; conformance holds block_outputs (what
# activation-scale reads) to transformers for every (arch, framework).
CLI_CASES = {"torch": "gpt", "flax": "bert", "equinox": "vit", "haiku": "resnet", "keras": "gpt"}


@pytest.mark.parametrize("framework", installed_frameworks())
def test_doctor_cli_on_a_real_model(framework):
    arch = CLI_CASES[framework]
    # ARCH is positional; the deprecated --arch still works (torch's case), with a note on stderr
    args = ["--arch", arch] if framework == "torch" else [arch]
    result = CliRunner().invoke(cli, ["doctor", *args, "--framework", framework, "--json"])
    assert result.exit_code == 0, result.output
    assert result.stderr == ("note: --arch is deprecated; write `dlzoo doctor gpt -f torch`\n" if framework == "torch" else "")
    report = json.loads(result.stdout)
    names = {c["name"]: c for c in report["checks"]}
    extra = {"gpt": {"no-future-leak"}, "bert": {"padding-invariance"}}.get(arch, set())
    assert report["passed"] and set(names) == EXPECTED_CHECKS | extra, result.output
    assert all(c["passed"] is True for c in report["checks"]), "every check runs in every framework"
    config = doctor.doctor_config(arch, "tiny")
    classes = config.vocab_size if arch in ("gpt", "bert") else config.num_classes
    assert abs(names["initial-loss"]["numbers"]["loss"] - np.log(classes)) < 1.0
    assert names["overfit-one-batch"]["numbers"]["steps_taken"] < doctor.OVERFIT_STEPS
    depth = sum(config.depths) if arch == "resnet" else config.num_layers
    assert len(names["activation-scale"]["numbers"]["block_output_rms"]) == depth
    if arch == "gpt":
        assert names["no-future-leak"]["numbers"]["max_abs_diff"] <= 1e-5


class Blocks:
    """A handle whose residual blocks have the given output RMS."""

    def __init__(self, rms):
        self.rms = rms

    def block_outputs(self, inputs):
        rng = np.random.default_rng(0)
        outputs = {}
        for i, r in enumerate(self.rms):
            x = rng.standard_normal((2, 8, 16))
            outputs[f"blocks.{i}"] = (r * x / np.sqrt(np.mean(x**2))).astype(np.float32)
        return outputs


@pytest.mark.parametrize(
    "rms, passed",
    [
        ([1.0, 1.3, 1.8, 2.2], True),  # pre-LN: the residual stream grows additively
        ([1.0, 10.0, 100.0, 1000.0], False),  # geometric growth
        ([1.0, 0.1, 0.01, 0.001], False),  # geometric decay
        ([1.0, float("nan"), 1.0, 1.0], False),  # a block that produces NaN
    ],
)
def test_activation_scale_flags_geometric_growth_and_decay(rms, passed):
    task = doctor._Task("gpt", CONFIG, np.random.default_rng(0))
    check = doctor._activation_scale(task, Blocks(rms))
    assert check.passed is passed, check
    if all(np.isfinite(rms)):
        assert check.numbers["max_over_min"] == pytest.approx(max(rms) / min(rms), rel=1e-3)


RESNET = get_config("resnet", "tiny")


def _resnet_weights(last_bn_gain: float) -> dict:
    """Tiny ResNet weights; ``last_bn_gain`` multiplies the scale of every block's last batch norm
    and of its shortcut's: in eval mode batch norm does not renormalise, so a gain g per block
    makes the stream grow like g**depth."""
    from dlzoo.zoo import load

    tensors = load("resnet", "torch", RESNET, seed=3).state_dict()
    last = "bn3" if RESNET.block == "bottleneck" else "bn2"
    for name in tensors:
        if name.endswith((f"{last}.scale", "downsample.bn.scale")):
            tensors[name] = tensors[name] * last_bn_gain
    return tensors


@pytest.mark.parametrize("framework", installed_frameworks())
def test_activation_scale_reads_the_same_numbers_in_every_framework(framework):
    from dlzoo.zoo import load

    task = doctor._Task("resnet", RESNET, np.random.default_rng(0))
    for gain, passed in [(1.0, True), (30.0, False)]:
        want = doctor._activation_scale(task, load("resnet", "torch", RESNET, weights=_resnet_weights(gain)))
        got = doctor._activation_scale(task, load("resnet", framework, RESNET, weights=_resnet_weights(gain)))
        assert want.passed is got.passed is passed, (gain, got)
        assert list(got.numbers["block_output_rms"]) == list(want.numbers["block_output_rms"])
        assert got.numbers["max_over_min"] == pytest.approx(want.numbers["max_over_min"], rel=1e-3)


@pytest.mark.parametrize("framework", installed_frameworks())
def test_initial_loss_passes_the_default_init_at_every_seed(framework):
    """ResNet's default head init gives the widest initial-loss spread of the zoo (see
    doctor.INIT_TOLERANCE); a correct model must not fail at an unlucky seed."""
    from dlzoo.zoo import load

    config = doctor.doctor_config("resnet", "tiny")
    for seed in range(6):
        task = doctor._Task("resnet", config, np.random.default_rng(seed))
        check = doctor._initial_loss(task, load("resnet", framework, config, seed=seed))
        assert check.passed, (seed, check)


def test_doctor_cli_errors_are_one_line():
    result = CliRunner().invoke(cli, ["doctor", "--arch", "gtp", "--framework", "torch"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "unknown architecture" in lines[0]
