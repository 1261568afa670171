"""`dlzoo doctor PROJECT` on text projects: the causal-mask and padding checks run on the
project's own model (its Engine), so a copy whose mask was broken on purpose fails the check that
names the break, and the intact project passes both.

Projects: a GPT language model and a BERT classifier, torch, tiny preset; the overfit check runs
2 steps here (the leaks are what is tested) except on the intact GPT, which passes every check
with the project's own 150 steps on four rows. About 15 s of CPU for the file.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the generated projects here run with torch")

from dlzoo.agents.doctor_project import run_project_checks  # noqa: E402


@pytest.fixture(scope="module")
def projects(tmp_path_factory) -> Path:
    from dlzoo.scaffold.generate import new_project

    parent = tmp_path_factory.mktemp("text")
    new_project("lm", arch="gpt", framework="torch", parent=parent)
    new_project("cls", arch="bert", framework="torch", task="classify", parent=parent)
    return parent


def _broken_copy(projects: Path, name: str, package: str, edits: list[tuple[str, str]], tmp_path: Path) -> Path:
    """A copy of the project with ``edits`` (old, new) applied to its model.py, each exactly once."""
    copy = tmp_path / name
    shutil.copytree(projects / name, copy)
    model = copy / package / "model.py"
    text = model.read_text()
    for old, new in edits:
        assert text.count(old) == 1, old  # the edit still finds the line it breaks
        text = text.replace(old, new)
    model.write_text(text)
    return copy


def _verdicts(path: Path, overfit_steps: int | None = 2) -> dict[str, bool | None]:
    report = run_project_checks(path, overfit_steps=overfit_steps)
    return {c["name"]: c["passed"] for c in report["checks"]} | {"_report": report}


# The GPT's attention bias is built from a lower-triangular causal mask and the padding mask;
# without an attention mask the fused kernel's own is_causal flag masks the future instead.
NO_CAUSAL_MASK = [
    (".tril(S - num_queries)  # (T, S)", "  # (T, S)"),
    ("is_causal=attn_bias is None,", "is_causal=False,"),
]
GPT_SEES_PADDING = [("allowed = causal & mask[:, None, None, :].bool()", "allowed = causal.expand(mask.shape[0], 1, -1, -1)")]
BERT_SEES_PADDING = [("x = run_block(block, x, attn_bias,", "x = run_block(block, x, None,")]


def test_intact_gpt_project_passes_both_leak_checks(projects):
    v = _verdicts(projects / "lm", overfit_steps=None)  # the project's own 150 steps: every check passes
    assert v["no-causal-leak"] is True and v["no-padding-leak"] is True
    assert v["_report"]["passed"], [c for c in v["_report"]["checks"] if c["passed"] is False]
    numbers = {c["name"]: c["numbers"] for c in v["_report"]["checks"]}
    assert numbers["no-causal-leak"]["model"] == "project" and numbers["no-causal-leak"]["max_abs_diff"] == 0.0


def test_gpt_without_causal_mask_is_caught(projects, tmp_path):
    v = _verdicts(_broken_copy(projects, "lm", "lm", NO_CAUSAL_MASK, tmp_path))
    assert v["no-causal-leak"] is False and v["model-copy-unmodified"] is False and not v["_report"]["passed"]
    leak = next(c for c in v["_report"]["checks"] if c["name"] == "no-causal-leak")
    assert leak["numbers"]["max_abs_diff"] > 1e-3


def test_gpt_attending_to_padding_is_caught(projects, tmp_path):
    v = _verdicts(_broken_copy(projects, "lm", "lm", GPT_SEES_PADDING, tmp_path))
    assert v["no-padding-leak"] is False and v["no-causal-leak"] is True  # the future is still hidden


def test_intact_bert_classifier_passes_the_padding_check(projects):
    v = _verdicts(projects / "cls")
    assert v["no-padding-leak"] is True and v["no-causal-leak"] is None  # bidirectional: not applicable
    failed = {c["name"] for c in v["_report"]["checks"] if c["passed"] is False} - {"overfit-one-batch"}  # 2 steps here
    # splits-disjoint once found identical docstrings in several splits of the default data (7
    # train texts in val, 11 in test); the project now keeps each text once, so every check passes.
    assert failed == set(), failed
    assert v["splits-disjoint"] is True


def test_bert_attending_to_padding_is_caught(projects, tmp_path):
    v = _verdicts(_broken_copy(projects, "cls", "cls", BERT_SEES_PADDING, tmp_path))
    assert v["no-padding-leak"] is False and v["model-copy-unmodified"] is False
