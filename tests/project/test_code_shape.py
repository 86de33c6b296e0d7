"""The code's shape: small functions, and the triage flow module holding only flows.

A function of the product code longer than :data:`MAX_FUNCTION_LINES` needs a reason,
given in a comment right above it that starts with ``# Long:``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PRODUCT = ("config", "db", "models", "dicom_node", "flows")
MAX_FUNCTION_LINES = 60


def _product_files() -> list[Path]:
    return sorted(
        path
        for package in PRODUCT
        for path in (REPO / package).rglob("*.py")
        if "migrations" not in path.parts
    )


def _long_functions(path: Path) -> list[str]:
    source = path.read_text()
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        length = (node.end_lineno or node.lineno) - node.lineno + 1
        reason = lines[first - 2].strip() if first >= 2 else ""
        if length > MAX_FUNCTION_LINES and not reason.startswith("# Long:"):
            found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_is_longer_than_a_screen_without_a_reason() -> None:
    long = [entry for path in _product_files() for entry in _long_functions(path)]
    assert not long, "\n".join(long)


@pytest.mark.parametrize("module", ["flows/triage/flow.py", "flows/triage/tasks.py"])
def test_the_triage_flow_modules_hold_only_flows_and_tasks(module: str) -> None:
    tree = ast.parse((REPO / module).read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            decorators = [ast.unparse(d) for d in node.decorator_list]
            assert any(d.startswith(("flow(", "task(")) for d in decorators), node.name
