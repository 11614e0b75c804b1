"""docs/reliability.md names a test for every promise: each named file exists and each named test is
defined in it (a renamed or deleted test must take its promise's line with it)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "reliability.md").read_text()


def references() -> list[tuple[str, str | None]]:
    """(file, test or None) for every `tests/...py[::test]` and every `::test` after it in a cell."""
    refs = []
    for cell in re.findall(r"\|([^|\n]*tests/[^|\n]*)\|?\s*$", DOC, flags=re.M):
        current = None
        for file, test in re.findall(r"(tests/[\w/]+\.py)?(?:::(\w+))?", cell):
            current = file or current
            if file or test:
                refs.append((current, test or None))
    return refs


def test_every_test_the_reliability_page_names_exists() -> None:
    refs = references()
    assert len(refs) >= 30
    for file, test in refs:
        path = ROOT / file
        assert path.is_file(), f"docs/reliability.md names {file}, which does not exist"
        if test is not None:
            assert re.search(rf"^def {test}\b", path.read_text(), flags=re.M), f"{file} has no {test}"
