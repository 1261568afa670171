"""The master agent's theory knowledge base: one TOML file per concept in ``agents/knowledge/``.

Each file holds ``id`` (the name used by ``# theory: <id>`` markers in the zoo's model files),
``title``, ``aliases``, ``brief``, ``full``, ``math`` (LaTeX), ``misconceptions``, ``related``
ids and ``[[papers]]`` tables (authors, title, year). Editing an explanation means editing that
file; nothing else holds the text.

    >>> from dlzoo.agents.theory import lookup
    >>> lookup("sdpa").title
    'Scaled dot-product attention'
"""

from __future__ import annotations

import difflib
import functools
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..zoo.configs import ZooError

KNOWLEDGE_DIR = Path(__file__).with_name("knowledge")
_REQUIRED = ("id", "title", "aliases", "brief", "full", "math", "papers", "misconceptions", "related")


class UnknownTopicError(ZooError):
    """A topic that matches no entry; the message lists the nearest ones."""


@dataclass(frozen=True)
class Paper:
    authors: str
    title: str
    year: int

    def cite(self) -> str:
        return f"{self.authors} ({self.year}). {self.title}."


@dataclass(frozen=True)
class Entry:
    id: str
    title: str
    aliases: tuple[str, ...]
    brief: str
    full: str
    math: str
    papers: tuple[Paper, ...]
    misconceptions: tuple[str, ...]
    related: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"id": self.id, "title": self.title, "aliases": list(self.aliases), "brief": self.brief,
                "full": self.full, "math": self.math, "misconceptions": list(self.misconceptions),
                "related": list(self.related),
                "papers": [{"authors": p.authors, "title": p.title, "year": p.year} for p in self.papers]}


def _parse(path: Path) -> Entry:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ZooError(f"knowledge entry {path.name} is not valid TOML ({error}); fix the file") from None
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ZooError(f"knowledge entry {path.name} lacks {', '.join(missing)}; every entry needs "
                       f"{', '.join(_REQUIRED)}")
    if data["id"] != path.stem:
        raise ZooError(f"knowledge entry {path.name} has id {data['id']!r}; the id must equal the file name")
    papers = tuple(Paper(str(p["authors"]), str(p["title"]), int(p["year"])) for p in data["papers"])
    return Entry(id=data["id"], title=data["title"].strip(), aliases=tuple(data["aliases"]),
                 brief=" ".join(data["brief"].split()), full=data["full"].strip(),
                 math=data["math"].strip(), papers=papers,
                 misconceptions=tuple(data["misconceptions"]), related=tuple(data["related"]))


@functools.lru_cache(maxsize=None)
def load_knowledge(directory: str | None = None) -> dict[str, Entry]:
    """All entries, keyed by id, in alphabetical order."""
    folder = Path(directory) if directory else KNOWLEDGE_DIR
    entries = {e.id: e for e in map(_parse, sorted(folder.glob("*.toml")))}
    if not entries:
        raise ZooError(f"no knowledge entries found in {folder}; the package data is missing")
    return entries


def _normalise(text: str) -> str:
    return re.sub(r"[\s_\-]+", " ", text.strip().lower())


def _names(entries: dict[str, Entry]) -> dict[str, str]:
    """Every spelling that names an entry (id, title, aliases), normalised, mapped to its id."""
    names: dict[str, str] = {}
    for entry in entries.values():
        for name in (entry.id, entry.title, *entry.aliases):
            names.setdefault(_normalise(name), entry.id)
    return names


def nearest(topic: str, n: int = 5) -> list[str]:
    """Ids of the entries whose names are closest to ``topic`` (difflib ratio), best first."""
    names = _names(load_knowledge())
    matches = difflib.get_close_matches(_normalise(topic), list(names), n=4 * n, cutoff=0.0)
    ids: list[str] = []
    for match in matches:
        if names[match] not in ids:
            ids.append(names[match])
    return ids[:n]


def lookup(topic: str) -> Entry:
    """The entry for an id, a title or an alias; close misspellings resolve too.

    Raises UnknownTopicError (a one-line message naming the nearest entries) otherwise.
    """
    entries = load_knowledge()
    names = _names(entries)
    key = _normalise(topic)
    if key in names:
        return entries[names[key]]
    close = difflib.get_close_matches(key, list(names), n=1, cutoff=0.85)
    if close:
        return entries[names[close[0]]]
    raise UnknownTopicError(f"no theory entry for {topic!r}; nearest: {', '.join(nearest(topic))} "
                            "(try `dlzoo ask` for a free-text question)")
