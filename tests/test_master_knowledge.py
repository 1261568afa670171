"""Knowledge base, theory markers, explain/ask and annotate."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from dlzoo.agents.annotate import annotate_source, find_markers, theory_markdown, write_theory_md
from dlzoo.cli import cli
from dlzoo.agents.theory import UnknownTopicError, load_knowledge, lookup, unlisted_citations, zoo_lines
from dlzoo.zoo.files import OutputExistsError

ROOT = Path(__file__).resolve().parent.parent
ZOO_FILES = sorted((ROOT / "zoo").rglob("*.py"))


@pytest.fixture(scope="module")
def app():
    return cli


def test_every_marker_in_the_zoo_has_an_entry():
    markers = [m for f in ZOO_FILES for m in find_markers(f)]
    assert len(markers) > 30, "the zoo's model files carry theory markers"
    known = load_knowledge()
    missing = sorted({f"{Path(m.path).relative_to(ROOT)}:{m.marker_line} {m.concept}" for m in markers if m.concept not in known})
    assert not missing, missing


def test_every_documented_id_has_an_entry():
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split("## Theory markers", 1)[1].split("```")[1]
    assert set(block.split()) <= set(load_knowledge())


def test_entries_are_complete():
    entries = load_knowledge()
    for entry in entries.values():
        assert entry.title and len(entry.brief) > 80 and len(entry.full) > 400 and entry.math
        assert entry.papers and all(1900 < p.year < 2030 and p.title for p in entry.papers)
        assert len(entry.misconceptions) >= 2 and entry.aliases
        assert set(entry.related) <= set(entries), entry.id


@pytest.mark.parametrize(
    "topic, expected",
    [
        ("sdpa", "scaled-dot-product-attention"),
        ("Pre-LN", "pre-ln-vs-post-ln"),
        ("bn momentum", "batch-norm"),
        ("layer normalisation", "layer-norm"),
        ("atention", "scaled-dot-product-attention"),
        ("lottery tickets", "lottery-ticket"),
        ("AdamW", "adamw"),
        ("gelu_new", "gelu"),
    ],
)
def test_lookup_aliases_and_fuzzy(topic, expected):
    assert lookup(topic).id == expected


def test_unknown_topic_is_a_one_line_error_with_the_nearest(app):
    with pytest.raises(UnknownTopicError, match="nearest: "):
        lookup("quantum chromodynamics")
    result = CliRunner().invoke(app, ["explain", "layer nrm stuff"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "layer-norm" in lines[0]


def test_entries_have_levels_and_zoo_pointers():
    entries = load_knowledge()
    for entry in entries.values():
        assert len(entry.intro) > 80 and len(entry.practice) > 80, entry.id
        assert set(entry.zoo) <= set(entries), entry.id
        if entry.zoo:
            assert zoo_lines(entry), f"{entry.id}: its zoo pointers {entry.zoo} resolve to no marker"


def test_every_cited_paper_is_listed():
    missing = {e.id: unlisted_citations(e) for e in load_knowledge().values() if unlisted_citations(e)}
    assert not missing, missing
    # The check itself: a citation with no matching (author, year) in the list is reported.
    entry = dataclasses.replace(lookup("gelu"), full="As Nobody et al. (2031) and Hendrycks and Gimpel (2016) show.")
    assert unlisted_citations(entry) == ["Nobody et al. (2031)"]


def test_explain_levels(app):
    run = CliRunner().invoke
    intro = run(app, ["explain", "sharpness-lr", "--level", "intro"])
    standard = run(app, ["explain", "sharpness-lr"])
    deep = run(app, ["explain", "sharpness-lr", "--level", "deep"])
    assert intro.exit_code == standard.exit_code == deep.exit_code == 0
    assert "Math (LaTeX)" not in intro.output and "In practice:" in intro.output
    assert "Math (LaTeX)" in standard.output and "Derivations" not in standard.output
    assert "zoo/torch/__init__.py:" in standard.output and "zoo/flax/" not in standard.output
    assert "Derivations and details:" in deep.output and "Jury conditions" in deep.output
    assert all(f"zoo/{f}/" in deep.output for f in ("torch", "flax", "equinox", "haiku", "keras"))
    assert len(intro.output) < len(standard.output) < len(deep.output)
    bad = run(app, ["explain", "gelu", "--level", "expert"])
    assert bad.exit_code == 2 and "expert" in bad.output


def _heavy_ball_diverges(eta: float, lam: float, beta: float, steps: int = 4000) -> bool:
    x_prev = x = 1.0
    for _ in range(steps):
        x, x_prev = x - eta * lam * x + beta * (x - x_prev), x
        if abs(x) > 1e6:
            return True
    return False


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 0.99])
def test_stated_stability_bound_holds_for_full_batch_heavy_ball(beta):
    """sharpness-lr states eta * lambda < 2(1 + beta) for heavy-ball momentum (2/lambda at beta=0)."""
    lam, bound = 3.0, 2 * (1 + beta) / 3.0
    assert not _heavy_ball_diverges(0.98 * bound, lam, beta)
    assert _heavy_ball_diverges(1.02 * bound, lam, beta)
    entry = lookup("sharpness-lr")
    assert "full-batch" in entry.brief and "2(1+beta)" in entry.brief
    assert "not sufficient" in entry.full and "38/eta" in entry.full


def test_residual_gradient_formula_is_restricted_to_the_identity_form():
    entry = lookup("residual-connections")
    assert "identity form only" in entry.math
    assert "v1.5 ResNet the block is x_{l+1} = ReLU(x_l + F(x_l))" in " ".join(entry.full.split())


def test_annotate_places_explanations_and_stays_python(tmp_path, app):
    source = tmp_path / "m.py"
    source.write_text("import math\n\n# theory: layer-norm\nx = 1\ny = math.sqrt(2)  # theory: scaled-dot-product-attention\n")
    brief = annotate_source(source)
    lines = brief.splitlines()
    assert lines[3].startswith("#   | Layer normalisation") and lines[lines.index("x = 1") - 1].startswith("#   |")
    sdpa = next(i for i, line in enumerate(lines) if line.startswith("y = "))
    assert "Scaled dot-product attention" in "\n".join(lines[:sdpa]) and lines[sdpa - 1].startswith("#   |")
    full = annotate_source(source, level="full")
    assert "papers: " in full and "math: " in full and len(full) > 3 * len(brief)
    ast.parse(full)
    result = CliRunner().invoke(app, ["annotate", str(source), "--level", "full"])
    assert result.exit_code == 0 and result.output == full
    source.write_text("x = 1  # theory: no-such-concept\n")
    result = CliRunner().invoke(app, ["annotate", str(source)])
    assert result.exit_code == 2 and "no-such-concept" in result.output


@pytest.mark.parametrize("framework", ["torch"])
def test_theory_md_in_reading_order_with_links(tmp_path, app, framework):
    out = tmp_path / "THEORY.md"
    result = CliRunner().invoke(app, ["annotate", "--arch", "gpt", "--framework", framework, "--theory-md", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    model = ROOT / "zoo" / framework / "gpt.py"
    markers = find_markers(model)
    first_seen = list(dict.fromkeys(m.concept for m in markers))
    headings = re.findall(r'<a id="([a-z0-9-]+)"></a>', text)
    assert headings[: len(first_seen)] == first_seen
    for m in markers:
        assert f"gpt.py:{m.line}](" in text
    assert "$$" in text and "Papers:" in text
    with pytest.raises(OutputExistsError, match="already exists"):  # the folder's THEORY.md is out, above
        write_theory_md("gpt", framework, tmp_path)
    assert out.read_text() == text
    assert write_theory_md("gpt", framework, tmp_path, overwrite=True).name == "THEORY.md"
    with pytest.raises(Exception, match="does not exist"):
        theory_markdown([tmp_path / "missing.py"], "x")
