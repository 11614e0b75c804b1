"""The engine routes every request through the A/B framework: assignment, the arm's model and knobs,
one exposure per user, the arm in the answer, score histograms per model; a batch and its requests
one by one agree."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from mlsd.platform.errors import InputError
from mlsd.platform.experiments.client import ExperimentClient
from mlsd.platform.experiments.exposures import RedisExposureLog
from mlsd.platform.experiments.online import arms_from_presets, make_experiment
from mlsd.platform.registry import ModelRegistry
from mlsd.platform.serving import REGISTRY
from mlsd.recsys.engine import RecsysEngine
from mlsd.recsys.world import ARM_PRESETS, METRICS, world_service_config


@pytest.fixture(scope="module")
def registry(tmp_path_factory, tiny):
    """The tiny world's registry plus a v2 under the alias "challenger" (same files: a distinct version)."""
    root = tmp_path_factory.mktemp("recsys-exp") / "registry"
    shutil.copytree(tiny.registry, root)
    reg = ModelRegistry(root)
    v2 = reg.register("recsys-ranker", reg.artifact_path("recsys-ranker", 1), params={}, metrics={},
                      data_fingerprint="challenger", parent=1)  # fmt: skip
    reg.promote("recsys-ranker", v2.version, alias="challenger")
    return root


def _client(names, log=None):
    return ExperimentClient(
        make_experiment("recsys", arms_from_presets(ARM_PRESETS, names), list(METRICS)), log=log
    )


def _users(service, n=40):
    return [int(u) for u in service.snapshot().model.users_.ids[:n]]


def test_each_user_gets_her_arms_model_and_is_exposed_once(registry):
    client = _client(["champion", "challenger"])
    name = "recsys-champion-vs-challenger"
    svc = RecsysEngine(registry, config=world_service_config(), experiments=client)
    users = _users(svc)
    arms = client.assign(name, users)
    assert set(arms.tolist()) == {0, 1}  # both arms occur among 40 users
    for uid, arm in zip(users, arms, strict=True):
        out = svc.recommend(uid, 5)
        assert out["experiment"] == {name: ["champion", "challenger"][arm]}
        assert (
            out["model_version"] == (1 if arm == 0 else 2)
            and out["model_alias"] == ["champion", "challenger"][arm]
        )
    svc.recommend(users[0], 5)  # a second request is not a second exposure
    exposed = client.exposures(name)
    assert sorted(exposed["unit"].tolist()) == sorted(map(str, users))
    assert dict(zip(exposed["unit"], exposed["arm"], strict=True)) == dict(
        zip(map(str, users), arms.tolist(), strict=True)
    )
    count = REGISTRY.get_sample_value("mlsd_score_count", {"system": "recsys", "model": "challenger"})
    assert count and count > 0  # the challenger's scores have their own histogram series


def test_no_ranker_arm_serves_candidate_order_without_features(registry):
    client = _client(["no_ranker", "champion"])
    svc = RecsysEngine(registry, config=world_service_config(), experiments=client)
    users = _users(svc)
    arms = client.assign("recsys-no_ranker-vs-champion", users)
    out = svc.recommend(users[int(np.flatnonzero(arms == 0)[0])], 5)
    assert out["scored_by"] == "candidate_order" and "features" not in out["timings_ms"]
    ranked = svc.recommend(users[int(np.flatnonzero(arms == 1)[0])], 5)
    assert ranked["scored_by"] == "ranker" and "features" in ranked["timings_ms"]


def test_batch_path_matches_single_requests_and_exposes_once(registry):
    client = _client(["champion", "challenger"])
    name = "recsys-champion-vs-challenger"
    svc = RecsysEngine(registry, config=world_service_config(), experiments=client)
    users = _users(svc, 60) + [987_654_321]  # and one cold-start visitor
    batch = svc.handle([{"user_id": u, "k": 7} for u in users])
    assert len(client.exposures(name)) == len(users)
    single = [
        svc.preview([{"user_id": u, "k": 7}], alias=b["model_alias"])[0]
        for u, b in zip(users, batch, strict=True)
    ]
    assert [[i["item_id"] for i in b["items"]] for b in batch] == [
        [i["item_id"] for i in s["items"]] for s in single
    ]
    assert [b["experiment"][name] for b in batch] == [
        ["champion", "challenger"][a] for a in client.assign(name, users)
    ]
    assert batch[-1]["cold_start"] and not batch[0]["cold_start"]
    svc.preview([{"user_id": u, "k": 7} for u in users], alias="challenger")  # counterfactual: logs nothing
    assert len(client.exposures(name)) == len(users)


