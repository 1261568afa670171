"""The test matrix is what the docs say: the session table in noxfile.py's docstring and in the
README equal the sessions `nox -l` lists, in order."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _listed() -> list[str]:
    pytest.importorskip("nox", reason="nox is in the test extra; this environment lacks it")
    result = subprocess.run([sys.executable, "-m", "nox", "-l"], capture_output=True, text=True, cwd=ROOT, check=True)
    # "* name -> doc" (selected by default) or "- name -> doc"
    return [line.split()[1] for line in result.stdout.splitlines() if re.match(r"^[*-] \S+ -> ", line)]


def _table(text: str, start: str) -> list[str]:
    """Session names from the first column of the table that follows the line ``start``."""
    lines = text[text.index(start) :].splitlines()[1:]
    names = []
    for line in lines:
        match = re.match(r"^\s*\|?\s*`?([a-z][a-z-]*)`?\s*(\||\s{2,})", line)
        if match and match.group(1) not in ("session",):
            names.append(match.group(1))
        elif names and not line.strip():
            break
    return names


def test_noxfile_docstring_table_equals_nox_list():
    import ast

    doc = ast.get_docstring(ast.parse((ROOT / "noxfile.py").read_text()))
    assert _table(doc, "session ") == _listed()


def test_readme_table_equals_nox_list():
    readme = (ROOT / "README.md").read_text()
    assert _table(readme, "| session |") == _listed()
