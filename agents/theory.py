"""The master agent's theory knowledge base: one TOML file per concept in ``agents/knowledge/``.

Each file holds ``id`` (the name used by ``# theory: <id>`` markers in the zoo's model files),
``title``, ``aliases``, ``brief``, ``intro`` (plain words, no math), ``full``, ``practice`` (the
consequence for a practitioner), ``math`` (LaTeX), ``misconceptions``, ``related`` ids and
``[[papers]]`` tables (authors, title, year); optionally ``deep`` (derivations), ``keywords``
(words users type that the text lacks; read by ``ask``) and ``zoo`` (marker ids whose lines show
the concept when it has no marker of its own). Editing an explanation means editing that file;
nothing else holds the text.

    >>> from dlzoo.agents.theory import lookup
    >>> lookup("sdpa").title
    'Scaled dot-product attention'
"""

from __future__ import annotations

import difflib
import functools
import re
import textwrap
import tomllib
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from ..zoo.configs import ZooError

KNOWLEDGE_DIR = Path(__file__).with_name("knowledge")
_REQUIRED = ("id", "title", "aliases", "brief", "intro", "full", "practice", "math", "papers", "misconceptions", "related")
_OPTIONAL = ("deep", "keywords", "zoo")
LEVELS = ("intro", "standard", "deep")


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
    intro: str = ""
    practice: str = ""
    deep: str = ""
    keywords: tuple[str, ...] = ()
    zoo: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "title": self.title,
            "aliases": list(self.aliases),
            "brief": self.brief,
            "intro": self.intro,
            "full": self.full,
            "practice": self.practice,
            "deep": self.deep,
            "math": self.math,
            "misconceptions": list(self.misconceptions),
            "related": list(self.related),
            "keywords": list(self.keywords),
            "zoo": list(self.zoo),
            "papers": [{"authors": p.authors, "title": p.title, "year": p.year} for p in self.papers],
        }


def _parse(path: Path) -> Entry:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ZooError(f"knowledge entry {path.name} is not valid TOML ({error}); fix the file") from None
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ZooError(f"knowledge entry {path.name} lacks {', '.join(missing)}; every entry needs {', '.join(_REQUIRED)}")
    unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise ZooError(
            f"knowledge entry {path.name} has unknown field(s) {', '.join(unknown)}; allowed: {', '.join(_REQUIRED + _OPTIONAL)}"
        )
    if data["id"] != path.stem:
        raise ZooError(f"knowledge entry {path.name} has id {data['id']!r}; the id must equal the file name")
    papers = tuple(Paper(str(p["authors"]), str(p["title"]), int(p["year"])) for p in data["papers"])
    return Entry(
        id=data["id"],
        title=data["title"].strip(),
        aliases=tuple(data["aliases"]),
        brief=" ".join(data["brief"].split()),
        full=data["full"].strip(),
        math=data["math"].strip(),
        papers=papers,
        misconceptions=tuple(data["misconceptions"]),
        related=tuple(data["related"]),
        intro=" ".join(data["intro"].split()),
        practice=" ".join(data["practice"].split()),
        deep=data.get("deep", "").strip(),
        keywords=tuple(data.get("keywords", ())),
        zoo=tuple(data.get("zoo", ())),
    )


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
    raise UnknownTopicError(
        f"no theory entry for {topic!r}; nearest: {', '.join(nearest(topic))} (try `dlzoo ask` for a free-text question)"
    )


# "Author (2019)", "Author et al., 2019", "Author and Other (2019)", "Author, Other and Third, 2019".
_CITATION = re.compile(r"\b([A-Z][A-Za-z'\-]+)(?: et al\.?| and [A-Z][A-Za-z'\-]+)?,? \(?((?:1[89]|20)\d\d)\)?")


def _ascii(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


def unlisted_citations(entry: Entry) -> list[str]:
    """Citations in the entry's prose ("Cohen et al. (2021)") whose author and year match no paper
    in its list; an author matches when the surname appears in the paper's author string."""
    text = _ascii(" ".join([entry.brief, entry.intro, entry.full, entry.practice, entry.deep, *entry.misconceptions]))
    missing = []
    for match in _CITATION.finditer(text):
        name, year = match.group(1), int(match.group(2))
        if not any(p.year == year and re.search(rf"\b{re.escape(name)}\b", _ascii(p.authors)) for p in entry.papers):
            missing.append(match.group(0).strip())
    return missing


def zoo_lines(entry: Entry, frameworks: tuple[str, ...] = ("torch",)) -> list:
    """The zoo lines where ``entry`` shows: the markers of its own id and of its ``zoo`` ids in
    ``zoo/<framework>/*.py``, found at run time (annotate.Marker list, file order)."""
    from .annotate import ZOO_DIR, find_markers

    wanted = {entry.id, *entry.zoo}
    return [
        m
        for framework in frameworks
        for path in sorted((ZOO_DIR / framework).glob("*.py"))
        for m in find_markers(path)
        if m.concept in wanted
    ]


def render(entry: Entry, level: str = "standard", width: int = 100) -> str:
    """The text ``dlzoo explain`` prints at ``level``.

    intro: the plain-words explanation and the practical consequence, no math.
    standard: brief, explanation, math, practice, misconceptions, papers, zoo lines (torch), related.
    deep: standard plus the derivations (``deep``) and the zoo lines in every framework.
    Raises ZooError for another level.
    """
    if level not in LEVELS:
        raise ZooError(f"--level must be one of {', '.join(LEVELS)}, got {level!r}")
    from .annotate import ZOO_DIR

    def wrap(text: str, indent: str = "") -> list[str]:
        return [
            textwrap.fill(" ".join(p.split()), width, initial_indent=indent, subsequent_indent=indent)
            for p in text.split("\n\n")
            if p.strip()
        ]

    out = [f"{entry.title}  [{entry.id}]", ""]
    if level == "intro":
        out += wrap(entry.intro) + ["", "In practice:"] + wrap(entry.practice, "  ")
        out += ["", f"More: dlzoo explain {entry.id} --level standard"]
        return "\n".join(out) + "\n"
    out += [entry.brief, "", entry.full, "", "Math (LaTeX):", "  " + entry.math.replace("\n", "\n  ")]
    if level == "deep" and entry.deep:
        out += ["", "Derivations and details:"] + wrap(entry.deep, "  ")
    out += ["", "In practice:"] + wrap(entry.practice, "  ")
    out += ["", "Common misconceptions:"] + [f"  - {m}" for m in entry.misconceptions]
    out += ["", "Papers:"] + [f"  - {p.cite()}" for p in entry.papers]
    frameworks = (
        tuple(sorted(d.name for d in ZOO_DIR.iterdir() if d.is_dir() and not d.name.startswith("_"))) if level == "deep" else ("torch",)
    )
    lines = zoo_lines(entry, frameworks)
    if lines:
        out += ["", "Where it shows in the zoo:"]
        out += [f"  {Path(m.path).relative_to(ZOO_DIR.parent).as_posix()}:{m.line}  ({m.concept})" for m in lines]
    out += ["", "Related: " + ", ".join(entry.related)]
    return "\n".join(out) + "\n"
