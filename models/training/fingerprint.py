"""A fingerprint of the code that trains a bundle, blind to formatting, comments and docstrings.

A trained bundle records :func:`training_code_fingerprint` in its metadata, so a caller can
tell whether an existing bundle (``make demo``'s ``var/bundles/demo``, a test cache) was
made by the code checked out now. The fingerprint hashes each module's syntax tree with its
docstrings removed: reformatting, a comment or a reworded docstring leaves it unchanged,
any change to what the code does changes it. The tree's textual form (``ast.dump``) can
differ between Python minor versions, so the fingerprint is stable for one of them.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterable
from pathlib import Path

#: The repository (or site-packages) folder that holds the ``models`` and ``config`` packages.
ROOT = Path(__file__).resolve().parents[2]

#: Folders, relative to :data:`ROOT`, whose modules determine a trained bundle's weights,
#: model card and metadata: all of ``models`` (runtime and training) and the triage domain
#: it builds on (regions, study aggregation).
TRAINING_CODE: tuple[str, ...] = ("models", "config/domain")


def _without_docstrings(tree: ast.Module) -> ast.Module:
    for node in ast.walk(tree):
        if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        first = node.body[0] if node.body else None
        if (
            isinstance(first, ast.Expr)
            and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)
        ):
            node.body = node.body[1:] or [ast.Pass()]
    return tree


def code_fingerprint(files: Iterable[Path], root: Path) -> str:
    """Hash of the modules' syntax trees without docstrings, and of their paths under ``root``.

    Parameters
    ----------
    files
        Python source files, inside ``root``.
    root
        Their paths are hashed relative to it, so a moved module changes the fingerprint.

    Returns
    -------
    str
        16 hexadecimal characters.

    Raises
    ------
    SyntaxError
        If a file is not valid Python.
    """
    digest = hashlib.sha256()
    for name, file in sorted((Path(f).relative_to(root).as_posix(), Path(f)) for f in files):
        tree = _without_docstrings(ast.parse(file.read_text(encoding="utf-8"), filename=name))
        digest.update(name.encode() + b"\0")
        digest.update(ast.dump(tree, include_attributes=False).encode() + b"\0")
    return digest.hexdigest()[:16]


def training_code_fingerprint() -> str:
    """Fingerprint of every module of :data:`TRAINING_CODE` (see :func:`code_fingerprint`)."""
    files = [file for folder in TRAINING_CODE for file in (ROOT / folder).rglob("*.py")]
    return code_fingerprint(files, ROOT)
