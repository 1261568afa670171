"""Fit the decline rule of ``dlzoo ask`` on the tuning material: ``python -m dlzoo.agents.ask_fit``.

The rule (agents/ask.py, ``DECLINE_*``) is a logistic regression over ``decline_features``: each
in-scope question of the tuning material is a negative, each out-of-scope one a positive. The
features are standardised for the fit (so the L2 penalty treats them alike) and the coefficients
mapped back to raw features. The threshold on the log-odds is the lowest one that declines at most
``MAX_IN_SCOPE_DECLINED`` of the tuning in-scope questions. Fitting needs scikit-learn (a
development dependency); answering a question does not.

Only the files in ``TUNING_SETS`` are read; the held-out sets written later (ask_heldout5.toml, ...)
are never used here. The script prints the constants to paste into agents/ask.py and the rates
they give on each tuning file.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from .ask import DECLINE_FEATURES, _index, decline_features, expand, rank

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
# Held-out 2/3/4 were measured and reported before they became tuning material (docs/ask.md).
TUNING_SETS = ("tuning", "tuning2", "heldout", "heldout2", "heldout3", "heldout4")
MAX_IN_SCOPE_DECLINED = 0.02
C = 1.0  # inverse L2 strength on standardised features


def _questions(names=TUNING_SETS) -> list[tuple[str, str, bool]]:
    """(set name, question, out of scope) for every question of the named sets."""
    out = []
    for name in names:
        with open(DATA / f"ask_{name}.toml", "rb") as f:
            data = tomllib.load(f)
        out += [(name, item["q"], False) for item in data.get("in_scope", [])]
        out += [(name, item["q"], True) for item in data.get("out_of_scope", [])]
    return out


def fit(names=TUNING_SETS, max_in_scope_declined: float = MAX_IN_SCOPE_DECLINED, c: float = C) -> dict:
    """Weights, bias and log-odds threshold of the decline rule fitted on the named question sets.

    Questions with no matching word at all are declined before the rule and left out of the fit.
    Returns ``{"weights": tuple, "bias": float, "threshold": float}`` in ``DECLINE_FEATURES`` order.
    """
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    _index()
    rows, labels = [], []
    for _, question, outside in _questions(names):
        ranked = rank(question, k=3)
        if ranked:
            features = decline_features(expand(question), ranked)
            rows.append([features[n] for n in DECLINE_FEATURES])
            labels.append(outside)
    x, y = np.array(rows), np.array(labels)
    mean, sd = x.mean(axis=0), x.std(axis=0)
    model = LogisticRegression(C=c, max_iter=10_000).fit((x - mean) / sd, y)
    weights = model.coef_[0] / sd
    bias = float(model.intercept_[0] - (model.coef_[0] * mean / sd).sum())
    logits = x @ weights + bias
    inside = np.sort(logits[~y])[::-1]
    allowed = int(np.floor(max_in_scope_declined * len(inside)))  # in-scope questions that may be declined
    threshold = float(inside[allowed]) if allowed < len(inside) else float(inside[-1])
    return {"weights": tuple(round(float(w), 4) for w in weights), "bias": round(bias, 4), "threshold": round(threshold, 4)}


def main() -> None:
    missing = [name for name in TUNING_SETS if not (DATA / f"ask_{name}.toml").is_file()]
    if missing:
        raise SystemExit(f"error: the tuning sets {missing} are not in {DATA}; run this from a dlzoo source checkout")
    result = fit()
    print(f"DECLINE_WEIGHTS = {result['weights']}")
    print(f"DECLINE_BIAS = {result['bias']}")
    print(f"DECLINE_LOGIT = {result['threshold']}")


if __name__ == "__main__":
    main()
