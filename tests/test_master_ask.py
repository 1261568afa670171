"""`dlzoo ask`: ranking and declining, measured on the tuning and held-out question sets.

tests/data/ask_tuning.toml and ask_tuning2.toml are what the ranking was tuned on; ask_heldout.toml
was written before tuning and measured once (88.9% top-1) before its misses were used for tuning
too; ask_heldout2.toml was written after that and never tuned on; ask_heldout3.toml and
ask_heldout4.toml were each written and committed in a later session before anything else was
done, and never tuned on. docs/ask.md reports them all. The held-out numbers asserted below are
the ones measured once, after the general-English word weights were tuned (as floors).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from dlzoo.agents.ask import answer, ask, evaluate, expand, informativeness, tokenize
from dlzoo.cli import cli

DATA = Path(__file__).resolve().parent / "data"
NAMES = ("tuning", "tuning2", "heldout", "heldout2", "heldout3", "heldout4")


def counts(result: dict) -> tuple[int, int, int]:
    """(top-1 right, in-scope declined, out-of-scope declined) as counts, so floors are exact."""
    n, m = result["in_scope"], result["out_of_scope"]
    return round(result["top1"] * n), round(result["in_scope_declined"] * n), round(result["out_of_scope_declined"] * m)


@pytest.fixture(scope="module")
def scores():
    return {name: evaluate(DATA / f"ask_{name}.toml") for name in NAMES}


def test_sets_are_large_enough_and_disjoint():
    import tomllib

    questions = {}
    names = NAMES
    for name in names:
        with open(DATA / f"ask_{name}.toml", "rb") as f:
            data = tomllib.load(f)
        questions[name] = {item["q"].lower() for part in ("in_scope", "out_of_scope") for item in data[part]}
        if name in ("heldout", "heldout2"):
            assert len(data["in_scope"]) >= 60 and len(data["out_of_scope"]) >= 30
        if name in ("heldout3", "heldout4"):
            assert len(data["in_scope"]) >= 40 and len(data["out_of_scope"]) >= 15
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not questions[a] & questions[b], (a, b, questions[a] & questions[b])


def test_held_out_accuracy_and_declining(scores):
    """ask_heldout2.toml (64 in-scope, 30 out-of-scope), never tuned on: top-1 61/64 (95.3%), in-scope
    declined 3/64 (4.7%), out-of-scope declined 23/30 (76.7%). Top-1 (>= 90%) and in-scope declined
    (<= 5%) goals met; out-of-scope (>= 80%) not: it was 24/30 with the previous weights."""
    top1, declined_in, declined_out = counts(scores["heldout2"])
    assert top1 >= 61 and top1 / 64 >= 0.90 and declined_in <= 3 and declined_in / 64 <= 0.05, scores["heldout2"]["misses"]
    assert declined_out >= 23, scores["heldout2"]["answered_out_of_scope"]
    first = scores["heldout"]  # tuned on by an earlier session: a regression check only
    assert first["top1"] >= 0.90 and first["out_of_scope_declined"] >= 0.80 and first["in_scope_declined"] <= 0.05


def test_third_held_out_set_as_measured(scores):
    """ask_heldout3.toml (48 in-scope, 20 out-of-scope), never tuned on: top-1 40/48 (83.3%; 77.1%
    before the informativeness weights), in-scope declined 5/48 (10.4%; was 14.6%), out-of-scope
    declined 19/20 (95%). Only the out-of-scope goal is met (docs/ask.md)."""
    top1, declined_in, declined_out = counts(scores["heldout3"])
    assert declined_out >= 19 and declined_out / 20 >= 0.80, scores["heldout3"]["answered_out_of_scope"]
    assert top1 >= 40 and declined_in <= 5, scores["heldout3"]["misses"]


def test_fourth_held_out_set_as_measured(scores):
    """ask_heldout4.toml (64 in-scope, 20 out-of-scope), committed before the tuning and never tuned
    on (its per-question results were not read): top-1 50/64 (78.1%), in-scope declined 9/64
    (14.1%), out-of-scope declined 19/20 (95%). Only the out-of-scope goal is met (docs/ask.md)."""
    top1, declined_in, declined_out = counts(scores["heldout4"])
    assert declined_out >= 19 and declined_out / 20 >= 0.80
    assert top1 >= 50 and declined_in <= 9


def test_tuning_sets(scores):
    """What the weights and thresholds were tuned on (106 in-scope, 46 out-of-scope together):
    top-1 101/106 (95.3%), in-scope declined 2/106, out-of-scope declined 39/46 (84.8%)."""
    a, b = counts(scores["tuning"]), counts(scores["tuning2"])
    assert a[0] + b[0] >= 101 and a[1] + b[1] <= 2 and a[2] + b[2] >= 39, (scores["tuning"], scores["tuning2"])


@pytest.mark.parametrize(
    "question, expected",
    [
        ("Why does my transformer converge faster than my CNN on the same task?", "inductive-bias"),
        ("Explain BERT pretraining theory", "masked-lm"),
        ("My model's loss suddenly spiked at epoch 50", "loss-plateaus-spikes"),
        ("my loss is stuck on a plateau for thousands of steps", "loss-plateaus-spikes"),
        ("how is backprop derived", "backpropagation"),
        ("how many tokens should I train an llm on for its size", "scaling-laws"),
        ("vanishing gradients in deep networks", "vanishing-exploding-gradients"),
    ],
)
def test_the_issue_examples_and_vocabulary_gaps(question, expected):
    assert ask(question)[0].id == expected


def test_inflections_generic_words_and_typos():
    assert tokenize("spiked")[0] == tokenize("spikes")[0] == tokenize("spike")[0]
    assert tokenize("normalisation") == tokenize("normalization")
    weights = expand("explain the theory in this paper about epoch 50 lerning")
    assert all(weights[t] == 0 for t in tokenize("explain theory paper epoch"))
    # typo matched to the knowledge base's word, at 0.8 of that word's weight
    assert weights[tokenize("learning")[0]] == pytest.approx(0.8 * informativeness("learning"))
    assert tokenize("three")[0] not in expand("what is a decision tree")  # short words are not typos
    # a common English word missing from the knowledge base is a word, not a typo ("summer" ~ "summed")
    assert tokenize("summer")[0] in expand("train on summer photos")


def test_general_english_informativeness():
    """Common words weigh little, topical words fully, numbers nothing (wordfreq Zipf scale)."""
    for common, topical in [("before", "gradient"), ("middle", "spikes"), ("big", "softmax"), ("starts", "warmup")]:
        assert informativeness(common) < 0.65 * informativeness(topical), (common, topical)
    assert informativeness("the") == 0 and informativeness("50") == 0 and informativeness("2.3") == 0
    assert informativeness("zzqxv") == 1  # unknown to general English: as informative as it gets
    weights = expand("loss spikes in the middle of training")
    assert weights[tokenize("spikes")[0]] > 1.5 * weights[tokenize("middle")[0]]
    assert tokenize("billion")[0] in expand("how much compute for a 1b model")  # magnitudes spelled out


def test_classifier_is_not_the_cls_entry():
    assert ask("tiny changes to an input picture fool the classifier, why?")[0].id == "adversarial-examples"
    assert "cls" not in expand("image classifier")


def test_decline_offers_related_entries_and_exits_1():
    response = answer("how do graph databases index their nodes for fast lookups in sql")
    assert response.declined and not response.answers and response.reason
    result = CliRunner().invoke(cli, ["ask", "how does a random forest choose which feature to split on"])
    assert result.exit_code == 1 and result.output.startswith("I don't know:")
    assert "Related: " in result.output
    result = CliRunner().invoke(cli, ["ask", "what is the capital of Australia?", "--json"])
    data = json.loads(result.output)
    assert result.exit_code == 1 and data["declined"] is True and data["answers"] == [] and data["sources"] == []
    assert ask("zzzz qqqq") == []


def test_json_schema_for_an_answer():
    result = CliRunner().invoke(cli, ["ask", "why ramp the step size up at the start of training?", "--json", "-k", "2"])
    data = json.loads(result.output)
    assert result.exit_code == 0 and data["declined"] is False and data["sources"][0] == "lr-schedule"
    assert set(data) == {"question", "declined", "reason", "answers", "sources", "related"}
    assert len(data["answers"]) == 2 and data["related"] == []
    first = data["answers"][0]
    assert set(first) == {"id", "title", "score", "coverage", "brief", "passage", "papers"}
    assert first["papers"] and 0.5 <= first["coverage"] <= 1 and first["score"] > 0


def test_answers_are_deterministic_and_fast():
    from dlzoo.agents import ask as module

    module._index.cache_clear()
    start = time.process_time()  # CPU time: wall time on a shared CI machine measures the neighbours
    first = [a.to_dict() for a in ask("why does SGD noise act as a regularizer")]
    cold = time.process_time() - start
    assert first == [a.to_dict() for a in ask("why does SGD noise act as a regularizer")]
    assert cold < 1.0, f"first question took {cold:.2f} s of CPU (index build included)"
