"""The engineer agent's facts table (facts.toml), loaded once and checked.

Every judgement the agent prints cites rows of this table: framework facts (with source, title
and the date checked), the need vocabulary with each framework's level, device peaks and the
training-strategy rules. ``load()`` refuses a table in which a level, baseline or adjustment
cites a fact that does not exist, or a row lacks its source or date, so a bad edit fails the
tests instead of printing an unsourced reason.
"""

from __future__ import annotations

import functools
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...zoo.frameworks import FRAMEWORKS

FACTS_PATH = Path(__file__).with_name("facts.toml")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class FactsError(ValueError):
    """facts.toml is malformed (a developer error, not a user one)."""


@dataclass(frozen=True)
class Fact:
    id: str
    statement: str
    source: str
    title: str
    checked: str
    frameworks: tuple[str, ...] = ()
    via: str = ""
    value: dict[str, Any] = field(default_factory=dict)

    def cite(self) -> str:
        return f"{self.title} <{self.source}> (checked {self.checked})"

    def to_dict(self) -> dict[str, Any]:
        out = {"id": self.id, "statement": self.statement, "source": self.source, "title": self.title, "checked": self.checked}
        if self.via:
            out["via"] = self.via
        if self.value:
            out["value"] = dict(self.value)
        return out


@dataclass(frozen=True)
class Support:
    level: int
    facts: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Need:
    name: str
    summary: str
    hard: bool
    support: dict[str, Support]  # empty for installed-only, which filters instead


@dataclass(frozen=True)
class Adjust:
    need: str
    arch: str
    framework: str
    delta: int
    facts: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Device:
    key: str
    name: str
    aliases: tuple[str, ...]
    measured: bool
    memory_bytes: int | None
    dense_tflops: dict[str, float]
    sparse_tflops: dict[str, float]
    utilisation: float
    fact: Fact


@dataclass(frozen=True)
class Table:
    checked: str
    facts: dict[str, Fact]
    needs: dict[str, Need]
    baseline: dict[str, Support]
    adjust: tuple[Adjust, ...]
    devices: dict[str, Device]
    rules: dict[str, Fact]

    def rule(self, rule_id: str) -> Fact:
        return self.rules[rule_id]

    def cite(self, ids) -> list[dict[str, Any]]:
        """The rows behind ``ids`` (facts or rules), as dicts for --json output."""
        return [(self.facts.get(i) or self.rules[i]).to_dict() for i in ids]


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise FactsError(f"{FACTS_PATH.name}: {message}")


def _fact(row: dict, kind: str) -> Fact:
    for key in ("id", "statement", "source", "title", "checked"):
        _require(isinstance(row.get(key), str) and row[key], f"{kind} {row.get('id', '?')!r} needs a non-empty {key!r}")
    _require(bool(_DATE.match(row["checked"])), f"{kind} {row['id']!r}: checked must be YYYY-MM-DD")
    for fw in row.get("frameworks", ()):
        _require(fw in FRAMEWORKS, f"{kind} {row['id']!r} names unknown framework {fw!r}")
    return Fact(
        id=row["id"],
        statement=row["statement"],
        source=row["source"],
        title=row["title"],
        checked=row["checked"],
        frameworks=tuple(row.get("frameworks", ())),
        via=row.get("via", ""),
        value=dict(row.get("value", {})),
    )


def _support(entry: dict, where: str, facts: dict[str, Fact]) -> Support:
    _require(isinstance(entry.get("level"), int), f"{where}: level must be an integer")
    cited = tuple(entry.get("facts", ()))
    _require(bool(cited), f"{where}: cites no fact")
    for f in cited:
        _require(f in facts, f"{where}: cites unknown fact {f!r}")
    _require(bool(entry.get("reason")), f"{where}: needs a reason")
    return Support(level=entry["level"], facts=cited, reason=entry["reason"])


@functools.lru_cache(maxsize=1)
def load(path: Path = FACTS_PATH) -> Table:
    """The table, validated; cached (the file is package data and does not change at run time)."""
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    facts: dict[str, Fact] = {}
    for row in data.get("fact", []):
        fact = _fact(row, "fact")
        _require(fact.id not in facts, f"fact {fact.id!r} appears twice")
        facts[fact.id] = fact
    rules: dict[str, Fact] = {}
    for row in data.get("rule", []):
        rule = _fact(row, "rule")
        _require(rule.id not in rules and rule.id not in facts, f"rule {rule.id!r} appears twice")
        rules[rule.id] = rule
    needs: dict[str, Need] = {}
    for name, entry in data.get("need", {}).items():
        _require(isinstance(entry.get("hard"), bool), f"need {name!r}: hard must be true or false")
        support = {fw: _support(entry[fw], f"need {name!r} / {fw}", facts) for fw in FRAMEWORKS if fw in entry}
        _require(
            not support or set(support) == set(FRAMEWORKS),
            f"need {name!r}: give a level for every framework ({', '.join(FRAMEWORKS)}) or none",
        )
        needs[name] = Need(name=name, summary=entry.get("summary", ""), hard=entry["hard"], support=support)
    baseline = {fw: _support(entry, f"baseline / {fw}", facts) for fw, entry in data.get("baseline", {}).items()}
    adjust = []
    for row in data.get("adjust", []):
        _require(row.get("need") in needs and row.get("framework") in FRAMEWORKS, f"adjust {row}: unknown need or framework")
        s = _support(
            {"level": row.get("delta"), "facts": row.get("facts", ()), "reason": row.get("reason")},
            f"adjust {row.get('need')}/{row.get('arch')}/{row.get('framework')}",
            facts,
        )
        adjust.append(Adjust(need=row["need"], arch=row["arch"], framework=row["framework"], delta=s.level, facts=s.facts, reason=s.reason))
    devices: dict[str, Device] = {}
    for key, row in data.get("device", {}).items():
        fact = _fact({"id": f"device-{key}", "statement": row.get("name", ""), **row}, "device")
        measured = bool(row.get("measured", False))
        _require(
            measured or {"fp32", "tf32", "bf16", "fp16"} <= set(row.get("dense_tflops", {})),
            f"device {key!r}: dense_tflops needs fp32, tf32, bf16 and fp16",
        )
        _require(0 < row.get("utilisation", 0) <= 1, f"device {key!r}: utilisation must be in (0, 1]")
        devices[key] = Device(
            key=key,
            name=row["name"],
            aliases=tuple(row.get("aliases", ())),
            measured=measured,
            memory_bytes=int(row["memory_gb"] * 10**9) if "memory_gb" in row else None,
            dense_tflops=dict(row.get("dense_tflops", {})),
            sparse_tflops=dict(row.get("sparse_tflops", {})),
            utilisation=float(row["utilisation"]),
            fact=fact,
        )
    return Table(
        checked=data.get("meta", {}).get("checked", ""),
        facts=facts,
        needs=needs,
        baseline=baseline,
        adjust=tuple(adjust),
        devices=devices,
        rules=rules,
    )
