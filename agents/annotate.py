"""Theory beside the code: find ``# theory: <id>`` markers and place their explanations.

A marker either ends a code line (it explains that line) or stands on a line of its own (it
explains the next code line). ``annotate_source`` returns the file with the explanations placed
beside those lines; ``theory_markdown`` writes THEORY.md for a zoo model: the concepts in reading
order, each linked to the file and line where it first appears, with the math. Project
scaffolding calls ``write_theory_md`` to produce the THEORY.md of a generated project.

    >>> from dlzoo.agents.annotate import write_theory_md
    >>> write_theory_md("gpt", "torch", "THEORY.md")                    # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

from .. import zoo as _zoo
from ..zoo.configs import ZooError, check_arch
from ..zoo.files import check_output_file, write_atomic
from ..zoo.handle import check_framework
from .theory import load_knowledge

MARKER = re.compile(r"#\s*theory:\s*([a-z0-9][a-z0-9-]*(?:\s*,\s*[a-z0-9][a-z0-9-]*)*)")
ZOO_DIR = Path(_zoo.__file__).resolve().parent


@dataclass(frozen=True)
class Marker:
    path: str
    line: int  # 1-based line the concept explains (the code line)
    marker_line: int  # 1-based line that carries the comment
    concept: str


def find_markers(path: str | os.PathLike, text: str | None = None) -> list[Marker]:
    """Markers of one file in reading order; a stand-alone marker points at the next code line."""
    path = os.fspath(path)
    lines = (_read(path) if text is None else text).splitlines()
    markers = []
    for number, line in enumerate(lines, start=1):
        match = MARKER.search(line)
        if not match:
            continue
        target = number
        if line.lstrip().startswith("#"):
            target = next(
                (k for k in range(number + 1, len(lines) + 1) if lines[k - 1].strip() and not lines[k - 1].lstrip().startswith("#")), number
            )
        for concept in (c.strip() for c in match.group(1).split(",")):
            markers.append(Marker(path, target, number, concept))
    return markers


def check_markers(markers: list[Marker]) -> list[Marker]:
    """The markers whose concept has no knowledge entry."""
    known = load_knowledge()
    return [m for m in markers if m.concept not in known]


def _read(path: str | os.PathLike) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ZooError(f"{path} does not exist; pass a Python file with `# theory: <id>` markers") from None
    except (IsADirectoryError, UnicodeDecodeError):
        raise ZooError(f"{path} is not a text file; pass a Python source file") from None


def annotate_source(path: str | os.PathLike, level: str = "brief", width: int = 100) -> str:
    """The file's text with each marked line followed by its explanation as indented comments.

    ``level="brief"`` adds the one-paragraph brief; ``"full"`` adds the full explanation, the
    math and the papers.
    """
    if level not in ("brief", "full"):
        raise ZooError(f"level must be 'brief' or 'full', got {level!r}")
    text = _read(path)
    markers = find_markers(path, text)
    unknown = check_markers(markers)
    if unknown:
        m = unknown[0]
        raise ZooError(f"{m.path}:{m.marker_line}: no theory entry for {m.concept!r}; known ids: `dlzoo explain --list`")
    entries = load_knowledge()
    lines = text.splitlines()
    before: dict[int, list[str]] = {}  # trailing marker: explain above its code line
    after: dict[int, list[str]] = {}  # stand-alone marker: explain right below the marker
    for m in markers:
        slot = after if lines[m.marker_line - 1].lstrip().startswith("#") else before
        if m.concept not in slot.setdefault(m.marker_line, []):
            slot[m.marker_line].append(m.concept)

    def block(concepts: list[str], code_line: str) -> list[str]:
        indent = code_line[: len(code_line) - len(code_line.lstrip())]
        prefix = f"{indent}#   | "
        rows: list[str] = []
        for concept in concepts:
            entry = entries[concept]
            body = [f"{entry.title}: {entry.brief}"]
            if level == "full":
                body += [" ".join(p.split()) for p in entry.full.split("\n\n")]
                body += ["math: " + " ".join(entry.math.split())]
                body += ["papers: " + "; ".join(p.cite() for p in entry.papers)]
            for k, paragraph in enumerate(body):
                rows.extend(prefix + w for w in textwrap.wrap(paragraph, width=max(40, width - len(prefix))))
                if k < len(body) - 1:
                    rows.append(prefix.rstrip())
        return rows

    out = []
    for number, line in enumerate(lines, start=1):
        out.extend(block(before.get(number, []), line))
        out.append(line)
        out.extend(block(after.get(number, []), line))
    return "\n".join(out) + "\n"


def model_files(arch: str, framework: str, zoo_dir: str | os.PathLike | None = None) -> list[Path]:
    """The files a reader goes through for ``arch`` in ``framework``: the model, then layers.py."""
    check_arch(arch)
    check_framework(framework)
    folder = Path(zoo_dir) if zoo_dir else ZOO_DIR / framework
    model = folder / f"{arch}.py"
    if not model.exists():
        raise ZooError(f"{model} does not exist; {arch} is not implemented for {framework} in this checkout")
    layers = folder / "layers.py"
    return [model] + ([layers] if layers.exists() else [])


def theory_markdown(files: list[str | os.PathLike], title: str, link_base: str | os.PathLike | None = None) -> str:
    """THEORY.md text: each concept once, in the order a reader meets it, linked to every
    file:line where it appears (links relative to ``link_base``), with brief, explanation, math,
    misconceptions and papers."""
    entries = load_knowledge()
    order: dict[str, list[Marker]] = {}
    for path in files:
        markers = find_markers(path)
        unknown = check_markers(markers)
        if unknown:
            m = unknown[0]
            raise ZooError(f"{m.path}:{m.marker_line}: no theory entry for {m.concept!r}")
        for m in markers:
            order.setdefault(m.concept, []).append(m)
    base = Path(link_base) if link_base else None

    def link(m: Marker) -> str:
        target = Path(m.path)
        shown = os.path.relpath(target, base) if base else target.name
        return f"[{Path(shown).as_posix()}:{m.line}]({Path(shown).as_posix()}#L{m.line})"

    out = [
        f"# {title}",
        "",
        "The concepts behind this model, in the order the code meets them. Each section links to "
        "the lines that carry its `# theory:` marker; `dlzoo explain ID` prints the same entry and "
        "`dlzoo annotate FILE` shows it beside the code.",
        "",
    ]
    out += [f"{k}. [{entries[c].title}](#{c}) ({c})" for k, c in enumerate(order, start=1)]
    for concept, markers in order.items():
        entry = entries[concept]
        out += [
            "",
            f'<a id="{concept}"></a>',
            f"## {entry.title}",
            "",
            "Where: " + ", ".join(link(m) for m in markers),
            "",
            entry.brief,
            "",
            entry.full,
            "",
            "$$",
            entry.math,
            "$$",
            "",
            "Common misconceptions:",
            "",
        ]
        out += [f"- {m}" for m in entry.misconceptions]
        out += ["", "Papers:", ""] + [f"- {p.cite()}" for p in entry.papers]
        if entry.related:
            out += ["", "Related: " + ", ".join(f"[{entries[r].title}](#{r})" if r in order else r for r in entry.related if r in entries)]
    return "\n".join(out) + "\n"


def theory_md_path(out: str | os.PathLike) -> Path:
    """Where ``write_theory_md`` writes: ``out``, or ``out/THEORY.md`` when ``out`` is a folder."""
    out = Path(out)
    return out / "THEORY.md" if out.is_dir() else out


def write_theory_md(
    arch: str, framework: str, out: str | os.PathLike, files: list[str | os.PathLike] | None = None, *, overwrite: bool = False
) -> Path:
    """Write THEORY.md for ``arch`` in ``framework`` (or for explicit ``files``, e.g. the model
    files copied into a generated project) at ``out`` (a folder means ``out/THEORY.md``). Links
    are relative to the output's folder. The write policy of ``dlzoo.zoo.files``: the folder must
    exist, an existing file is replaced only with ``overwrite=True``, and the file is written
    atomically. Raises PathError / OutputExistsError, or ZooError for an unknown marker."""
    files = files or model_files(arch, framework)
    out = check_output_file(theory_md_path(out), overwrite=overwrite, what="THEORY.md file")
    text = theory_markdown(files, f"Theory behind {arch} ({framework})", link_base=out.resolve().parent)
    return write_atomic(out, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), overwrite=overwrite)
