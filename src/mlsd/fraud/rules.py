"""Declarative fraud rules: a versioned YAML file, evaluated vectorised over a batch of feature rows.

A rule is a conjunction of conditions on named columns (raw payment fields or engineered features)
with an action and a reason code::

    version: 3
    rules:
      - id: amount_limit
        when: {field: amount, op: ">", value: 5000}
        action: review           # flag < review < block
        reason: AMOUNT_OVER_LIMIT

Analysts change rules without a deploy: :class:`RuleEngine` polls the file's mtime and swaps in the
new rule set at run time; a broken edit is reported and the previous rules stay in force (a typo must
never switch fraud screening off). A rule over a column the batch lacks (the handbook data has no
country) is *skipped* and reported, never evaluated on a made-up value.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from mlsd.platform.errors import DataFormatError

log = logging.getLogger(__name__)

# Severity order: a payment's rule outcome is the most severe action among the rules it fires.
ACTIONS: dict[str, int] = {"flag": 1, "review": 2, "block": 3}
NUMERIC_OPS = {">": np.greater, ">=": np.greater_equal, "<": np.less, "<=": np.less_equal}
EQUALITY_OPS = ("==", "!=")
SET_OPS = ("in", "not_in")
OPS = (*NUMERIC_OPS, *EQUALITY_OPS, *SET_OPS)


def default_rules_path() -> Path:
    """The packaged default rule file (``mlsd/fraud/rules.yaml``)."""
    return Path(str(resources.files("mlsd.fraud").joinpath("rules.yaml")))


@dataclass(frozen=True)
class Condition:
    """``frame[field] <op> value``; a missing value (NaN/None) never satisfies a condition."""

    field: str
    op: str
    value: Any

    def mask(self, column: np.ndarray) -> np.ndarray:
        if self.op in NUMERIC_OPS:
            values = np.asarray(column, dtype=np.float64)
            with np.errstate(invalid="ignore"):
                return NUMERIC_OPS[self.op](values, float(self.value))  # NaN compares False
        series = pd.Series(column)
        present = series.notna().to_numpy()
        if self.op in SET_OPS:
            inside = series.isin(list(self.value)).to_numpy()
            return present & (inside if self.op == "in" else ~inside)
        equal = (series == self.value).to_numpy()
        return present & (equal if self.op == "==" else ~equal)


@dataclass(frozen=True)
class Rule:
    """One named rule: all ``conditions`` must hold for it to fire."""

    id: str
    conditions: tuple[Condition, ...]
    action: str
    reason: str
    description: str = ""

    @property
    def fields(self) -> set[str]:
        return {c.field for c in self.conditions}


@dataclass
class RuleHits:
    """Result of evaluating a rule set on ``n`` rows.

    ``fired[i, j]`` says whether row ``i`` fired rule ``j``; ``severity[i]`` is the most severe action
    fired (0 = none, see :data:`ACTIONS`); ``skipped`` lists the rules whose columns the batch lacked.
    """

    rules: tuple[Rule, ...]
    fired: np.ndarray
    skipped: tuple[str, ...]
    version: int

    @property
    def severity(self) -> np.ndarray:
        if not self.rules:
            return np.zeros(self.fired.shape[0], dtype=np.int8)
        weights = np.array([ACTIONS[r.action] for r in self.rules], dtype=np.int8)
        return (self.fired * weights).max(axis=1).astype(np.int8)

    def reasons(self) -> list[list[str]]:
        """Reason codes of the fired rules, per row (rows that fired nothing get ``[]``)."""
        codes = [r.reason for r in self.rules]
        out: list[list[str]] = [[] for _ in range(self.fired.shape[0])]
        rows, cols = np.nonzero(self.fired)  # one pass over the hits, not over every row
        for i, j in zip(rows.tolist(), cols.tolist(), strict=True):
            out[i].append(codes[j])
        return out


@dataclass(frozen=True)
class RuleSet:
    """A versioned, validated list of rules."""

    version: int
    rules: tuple[Rule, ...]
    source: str = "<dict>"

    @classmethod
    def from_yaml(cls, path: str | Path) -> RuleSet:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            raise DataFormatError(
                path, None if mark is None else mark.line + 1, "not valid YAML", "fix the YAML syntax"
            ) from err
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> RuleSet:
        """Validate a parsed rule file; every problem names the rule and the field."""

        def bad(where: str, problem: str, fix: str) -> DataFormatError:
            return DataFormatError(source, None, f"{where}: {problem}", fix)

        if not isinstance(data, Mapping):
            raise bad("top level", "must be a mapping with 'version' and 'rules'", "start with 'version: 1'")
        unknown = set(data) - {"version", "rules"}
        if unknown:
            raise bad(
                f"top-level key {sorted(unknown)[0]!r}", "unknown key", "use only 'version' and 'rules'"
            )
        version = data.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise bad(
                "field 'version'", f"must be a positive integer, got {version!r}", "bump it on every change"
            )
        raw_rules = data.get("rules")
        if not isinstance(raw_rules, list):
            raise bad("field 'rules'", "must be a list of rules", "write '- id: ...' entries under 'rules:'")
        rules: list[Rule] = []
        seen: set[str] = set()
        for index, raw in enumerate(raw_rules):
            rules.append(_parse_rule(raw, index, seen, bad))
        return cls(version=version, rules=tuple(rules), source=source)

    @property
    def fields(self) -> set[str]:
        return set().union(*(r.fields for r in self.rules)) if self.rules else set()

    def evaluate(self, frame: pd.DataFrame | Mapping[str, Any]) -> RuleHits:
        """Evaluate every rule over the batch at once (one numpy mask per condition)."""
        columns = frame.columns if isinstance(frame, pd.DataFrame) else frame.keys()
        available = set(columns)
        n = len(frame) if isinstance(frame, pd.DataFrame) else len(next(iter(frame.values()), []))
        fired = np.zeros((n, len(self.rules)), dtype=bool)
        skipped: list[str] = []
        cache: dict[str, np.ndarray] = {}
        for j, rule in enumerate(self.rules):
            if not rule.fields <= available:
                skipped.append(rule.id)
                continue
            mask = np.ones(n, dtype=bool)
            for cond in rule.conditions:
                if cond.field not in cache:
                    cache[cond.field] = np.asarray(frame[cond.field])
                mask &= cond.mask(cache[cond.field])
            fired[:, j] = mask
        return RuleHits(rules=self.rules, fired=fired, skipped=tuple(skipped), version=self.version)


def _parse_rule(raw: Any, index: int, seen: set[str], bad: Callable[..., DataFormatError]) -> Rule:
    label = f"rule #{index + 1}"
    if not isinstance(raw, Mapping):
        raise bad(label, "must be a mapping", "write 'id', 'when', 'action', 'reason'")
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not rule_id:
        raise bad(f"{label} field 'id'", "missing or not a string", "give every rule a unique id")
    label = f"rule {rule_id!r}"
    if rule_id in seen:
        raise bad(f"{label} field 'id'", "duplicate id", "rule ids must be unique")
    seen.add(rule_id)
    allowed = {"id", "when", "action", "reason", "description"}
    for key in raw:
        if key not in allowed:
            raise bad(f"{label} field {key!r}", "unknown field", f"use only {sorted(allowed)}")
    action = raw.get("action")
    if action not in ACTIONS:
        raise bad(f"{label} field 'action'", f"got {action!r}", f"use one of {list(ACTIONS)}")
    reason = raw.get("reason", rule_id.upper())
    if not isinstance(reason, str) or not reason:
        raise bad(f"{label} field 'reason'", "must be a non-empty string", "e.g. AMOUNT_OVER_LIMIT")
    when = raw.get("when")
    if isinstance(when, Mapping):
        when = [when]
    if not isinstance(when, list) or not when:
        raise bad(
            f"{label} field 'when'", "missing or empty", "give at least one {field, op, value} condition"
        )
    conditions = []
    for k, cond in enumerate(when):
        where = f"{label} field 'when[{k}]'"
        if not isinstance(cond, Mapping) or set(cond) != {"field", "op", "value"}:
            raise bad(
                where,
                "must have exactly the keys field, op, value",
                "e.g. {field: amount, op: '>', value: 5000}",
            )
        name, op, value = cond["field"], cond["op"], cond["value"]
        if not isinstance(name, str) or not name:
            raise bad(f"{where}.field", f"got {name!r}", "name a payment field or feature")
        if op not in OPS:
            raise bad(f"{where}.op", f"unknown operator {op!r}", f"use one of {list(OPS)}")
        if op in NUMERIC_OPS and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise bad(f"{where}.value", f"{op!r} needs a number, got {value!r}", "write a number")
        if op in SET_OPS:
            if not isinstance(value, list) or not value:
                raise bad(f"{where}.value", f"{op!r} needs a non-empty list, got {value!r}", "e.g. [KP, IR]")
            value = tuple(value)
        conditions.append(Condition(name, op, value))
    return Rule(
        id=rule_id,
        conditions=tuple(conditions),
        action=action,
        reason=reason,
        description=str(raw.get("description", "")),
    )


class RuleEngine:
    """The rule set in force, reloaded from its file at run time when the file changes.

    :meth:`current` checks the file's mtime at most every ``poll_s`` seconds (one ``stat`` call), so
    the hot path pays nothing between polls. A file that fails validation is logged and counted in
    ``reload_errors``; the previous rule set stays in force.
    """

    def __init__(
        self, path: str | Path | None = None, poll_s: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = Path(path) if path is not None else default_rules_path()
        self.poll_s = poll_s
        self.clock = clock
        self.reload_errors = 0
        self.last_error: str | None = None
        self._stamp = self._stat()
        self._rules = RuleSet.from_yaml(self.path)  # a bad file at start-up is an error, not a warning
        self._checked = clock()

    def _stat(self) -> tuple[int, int]:
        st = self.path.stat()
        return st.st_mtime_ns, st.st_size

    def current(self) -> RuleSet:
        now = self.clock()
        if now - self._checked >= self.poll_s:
            self._checked = now
            self.reload_if_changed()
        return self._rules

    def reload_if_changed(self) -> bool:
        """Reload when the file's mtime or size changed; return whether new rules are in force."""
        try:
            stamp = self._stat()
        except OSError as err:
            self._fail(f"cannot stat {self.path}: {err}")
            return False
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            rules = RuleSet.from_yaml(self.path)
        except DataFormatError as err:
            self._fail(str(err))
            return False
        log.info("rules reloaded: %s version %d -> %d", self.path, self._rules.version, rules.version)
        self._rules = rules
        self.last_error = None
        return True

    def _fail(self, message: str) -> None:
        self.reload_errors += 1
        self.last_error = message
        log.error("rule reload failed, keeping version %d: %s", self._rules.version, message)

    def evaluate(self, frame: pd.DataFrame | Mapping[str, Any]) -> RuleHits:
        return self.current().evaluate(frame)


