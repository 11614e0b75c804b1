"""The serving engine: one batch-first path (a single request is a batch of one), rules on every answer,
deadline degradation, exposures, cold start, live profiles, hot reload, request validation."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from mlsd.platform.errors import InputError
from mlsd.platform.registry import ArtifactCorrupted, ModelRegistry
from mlsd.platform.system import SystemDir
from mlsd.recsys.config import Budgets, RecsysConfig, RerankConfig, ServiceConfig
from mlsd.recsys.data import load
from mlsd.recsys.engine import RecsysEngine
from mlsd.recsys.rules import region_bits

STAGES = {"candidates", "rules", "features", "ranking", "rerank"}
NO_POLL = RecsysConfig(service=ServiceConfig(reload_poll_s=0))
# No exploration: each answer is a deterministic function of the request.
EXACT = RecsysConfig(service=ServiceConfig(reload_poll_s=0), rerank=RerankConfig(epsilon=0.0))


@pytest.fixture(scope="module")
def service(tiny):
    svc = RecsysEngine(tiny.registry, config=NO_POLL)
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def known_user(service):
    return int(service.snapshot().model.users_.ids[0])


def test_a_batch_answers_each_request_as_a_batch_of_one_would(tiny):
    engine = RecsysEngine(tiny.registry, config=EXACT)
    users = [int(u) for u in engine.snapshot().model.users_.ids[:25]]
    bodies = [{"user_id": str(u), "k": 5 + i % 7} for i, u in enumerate(users)]
    bodies += [{"user_id": "987654321", "k": 6, "region": "EU", "age": 30, "seed_items": [1, 2]},
               {"user_id": 987654322, "k": 4}]  # fmt: skip
    batch = engine.handle(bodies)
    single = [engine.handle([body])[0] for body in bodies]
    assert len(batch) == len(bodies) and [b["user_id"] for b in batch] == [
        str(int(b["user_id"])) for b in bodies
    ]
    for b, s, body in zip(batch, single, bodies, strict=True):
        assert set(b) == set(s) and b["k"] == body["k"]
        assert [i["item_id"] for i in b["items"]] == [i["item_id"] for i in s["items"]]
        assert [i["score"] for i in b["items"]] == pytest.approx([i["score"] for i in s["items"]], rel=1e-6)
        assert b["scored_by"] == s["scored_by"] and b["cold_start"] == s["cold_start"]
    assert batch[-2]["cold_start"] and batch[-2]["scored_by"] == "cold_start_fallback"
    assert not {1, 2} & {i["item_id"] for i in batch[-2]["items"]}  # picks are not recommended back
    assert batch[0]["scored_by"] == "ranker" and set(batch[0]["timings_ms"]) == STAGES
    assert engine.model_version == 1 and batch[0]["model_version"] == 1
    engine.close()


@pytest.mark.parametrize(
    ("bodies", "field"),
    [
        ([{"k": 3}], "user_id"),
        ([{"user_id": "abc"}], "user_id"),
        ([{"user_id": "1", "k": 0}], "k"),
        ([{"user_id": "1", "colour": "red"}], "colour"),
        ([{"user_id": "1", "region": "MARS"}], "region"),
        ([{"user_id": "1", "age": 400}], "age"),
        ([{"user_id": "1", "seed_items": "1,2"}], "seed_items"),
        ([{"user_id": "1", "deadline_ms": -1}], "deadline_ms"),
        ([{"user_id": "1"}, {"user_id": "2", "k": 501}], "requests[1].k"),
        ({"user_id": "1"}, "requests"),
    ],
)
def test_a_bad_request_is_an_input_error_naming_the_field(service, bodies, field):
    with pytest.raises(InputError) as err:
        service.handle(bodies)
    assert err.value.field == field


def test_an_empty_batch_is_an_empty_answer(service):
    assert service.handle([]) == []


def test_from_dirs_without_a_champion_names_the_fix_and_creates_nothing(tmp_path):
    with pytest.raises(InputError) as err:
        RecsysEngine.from_dirs(SystemDir(tmp_path, "recsys"))
    assert err.value.field == "--workdir" and "mlsd recsys train --workdir" in err.value.fix
    assert list(tmp_path.iterdir()) == []


def test_the_engine_learns_its_stage_costs(tiny, known_user):
    engine = RecsysEngine(tiny.registry, config=NO_POLL)
    before = engine._costs["features"].per_item_ms
    engine.handle([{"user_id": known_user, "k": 5}])
    assert engine._costs["features"].per_item_ms != before  # measured, not the configured guess
    engine.close()


def test_rules_hold_on_every_answer(tiny, service):
    """Over many users (known and unknown, several ages/regions), no returned title breaks a rule."""
    data = load(tiny.data)
    users = data.users.set_index("user_id")
    rng = np.random.default_rng(0)
    ids = rng.choice(users.index.to_numpy(), 40, replace=False).tolist() + [10**9 + i for i in range(5)]
    for uid in ids:
        out = service.recommend(uid, 30, deadline_ms=10_000)
        shown = np.array([it["item_id"] for it in out["items"]], dtype=np.int64)
        region = users.loc[uid, "region"] if uid in users.index else "US"
        age = int(users.loc[uid, "age"]) if uid in users.index else 0
        ok = service.snapshot().rules.allowed(
            shown, now=out["now"], user_region=region_bits(region), user_age=age
        )
        assert ok.all(), (uid, shown[~ok])
        items = data.items.set_index("item_id").loc[shown]
        assert (items["license_start"] <= out["now"]).all() and (items["license_end"] > out["now"]).all()


def test_deadline_degrades_to_candidate_order_and_says_so(service, known_user):
    out = service.recommend(known_user, 10, deadline_ms=0.001)
    skipped = {s["stage"] for s in out["skipped"]}
    assert skipped == {"features", "ranking", "rerank"}
    assert set(out["timings_ms"]) == {"candidates", "rules"}  # rules are never skipped
    assert out["items"] and all(it["propensity"] == 1.0 for it in out["items"])
    full = service.recommend(known_user, 10, deadline_ms=10_000)
    assert full["skipped"] == [] and set(full["timings_ms"]) == STAGES


def test_exposures_are_logged_with_propensities(service, known_user):
    before = len(service.exposures)
    out = service.recommend(known_user, 5, request_id="req-1")
    log = service.exposures.to_frame()
    assert len(service.exposures) == before + len(out["items"])
    mine = log[log["request_id"] == "req-1"]
    assert mine["item_id"].tolist() == [it["item_id"] for it in out["items"]]
    assert mine["position"].tolist() == list(range(len(out["items"])))
    assert mine["propensity"].tolist() == pytest.approx([it["propensity"] for it in out["items"]])


def test_hot_reload_on_promotion_and_corrupted_artifact_refused(tiny, tmp_path):
    root = tmp_path / "registry"
    shutil.copytree(tiny.registry, root)
    cfg = RecsysConfig(service=ServiceConfig(reload_poll_s=3600))  # the watcher exists; we poll by hand
    svc = RecsysEngine(root, config=cfg)
    try:
        reg = ModelRegistry(root)
        assert svc.model_version == 1 and not svc.check_reload()
        v2 = reg.register("recsys-ranker", reg.artifact_path("recsys-ranker", 1), params={}, metrics={},
                          data_fingerprint="x", parent=1)  # fmt: skip
        reg.promote("recsys-ranker", v2.version)
        assert svc.check_reload() and svc.model_version == 2 and svc.reloads == 1
        assert svc.recommend(int(svc.snapshot().model.users_.ids[0]), 3)["model_version"] == 2
        # Tamper with the champion's files: a new service refuses to load it.
        (v2.path / "model.json").write_text("{}")
        with pytest.raises(ArtifactCorrupted):
            RecsysEngine(root, config=NO_POLL)
    finally:
        svc.close()


def test_deadline_budget_comes_from_typed_config(tiny, known_user):
    cfg = RecsysConfig(budgets=Budgets(deadline_ms=0.001), service=ServiceConfig(reload_poll_s=0))
    svc = RecsysEngine(tiny.registry, config=cfg)
    out = svc.recommend(known_user, 5)
    assert out["deadline_ms"] == 0.001 and {s["stage"] for s in out["skipped"]} == {
        "features",
        "ranking",
        "rerank",
    }


def _onboarding_flow(tiny, store):
    """A visitor signs up, picks three titles; the very next request is personalised from the store."""
    svc = RecsysEngine(tiny.registry, config=NO_POLL, online_store=store)
    uid = 555_000_111
    before = svc.recommend(uid, 10)
    assert before["cold_start"] is True
    picks = [it["item_id"] for it in svc.recommend(uid, 10, region="EU", age=30)["items"][:3]]
    svc.record_profile(uid, region="EU", age=30, picks=picks)
    after = svc.recommend(uid, 10)
    assert after["cold_start"] is True
    assert not set(picks) & {it["item_id"] for it in after["items"]}
    assert any("content" in it["sources"] for it in after["items"])
    # The stored age (30) applies: without it the unknown-age default (0) allows family titles only.
    data = load(tiny.data).items.set_index("item_id")
    assert set(data.loc[[it["item_id"] for it in after["items"]], "age_rating"]) - {"G"}


def test_onboarding_profile_from_the_memory_online_store(tiny):
    from mlsd.platform.features.online import MemoryStore

    _onboarding_flow(tiny, MemoryStore())


@pytest.mark.services
def test_onboarding_profile_from_real_redis(tiny, redis_url, redis_prefix):
    from mlsd.platform.features.online import RedisStore

    with RedisStore(redis_url, prefix=redis_prefix) as store:
        _onboarding_flow(tiny, store)


def test_cold_users_are_scored_by_the_models_own_fallback(tiny, service):
    """A user without history gets TwoStageRecommender.score()'s order (candidate order with the
    trending/new weights), as in offline evaluation, not the ranker's scores on empty features."""
    cfg = RecsysConfig(
        service=ServiceConfig(reload_poll_s=0),
        rerank=RerankConfig(epsilon=0.0, freshness_weight=0.0, diversity="none"),
    )
    svc = RecsysEngine(tiny.registry, config=cfg)
    model = svc.snapshot().model
    uid = 10**12 + 7
    out = svc.recommend(uid, 10, region="EU", age=30, deadline_ms=10_000)
    assert out["cold_start"] is True and out["scored_by"] == "cold_start_fallback"
    assert "features" not in out["timings_ms"] and out["skipped"] == []
    frame = model.candidates(np.array([uid]), seed_items=[[]])
    ok = svc.snapshot().rules.allowed(
        frame["item_id"].to_numpy(), now=out["now"], user_region=region_bits("EU"), user_age=30
    )
    frame = frame[ok].reset_index(drop=True)
    expected = frame["item_id"].to_numpy()[np.argsort(-model.score(frame), kind="stable")[:10]]
    assert [it["item_id"] for it in out["items"]] == expected.tolist()
    known = svc.recommend(int(model.users_.ids[0]), 10, deadline_ms=10_000)
    assert known["scored_by"] == "ranker" and "features" in known["timings_ms"]
    svc.close()


