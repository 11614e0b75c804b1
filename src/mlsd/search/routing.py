"""Experiment routing for search: which ranking variant answers a request, and the exposure it logs.

:class:`SearchRouter` sits between the service (or the world simulator, which drives the same object
in-process) and :class:`~mlsd.search.pipeline.SearchEngine`. At construction it resolves, for every
experiment of ``system == "search"`` in the :class:`~mlsd.platform.experiments.client.ExperimentClient`,
each arm to a :class:`Variant`:

* ``arm.params["ranker"]`` -> the engine's ranking variant (:data:`~mlsd.search.pipeline.RANKINGS`:
  ``ltr``, ``hybrid``, ``bm25``, ``dense``; default ``ltr``);
* ``arm.alias`` -> a registry alias of the ``search-ltr`` model, loaded once at startup next to the
  champion (``champion`` is the engine's own ranker; ``challenger`` is a second LambdaMART).

A bad arm (unknown ranker, an alias the registry lacks, ``dense`` on an engine without a dense index)
is an :class:`~mlsd.platform.errors.InputError` at startup, never a 500 on a request.

Per batch of requests: one ``assign`` per experiment; each request runs the variant of the first
experiment (config order) that holds its unit; scores go to ``mlsd_rank_score{system="search",
model=<arm>}`` (one ``observe_scores`` call per arm and batch); ``expose`` is called once the responses
were built, per experiment, for the units that were actually served their arm.

The unit is the ``user_id``. A search without a user id is **not in any experiment** (champion path,
no exposure): assigning it by its search id would change arm on every search of the same anonymous
shopper (an inconsistent experience, and searches of one person counted as independent units, which
understates the variance), and a per-user metric such as revenue per user has no unit to sum over.
The cost: the analysed population is signed-in traffic only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlsd.platform.errors import InputError
from mlsd.search.pipeline import MODEL_NAME, RANKINGS, SYSTEM, SearchEngine


@dataclass(frozen=True)
class Variant:
    """What one arm runs: a ranking variant and, for an alias other than the champion, its ranker."""

    arm: str
    ranking: str = "ltr"
    alias: str | None = None
    model: Any = None


CHAMPION = Variant("champion")


class SearchRouter:
    """Routes searches through the search experiments of ``experiments`` (None: champion only).

    ``registry_dir``: the model registry arms' aliases are loaded from (needed only when an arm names
    an alias other than ``champion``). ``metrics_registry``: Prometheus registry for the score
    histograms (default: the services' registry).
    """

    def __init__(
        self,
        engine: SearchEngine,
        experiments: Any = None,
        *,
        registry_dir: str | Path | None = None,
        metrics_registry: Any = None,
    ) -> None:
        self.engine = engine
        self.experiments = experiments
        self.registry_dir = registry_dir
        self.metrics_registry = metrics_registry
        self.variants_: dict[str, list[Variant]] = {}
        if experiments is not None:
            from mlsd.platform.experiments.assignment import experiment_names

            for name in experiment_names(experiments.config, SYSTEM):
                exp = experiments.config.experiment(name)
                self.variants_[name] = [self._variant(name, i, arm) for i, arm in enumerate(exp.arms)]

    # -- startup --------------------------------------------------------------------------------------
    def _variant(self, experiment: str, index: int, arm: Any) -> Variant:
        where = f"experiments.{experiment}.arms[{index}]"
        params = dict(arm.params or {})
        unknown = sorted(set(params) - {"ranker"})
        if unknown:
            raise InputError(
                f"{where}.params.{unknown[0]}", params[unknown[0]], "unknown search arm parameter",
                'search arms take {"ranker": ' + "|".join(RANKINGS) + "}",
            )  # fmt: skip
        ranking = str(params.get("ranker", "ltr"))
        if ranking not in RANKINGS:
            raise InputError(
                f"{where}.params.ranker", ranking, "unknown ranker", f"use one of {list(RANKINGS)}"
            )
        if ranking == "dense" and self.engine.dense_ is None:
            raise InputError(
                f"{where}.params.ranker",
                ranking,
                "this engine has no dense index",
                "serve with dense enabled",
            )
        alias = arm.alias
        model = None
        if alias not in (None, "champion"):
            model = self._load_alias(alias, where)
        if ranking == "ltr" and model is None and self.engine.ranker_ is None:
            raise InputError(
                f"{where}.alias", alias, "no champion ranker is loaded", "train one with `mlsd search train`"
            )
        return Variant(arm.name, ranking, alias, model)

    def _load_alias(self, alias: str, where: str) -> Any:
        from mlsd.platform.registry import ModelRegistry
        from mlsd.search.ltr import LambdaMARTRanker

        if self.registry_dir is None or not Path(self.registry_dir).exists():
            raise InputError(
                f"{where}.alias", alias, "no model registry to load it from", "pass registry_dir"
            )
        registry = ModelRegistry(self.registry_dir)
        mv = registry.alias(MODEL_NAME, alias) if MODEL_NAME in registry.names() else None
        if mv is None:
            raise InputError(
                f"{where}.alias", alias, f"model {MODEL_NAME!r} has no such alias",
                "register a challenger first (`mlsd pipeline run daily`)",
            )  # fmt: skip
        ranker = LambdaMARTRanker.load(registry.artifact_path(MODEL_NAME, alias))
        ranker.version_ = mv.version
        return ranker

    # -- serving ----------------------------------------------------------------------------------------
    def route(self, user_ids: Sequence[str]) -> tuple[list[Variant], list[tuple[str, int] | None]]:
        """The variant of each request and its (experiment, arm index), None when in no experiment."""
        n = len(user_ids)
        variants: list[Variant] = [CHAMPION] * n
        where: list[tuple[str, int] | None] = [None] * n
        if not self.variants_:
            return variants, where
        ids = np.asarray([str(u) for u in user_ids], dtype=object)
        signed_in = np.flatnonzero(ids != "")
        open_rows = signed_in
        for name, arms in self.variants_.items():
            if not len(open_rows):
                break
            assigned = self.experiments.assign(name, ids[open_rows])
            for row, arm in zip(
                open_rows[assigned >= 0].tolist(), assigned[assigned >= 0].tolist(), strict=True
            ):
                variants[row] = arms[arm]
                where[row] = (name, arm)
            open_rows = open_rows[assigned < 0]  # a unit takes the first experiment that holds it
        return variants, where

    def search_many(
        self,
        queries: Sequence[str],
        user_ids: Sequence[str],
        k: int | None = None,
        *,
        ts: Any = None,
        expose: bool = True,
    ) -> list[dict[str, Any]]:
        """Answer a batch of searches, each under its unit's arm; log exposures once all were answered.

        ``ts`` (seconds, scalar or one per request) stamps the exposures (default: now); the world
        simulator passes its simulated clock. Every response carries ``"experiment": {name: arm}``
        (empty when the request is in no experiment).
        """
        if len(queries) != len(user_ids):
            raise InputError(
                "user_ids", len(user_ids), f"expected one per query ({len(queries)})", "align them"
            )
        variants, where = self.route(user_ids)
        out = []
        for q, u, v, w in zip(queries, user_ids, variants, where, strict=True):
            resp = self.engine.search(q, str(u), k, ranking=v.ranking, model=v.model)
            resp["experiment"] = {w[0]: v.arm} if w is not None else {}
            out.append(resp)
        self._observe(out, variants)
        if expose and self.experiments is not None:
            self._expose(user_ids, where, ts)
        return out

    def search(self, query: str, user_id: str = "", k: int | None = None) -> dict[str, Any]:
        """One request (the HTTP handler): :meth:`search_many` of one."""
        return self.search_many([query], [user_id], k)[0]

    def _observe(self, responses: list[dict[str, Any]], variants: list[Variant]) -> None:
        from mlsd.platform.monitoring.metrics import observe_scores

        by_arm: dict[str, list[float]] = {}
        for resp, v in zip(responses, variants, strict=True):
            by_arm.setdefault(v.arm, []).extend(r["score"] for r in resp["results"] if r["score"] is not None)
        for arm, scores in by_arm.items():
            observe_scores(
                SYSTEM, np.asarray(scores), model=arm, registry=self.metrics_registry, bounded=False
            )

    def _expose(self, user_ids: Sequence[str], where: list[tuple[str, int] | None], ts: Any) -> None:
        ts_arr = None if ts is None else np.broadcast_to(np.asarray(ts, dtype=np.int64), (len(user_ids),))
        for name in self.variants_:
            rows = [i for i, w in enumerate(where) if w is not None and w[0] == name]
            if not rows:
                continue
            self.experiments.expose(
                name,
                [str(user_ids[i]) for i in rows],
                np.asarray([where[i][1] for i in rows], dtype=np.int64),  # type: ignore[index]
                None if ts_arr is None else ts_arr[rows],
            )
