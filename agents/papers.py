"""Paper -> code: the papers behind the zoo, their key equations and design choices, and the zoo
lines that implement each of them.

One TOML file per paper in ``agents/papers/``: ``id``, ``title``, ``authors``, ``year``,
``aliases``, ``summary``, ``[[claims]]`` (the paper's equations and design choices) and
``[[differences]]`` (where the zoo deliberately departs from the paper, with the reason). A claim
or difference names a theory ``concept`` and the ``arch`` whose code shows it (or ``files``, file
stems such as ``__init__``); its lines are found at run time through the ``# theory: <concept>``
markers, so line numbers never go stale: in the model's own file when it carries the marker,
else in the framework's shared ``layers.py`` (where GPT-2 and ViT keep their common block).

    >>> from dlzoo.agents.papers import lookup_paper, resolve
    >>> paper = lookup_paper("attention is all you need")
    >>> [f"{loc.file}:{loc.line}" for loc in resolve(paper.claims[0])][:1]   # doctest: +SKIP
    ['zoo/torch/layers.py:84']
"""

from __future__ import annotations

import functools
import os
import re
import textwrap
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..zoo.configs import ZooError

PAPERS_DIR = Path(__file__).with_name("papers")
_PAPER_FIELDS = ("id", "title", "authors", "year", "aliases", "summary", "claims", "differences")
_CLAIM_FIELDS = ("name", "paper", "concept", "arch", "files", "equation", "zoo", "why")
FRAMEWORKS = ("torch", "flax", "equinox", "haiku", "keras")


class UnknownPaperError(ZooError):
    """A paper id that matches no paper; the message lists the known ids."""


@dataclass(frozen=True)
class Claim:
    """One equation or design choice. ``paper``: what the paper does; ``zoo`` and ``why``: for a
    difference, what the zoo does instead and the reason; ``concept``: the theory marker id whose
    lines implement it, or "" when the zoo's model code has no such line."""

    name: str
    paper: str
    concept: str = ""
    arch: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    equation: str = ""
    zoo: str = ""
    why: str = ""


@dataclass(frozen=True)
class Paper:
    id: str
    title: str
    authors: str
    year: int
    aliases: tuple[str, ...]
    summary: str
    claims: tuple[Claim, ...]
    differences: tuple[Claim, ...]

    def cite(self) -> str:
        return f"{self.authors} ({self.year}). {self.title}."


@dataclass(frozen=True)
class Location:
    file: str  # path relative to the repository root (zoo/torch/layers.py) or to --project
    line: int  # the code line the marker explains
    marker_line: int  # the line that carries `# theory: <concept>`
    code: str  # the code line's text, stripped


def _claim(data: dict, where: str, arch: tuple[str, ...]) -> Claim:
    unknown = sorted(set(data) - set(_CLAIM_FIELDS))
    if unknown or "name" not in data or "paper" not in data:
        raise ZooError(f"{where}: a claim needs name and paper and may have {', '.join(_CLAIM_FIELDS[2:])}; got {', '.join(sorted(data))}")
    own_arch = data.get("arch", arch)
    return Claim(
        name=data["name"],
        paper=" ".join(data["paper"].split()),
        concept=data.get("concept", ""),
        arch=(own_arch,) if isinstance(own_arch, str) else tuple(own_arch),
        files=tuple(data.get("files", ())),
        equation=data.get("equation", "").strip(),
        zoo=" ".join(data.get("zoo", "").split()),
        why=" ".join(data.get("why", "").split()),
    )


def _parse(path: Path) -> Paper:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ZooError(f"paper file {path.name} is not valid TOML ({error}); fix the file") from None
    missing = [k for k in ("id", "title", "authors", "year", "summary", "claims") if k not in data]
    unknown = sorted(set(data) - set(_PAPER_FIELDS) - {"arch"})
    if missing or unknown:
        raise ZooError(f"paper file {path.name}: missing {missing or 'nothing'}, unknown {unknown or 'nothing'}")
    if data["id"] != path.stem:
        raise ZooError(f"paper file {path.name} has id {data['id']!r}; the id must equal the file name")
    arch = data.get("arch", ())
    arch = (arch,) if isinstance(arch, str) else tuple(arch)
    return Paper(
        id=data["id"],
        title=data["title"],
        authors=data["authors"],
        year=int(data["year"]),
        aliases=tuple(data.get("aliases", ())),
        summary=" ".join(data["summary"].split()),
        claims=tuple(_claim(c, path.name, arch) for c in data["claims"]),
        differences=tuple(_claim(c, path.name, arch) for c in data.get("differences", ())),
    )


@functools.lru_cache(maxsize=None)
def load_papers() -> dict[str, Paper]:
    """All papers, keyed by id, in alphabetical order."""
    papers = {p.id: p for p in map(_parse, sorted(PAPERS_DIR.glob("*.toml")))}
    if not papers:
        raise ZooError(f"no paper files found in {PAPERS_DIR}; the package data is missing")
    return papers


