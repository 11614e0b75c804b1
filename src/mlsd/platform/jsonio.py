"""One JSON encoding for everything mlsd writes: CLI ``--json`` output, reports, logs, registry metadata.

numpy scalars and arrays become plain numbers and lists, paths become strings, and a non-finite float
becomes ``null`` (``json.dumps`` would otherwise write ``NaN``, which is not JSON and which other
readers refuse).

Examples:
    >>> import numpy as np
    >>> dumps({"n": np.int64(3), "p": np.float32(0.5), "bad": float("nan"), "v": np.arange(2)})
    '{"n": 3, "p": 0.5, "bad": null, "v": [0, 1]}'
    >>> dumps([1.0, float("inf")], compact=True)
    '[1.0,null]'
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["dumps", "plain", "write_json"]


def plain(value: Any, *, strict: bool = False) -> Any:
    """``value`` as JSON-ready Python: numpy -> int/float/list, Path -> str, NaN/inf -> None, recursively.

    Anything else becomes its ``str``, or, with ``strict``, a TypeError naming its type (what a store
    of record, such as the model registry's metadata, wants).
    """
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): plain(v, strict=strict) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v, strict=strict) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, str | int | bool) or value is None:
        return value
    if strict:
        raise TypeError(f"{type(value).__name__} is not JSON-serialisable")
    return str(value)


def dumps(obj: Any, *, indent: int | None = None, compact: bool = False) -> str:
    """JSON text of ``obj`` after :func:`plain` (never NaN; ``compact`` drops the spaces)."""
    separators = (",", ":") if compact else None
    return json.dumps(plain(obj), indent=indent, separators=separators, allow_nan=False)


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` to ``path`` atomically (temp file + ``os.replace``): a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)
    return path