def test_every_candidate_source_has_a_readable_reason():
    from mlsd.recsys.candidates.generator import (
        DEFAULT_SOURCES,
        EVAL_SOURCE_SETTINGS,
        EVAL_SOURCES,
        default_source,
    )
    from mlsd.recsys.engine import REASONS

    names = set(DEFAULT_SOURCES) | set(EVAL_SOURCES) | set(EVAL_SOURCE_SETTINGS)
    for name in sorted(names):
        default_source(name)  # a source the generator can build, hence emit
        assert REASONS.get(name), f"source {name!r} has no reason text"
        assert REASONS[name] != name and " " in REASONS[name]


# Parity tests: no exploration, and a deadline no loaded machine reaches (a first read from a cluster
# learns its slot map), so no stage is skipped on either side.
UNHURRIED = RecsysConfig(service=ServiceConfig(reload_poll_s=0), rerank=RerankConfig(epsilon=0.0),
                         budgets=Budgets(deadline_ms=600_000))  # fmt: skip


def _exported(tiny, store):
    """The champion's per-user tables written to ``store`` under its version's namespace."""
    from mlsd.recsys.engine import export_user_state, user_state_namespace
    from mlsd.recsys.model import TwoStageRecommender

    reg = ModelRegistry(tiny.registry)
    model = TwoStageRecommender.load(reg.artifact_path("recsys-ranker", "champion"))
    return model, export_user_state(model, store, user_state_namespace(1), batch=37)


