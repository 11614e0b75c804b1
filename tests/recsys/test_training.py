"""Training: next-day evaluation, registration with lineage, promotion only when it beats the champion;
the scheduled retrain (the platform's job over RecsysRetrainSteps) trains on the data up to the run
date, is idempotent per window, rejects dates outside the data, and never promotes a backfill over a
champion that saw that day."""

from __future__ import annotations

import datetime as dt
import shutil

import numpy as np
import pandas as pd
import pytest

from mlsd.platform.errors import InputError
from mlsd.platform.registry import ModelRegistry
from mlsd.platform.retraining import REPORT_KEYS
from mlsd.platform.system import SystemDir
from mlsd.recsys.config import TrainConfig
from mlsd.recsys.data import load
from mlsd.recsys.training import DAY_S, MODEL_NAME, relevant_on, retrain, split_days, train, train_daily
from mlsd.recsys.world import SIZES, simulate_into

TINY_TRAIN = SIZES["tiny"].train


@pytest.fixture(scope="module")
def world(tiny):
    return load(tiny.data)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_run):
    """The first daily run on the tiny world (shared with the engine tests), in a registry of our own."""
    tiny, report = tiny_run
    root = tmp_path_factory.mktemp("training") / "registry"
    shutil.copytree(tiny.registry, root)
    return root, report


def test_first_run_registers_and_promotes_a_champion(first_run, world):
    root, report = first_run
    assert report["promoted"] and report["reason"] == "no champion yet"
    reg = ModelRegistry(root)
    assert reg.aliases(MODEL_NAME) == {"champion": 1, "challenger": 1}
    mv = reg.get(MODEL_NAME, 1)
    assert mv.metrics["ndcg@10"] == pytest.approx(report["metrics"]["ndcg@10"])
    assert "popularity_ndcg@10" in mv.metrics and mv.data_fingerprint
    assert mv.params["train_days"] == TINY_TRAIN.train_days
    files = set(mv.files)
    assert {"model.json", "stage_one.pkl", "catalog/items.parquet", "catalog/users.parquet"} <= files


def test_the_ranker_beats_popularity_on_the_held_out_day(first_run):
    """Known answer planted by the simulator: completion depends on taste, which popularity ignores."""
    _, report = first_run
    assert report["eval_users"] >= 20
    assert report["metrics"]["ndcg@10"] > report["popularity"]["ndcg@10"]
    assert report["metrics"]["recall@10"] > report["popularity"]["recall@10"]


def test_eval_day_is_never_trained_on(first_run, world):
    _, report = first_run
    w = report["window"]
    assert w["eval_start"] - w["train_start"] == TINY_TRAIN.train_days * DAY_S
    assert w["eval_start"] - w["cutoff"] == TINY_TRAIN.label_days * DAY_S
    ts = world.interactions["timestamp"]
    assert report["train_events"] == int(((ts >= w["train_start"]) & (ts < w["eval_start"])).sum())


def test_a_worse_challenger_is_registered_but_not_promoted(first_run, world):
    root, first = first_run
    weak = TrainConfig(train_days=12, label_days=4, sources={"popular": 15, "new": 5}, n_estimators=3)
    report = train_daily(world, root, weak, progress=False)
    reg = ModelRegistry(root)
    assert not report["promoted"]
    assert report["metrics"]["ndcg@10"] <= report["champion_metrics_same_day"]["ndcg@10"]
    # The champion was re-scored on the same day: same number as when it was trained on this data.
    assert report["champion_metrics_same_day"]["ndcg@10"] == pytest.approx(first["metrics"]["ndcg@10"])
    assert reg.aliases(MODEL_NAME) == {"champion": 1, "challenger": 2}
    assert reg.get(MODEL_NAME, 2).parent == 1


def test_relevant_excludes_titles_seen_in_training():
    train = pd.DataFrame({"user_id": [1, 1, 2], "item_id": [10, 11, 10], "weight": [1.0, 0.2, 0.9]})
    held = pd.DataFrame(
        {"user_id": [1, 1, 1, 2, 3], "item_id": [10, 12, 13, 14, 15], "weight": [0.9, 0.8, 0.5, 0.95, 0.1]}
    )
    users, relevant = relevant_on(train, held)
    assert users.tolist() == [1, 2]
    assert [r.tolist() for r in relevant] == [[12], [14]]


def test_bad_windows_are_input_errors(world):
    with pytest.raises(InputError, match="label_days"):
        split_days(world, train_days=5, label_days=6)
    with pytest.raises(InputError, match="train_days"):
        split_days(world.with_interactions(world.interactions.tail(10)), train_days=12, label_days=4)
    assert np.all(np.diff(list(split_days(world).values())) > 0)


# ---------------------------------------------------------------------------------------------------
# The scheduled job


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    dirs = SystemDir(tmp_path_factory.mktemp("recsys-schedule"), "recsys")
    simulate_into(dirs, "tiny")
    first = train(dirs, progress=False)  # champion v1, trained on the data's last day
    assert first["registered"] and first["promoted"] and first["version"] == 1
    return dirs


