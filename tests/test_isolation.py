"""dlzoo with only some frameworks installed: what is installed works end to end (CLI, create_model,
from_pretrained on a published folder, a forward pass), and every framework that is not
installed is one clear error naming the extra to install.

Each single-framework nox session installs one extra and sets ``DLZOO_EXPECT_FRAMEWORKS`` to it
(``core``: to nothing), so the test also proves the session really holds only that framework. In
an environment with everything, absence is simulated in a fresh process in which the framework's
package cannot be imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dlzoo
from dlzoo.zoo import get_config, hub, weights
from dlzoo.zoo.frameworks import EXTRAS, FRAMEWORKS, installed_frameworks

INSTALLED = installed_frameworks()
EXPECTED = os.environ.get("DLZOO_EXPECT_FRAMEWORKS")
# The package whose absence makes each framework unavailable.
PACKAGE = {"torch": "torch", "flax": "flax", "equinox": "equinox", "haiku": "haiku", "keras": "keras"}


def test_environment_holds_exactly_the_expected_frameworks():
    if EXPECTED is None:
        pytest.skip("DLZOO_EXPECT_FRAMEWORKS is set only by the single-framework nox sessions")
    assert INSTALLED == [f for f in EXPECTED.split(",") if f]


def _cli(*args: str, hide: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if hide:
        site = Path(cwd) / "hide"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(f"import sys\nsys.modules[{hide!r}] = None\n")
        env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "dlzoo.cli", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_missing_framework_is_one_line_naming_its_extra(framework, tmp_path):
    """`verify -f F` and `doctor ARCH -f F` for a framework that is not installed (really, or
    hidden in a fresh process) fail at once with one error line that names `dlzoo[<extra>]`."""
    hide = None if framework not in INSTALLED else PACKAGE[framework]
    extra = EXTRAS[framework]
    for args in (["verify", "vit", "-f", framework], ["doctor", "vit", "-f", framework]):
        result = _cli(*args, hide=hide, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert f"dlzoo[{extra}]" in lines[0] or ("dlzoo[" in lines[0] and framework == "keras"), lines[0]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_python_api_names_the_extra(framework, tmp_path):
    """dlzoo.create_model for a framework that is not installed (really, or hidden in a fresh
    process) raises ZooError naming the extra."""
    hide = f"import sys; sys.modules[{PACKAGE[framework]!r}] = None; " if framework in INSTALLED else ""
    code = (
        f"{hide}import dlzoo\nfrom dlzoo.zoo import ZooError\ntry:\n    dlzoo.create_model('vit', framework={framework!r})"
        "\nexcept ZooError as error:\n    print(error)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"pip install 'dlzoo[{EXTRAS[framework]}]'" in result.stdout, result.stdout


@pytest.mark.parametrize("framework", INSTALLED)
def test_an_installed_framework_works_end_to_end(framework, tmp_path):
    """The CLI's info, create_model, and from_pretrained on a published folder written with numpy
    alone: the loaded weights are the folder's, and the model runs."""
    result = _cli("info", "vit", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config = get_config("gpt", "tiny")
    tensors = weights.random_tensors("gpt", config, seed=3)
    folder = hub.export("gpt", config, tensors, tmp_path / "gpt")
    handle = dlzoo.zoo.from_pretrained(folder, framework=framework)
    loaded = handle.state_dict()
    assert all(np.array_equal(loaded[k], v) for k, v in tensors.items())
    logits = handle.apply({"input_ids": np.arange(12, dtype=np.int32).reshape(2, 6)})["logits"]
    assert logits.shape == (2, 6, config.vocab_size) and np.isfinite(logits).all()
    assert dlzoo.create_model("resnet", framework=framework) is not None
