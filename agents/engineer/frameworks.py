"""Framework choice: rank torch, flax, equinox, haiku and keras for the stated needs.

Deterministic and offline. A framework's score is the sum of its levels for the stated needs
(facts.toml ``[need.*]``), the baseline levels that apply to every project (``[baseline]``) and
the architecture-specific adjustments (``[[adjust]]``). A hard need is a constraint: a framework
whose level for it is below 1 violates it and is ranked after every framework that violates
none; if no framework meets all the hard needs, that is an error, never a silent pick. Ties are
broken by dlzoo's registry order (torch, flax, equinox, haiku, keras), and the output says so.
Every reason names the need it answers and the fact rows behind it.
"""

from __future__ import annotations

from typing import Any, Iterable

from ...zoo.configs import ZooError, check_arch
from ...zoo.frameworks import FRAMEWORKS, installed_frameworks
from .facts import load

INSTALLED_ONLY = "installed-only"


def vocabulary() -> list[str]:
    """Every accepted ``--need``, in the table's order."""
    return list(load().needs)


def check_needs(needs: Iterable[str]) -> list[str]:
    """The needs, deduplicated in the order given; an unknown one is a ZooError listing the
    vocabulary."""
    table = load()
    out: list[str] = []
    for need in needs:
        if need not in table.needs:
            raise ZooError(f"unknown need {need!r}; expected one of: {', '.join(table.needs)}")
        if need not in out:
            out.append(need)
    return out


def recommend_frameworks(arch: str | None = None, needs: Iterable[str] = (), *, installed: Iterable[str] | None = None) -> dict[str, Any]:
    """The ranking as the ``--json`` dict of ``dlzoo recommend`` (schema in docs/engineer.md).

    ``installed`` overrides detection (for tests); otherwise ``installed_frameworks()`` decides,
    without importing any framework. Raises ZooError for an unknown arch or need, when
    installed-only leaves no framework, or when no framework meets every hard need.
    """
    table = load()
    if arch is not None:
        check_arch(arch)
    needs = check_needs(needs)
    present = set(installed_frameworks() if installed is None else installed)
    candidates = list(FRAMEWORKS)
    excluded = []
    if INSTALLED_ONLY in needs:
        candidates = [f for f in FRAMEWORKS if f in present]
        excluded = [{"framework": f, "reason": "not installed (need installed-only)"} for f in FRAMEWORKS if f not in present]
        if not candidates:
            raise ZooError(
                "need installed-only, but none of the five frameworks is installed here; install one, e.g. pip install 'dlzoo[torch]'"
            )
    cited: list[str] = []
    rows = []
    for framework in candidates:
        reasons, violates, score = [], [], 0
        if framework in table.baseline:
            s = table.baseline[framework]
            score += s.level
            reasons.append({"need": None, "effect": s.level, "text": s.reason, "facts": list(s.facts)})
        for need in needs:
            spec = table.needs[need]
            if not spec.support:  # installed-only: a filter, already applied
                reasons.append({"need": need, "effect": 0, "text": "installed", "facts": []})
                continue
            s = spec.support[framework]
            score += s.level
            reasons.append({"need": need, "effect": s.level, "text": s.reason, "facts": list(s.facts)})
            if spec.hard and s.level < 1:
                violates.append(need)
            for adj in table.adjust:
                if adj.need == need and adj.framework == framework and adj.arch == arch:
                    score += adj.delta
                    reasons.append({"need": need, "effect": adj.delta, "text": f"{arch}: {adj.reason}", "facts": list(adj.facts)})
        for r in reasons:
            cited += [f for f in r["facts"] if f not in cited]
        rows.append(
            {
                "framework": framework,
                "score": score,
                "eligible": not violates,
                "violates": violates,
                "installed": framework in present,
                "reasons": reasons,
            }
        )
    rows.sort(key=lambda r: (not r["eligible"], -r["score"], FRAMEWORKS.index(r["framework"])))
    if not rows[0]["eligible"]:
        hard = [n for n in needs if table.needs[n].hard and table.needs[n].support]

        def met(n: str) -> str:
            meeting = [f for f in FRAMEWORKS if table.needs[n].support[f].level >= 1]
            text = f"{n} is met by {', '.join(meeting) or 'none'}"
            if INSTALLED_ONLY in needs:
                text += f" (installed: {', '.join(f for f in meeting if f in candidates) or 'none'})"
            return text

        raise ZooError("no framework meets every hard need: " + "; ".join(met(n) for n in hard) + "; drop or change one of them")
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    notes = []
    if not needs:
        notes.append("no needs stated: only the baseline facts apply")
    ties = [r["framework"] for r in rows[1:] if r["eligible"] and r["score"] == rows[0]["score"]]
    if ties:
        notes.append(
            f"{rows[0]['framework']} ties with {', '.join(ties)} on score; ties are broken by "
            f"dlzoo's registry order ({', '.join(FRAMEWORKS)})"
        )
    return {
        "arch": arch,
        "needs": needs,
        "choice": rows[0]["framework"],
        "ranking": rows,
        "excluded": excluded,
        "notes": notes,
        "facts_checked": table.checked,
        "facts": {f: table.facts[f].to_dict() for f in cited},
    }


def choose_framework(
    arch: str | None = None, needs: Iterable[str] = (), *, installed: Iterable[str] | None = None
) -> tuple[str, list[str]]:
    """The framework ``dlzoo new`` uses without ``--framework``, and its reasons as lines of text
    for the terminal and the generated README (each names the need and the sources behind it).

    >>> choose_framework("vit", ["onnx-export"], installed=["torch"])[0]
    'torch'

    Raises ZooError as ``recommend_frameworks`` does.
    """
    result = recommend_frameworks(arch, needs, installed=installed)
    return result["choice"], reason_lines(result)


def reason_lines(result: dict[str, Any]) -> list[str]:
    """The chosen framework's reasons, each with the titles and links of its sources."""
    top = result["ranking"][0]
    facts = result["facts"]
    lines = []
    for r in top["reasons"]:
        what = r["need"] or "every project"
        sources = "; ".join(f"{facts[f]['title']} <{facts[f]['source']}>" for f in r["facts"])
        lines.append(f"{what} ({r['effect']:+d}): {r['text']}" + (f" [{sources}]" if sources else ""))
    lines += result["notes"]
    others = [
        f"{r['framework']} {r['score']:+d}" + ("" if r["eligible"] else f" (violates {', '.join(r['violates'])})")
        for r in result["ranking"][1:]
    ]
    if others:
        lines.append(f"{top['framework']} scores {top['score']:+d}; the others: {', '.join(others)}")
    return lines
