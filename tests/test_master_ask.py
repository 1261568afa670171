"""`dlzoo ask`: ranking and declining, measured on the tuning and held-out question sets.

Tuning material (docs/ask.md): ask_tuning.toml, ask_tuning2.toml, ask_heldout.toml and, from the
round that added the decline classifier on, ask_heldout2/3/4.toml (each measured once as held-out
before; those first numbers are in docs/ask.md). ask_heldout5.toml was written and committed before
that round changed anything; ask_heldout6.toml after its tuning was frozen; each was measured once,
and never tuned on. The numbers asserted below are those measurements, as exact floors, and the
issue's goals (top-1 >= 90%, in-scope declined <= 5%, out-of-scope declined >= 80%) where met.
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
NAMES = ("tuning", "tuning2", "heldout", "heldout2", "heldout3", "heldout4", "heldout5", "heldout6")


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
        if name in ("heldout5", "heldout6"):
            assert len(data["in_scope"]) >= 60 and len(data["out_of_scope"]) >= 25
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not questions[a] & questions[b], (a, b, questions[a] & questions[b])


def goals(top1: int, declined_in: int, declined_out: int, n: int, m: int) -> bool:
    return top1 / n >= 0.90 and declined_in / n <= 0.05 and declined_out / m >= 0.80


def test_fifth_held_out_set(scores):
    """ask_heldout5.toml (106 in-scope over all 49 entries, 30 out-of-scope), committed before this
    round changed anything, measured once: top-1 101/106 (95.3%), in-scope declined 4/106 (3.8%),
    out-of-scope declined 28/30 (93.3%). Every goal met."""
    top1, declined_in, declined_out = counts(scores["heldout5"])
    assert top1 >= 101 and declined_in <= 4 and goals(top1, declined_in, declined_out, 106, 30), scores["heldout5"]["misses"]
    assert declined_out >= 28, scores["heldout5"]["answered_out_of_scope"]


def test_sixth_held_out_set(scores):
    """ask_heldout6.toml (78 in-scope, 25 out-of-scope), written after the tuning was frozen,
    measured once: top-1 75/78 (96.2%), in-scope declined 2/78 (2.6%), out-of-scope declined 24/25
    (96%). Every goal met."""
    top1, declined_in, declined_out = counts(scores["heldout6"])
    assert top1 >= 75 and declined_in <= 2 and goals(top1, declined_in, declined_out, 78, 25), scores["heldout6"]["misses"]
    assert declined_out >= 24, scores["heldout6"]["answered_out_of_scope"]


@pytest.mark.parametrize(
    "names, floors",
    [
        (("tuning", "tuning2"), (98, 5, 42)),  # of 106 and 46
        (("heldout",), (70, 0, 25)),  # of 72 and 30
        (("heldout2",), (63, 0, 27)),  # of 64 and 30
        (("heldout3",), (46, 1, 20)),  # of 48 and 20
        (("heldout4",), (58, 2, 20)),  # of 64 and 20
    ],
)
def test_tuning_material(scores, names, floors):
    """What the decline rule was fitted on and the vocabulary reviewed against (docs/ask.md): the
    counts (top-1 right, in-scope declined, out-of-scope declined) as measured, and the goals."""
    got = [sum(counts(scores[name])[i] for name in names) for i in range(3)]
    n = sum(scores[name]["in_scope"] for name in names)
    m = sum(scores[name]["out_of_scope"] for name in names)
    assert got[0] >= floors[0] and got[1] <= floors[1] and got[2] >= floors[2], [scores[name]["misses"] for name in names]
    assert goals(*got, n, m)


def test_decline_rule_is_fitted_on_the_tuning_material_only():
    """agents/ask_fit.py refits the constants in agents/ask.py from the tuning material alone."""
    from dlzoo.agents import ask as module
    from dlzoo.agents.ask_fit import TUNING_SETS, fit

    assert "heldout5" not in TUNING_SETS and "heldout6" not in TUNING_SETS
    result = fit()
    assert result["weights"] == pytest.approx(module.DECLINE_WEIGHTS, abs=2e-3)
    assert result["bias"] == pytest.approx(module.DECLINE_BIAS, abs=2e-3)
    assert result["threshold"] == pytest.approx(module.DECLINE_LOGIT, abs=2e-3)


def _weights(terms: dict[str, float]) -> list[float]:
    from dlzoo.agents.ask import _index

    index = _index()
    return [w * index.idf.get(t, index.max_idf) for t, w in terms.items()]


def test_decline_features():
    from dlzoo.agents.ask import decline_features, decline_logit, rank

    question = "how does yolo predict anchor boxes for object detection"
    terms = expand(question)
    features = decline_features(terms, rank(question))
    assert set(features) == {"coverage", "log_score", "lead", "unknown_share", "max_uncovered", "max_covered"}
    assert 0 <= features["lead"] <= 1 and features["max_uncovered"] > features["max_covered"]
    # "yolo" is in no entry: the only unknown word and the strongest missing one; declined
    assert features["unknown_share"] == pytest.approx(features["max_uncovered"] / sum(_weights(terms)))
    assert answer(question).declined and decline_logit(features) > 0
    inside = "why divide attention scores by sqrt of d_k before the softmax"
    features = decline_features(expand(inside), rank(inside))
    assert features["coverage"] > 0.9 and features["unknown_share"] == 0
    assert features["max_uncovered"] < 0.2 * features["max_covered"]  # only "before" is missing
    assert not answer(inside).declined
    assert expand("grads and params of the llm")  # shorthand spelled out
    assert set(tokenize("grads params llm")) == set(tokenize("gradients parameters large language model"))


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
    import tomllib

    with open(DATA / "ask_heldout6.toml", "rb") as f:
        data = tomllib.load(f)
    questions = [item["q"] for part in ("in_scope", "out_of_scope") for item in data[part]]
    start = time.process_time()
    for question in questions:
        answer(question)
    warm = (time.process_time() - start) / len(questions)
    assert warm < 0.1, f"a question took {warm * 1000:.0f} ms of CPU on average"
