"""One arm router for every service: which variant answers each request of a batch, and the exposures.

At construction the router resolves every arm of every experiment of one system to a *variant* with
the system's ``resolve(experiment, index, arm)`` (load a registry alias, check the arm's params); a
bad arm is then an :class:`~mlsd.platform.errors.InputError` at startup, never a 500 on a request.

Per batch, one ``assign`` per experiment (units with an empty id are in no experiment: an anonymous
request has no stable unit to randomise), then one of two policies:

* :meth:`ArmRouter.assign` -> :class:`Assignment`: a unit is in every experiment that holds it (one
  per layer, layers being mutually exclusive inside); :meth:`Assignment.groups` yields each distinct
  combination of arms with its rows, and the system composes the arms' variants (recsys: the later
  experiment's model, the union of the re-ranking knobs);
* :meth:`ArmRouter.route` -> :class:`Routes`: a unit takes the *first* experiment (config order) that
  holds it and that arm's variant (search); :meth:`Routes.groups` yields the rows per variant.

Either way each sub-batch runs its variant in one call, and :meth:`ArmRouter.expose` logs, once the
responses were built, the exposures of the rows that were served their arm (vectorised; one
``expose`` call per experiment).

Examples:
    >>> from mlsd.platform.experiments import ExperimentClient, make_experiment
    >>> config = make_experiment("toy", [{"name": "a"}, {"name": "b", "params": {"boost": 2}}],
    ...                          [{"name": "clicks"}], name="boost")
    >>> client = ExperimentClient(config, registry=False)
    >>> router = ArmRouter(client, "toy", lambda exp, i, arm: arm.params.get("boost", 1))
    >>> routes = router.route(["u1", "u2", "", "u3"])
    >>> routes.experiment.tolist()[2], int(routes.arm[2])   # the anonymous request: no experiment
    ('', -1)
    >>> sorted((v, rows.tolist()) for v, rows in routes.groups(default=1))   # one sub-batch per arm
    [(1, [0, 3]), (1, [2]), (2, [1])]
    >>> int(router.expose(routes, ["u1", "u2", "", "u3"]).sum())   # first exposures of the 3 units
    3
    >>> assignment = router.assign(["u1", "u2", "", "u3"])       # every experiment (one here)
    >>> [(held, rows.tolist()) for held, rows in assignment.groups()]
    [({}, [2]), ({'boost': 0}, [0, 3]), ({'boost': 1}, [1])]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

__all__ = ["ArmRouter", "Assignment", "Routes"]

V = TypeVar("V")


@dataclass(frozen=True)
class Routes(Generic[V]):
    """Where each request of a batch goes: its experiment ("" for none), arm index (-1) and variant."""

    experiment: np.ndarray  # object array of experiment names, "" = in no experiment
    arm: np.ndarray  # int64 arm index per request, -1 = in no experiment
    variants: list[V | None]  # per request; None = the default path (champion)
    arm_names: list[str]  # per request; "" for the default path

    def groups(self, default: V) -> Iterator[tuple[V, np.ndarray]]:
        """(variant, row positions) per distinct variant; requests in no experiment get ``default``."""
        keys = [id(v) if v is not None else 0 for v in self.variants]
        by_key: dict[int, list[int]] = {}
        for row, key in enumerate(keys):
            by_key.setdefault(key, []).append(row)
        for key, rows in by_key.items():
            variant = self.variants[rows[0]]
            yield (default if key == 0 or variant is None else variant), np.asarray(rows, dtype=np.int64)


@dataclass(frozen=True)
class Assignment:
    """Each request's arm in every experiment: ``arms[i, j]`` for ``experiments[j]`` (-1 = not in it)."""

    experiments: tuple[str, ...]
    arms: np.ndarray  # int64 (n_requests, n_experiments)

    def groups(self) -> Iterator[tuple[dict[str, int], np.ndarray]]:
        """({experiment: arm} of the experiments holding them, row positions) per distinct combination."""
        if self.arms.shape[0] == 0:
            return
        combos, inverse = np.unique(self.arms, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        for g, combo in enumerate(combos):
            held = {name: int(a) for name, a in zip(self.experiments, combo.tolist(), strict=True) if a >= 0}
            yield held, np.flatnonzero(inverse == g)


class ArmRouter(Generic[V]):
    """Routes a system's requests through its experiments in ``client`` (None: everyone on the default).

    ``resolve(experiment, index, arm) -> variant`` is called once per arm at construction.
    """

    def __init__(self, client: Any, system: str, resolve: Callable[[str, int, Any], V]) -> None:
        from mlsd.platform.experiments.assignment import experiment_names

        self.client = client
        self.system = system
        self.variants_: dict[str, list[V]] = {}
        self.arm_names_: dict[str, list[str]] = {}
        if client is not None:
            for name in experiment_names(client.config, system):
                arms = client.config.experiment(name).arms
                self.variants_[name] = [resolve(name, i, arm) for i, arm in enumerate(arms)]
                self.arm_names_[name] = [arm.name for arm in arms]

    def variant(self, experiment: str, arm: int) -> V:
        return self.variants_[experiment][arm]

    def arm_name(self, experiment: str, arm: int) -> str:
        return self.arm_names_[experiment][arm]

    def assign(self, unit_ids: Sequence[Any]) -> Assignment:
        """Every request's arm in every experiment of the system (the all-layers policy)."""
        ids = np.asarray([str(u) for u in unit_ids], dtype=object)
        arms = np.full((len(ids), len(self.variants_)), -1, dtype=np.int64)
        signed = np.flatnonzero(ids != "")
        for j, name in enumerate(self.variants_):
            if len(signed):
                arms[signed, j] = np.asarray(self.client.assign(name, ids[signed]), dtype=np.int64)
        return Assignment(tuple(self.variants_), arms)

    def route(self, unit_ids: Sequence[Any]) -> Routes[V]:
        n = len(unit_ids)
        ids = np.asarray([str(u) for u in unit_ids], dtype=object)
        experiment = np.full(n, "", dtype=object)
        arm = np.full(n, -1, dtype=np.int64)
        variants: list[V | None] = [None] * n
        names = [""] * n
        open_rows = np.flatnonzero(ids != "")
        for name, arm_variants in self.variants_.items():
            if not len(open_rows):
                break
            assigned = np.asarray(self.client.assign(name, ids[open_rows]), dtype=np.int64)
            held = assigned >= 0
            rows = open_rows[held]
            experiment[rows] = name
            arm[rows] = assigned[held]
            for row, a in zip(rows.tolist(), assigned[held].tolist(), strict=True):
                variants[row] = arm_variants[a]
                names[row] = self.arm_names_[name][a]
            open_rows = open_rows[~held]  # a unit takes the first experiment that holds it
        return Routes(experiment, arm, variants, names)

    def expose(self, routed: Routes[V] | Assignment, unit_ids: Sequence[Any], ts: Any = None) -> np.ndarray:
        """Log the exposures of the routed rows; True where it was a unit's first exposure."""
        first = np.zeros(len(unit_ids), dtype=bool)
        if self.client is None:
            return first
        ids = np.asarray([str(u) for u in unit_ids], dtype=object)
        ts_all = None if ts is None else np.broadcast_to(np.asarray(ts, dtype=np.int64), ids.shape)
        for j, name in enumerate(self.variants_):
            if isinstance(routed, Assignment):
                arms = routed.arms[:, j]
                rows = np.flatnonzero(arms >= 0)
            else:
                rows = np.flatnonzero(routed.experiment == name)
                arms = routed.arm
            if len(rows):
                ts_rows = None if ts_all is None else ts_all[rows]
                first[rows] |= self.client.expose(name, ids[rows], arms[rows], ts_rows)
        return first