def test_same_window_registers_nothing_and_a_new_day_trains(workdir):
    again = retrain(workdir, progress=False)  # default: the data's last day, as the champion
    assert set(again) >= REPORT_KEYS
    assert again["system"] == "recsys" and again["run_date"] == "2026-02-28"
    assert again["registered"] is False and again["version"] == 1 and "v1" in again["reason"]
    assert again["data_fingerprint"] == ModelRegistry(workdir.registry).get(MODEL_NAME, 1).data_fingerprint
    earlier = retrain(workdir, dt.date(2026, 2, 26), progress=False)
    assert earlier["registered"] and earlier["version"] == 2
    # v1 trained on data up to 02-28, including 02-26: the gate would be a leak, so no promotion.
    assert earlier["promoted"] is False and "backfill" in earlier["reason"]
    assert earlier["data_fingerprint"] != again["data_fingerprint"]
    reg = ModelRegistry(workdir.registry)
    assert (
        reg.current_version(MODEL_NAME, "champion") == 1
        and reg.current_version(MODEL_NAME, "challenger") == 2
    )
    repeat = retrain(workdir, dt.date(2026, 2, 26), progress=False)
    assert repeat["registered"] is False and repeat["version"] == 2
    assert len(reg.versions(MODEL_NAME)) == 2
    assert any(workdir.runs.glob("2026-02-26-v2.json"))  # the run's report, in W/recsys/runs


def test_other_settings_are_another_job_gated_on_the_same_day(workdir):
    report = train(workdir, progress=False, n_estimators=3, sources={"popular": 15, "new": 5})
    assert report["registered"] and report["run_date"] == "2026-02-28"
    gate = report["gate"]["champion_same_day"]
    assert report["promoted"] is False and report["metrics"]["ndcg@10"] <= gate["ndcg@10"]
    # the champion re-scored on its own evaluation day: the number it was registered with
    champion = ModelRegistry(workdir.registry).get(MODEL_NAME, 1)
    assert gate["ndcg@10"] == pytest.approx(champion.metrics["ndcg@10"])
    with pytest.raises(InputError) as err:
        train(workdir, progress=False, trees=3)
    assert err.value.field == "trees"


@pytest.mark.parametrize("day", [dt.date(2025, 1, 1), dt.date(2026, 3, 1), dt.date(2026, 2, 13)])
def test_a_date_outside_the_data_names_the_valid_range(workdir, day):
    with pytest.raises(InputError) as err:
        retrain(workdir, day, progress=False)
    assert err.value.field == "--date" and "2026-02-28" in err.value.problem


def test_an_empty_workdir_says_how_to_fill_it(tmp_path):
    with pytest.raises(InputError) as err:
        retrain(SystemDir(tmp_path, "recsys"), progress=False)
    assert err.value.field == "--workdir" and "mlsd recsys simulate --workdir" in err.value.fix


# ---------------------------------------------------------------------------------------------------
# The new champion's user rows in the online store before promotion


@pytest.mark.services
def test_train_with_user_state_writes_the_champions_rows_before_promoting_and_prunes_old_ones(
    tmp_path, redis_url, redis_prefix, monkeypatch, capsys
):
    import json

    from mlsd.cli import main
    from mlsd.platform.features.online import RedisStore
    from mlsd.recsys.engine import ensure_user_state, prune_user_state, user_state_namespace
    from mlsd.recsys.model import TwoStageRecommender
    from mlsd.recsys.service import USER_STATE_PREFIX_ENV

    monkeypatch.setenv(USER_STATE_PREFIX_ENV, redis_prefix)  # the workers' prefix, read by the job too
    dirs = SystemDir(tmp_path, "recsys")
    simulate_into(dirs, "tiny")
    assert main(["recsys", "train", "--workdir", str(tmp_path), "--user-state", redis_url, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    state = report["gate"]["before_promote"]["user_state"]
    assert report["promoted"] and state["version"] == report["version"] == 1
    assert state["users"] > 0 and not state["already_there"]
    store = RedisStore(redis_url, prefix=redis_prefix)
    model = TwoStageRecommender.load(ModelRegistry(dirs.registry).artifact_path(MODEL_NAME, "champion"))
    assert ensure_user_state(model, store, 1) is None  # a worker loading v1 finds its rows there
    uid = str(model.users_.ids[0])
    assert store.get_many(user_state_namespace(1), [uid])[0] is not None
    ensure_user_state(model, store, 7)  # a version no alias holds any more
    assert prune_user_state(store, keep={1}) == [7]
    assert store.get_many(user_state_namespace(7), [uid])[0] is None
    assert store.get_many(user_state_namespace(1), [uid])[0] is not None and prune_user_state(store, {1}) == []
    store.close()


def test_train_with_a_user_state_store_that_does_not_answer_exits_2_before_training(tmp_path, blackhole, capsys):
    from mlsd.cli import main

    simulate_into(SystemDir(tmp_path, "recsys"), "tiny")
    assert main(["recsys", "train", "--workdir", str(tmp_path), "--user-state", blackhole]) == 2
    assert "--user-state" in capsys.readouterr().err
    assert not (tmp_path / "recsys" / "registry" / "registry.sqlite").exists()


def test_a_source_that_cannot_fit_the_data_is_reported_not_silently_dropped(tmp_path, monkeypatch, capsys):
    from mlsd.recsys.candidates.popularity import PopularityCandidates
    from mlsd.recsys.training import config_for

    def cannot_fit(self, hist):
        raise InputError("history", "3 events", "too few for a trend", "collect more data")

    fit = PopularityCandidates.fit
    monkeypatch.setattr(PopularityCandidates, "fit", lambda self, hist: (
        cannot_fit(self, hist) if self.kind == "trending" else fit(self, hist)))  # fmt: skip
    dirs = SystemDir(tmp_path, "recsys")
    simulate_into(dirs, "tiny")
    dataset = load(dirs.data)
    report = train_daily(dataset, dirs.registry, config_for(dataset), progress=False)
    dropped = ModelRegistry(dirs.registry).get(MODEL_NAME, report["version"]).params["sources_dropped"]
    assert "trending" in dropped and "too few for a trend" in dropped["trending"]
    assert "source 'trending' could not be fitted" in capsys.readouterr().err
