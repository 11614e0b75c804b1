"""The daily job: next-day evaluation, registration with lineage, promotion only when it beats the champion."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from mlsd.platform.errors import InputError
from mlsd.platform.registry import ModelRegistry
from mlsd.recsys.config import TrainConfig
from mlsd.recsys.demo import TINY_SIZE, TINY_TRAIN, tiny_registry
from mlsd.recsys.pipeline import DAY_S, MODEL_NAME, relevant_on, split_days, train_daily
from mlsd.recsys.simulate import simulate


@pytest.fixture(scope="module")
def world():
    return simulate(**TINY_SIZE)[0]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """The first daily run on the tiny world (shared with the service tests), in a registry of our own."""
    root = tmp_path_factory.mktemp("pipeline") / "registry"
    shutil.copytree(tiny_registry() / "registry", root)
    return root, json.loads((tiny_registry() / "report.json").read_text())


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