def backtest(rules: RuleSet, frame: pd.DataFrame, label: np.ndarray | pd.Series) -> pd.DataFrame:
    """Per rule over labelled history: hits, hit rate, precision, recall (plus an ``ANY`` row).

    ``hit_rate`` = share of payments the rule fires on; ``precision`` = share of its hits that were
    fraud; ``recall`` = share of all frauds it caught. Skipped rules (columns absent) get NaN.
    """
    y = np.asarray(label).astype(bool)
    hits = rules.evaluate(frame)
    n, n_fraud = len(y), int(y.sum())
    rows = []
    columns = [*(r.id for r in rules.rules), "ANY"]
    fired = np.column_stack([hits.fired, hits.fired.any(axis=1)]) if n else np.zeros((0, len(columns)), bool)
    actions = [*(r.action for r in rules.rules), "-"]
    for j, rule_id in enumerate(columns):
        skipped = rule_id in hits.skipped
        f = fired[:, j]
        tp = int((f & y).sum())
        n_hits = int(f.sum())
        rows.append(
            {
                "rule": rule_id,
                "action": actions[j],
                "hits": np.nan if skipped else n_hits,
                "hit_rate": np.nan if skipped or n == 0 else n_hits / n,
                "precision": np.nan if skipped or n_hits == 0 else tp / n_hits,
                "recall": np.nan if skipped or n_fraud == 0 else tp / n_fraud,
                "skipped": skipped,
            }
        )
    return pd.DataFrame(rows)