def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def lookup_paper(name: str) -> Paper:
    """The paper for an id, a title or an alias (case, spaces and punctuation ignored).

    Raises UnknownPaperError, one line listing the known ids, otherwise.
    """
    papers = load_papers()
    key = _key(name)
    for paper in papers.values():
        if key in {_key(n) for n in (paper.id, paper.title, *paper.aliases)}:
            return paper
    raise UnknownPaperError(f"no paper {name!r}; known ids: {', '.join(papers)}")


def _zoo_dir() -> Path:
    from .annotate import ZOO_DIR

    return ZOO_DIR


def resolve(
    claim: Claim, framework: str = "torch", root: str | os.PathLike | None = None, project_arch: str | None = None
) -> list[Location]:
    """The lines that implement ``claim`` in ``zoo/<framework>/`` (or, with ``root``, in a
    generated project's model files), from the markers of ``claim.concept``.

    Files searched: ``claim.files`` stems when given; else the model file of each ``claim.arch``
    when it carries the marker, otherwise the framework's ``layers.py``. In a project (``root``),
    the model file is ``model.py`` and a claim applies only when ``project_arch`` is among its
    archs. Empty when the claim has no concept or no marker is found.
    """
    from .annotate import find_markers

    if not claim.concept:
        return []
    if root is None:
        folder, base = _zoo_dir() / framework, _zoo_dir().parent
        groups = (
            [[folder / f"{s}.py" for s in claim.files]] if claim.files else [[folder / f"{a}.py", folder / "layers.py"] for a in claim.arch]
        )
    else:
        matches = sorted(Path(root).rglob("model.py"))
        if not matches or (claim.arch and project_arch not in claim.arch):
            return []
        folder, base = matches[0].parent, Path(root)
        groups = [[folder / f"{s}.py" for s in claim.files]] if claim.files else [[folder / "model.py", folder / "layers.py"]]
    locations: list[Location] = []
    for group in groups:
        for path in group:
            if not path.exists():
                continue
            lines = path.read_text(encoding="utf-8").splitlines()
            found = [m for m in find_markers(path) if m.concept == claim.concept]
            for m in found:
                loc = Location(Path(os.path.relpath(path, base)).as_posix(), m.line, m.marker_line, lines[m.line - 1].strip())
                if loc not in locations:
                    locations.append(loc)
            if found and not claim.files:
                break  # the model's own file has it: do not add the shared layers' lines
    return locations


def paper_dict(paper: Paper, frameworks: tuple[str, ...] = ("torch",)) -> dict:
    """The ``--json`` form (schema in docs/papers.md)."""

    def claim_dict(c: Claim) -> dict:
        return {
            "name": c.name,
            "paper": c.paper,
            "equation": c.equation,
            "zoo": c.zoo,
            "why": c.why,
            "concept": c.concept,
            "lines": [
                {"framework": f, "file": loc.file, "line": loc.line, "marker_line": loc.marker_line, "code": loc.code}
                for f in frameworks
                for loc in resolve(c, f)
            ],
        }

    return {
        "id": paper.id,
        "title": paper.title,
        "authors": paper.authors,
        "year": paper.year,
        "summary": paper.summary,
        "claims": [claim_dict(c) for c in paper.claims],
        "differences": [claim_dict(c) for c in paper.differences],
    }


def render_paper(paper: Paper, frameworks: tuple[str, ...] = ("torch",), width: int = 100) -> str:
    """The text ``dlzoo explain --paper ID`` prints."""

    def para(label: str, text: str) -> list[str]:
        return textwrap.wrap(text, width, initial_indent=f"   {label}", subsequent_indent="   " + " " * len(label))

    def where(c: Claim) -> list[str]:
        if not c.concept:
            return ["   zoo: no line in the model code (a training or data concern)"]
        rows = [f"   {loc.file}:{loc.line}  {loc.code}" for f in frameworks for loc in resolve(c, f)]
        return rows or [f"   (no `# theory: {c.concept}` marker found)"]

    out = [f"{paper.title}", f"{paper.authors} ({paper.year})  [{paper.id}]", ""]
    out += textwrap.wrap(paper.summary, width) + ["", "Key equations and design choices, and the zoo lines that implement them:"]
    for k, c in enumerate(paper.claims, start=1):
        out += ["", f"{k}. {c.name}" + (f"  [{c.concept}]" if c.concept else "")]
        if c.equation:
            out += ["   " + line for line in c.equation.splitlines()]
        out += para("", c.paper) + where(c)
    if paper.differences:
        out += ["", "Where the zoo deliberately differs from the paper:"]
        for k, c in enumerate(paper.differences, start=1):
            out += ["", f"{k}. {c.name}" + (f"  [{c.concept}]" if c.concept else "")]
            out += para("paper: ", c.paper) + para("zoo:   ", c.zoo) + para("why:   ", c.why) + where(c)
    out += ["", f"Theory: dlzoo explain CONCEPT (e.g. dlzoo explain {next((c.concept for c in paper.claims if c.concept), 'sdpa')})"]
    return "\n".join(out) + "\n"
