"""Every registered system runs the one contract suite (:class:`mlsd.platform.testing.SystemContract`).

Each system opts in with three lines in its own ``tests/<system>/test_contract.py`` (as implicit's
models opt into ``RecommenderBaseTestMixin``); this test makes sure none is left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

from mlsd.platform.system import system_names

TESTS = Path(__file__).resolve().parents[1]


def _opted_in(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ClassDef) and any(
            getattr(b, "id", "") == "SystemContract" for b in node.bases
        ):
            for stmt in node.body:
                if isinstance(stmt, ast.Assign) and getattr(stmt.targets[0], "id", "") == "system_name":
                    names.add(stmt.value.value)  # type: ignore[attr-defined]
    return names


def test_every_registered_system_runs_the_contract() -> None:
    for name in system_names():
        path = TESTS / name / "test_contract.py"
        assert path.exists(), f"{name} does not opt into the system contract ({path} is missing)"
        assert _opted_in(path) == {name}