def test_param_knobs_change_the_list_and_bad_arms_are_input_errors(registry):
    svc = RecsysEngine(registry, config=world_service_config())
    uid = _users(svc, 1)[0]
    body = [{"user_id": uid, "k": 10}]
    base = [i["item_id"] for i in svc.preview(body)[0]["items"]]
    capped = [i["item_id"] for i in svc.preview(body, params={"max_genre_share": 0.1})[0]["items"]]
    assert capped != base  # at most one title per genre: the page changes
    bad = {"ranker": "xgboost"}
    with pytest.raises(InputError) as err:
        RecsysEngine(registry, config=world_service_config(),
                      experiments=_client_with(["champion", "champion"], params=bad))  # fmt: skip
    assert err.value.field.endswith("arms[1].params.ranker")
    with pytest.raises(InputError) as err:
        RecsysEngine(registry, config=world_service_config(),
                      experiments=_client_with(["champion", "champion"], params={"epsilon": 2.0}))  # fmt: skip
    assert err.value.field.endswith("arms[1].params.epsilon")
    with pytest.raises(InputError) as err:
        RecsysEngine(registry, config=world_service_config(),
                      experiments=_client_with(["champion", "champion"], alias="staging"))  # fmt: skip
    assert err.value.value == "staging"
    with pytest.raises(InputError) as err:
        svc.preview(body, alias="challenger")  # not loaded: no experiment names it
    assert err.value.field == "alias"


def _client_with(names, *, params=None, alias=None):
    arms = arms_from_presets(ARM_PRESETS, names)
    second = {"name": arms[1].name, "alias": alias or arms[1].alias, "params": params or {}}
    return ExperimentClient(make_experiment("recsys", [arms[0], second], list(METRICS)))


def test_exposures_go_to_real_redis(registry, redis_url, redis_prefix):
    log = RedisExposureLog(redis_url, prefix=redis_prefix)
    client = _client(["champion", "challenger"], log=log)
    svc = RecsysEngine(registry, config=world_service_config(), experiments=client)
    users = _users(svc, 20)
    svc.handle([{"user_id": u, "k": 5} for u in users])
    svc.handle([{"user_id": u, "k": 5} for u in users[:5]])  # repeats are not new exposures, across calls too
    exposed = client.exposures("recsys-champion-vs-challenger")
    assert sorted(exposed["unit"].tolist()) == sorted(map(str, users))


def test_http_answer_names_the_experiment_and_arm(registry):
    from fastapi.testclient import TestClient

    from mlsd.recsys.service import create_service_app

    client = _client(["champion", "no_ranker"])
    svc = RecsysEngine(registry, config=world_service_config(), experiments=client)
    uid = _users(svc, 1)[0]
    body = TestClient(create_service_app(svc)).get(f"/v1/recommendations/{uid}", params={"k": 3}).json()
    arm = ["champion", "no_ranker"][int(client.assign("recsys-champion-vs-no_ranker", [uid])[0])]
    assert body["experiment"] == {"recsys-champion-vs-no_ranker": arm}
    assert body["scored_by"] == ("ranker" if arm == "champion" else "candidate_order")


def test_an_arms_alias_is_hot_reloaded_when_it_moves(registry, tmp_path):
    from mlsd.recsys.config import RecsysConfig, ServiceConfig

    root = tmp_path / "registry"
    shutil.copytree(registry, root)
    cfg = RecsysConfig(service=ServiceConfig(reload_poll_s=3600))  # watchers exist; we poll by hand
    svc = RecsysEngine(root, config=cfg, experiments=_client(["champion", "challenger"]))
    try:
        assert svc.snapshot("challenger").version == 2 and not svc.check_reload()
        reg = ModelRegistry(root)
        v3 = reg.register("recsys-ranker", reg.artifact_path("recsys-ranker", 1), params={}, metrics={},
                          data_fingerprint="v3", parent=1)  # fmt: skip
        reg.promote("recsys-ranker", v3.version, alias="challenger")
        assert svc.check_reload() and svc.snapshot("challenger").version == 3
        assert svc.model_version == 1  # the champion did not move
    finally:
        svc.close()