def _same_answers(local, shared, bodies) -> None:
    for a, b in zip(local.handle(bodies), shared.handle(bodies), strict=True):
        assert not b["degraded"], b["degraded_reason"]
        assert [i["item_id"] for i in a["items"]] == [i["item_id"] for i in b["items"]]
        assert [i["score"] for i in a["items"]] == [i["score"] for i in b["items"]]  # bit-identical
        assert (a["scored_by"], a["cold_start"], a["n_candidates"]) == (b["scored_by"], b["cold_start"],
                                                                        b["n_candidates"])  # fmt: skip


def test_user_state_from_the_online_store_serves_what_process_memory_serves(tiny):
    """Every per-user table (ALS vectors, content profiles, seen titles, feature tables) exported to a
    store; an engine holding only the item side reads a request's users from it and answers exactly as
    the engine holding everything in memory, for known, unknown and cold-seeded users alike."""
    from mlsd.platform.features.online import MemoryStore
    from mlsd.recsys.engine import user_state_namespace

    store = MemoryStore()
    model, exported = _exported(tiny, store)
    assert exported["users"] == len(model.users_) and exported["bytes_per_user"] > 0
    assert {"seen_", "generator_.models_.als.user_factors_", "features_.user_table_"} <= set(
        exported["tables"]
    )
    local = RecsysEngine(tiny.registry, config=UNHURRIED)
    shared = RecsysEngine(tiny.registry, config=UNHURRIED, user_state=store)
    stripped = shared.snapshot().model
    assert len(stripped.users_) == 0 and stripped.generator_.models_["als"].user_factors_.shape[0] == 0
    users = [int(u) for u in model.users_.ids[::7][:30]]
    bodies = [{"user_id": u, "k": 10} for u in users] + [{"user_id": 10**12, "k": 10}]
    _same_answers(local, shared, bodies)  # one batch
    _same_answers(local, shared, bodies[:1])  # a batch of one
    answer = shared.handle(bodies[:1])[0]
    assert "user_state" in answer["timings_ms"] and not answer["degraded"]
    # a row packed for another model's layout is refused with the fix, never misread
    namespace, key = user_state_namespace(1), str(users[0])
    blob = store.get_many(namespace, [key])[0]["state"]
    store.put_many(namespace, {key: {"state": b"\x00\x00\x00\x00" + blob[4:]}})
    with pytest.raises(InputError, match="export_user_state"):
        shared.handle(bodies[:1])
    local.close()
    shared.close()


