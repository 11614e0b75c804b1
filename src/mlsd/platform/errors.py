"""One error type for bad input, so every surface (CLI, HTTP, library) reports it the same way.

An :class:`InputError` names the field, the value it got, what is wrong and how to fix it. The CLI
prints it and exits with status 2; the HTTP app factory answers it with a 4xx JSON body. Library code
raises it instead of letting a ``KeyError`` or a traceback reach the user.
"""

from __future__ import annotations

from typing import Any


def _short(value: Any, limit: int = 80) -> Any:
    """Keep error bodies small: a 10 KB query must not be echoed back whole."""
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + f"... ({len(value)} chars)"
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class InputError(ValueError):
    """Bad input from a user: names ``field``, echoes ``value``, says the ``problem`` and the ``fix``.

    ``status`` is the HTTP status the serving layer answers with (422 by default, 404 for an unknown
    resource, 413 for an oversized payload).

    Examples:
        >>> err = InputError("k", -1, "must be a positive integer", "pass k >= 1")
        >>> print(err)
        k=-1: must be a positive integer. Fix: pass k >= 1
        >>> err.status, err.to_dict()["fix"]
        (422, 'pass k >= 1')
        >>> value = InputError("q", "x" * 500, "too long", "shorten it").value   # echoed values are cut
        >>> len(value), value[-15:]
        (95, '... (500 chars)')
    """

    def __init__(self, field: str, value: Any, problem: str, fix: str, *, status: int = 422) -> None:
        self.field = field
        self.value = _short(value)
        self.problem = problem
        self.fix = fix
        self.status = status
        super().__init__(f"{field}={self.value!r}: {problem}. Fix: {fix}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "value": self.value,
            "problem": self.problem,
            "fix": self.fix,
            "message": str(self),
        }


class DataFormatError(InputError):
    """A malformed input file: names the file and line, and what was expected there.

    Examples:
        >>> err = DataFormatError("ratings.csv", 7, "column 'rating': expected a number", "write a number")
        >>> print(err)
        file='ratings.csv:7': column 'rating': expected a number. Fix: write a number
        >>> err.path, err.line, err.status, isinstance(err, InputError)
        ('ratings.csv', 7, 422, True)
    """

    def __init__(self, path: Any, line: int | None, problem: str, fix: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        if len(where) > 80:  # keep the file name and the line, which are at the end
            where = "..." + where[-77:]
        super().__init__("file", where, problem, fix)
        self.path = str(path)
        self.line = line


class DependencyUnavailable(RuntimeError):
    """A service the request needs (a database, a queue) did not answer: nothing was acknowledged, so
    the client may retry. The HTTP layer answers 503 with ``Retry-After``; not the caller's fault, so
    not an :class:`InputError`.

    Examples:
        >>> err = DependencyUnavailable("review_queue", "PostgreSQL did not answer (OperationalError)")
        >>> err.status, err.retry_after_s, err.to_dict()["field"]
        (503, 5, 'review_queue')
        >>> print(err)
        review_queue unavailable: PostgreSQL did not answer (OperationalError). Fix: retry after 5 s: nothing was acknowledged, so a retry is safe
    """

    status = 503

    def __init__(self, dependency: str, problem: str, *, retry_after_s: int = 5) -> None:
        self.dependency = dependency
        self.problem = problem
        self.retry_after_s = int(retry_after_s)
        self.fix = f"retry after {self.retry_after_s} s: nothing was acknowledged, so a retry is safe"
        super().__init__(f"{dependency} unavailable: {problem}. Fix: {self.fix}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "field": self.dependency,
            "value": None,
            "problem": f"unavailable: {self.problem}",
            "fix": self.fix,
            "message": str(self),
        }
