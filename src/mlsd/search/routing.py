"""Experiment routing for search: which ranking variant answers a request, and the exposure it logs.

:class:`SearchRouter` sits between the service (or the world simulator, which drives the same object
in-process) and :class:`~mlsd.search.engine.SearchEngine`. At construction it resolves, for every
experiment of ``system == "search"`` in the :class:`~mlsd.platform.experiments.client.ExperimentClient`,
each arm to a :class:`Variant`:

* ``arm.params["ranker"]`` -> the engine's ranking variant (:data:`~mlsd.search.engine.RANKINGS`:
  ``ltr``, ``hybrid``, ``bm25``, ``dense``; default ``ltr``);
* ``arm.alias`` -> a registry alias of the ``search-ltr`` model, loaded once at startup next to the
  champion (``champion`` is the engine's own ranker; ``challenger`` is a second LambdaMART).

A bad arm (unknown ranker, an alias the registry lacks, ``dense`` on an engine without a dense index)
is an :class:`~mlsd.platform.errors.InputError` at startup, never a 500 on a request.

Per batch of requests (the routing itself is the platform's
:class:`~mlsd.platform.experiments.router.ArmRouter`): one ``assign`` per experiment; each request runs
the variant of the first experiment (config order) that holds its unit, and the requests of one
variant are answered together by one :meth:`~mlsd.search.engine.SearchEngine.search_batch` call (the
engine's one serving path); scores go to ``mlsd_rank_score{system="search",
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
from mlsd.search.engine import MODEL_NAME, RANKINGS, SYSTEM, SearchEngine


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
        from mlsd.platform.experiments.router import ArmRouter

        self.engine = engine
        self.experiments = experiments
        self.registry_dir = registry_dir
        self.metrics_registry = metrics_registry
        self.router_ = ArmRouter(experiments, SYSTEM, self._variant)  # bad arms fail here
        self.variants_: dict[str, list[Variant]] = self.router_.variants_

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
    def handle(self, requests: Sequence[Any], *, ts: Any = None) -> list[dict[str, Any]]:
        """Request bodies ``{"q", "k", "user_id"}`` (checked as :meth:`SearchEngine.handle` checks them),
        each answered under its unit's arm: what the service's ``GET /v1/search`` calls with a batch of one."""
        queries, user_ids, ks = self.engine.parse_requests(requests)
        return self.search_many(queries, user_ids, ks, ts=ts)

    def search_many(
        self,
        queries: Sequence[str],
        user_ids: Sequence[str],
        k: int | Sequence[int] | None = None,
        *,
        ts: Any = None,
        expose: bool = True,
        budget_ms: float | None = None,
    ) -> list[dict[str, Any]]:
        """Answer a batch of searches, each under its unit's arm; log exposures once all were answered.

        The searches of one variant go to the engine as one batch (``budget_ms``: that batch's
        deadline, default the configured one). ``ts`` (seconds, scalar or one per request) stamps the
        exposures (default: now); the world simulator passes its simulated clock. Every response
        carries ``"experiment": {name: arm}`` (empty when the request is in no experiment).
        """
        if len(queries) != len(user_ids):
            raise InputError(
                "user_ids", len(user_ids), f"expected one per query ({len(queries)})", "align them"
            )
        n = len(queries)
        ks = [k] * n if k is None or isinstance(k, int | np.integer) else list(k)
        routes = self.router_.route(user_ids)
        out: list[dict[str, Any]] = [{}] * n
        for v, rows in routes.groups(default=CHAMPION):
            sub_k = [ks[i] for i in rows]
            answers = self.engine.search_batch(
                [queries[i] for i in rows], [str(user_ids[i]) for i in rows],
                None if sub_k[0] is None else sub_k, budget_ms=budget_ms, ranking=v.ranking, model=v.model,
            )  # fmt: skip
            for i, resp in zip(rows.tolist(), answers, strict=True):
                resp["experiment"] = {routes.experiment[i]: v.arm} if routes.experiment[i] else {}
                out[i] = resp
        self._observe(out, [v or CHAMPION for v in routes.variants])
        if expose and self.experiments is not None:
            self.router_.expose(routes, [str(u) for u in user_ids], ts)
        return out

    def search(self, query: str, user_id: str = "", k: int | None = None) -> dict[str, Any]:
        """One search: :meth:`search_many` of one."""
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
