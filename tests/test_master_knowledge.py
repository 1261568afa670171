"""Knowledge base, theory markers, explain/ask and annotate."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from dlzoo.agents.annotate import annotate_source, find_markers, theory_markdown, write_theory_md
from dlzoo.agents.ask import ask
from dlzoo.cli import cli
from dlzoo.zoo.files import OutputExistsError
from dlzoo.agents.theory import UnknownTopicError, load_knowledge, lookup

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


@pytest.mark.parametrize("topic, expected", [
    ("sdpa", "scaled-dot-product-attention"), ("Pre-LN", "pre-ln-vs-post-ln"), ("bn momentum", "batch-norm"),
    ("layer normalisation", "layer-norm"), ("atention", "scaled-dot-product-attention"),
    ("lottery tickets", "lottery-ticket"), ("AdamW", "adamw"), ("gelu_new", "gelu"),
])
def test_lookup_aliases_and_fuzzy(topic, expected):
    assert lookup(topic).id == expected


def test_unknown_topic_is_a_one_line_error_with_the_nearest(app):
    with pytest.raises(UnknownTopicError, match="nearest: "):
        lookup("quantum chromodynamics")
    result = CliRunner().invoke(app, ["explain", "layer nrm stuff"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "layer-norm" in lines[0]


PARAPHRASES = {
    "why divide query-key products by the square root of the head size?": "scaled-dot-product-attention",
    "how does the network know in which order the words come?": "position-embeddings",
    "what stops a decoder from peeking at the tokens it has to predict?": "causal-masking",
    "why can very deep networks still be trained when gradients would shrink?": "residual-connections",
    "tiny changes to an input picture fool the classifier, why?": "adversarial-examples",
    "why does test error go down again when the network gets bigger?": "double-descent",
    "can a small subnetwork trained from its original weights match the full one?": "lottery-ticket",
    "why is weight decay with Adam not the same as an L2 penalty?": "adamw",
    "my loss became NaN with fp16": "mixed-precision",
    "why does the model behave differently in eval mode with running averages?": "batch-norm",
    "why does a convolutional net need fewer examples than a vision transformer?": "inductive-bias",
    "how big can steps be before the loss starts to oscillate?": "sharpness-lr",
    "why ramp the step size up at the start of training?": "lr-schedule",
    "do networks with millions of parameters memorise random labels?": "generalization-capacity",
    "does the network compress what it knows about its input?": "information-bottleneck",
    "why should the output layer reuse the input vectors of the vocabulary?": "weight-tying",
    "how are pictures turned into a sequence for a transformer?": "patch-embedding",
    "why rescale the whole update when its norm is huge?": "gradient-clipping",
    "why do the targets get a bit of probability on every class?": "label-smoothing",
    "why zero units at random while training?": "dropout",
}


@pytest.mark.parametrize("question, expected", PARAPHRASES.items())
def test_ask_answers_paraphrased_questions(question, expected):
    answers = ask(question)
    assert answers and answers[0].id == expected, [(a.id, round(a.score, 2)) for a in answers]


def test_ask_json_names_sources(app):
    result = CliRunner().invoke(app, ["ask", "why ramp the step size up at the start of training?", "--json"])
    data = json.loads(result.output)
    assert result.exit_code == 0 and data["sources"][0] == "lr-schedule"
    assert data["answers"][0]["papers"] and all(a["score"] > 0 for a in data["answers"])
    assert ask("zzzz qqqq") == []


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
    assert headings[:len(first_seen)] == first_seen
    for m in markers:
        assert f"gpt.py:{m.line}](" in text
    assert "$$" in text and "Papers:" in text
    with pytest.raises(OutputExistsError, match="already exists"):  # the folder's THEORY.md is out, above
        write_theory_md("gpt", framework, tmp_path)
    assert out.read_text() == text
    assert write_theory_md("gpt", framework, tmp_path, overwrite=True).name == "THEORY.md"
    with pytest.raises(Exception, match="does not exist"):
        theory_markdown([tmp_path / "missing.py"], "x")
