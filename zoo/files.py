"""Paths the user names: one rule for telling a path from a hub id, one policy for writing.

Reading: a name is a local path when it exists, or when it looks like one -- it starts with
``/``, ``./``, ``../`` or ``~``, holds a backslash or more than one ``/`` (a hub id has at most
one), or ends in a file suffix (``.safetensors``, ``.bin``, ``.json``, ...). A path that does not
exist is reported as "no such file or folder", never looked up on the hub.

Writing (``handle.save``, ``weights.save``, ``hub.export``, every CLI command that writes): the
folder that will hold the output must exist (dlzoo creates no folders on the way); an existing
file is refused unless ``overwrite=True`` (``--overwrite`` on the command line); an existing folder
is never replaced -- a published-layout export needs a new or empty folder. Files are written to a
temporary name beside the destination and renamed into place, so a failure leaves nothing
half-written. Everything here raises ``PathError`` (a ``ZooError``), or ``OutputExistsError`` for a
refused overwrite.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from .configs import ZooError

FILE_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".json",
    ".pt",
    ".pth",
    ".ckpt",
    ".h5",
    ".keras",
    ".msgpack",
    ".npz",
    ".npy",
    ".pkl",
    ".onnx",
    ".jsonl",
    ".txt",
    ".csv",
    ".md",
    ".py",
    ".png",
    ".svg",
    ".pdf",
)


class PathError(ZooError):
    """A path that cannot be read or written as asked (missing, wrong kind, wrong suffix)."""


class OutputExistsError(PathError):
    """The destination exists and ``overwrite`` was not set."""


def looks_like_path(name: str | os.PathLike) -> bool:
    """Whether ``name`` is meant as a local path rather than a hub id (see the module docstring)."""
    if not isinstance(name, str):
        return True
    if os.path.exists(name):
        return True
    text = name.strip()
    return (
        text.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or "\\" in text
        or text.count("/") > 1
        or text.endswith("/")
        or text.lower().endswith(FILE_SUFFIXES)
    )


def _parent(path: Path) -> Path:
    parent = path.parent
    if not parent.exists():
        raise PathError(f"cannot write {path}: folder {parent} does not exist; create it first")
    if not parent.is_dir():
        raise PathError(f"cannot write {path}: {parent} is a file, not a folder")
    return parent


def check_output_file(
    path: str | os.PathLike, *, overwrite: bool = False, suffixes: tuple[str, ...] | None = None, what: str = "file"
) -> Path:
    """Validate a file destination before any work is done; returns it as a Path.

    Raises PathError when ``path`` is a folder, lacks one of ``suffixes`` (when given), or its
    folder is missing or is a file; OutputExistsError when it exists and ``overwrite`` is false.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        example = f"{path}/name{suffixes[0]}" if suffixes else f"{path}/NAME"
        raise PathError(f"{path} is a folder; expected a {what} name (e.g. {example})")
    if suffixes and path.suffix.lower() not in suffixes:
        choices = suffixes[0] if len(suffixes) == 1 else f"{', '.join(suffixes[:-1])} or {suffixes[-1]}"
        raise PathError(f"{path}: a {what} must end in {choices}" + (f", not {path.suffix!r}" if path.suffix else ""))
    _parent(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(
            f"{path} already exists; choose a new name, or pass overwrite=True (--overwrite on the command line) to replace it"
        )
    return path


def check_output_folder(path: str | os.PathLike) -> Path:
    """Validate a folder destination: new, or an existing empty folder; its parent must exist."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{path} is an existing file; expected a new folder name")
    if path.is_dir() and any(path.iterdir()):
        raise OutputExistsError(f"{path} exists and is not an empty folder; choose a new folder (dlzoo never replaces a folder's contents)")
    _parent(path)
    return path


def write_atomic(
    path: str | os.PathLike,
    write: Callable[[str], object],
    *,
    overwrite: bool = False,
    suffixes: tuple[str, ...] | None = None,
    what: str = "file",
) -> Path:
    """Check the destination (``check_output_file``), then ``write(tmp)`` to a temporary file
    beside it (same suffix, so writers that go by the suffix choose the same format) and rename it
    into place. Nothing is left behind when ``write`` fails."""
    path = check_output_file(path, overwrite=overwrite, suffixes=suffixes, what=what)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        write(tmp)
        if path.exists() and not overwrite:  # appeared meanwhile: still never overwrite
            raise OutputExistsError(f"{path} appeared while it was being written; nothing was replaced")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
