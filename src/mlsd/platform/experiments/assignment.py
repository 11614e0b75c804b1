"""Who sees which arm: typed experiment config and deterministic, stable, batch-first assignment.

A unit (a user, a session, a card) is hashed with a salt into one of ``N_BUCKETS`` = 10,000 buckets with
keyed BLAKE2b, so the same unit always lands in the same bucket on every machine and every run, with no
state to store. Three independent hashes decide a unit's fate, in this order:

1. **Holdout** -- ``bucket(holdout.salt, unit) < fraction * N``: the unit is kept out of every experiment
   (it measures the combined effect of everything shipped).
2. **Layer** -- ``bucket(layer.salt, unit)``: each experiment of a layer reserves a disjoint range of the
   layer's buckets (its ``allocation``, laid out in declaration order), so experiments in one layer are
   mutually exclusive; experiments in different layers are independent (their salts differ).
   ``coverage`` ramps an experiment inside its reservation: the unit is in when its layer bucket falls in
   the first ``coverage`` share of the range, so the 10% population is a subset of the 50% population.
3. **Arm** -- ``bucket(experiment.salt, unit)`` split by the cumulative arm weights. This hash does not
   depend on coverage, so a unit keeps its arm when coverage grows.

Changing an experiment's salt, weights or allocation, or removing an earlier experiment of its layer,
reshuffles units: do it only between experiments (append new experiments at the end of a layer).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlsd.platform.errors import DataFormatError, InputError

N_BUCKETS = 10_000
NOT_ASSIGNED = -1  # arm index of a unit that is not in the experiment (use the default behaviour)

# ---------------------------------------------------------------------------------------------------
# Hashing


def _id_bytes(unit_ids: Any, field_name: str = "unit_ids") -> list[bytes]:
    """Normalise ids to bytes so that the int 42 and the string "42" hash the same everywhere."""
    arr = np.asarray(unit_ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise InputError(
            field_name, f"shape {arr.shape}", "unit ids must be a 1-D array", "pass a flat list or array"
        )
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise InputError(
                field_name, arr[:5].tolist(), "float unit ids must be whole numbers", "pass int or str ids"
            )
        arr = arr.astype(np.int64)
    if arr.dtype.kind == "O" and any(u is None for u in arr):
        raise InputError(field_name, None, "a unit id is None", "drop units without an id before assigning")
    if arr.dtype.kind == "S":
        return list(arr)
    return [s.encode() for s in arr.astype(str)]


def bucket_of(salt: str, unit_ids: Any) -> np.ndarray:
    """Buckets in ``[0, N_BUCKETS)`` of ``unit_ids`` under ``salt``: keyed BLAKE2b, 8-byte digest, mod N.

    hashlib has no vectorised form, so this is the one per-id Python step; everything after it (coverage,
    layers, arms) is numpy. About a microsecond per id.

    Examples:
        >>> bucket_of("ranker", [42, "42", 43]).tolist()   # the int 42 and the string "42" are one unit
        [2901, 2901, 5135]
        >>> bucket_of("another-salt", [42]).tolist()       # an independent hash under another salt
        [4824]
    """
    return _buckets(salt, _id_bytes(unit_ids))


def _buckets(salt: str, encoded: Sequence[bytes]) -> np.ndarray:
    key = hashlib.blake2b(salt.encode(), digest_size=32).digest()  # any salt length fits the 64-byte key
    base = hashlib.blake2b(digest_size=8, key=key)
    digests = bytearray()
    for uid in encoded:
        h = base.copy()
        h.update(uid)
        digests += h.digest()
    return (np.frombuffer(bytes(digests), dtype="<u8") % N_BUCKETS).astype(np.int64)


# ---------------------------------------------------------------------------------------------------
# Typed config


@dataclass(frozen=True)
class Arm:
    """One variant. It names what it changes: a registry ``alias`` (e.g. ``"challenger"``) and/or ``params``.

    Examples:
        >>> Arm("challenger", alias="challenger", params={"k": 50})
        Arm(name='challenger', weight=1.0, alias='challenger', params={'k': 50})
    """

    name: str
    weight: float = 1.0
    alias: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricSpec:
    """How an outcome becomes a metric.

    ``kind="mean"``: per-unit value of outcome column ``column`` (default: the metric name), e.g. watch
    minutes per user. ``kind="ratio"``: ``sum(numerator) / sum(denominator)`` over units, e.g. clicks per
    search, analysed with the delta method. ``covariate``: a pre-period column for CUPED (mean metrics).
    A ``guardrail`` must not degrade by more than ``margin`` (relative, 0.01 = 1%) in the direction given
    by ``higher_is_better``.

    Examples:
        >>> MetricSpec("minutes").value_column   # a mean metric reads the column of its name
        'minutes'
        >>> ctr = MetricSpec("ctr", kind="ratio", numerator="clicks", denominator="searches")
        >>> latency = MetricSpec("latency_ms", higher_is_better=False, guardrail=True, margin=0.02)
        >>> ctr.kind, latency.guardrail
        ('ratio', True)
    """

    name: str
    kind: str = "mean"
    column: str | None = None
    numerator: str | None = None
    denominator: str | None = None
    covariate: str | None = None
    higher_is_better: bool = True
    guardrail: bool = False
    margin: float = 0.0

    @property
    def value_column(self) -> str:
        return self.column or self.name


@dataclass(frozen=True)
class Experiment:
    """An experiment: arms (arm 0 is the control), its share of a layer, its ramp, and its metrics.

    ``mode="shadow"`` means the service always acts on arm 0 and only scores and logs the other arms
    alongside (fraud: the challenger never declines a payment while it is being evaluated).

    Examples:
        >>> from dataclasses import replace
        >>> import numpy as np
        >>> exp = Experiment("ranker", (Arm("control", weight=3), Arm("challenger")))
        >>> exp.salt, exp.weights.tolist(), exp.arm_index("challenger")   # the salt defaults to the name
        ('ranker', [0.75, 0.25], 1)
        >>> def ramp(coverage):   # the same experiment at another coverage
        ...     config = ExperimentConfig((Layer("ranking", (replace(exp, coverage=coverage),)),))
        ...     return Assigner(config).assign("ranker", np.arange(10_000))
        >>> small, big = ramp(0.1), ramp(0.5)
        >>> float((small >= 0).mean()), float((big >= 0).mean())
        (0.1005, 0.4951)
        >>> bool((big[small >= 0] == small[small >= 0]).all())   # growing coverage moves nobody's arm
        True
    """

    name: str
    arms: tuple[Arm, ...]
    salt: str = ""
    allocation: float = 1.0
    coverage: float = 1.0
    unit: str = "user_id"
    system: str | None = None
    mode: str = "split"
    metrics: tuple[MetricSpec, ...] = ()

    def __post_init__(self) -> None:
        if not self.salt:
            object.__setattr__(self, "salt", self.name)

    @property
    def weights(self) -> np.ndarray:
        w = np.array([a.weight for a in self.arms], dtype=float)
        return w / w.sum()

    def arm_index(self, name: str) -> int:
        for i, arm in enumerate(self.arms):
            if arm.name == name:
                return i
        raise InputError(
            "arm", name, f"experiment {self.name!r} has no such arm", f"use one of {self.arm_names}"
        )

    @property
    def arm_names(self) -> list[str]:
        return [a.name for a in self.arms]


@dataclass(frozen=True)
class Layer:
    """Experiments that must not overlap (e.g. two rankers for the same slot).

    Examples:
        >>> import numpy as np
        >>> arms = (Arm("control"), Arm("treatment"))
        >>> a, b = Experiment("A", arms, allocation=0.5), Experiment("B", arms, allocation=0.5)
        >>> layer = Layer("ranking", (a, b))   # A takes the first half of the layer's buckets, B the second
        >>> assigned = Assigner(ExperimentConfig((layer,))).assign_all(np.arange(10_000))
        >>> float((assigned["A"] >= 0).mean()), float((assigned["B"] >= 0).mean())
        (0.4951, 0.5049)
        >>> int(((assigned["A"] >= 0) & (assigned["B"] >= 0)).sum())   # mutually exclusive
        0
    """

    name: str
    experiments: tuple[Experiment, ...]
    salt: str = ""

    def __post_init__(self) -> None:
        if not self.salt:
            object.__setattr__(self, "salt", f"layer:{self.name}")


@dataclass(frozen=True)
class Holdout:
    """Units kept out of every experiment.

    Examples:
        >>> import numpy as np
        >>> exp = Experiment("ranker", (Arm("control"), Arm("challenger")))
        >>> assigner = Assigner(ExperimentConfig((Layer("ranking", (exp,)),), holdout=Holdout(0.05)))
        >>> held = assigner.in_holdout(np.arange(10_000))
        >>> float(held.mean()), bool((assigner.assign("ranker", np.arange(10_000))[held] == -1).all())
        (0.0473, True)
    """

    fraction: float = 0.0
    salt: str = "mlsd:global-holdout"


@dataclass(frozen=True)
class ExperimentConfig:
    """Every layer, experiment and the global holdout: ``from_yaml(path)`` / ``from_dict(d)``.

    Examples:
        >>> arms = [{"name": "control"}, {"name": "challenger"}]
        >>> # a top-level "experiments" list is one layer named "default"
        >>> config = ExperimentConfig.from_dict({"experiments": [{"name": "ranker", "arms": arms}]})
        >>> config.layers[0].name, config.experiment("ranker").arm_names
        ('default', ['control', 'challenger'])
        >>> bad = [{"name": "control"}, {"name": "challenger", "weight": -1}]
        >>> ExperimentConfig.from_dict({"experiments": [{"name": "ranker", "arms": bad}]})   # names the path
        Traceback (most recent call last):
            ...
        mlsd.platform.errors.InputError: layers[0].experiments[0].arms[1].weight=-1.0: must be >= 0. Fix: use e.g. 1 or 0.5
    """

    layers: tuple[Layer, ...]
    holdout: Holdout = field(default_factory=Holdout)

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExperimentConfig:
        """Build from plain data (parsed YAML/JSON); any bad field raises InputError naming its path."""
        _check_mapping(data, "config", {"layers", "holdout", "experiments"})
        layers = []
        raw_layers = data.get("layers", [])
        # Convenience: a top-level "experiments" list is one layer named "default".
        if "experiments" in data:
            raw_layers = [
                *_check_list(raw_layers, "layers"),
                {"name": "default", "experiments": data["experiments"]},
            ]
        for i, raw in enumerate(_check_list(raw_layers, "layers")):
            where = f"layers[{i}]"
            _check_mapping(raw, where, {"name", "salt", "experiments"})
            exps = tuple(
                _experiment_from_dict(e, f"{where}.experiments[{j}]")
                for j, e in enumerate(_check_list(raw.get("experiments", []), f"{where}.experiments"))
            )
            layers.append(
                Layer(
                    name=_str(raw, "name", where),
                    experiments=exps,
                    salt=_str(raw, "salt", where, default=""),
                )
            )
        holdout = Holdout()
        if data.get("holdout") is not None:
            raw = data["holdout"]
            _check_mapping(raw, "holdout", {"fraction", "salt"})
            holdout = Holdout(
                fraction=_num(raw, "fraction", "holdout", default=0.0),
                salt=_str(raw, "salt", "holdout", default=Holdout.salt),
            )
        return cls(layers=tuple(layers), holdout=holdout)

    @classmethod
    def from_yaml(cls, path: str | Path) -> ExperimentConfig:
        """Load a YAML file; a syntax error raises DataFormatError with the line.

        Examples:
            >>> import tempfile
            >>> path = Path(tempfile.mkdtemp()) / "experiments.yaml"
            >>> _ = path.write_text("experiments:\\n  - name: ranker\\n    arms: [{name: control}, {name: b}]\\n")
            >>> ExperimentConfig.from_yaml(path).experiment("ranker").arm_names
            ['control', 'b']
            >>> _ = path.write_text("experiments:\\n  - name: ranker\\n    arms: [{name: control}\\n")
            >>> try:
            ...     ExperimentConfig.from_yaml(path)
            ... except DataFormatError as err:
            ...     print(err.line, err.problem.split(" (")[0])
            4 not valid YAML
        """
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            raise DataFormatError(
                path,
                mark.line + 1 if mark else None,
                f"not valid YAML ({getattr(err, 'problem', err)})",
                "fix the YAML syntax at that line",
            ) from err
        if not isinstance(data, Mapping):
            raise DataFormatError(path, None, "the file is not a YAML mapping", "start with 'layers:'")
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def experiments(self) -> dict[str, Experiment]:
        return {e.name: e for layer in self.layers for e in layer.experiments}

    def experiment(self, name: str) -> Experiment:
        found = self.experiments.get(name)
        if found is None:
            raise InputError(
                "experiment", name, "no such experiment", f"use one of {sorted(self.experiments)}", status=404
            )
        return found


# --- config parsing helpers: every error names the dotted path of the field -------------------------

_EXPERIMENT_KEYS = {"name", "arms", "salt", "allocation", "coverage", "unit", "system", "mode", "metrics"}
_ARM_KEYS = {"name", "weight", "alias", "params"}
_METRIC_KEYS = {f for f in MetricSpec.__dataclass_fields__}


def _check_mapping(raw: Any, where: str, allowed: set[str]) -> None:
    if not isinstance(raw, Mapping):
        raise InputError(where, raw, "expected a mapping", "write it as 'key: value' pairs")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise InputError(
            f"{where}.{unknown[0]}", raw[unknown[0]], "unknown field", f"use one of {sorted(allowed)}"
        )


def _check_list(raw: Any, where: str) -> list[Any]:
    if not isinstance(raw, list | tuple):
        raise InputError(where, raw, "expected a list", "write it as a YAML list ('- ...')")
    return list(raw)


_MISSING = object()


def _str(raw: Mapping[str, Any], key: str, where: str, default: Any = _MISSING) -> Any:
    value = raw.get(key, default)
    if value is _MISSING:
        raise InputError(f"{where}.{key}", None, "is required", f"add '{key}:'")
    if value is not None and value is not default and (not isinstance(value, str) or not value):
        raise InputError(f"{where}.{key}", value, "must be a non-empty string", "quote it if needed")
    return value


def _num(raw: Mapping[str, Any], key: str, where: str, default: Any = _MISSING) -> Any:
    value = raw.get(key, default)
    if value is _MISSING:
        raise InputError(f"{where}.{key}", None, "is required", f"add '{key}:'")
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        raise InputError(f"{where}.{key}", value, "must be a number", "write a number such as 0.5")
    return float(value)


def _experiment_from_dict(raw: Any, where: str) -> Experiment:
    _check_mapping(raw, where, _EXPERIMENT_KEYS)
    arms = []
    for k, arm in enumerate(_check_list(raw.get("arms", []), f"{where}.arms")):
        aw = f"{where}.arms[{k}]"
        _check_mapping(arm, aw, _ARM_KEYS)
        params = arm.get("params") or {}
        if not isinstance(params, Mapping):
            raise InputError(
                f"{aw}.params", params, "expected a mapping", "write params as 'name: value' pairs"
            )
        arms.append(
            Arm(
                name=_str(arm, "name", aw),
                weight=_num(arm, "weight", aw, default=1.0),
                alias=_str(arm, "alias", aw, default=None),
                params=dict(params),
            )
        )
    metrics = []
    for k, m in enumerate(_check_list(raw.get("metrics", []), f"{where}.metrics")):
        mw = f"{where}.metrics[{k}]"
        _check_mapping(m, mw, _METRIC_KEYS)
        for flag in ("higher_is_better", "guardrail"):
            if flag in m and not isinstance(m[flag], bool):
                raise InputError(f"{mw}.{flag}", m[flag], "must be true or false", "write true or false")
        metrics.append(
            MetricSpec(
                name=_str(m, "name", mw),
                kind=_str(m, "kind", mw, default="mean"),
                column=_str(m, "column", mw, default=None),
                numerator=_str(m, "numerator", mw, default=None),
                denominator=_str(m, "denominator", mw, default=None),
                covariate=_str(m, "covariate", mw, default=None),
                higher_is_better=m.get("higher_is_better", True),
                guardrail=m.get("guardrail", False),
                margin=_num(m, "margin", mw, default=0.0),
            )
        )
    return Experiment(
        name=_str(raw, "name", where),
        arms=tuple(arms),
        salt=_str(raw, "salt", where, default=""),
        allocation=_num(raw, "allocation", where, default=1.0),
        coverage=_num(raw, "coverage", where, default=1.0),
        unit=_str(raw, "unit", where, default="user_id"),
        system=_str(raw, "system", where, default=None),
        mode=_str(raw, "mode", where, default="split"),
        metrics=tuple(metrics),
    )


def _validate(config: ExperimentConfig) -> None:
    """Semantic checks that hold however the config was built (YAML or Python)."""
    h = config.holdout
    if not 0.0 <= h.fraction < 1.0:
        raise InputError(
            "holdout.fraction", h.fraction, "must be in [0, 1)", "use e.g. 0.05 for a 5% holdout"
        )
    names: set[str] = set()
    salts = {h.salt: "holdout.salt"}
    for i, layer in enumerate(config.layers):
        lw = f"layers[{i}]"
        if layer.salt in salts:
            raise InputError(
                f"{lw}.salt", layer.salt, f"same salt as {salts[layer.salt]}", "give it its own salt"
            )
        salts[layer.salt] = f"{lw}.salt"
        total = 0.0
        for j, exp in enumerate(layer.experiments):
            ew = f"{lw}.experiments[{j}]"
            if exp.name in names:
                raise InputError(f"{ew}.name", exp.name, "duplicate experiment name", "names must be unique")
            names.add(exp.name)
            # Sharing a salt would correlate the hashes: e.g. a 10% coverage would all land in one arm.
            if exp.salt in salts:
                raise InputError(
                    f"{ew}.salt", exp.salt, f"same salt as {salts[exp.salt]}", "give it its own salt"
                )
            salts[exp.salt] = f"{ew}.salt"
            if len(exp.arms) < 2:
                raise InputError(
                    f"{ew}.arms", len(exp.arms), "needs at least two arms", "add a control and a treatment"
                )
            arm_names = [a.name for a in exp.arms]
            if len(set(arm_names)) != len(arm_names):
                raise InputError(f"{ew}.arms", arm_names, "duplicate arm names", "name each arm once")
            for k, arm in enumerate(exp.arms):
                if not np.isfinite(arm.weight) or arm.weight < 0:
                    raise InputError(
                        f"{ew}.arms[{k}].weight", arm.weight, "must be >= 0", "use e.g. 1 or 0.5"
                    )
            if sum(a.weight for a in exp.arms) <= 0:
                raise InputError(
                    f"{ew}.arms", [a.weight for a in exp.arms], "weights sum to 0", "give an arm weight > 0"
                )
            for key in ("allocation", "coverage"):
                value = getattr(exp, key)
                if not 0.0 <= value <= 1.0:
                    raise InputError(f"{ew}.{key}", value, "must be in [0, 1]", "use e.g. 0.1 for 10%")
            total += exp.allocation
            if total > 1.0 + 1e-9:
                raise InputError(
                    f"{ew}.allocation",
                    exp.allocation,
                    f"the layer's allocations add up to {total:g} > 1",
                    "lower the allocations so that the experiments of a layer share at most 100%",
                )
            if exp.mode not in ("split", "shadow"):
                raise InputError(f"{ew}.mode", exp.mode, "unknown mode", "use 'split' or 'shadow'")
            for k, m in enumerate(exp.metrics):
                _validate_metric(m, f"{ew}.metrics[{k}]")


def _validate_metric(m: MetricSpec, where: str) -> None:
    if m.kind not in ("mean", "ratio"):
        raise InputError(f"{where}.kind", m.kind, "unknown metric kind", "use 'mean' or 'ratio'")
    if m.kind == "ratio" and (not m.numerator or not m.denominator):
        raise InputError(
            f"{where}.numerator",
            m.numerator,
            "a ratio metric needs numerator and denominator",
            "name both outcome columns",
        )
    if m.kind == "ratio" and m.covariate:
        raise InputError(
            f"{where}.covariate",
            m.covariate,
            "CUPED is supported for mean metrics only",
            "drop the covariate or use a per-unit mean metric",
        )
    if not 0.0 <= m.margin < 1.0:
        raise InputError(f"{where}.margin", m.margin, "must be in [0, 1)", "use e.g. 0.01 for 1%")


# ---------------------------------------------------------------------------------------------------
# Assignment


@dataclass(frozen=True)
class _Slot:
    """Where an experiment lives: its layer's salt, its bucket range, its arm edges (precomputed once)."""

    layer_salt: str
    start: int
    stop_covered: int
    arm_edges: np.ndarray