def test_a_version_never_exported_is_written_by_the_first_engine_that_loads_it(tiny):
    """A promoted version whose users nobody exported: the engine that loads it writes them (once,
    with a marker), so its users are not served as cold starts; a second engine finds the marker."""
    from mlsd.platform.features.online import MemoryStore
    from mlsd.recsys.engine import ensure_user_state, user_state_namespace
    from mlsd.recsys.model import TwoStageRecommender

    store = MemoryStore()
    local = RecsysEngine(tiny.registry, config=UNHURRIED)
    first = RecsysEngine(tiny.registry, config=UNHURRIED, user_state=store)
    assert store.get_many(f"{user_state_namespace(1)}:meta", ["exported"])[0] is not None
    model = TwoStageRecommender.load(ModelRegistry(tiny.registry).artifact_path("recsys-ranker", "champion"))
    users = [int(u) for u in model.users_.ids[:12]]
    _same_answers(local, first, [{"user_id": u, "k": 8} for u in users])
    assert ensure_user_state(model, store, 1) is None  # already there: not written again
    for engine in (local, first):
        engine.close()


def test_user_state_on_real_redis_and_an_outage_serves_cold_start(tiny, redis_url, redis_prefix, blackhole):
    from mlsd.platform.features.online import RedisStore

    store = RedisStore(redis_url, prefix=redis_prefix)
    model, _ = _exported(tiny, store)
    local = RecsysEngine(tiny.registry, config=UNHURRIED)
    shared = RecsysEngine(tiny.registry, config=UNHURRIED, user_state=store)
    users = [int(u) for u in model.users_.ids[:12]]
    _same_answers(local, shared, [{"user_id": u, "k": 8} for u in users])
    down = RecsysEngine(tiny.registry, config=UNHURRIED, user_state=RedisStore(blackhole, prefix=redis_prefix))
    answer = down.handle([{"user_id": users[0], "k": 8}])[0]
    assert answer["degraded"] and "user state not read" in answer["degraded_reason"]
    assert answer["cold_start"] and len(answer["items"]) == 8
    for engine in (local, shared, down):
        engine.close()
    store.close()


def test_user_state_on_redis_cluster(tiny, redis_cluster_url, redis_cluster_prefix):
    """The same rows on a 3-master Redis Cluster: one hash-tagged key per user (a row never spans slots),
    read per batch through the cluster client; answers as from process memory."""
    from mlsd.platform.features.online import RedisStore

    store = RedisStore(redis_cluster_url, prefix=redis_cluster_prefix)
    model, exported = _exported(tiny, store)
    local = RecsysEngine(tiny.registry, config=UNHURRIED)
    shared = RecsysEngine(tiny.registry, config=UNHURRIED, user_state=store)
    users = [int(u) for u in model.users_.ids[:16]]
    _same_answers(local, shared, [{"user_id": u, "k": 8} for u in users])
    local.close()
    shared.close()
    store.close()
