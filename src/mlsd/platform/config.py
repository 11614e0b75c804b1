"""Typed configuration shared by the systems: frozen dataclasses of frozen dataclass sections.

Each system's config (``RecsysConfig``, ``FraudConfig``, ``SearchConfig``) is two levels deep:
sections (``service``, ``rules``, ...) holding settings. :func:`override_sections` applies a plain
mapping — a YAML file, a test, a CLI flag — on top of the defaults and refuses what it does not know,
naming the full path of the bad key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields, replace
from typing import Any, TypeVar

from mlsd.platform.errors import InputError

ConfigT = TypeVar("ConfigT")


def override_sections(
    config: ConfigT,
    data: Mapping[str, Any] | None,
    *,
    convert: Mapping[str, Callable[[dict[str, Any]], dict[str, Any]]] | None = None,
) -> ConfigT:
    """Return ``config`` with ``data``'s ``{section: {setting: value}}`` applied.

    ``convert`` maps a section name to a function that normalises its values before they are set
    (e.g. YAML lists into tuples). Unknown sections or settings, and sections that are not mappings,
    raise :class:`InputError` naming ``config.<section>.<setting>``.

    Examples:
        >>> from dataclasses import dataclass, field
        >>> @dataclass(frozen=True)
        ... class Service:
        ...     port: int = 8000
        ...     workers: int = 1
        >>> @dataclass(frozen=True)
        ... class Config:
        ...     service: Service = field(default_factory=Service)
        >>> override_sections(Config(), {"service": {"port": 9000}})
        Config(service=Service(port=9000, workers=1))
        >>> override_sections(Config(), {"service": {"prot": 9000}})
        Traceback (most recent call last):
            ...
        mlsd.platform.errors.InputError: config.service.prot=9000: unknown setting. Fix: use one of ['port', 'workers']
    """
    sections = {f.name for f in fields(config)}  # type: ignore[arg-type]
    for section, values in (data or {}).items():
        if section not in sections:
            raise InputError("config", section, "unknown section", f"use one of {sorted(sections)}")
        if not isinstance(values, Mapping):
            raise InputError(f"config.{section}", values, "must be a mapping", "write key: value pairs")
        current = getattr(config, section)
        allowed = {f.name for f in fields(current)}
        for key in values:
            if key not in allowed:
                raise InputError(
                    f"config.{section}.{key}", values[key], "unknown setting", f"use one of {sorted(allowed)}"
                )
        updates = dict(values)
        if convert and section in convert:
            updates = convert[section](updates)
        config = replace(config, **{section: replace(current, **updates)})  # type: ignore[type-var]
    return config