class Assigner:
    """Deterministic assignment for every experiment of a config; batch-first.

    Examples:
        >>> import numpy as np
        >>> arms = [{"name": "control"}, {"name": "challenger", "alias": "challenger"}]
        >>> config = ExperimentConfig.from_dict({"experiments": [{"name": "ranker", "arms": arms}]})
        >>> assigner = Assigner(config)
        >>> assigner.assign("ranker", [1, 2, 3, 4, 5, 6]).tolist()   # arm index, -1 = not in the experiment
        [0, 0, 0, 1, 0, 0]
        >>> assigner.assign("ranker", ["4"]).tolist()   # the same unit, the same arm, on every machine
        [1]
        >>> assigner.arms("ranker", [1, -1])[0].alias   # what the unit's request should use
        'challenger'
        >>> np.bincount(assigner.assign("ranker", np.arange(10_000))).tolist()   # weights 1:1
        [5041, 4959]
    """

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config
        self._experiments = config.experiments
        self._slots: dict[str, _Slot] = {}
        for layer in config.layers:
            start = 0
            for exp in layer.experiments:
                size = int(round(exp.allocation * N_BUCKETS))
                edges = np.round(np.cumsum(exp.weights) * N_BUCKETS).astype(np.int64)
                edges[-1] = N_BUCKETS
                self._slots[exp.name] = _Slot(
                    layer.salt, start, start + int(round(exp.coverage * size)), edges
                )
                start += size

    def in_holdout(self, unit_ids: Any) -> np.ndarray:
        """Boolean mask of units held out of every experiment."""
        return self._held(_id_bytes(unit_ids))

    def assign(self, experiment: str, unit_ids: Any) -> np.ndarray:
        """Arm index per unit (0 = control), ``-1`` for units not in the experiment."""
        self.config.experiment(experiment)  # InputError for an unknown name
        encoded = _id_bytes(unit_ids)
        return self._assign(experiment, encoded, self._held(encoded), {})

    def assign_all(self, unit_ids: Any) -> dict[str, np.ndarray]:
        """Arm index per unit for every experiment; each id is encoded once and each hash computed once."""
        encoded = _id_bytes(unit_ids)
        held = self._held(encoded)
        cache: dict[str, np.ndarray] = {}
        return {name: self._assign(name, encoded, held, cache) for name in self._experiments}

    def arms(self, experiment: str, arm_indices: np.ndarray) -> list[Arm | None]:
        """The :class:`Arm` objects for arm indices (``None`` for -1): what each unit's request should use."""
        exp = self.config.experiment(experiment)
        return [exp.arms[i] if i >= 0 else None for i in np.asarray(arm_indices).tolist()]

    def _held(self, encoded: list[bytes]) -> np.ndarray:
        h = self.config.holdout
        cut = int(round(h.fraction * N_BUCKETS))
        if cut == 0:
            return np.zeros(len(encoded), dtype=bool)
        return _buckets(h.salt, encoded) < cut

    def _assign(
        self, name: str, encoded: list[bytes], held: np.ndarray, cache: dict[str, np.ndarray]
    ) -> np.ndarray:
        slot = self._slots[name]
        exp = self._experiments[name]
        if slot.layer_salt not in cache:
            cache[slot.layer_salt] = _buckets(slot.layer_salt, encoded)
        layer_bucket = cache[slot.layer_salt]
        inside = (layer_bucket >= slot.start) & (layer_bucket < slot.stop_covered) & ~held
        out = np.full(len(encoded), NOT_ASSIGNED, dtype=np.int64)
        idx = np.flatnonzero(inside)
        if len(idx):
            # Only units inside pay for the arm hash.
            out[idx] = np.searchsorted(
                slot.arm_edges, _buckets(exp.salt, [encoded[i] for i in idx]), side="right"
            )
        return out


def experiment_names(config: ExperimentConfig, system: str | None = None) -> Sequence[str]:
    """Names of the experiments of ``system`` (all when None), in config order."""
    return [n for n, e in config.experiments.items() if system is None or e.system == system]
