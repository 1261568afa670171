"""`dlzoo explain --paper`: every paper's equations and differences map to zoo lines that carry
the theory marker, in every framework, found at run time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from dlzoo.agents.annotate import MARKER
from dlzoo.agents.papers import FRAMEWORKS, Claim, load_papers, lookup_paper, resolve
from dlzoo.cli import cli

ROOT = Path(__file__).resolve().parent.parent
PAPERS = load_papers()


def test_the_papers_behind_the_zoo_are_there():
    for required in ("transformer", "bert", "gpt2", "resnet", "vit", "layer-norm", "adam", "adamw", "gelu"):
        assert required in PAPERS
    assert lookup_paper("Attention Is All You Need").id == "transformer"
    assert lookup_paper("GPT-2").id == "gpt2" and lookup_paper("resnet v1.5").id == "bag-of-tricks"
    differences = {p.id: " ".join(d.name for d in p.differences) for p in PAPERS.values()}
    assert "Pre-LN" in differences["transformer"] and "v1.5" in differences["resnet"]
    assert all(d.why and d.zoo for p in PAPERS.values() for d in p.differences)


@pytest.mark.parametrize("paper_id", sorted(PAPERS))
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_every_mapped_line_exists_and_carries_the_marker(paper_id, framework):
    paper = PAPERS[paper_id]
    for claim in paper.claims + paper.differences:
        if not claim.concept:
            continue
        locations = resolve(claim, framework)
        assert locations, f"{paper_id}: {claim.name!r} has no `# theory: {claim.concept}` line in zoo/{framework}"
        for loc in locations:
            lines = (ROOT / loc.file).read_text().splitlines()
            marker = MARKER.search(lines[loc.marker_line - 1])
            assert marker and claim.concept in [c.strip() for c in marker.group(1).split(",")], (paper_id, loc)
            assert lines[loc.line - 1].strip() == loc.code and loc.code and not loc.code.startswith("#")
    assert sum(bool(c.concept) for c in paper.claims) >= 1


def test_model_specific_lines_win_over_the_shared_block():
    bert_post_ln = next(d for d in PAPERS["bert"].claims if d.concept == "pre-ln-vs-post-ln")
    assert [loc.file for loc in resolve(bert_post_ln)] == ["zoo/torch/bert.py"]
    gpt_pre_ln = next(d for d in PAPERS["gpt2"].claims if d.concept == "pre-ln-vs-post-ln")
    assert [loc.file for loc in resolve(gpt_pre_ln)] == ["zoo/torch/layers.py"]


def test_lines_follow_the_markers_not_stored_numbers(tmp_path):
    """In a generated project (model.py copied from the zoo) lines are found the same way."""
    package = tmp_path / "proj" / "mypkg"
    package.mkdir(parents=True)
    source = (ROOT / "zoo" / "torch" / "resnet.py").read_text()
    (package / "model.py").write_text("# a header line\n" * 7 + source)
    claim = next(c for c in PAPERS["resnet"].differences if c.concept == "bottleneck-block")
    zoo_line = resolve(claim)[0].line
    project = resolve(claim, root=tmp_path / "proj", project_arch="resnet")
    assert [(loc.file, loc.line) for loc in project] == [("mypkg/model.py", zoo_line + 7)]
    assert resolve(claim, root=tmp_path / "proj", project_arch="gpt") == []
    assert resolve(Claim(name="x", paper="y"), "torch") == []


def test_cli_text_json_and_unknown_id():
    run = CliRunner().invoke
    result = run(cli, ["explain", "--paper", "transformer"])
    assert result.exit_code == 0 and "zoo/torch/layers.py:" in result.output
    assert "Where the zoo deliberately differs from the paper:" in result.output and "why:" in result.output
    result = run(cli, ["explain", "--paper", "resnet", "--framework", "all", "--json"])
    data = json.loads(result.output)
    assert result.exit_code == 0 and set(data) == {"id", "title", "authors", "year", "summary", "claims", "differences"}
    frameworks = {line["framework"] for claim in data["claims"] for line in claim["lines"]}
    assert frameworks == set(FRAMEWORKS)
    result = run(cli, ["explain", "--paper", "no-such-paper"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    assert all(pid in lines[0] for pid in PAPERS)
    result = run(cli, ["explain", "--paper", "list"])
    assert result.exit_code == 0 and len(result.output.splitlines()) == len(PAPERS)
    result = run(cli, ["explain", "--paper", "bert", "--framework", "mxnet"])
    assert result.exit_code == 2 and "mxnet" in result.output
