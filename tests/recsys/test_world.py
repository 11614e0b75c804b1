"""The simulated world, part 1 (the data): schema, determinism, rules respected by construction, the planted
known answers, sizes and the data folder of a workdir."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlsd.platform.errors import InputError
from mlsd.platform.system import SystemDir
from mlsd.recsys import world as sim
from mlsd.recsys.data import load, validate
from mlsd.recsys.rules import RuleFilter, region_bits


@pytest.fixture(scope="module")
def world():
    return sim.simulate(n_users=1200, n_items=300, days=60, seed=3)


def test_schema_and_determinism(world):
    ds, truth = world
    validate(ds)
    assert {"user_id", "item_id", "timestamp", "rating", "weight", "event"} <= set(ds.interactions.columns)
    assert {"region", "age_rating", "license_start", "license_end", "release_ts", "cast"} <= set(
        ds.items.columns
    )
    assert set(ds.interactions["event"].unique()) == {"watch", "browse", "onboarding"}
    ts = ds.interactions["timestamp"].to_numpy()
    assert ts.min() >= truth.start_ts and ts.max() < truth.end_ts
    assert (truth.end_ts - truth.start_ts) == 60 * sim.DAY_S
    small = {"n_users": 200, "n_items": 60, "days": 10}
    one, again = sim.simulate(**small, seed=3)[0], sim.simulate(**small, seed=3)[0]
    pd.testing.assert_frame_equal(one.interactions, again.interactions)
    other, _ = sim.simulate(**small, seed=4)
    assert not one.interactions["item_id"].equals(other.interactions["item_id"])


def test_labels_ratings_and_browsing_are_plausible(world):
    ds, _ = world
    inter = ds.interactions
    watch = inter[inter["event"] == "watch"]
    label_rate = (watch["weight"] > sim.LABEL_THRESHOLD).mean()
    assert 0.2 < label_rate < 0.8
    rated = watch["rating"].notna().mean()
    assert 0.05 < rated < 0.3  # sparse ratings
    assert inter.loc[inter["event"] != "watch", "rating"].isna().all()
    assert (inter.loc[inter["event"] != "watch", "weight"] <= sim.LABEL_THRESHOLD).all()


def test_new_users_have_only_onboarding_or_browsing(world):
    ds, truth = world
    new_ids = truth.users.loc[truth.users["is_new"], "user_id"]
    assert 0.02 < len(new_ids) / len(truth.users) < 0.1
    events = ds.interactions[ds.interactions["user_id"].isin(new_ids)]
    assert set(events["event"].unique()) <= {"onboarding", "browse"}
    assert events["user_id"].nunique() > 0.8 * len(new_ids)


def test_every_event_was_allowed_by_the_rules_when_it_happened(world):
    ds, _ = world
    inter = ds.interactions.merge(ds.users[["user_id", "region", "age"]], on="user_id")
    rules = RuleFilter().fit(ds.items)
    ok = rules.allowed(
        inter["item_id"].to_numpy(),
        now=inter["timestamp"].to_numpy(),
        user_region=region_bits(inter["region"].to_numpy()),
        user_age=inter["age"].to_numpy(),
    )
    assert ok.all()
    # ...and the catalogue really has titles that expire, arrive and are upcoming inside the period.
    items, (start, end) = ds.items, (ds.meta["start_ts"], ds.meta["end_ts"])
    assert ((items["license_end"] > start) & (items["license_end"] < end)).any()
    assert ((items["license_start"] > start) & (items["license_start"] < end)).any()
    assert (items["release_ts"] > end).any()


def test_true_taste_genre_is_recoverable_from_watches(world):
    """Known answer: a user's most-watched primary genre is her latent top genre far above chance (1/18)."""
    ds, truth = world
    watch = ds.interactions[ds.interactions["event"] == "watch"]
    primary = ds.items.set_index("item_id")["genres"].str.split("|").str[0]
    genre = primary.reindex(watch["item_id"]).to_numpy()
    counts = pd.crosstab(watch["user_id"].to_numpy(), genre)
    active = counts[counts.sum(axis=1) >= 15]
    predicted = active.idxmax(axis=1)
    true = truth.users.set_index("user_id")["true_genre"].reindex(active.index)
    assert len(active) > 200
    assert (predicted.to_numpy() == true.to_numpy()).mean() > 0.5


def test_completion_follows_taste(world):
    """Planted structure the ranker can learn: watches in the user's top genre are finished more often."""
    ds, truth = world
    watch = ds.interactions[ds.interactions["event"] == "watch"]
    primary = (
        ds.items.set_index("item_id")["genres"].str.split("|").str[0].reindex(watch["item_id"]).to_numpy()
    )
    true = truth.users.set_index("user_id")["true_genre"].reindex(watch["user_id"]).to_numpy()
    label = watch["weight"].to_numpy() > sim.LABEL_THRESHOLD
    assert label[primary == true].mean() > label[primary != true].mean() + 0.1


def test_save_load_round_trip(tmp_path, world):
    ds, truth = world
    sim.save_world(ds, truth, tmp_path / "sim", train=sim.SIZES["default"].train)
    back = load(tmp_path / "sim")
    # stored as the import stores it: the contract's columns and types, in (timestamp, user, item) order
    key = ["timestamp", "user_id", "item_id"]
    expected = ds.interactions.astype({"event": object}).sort_values(key, kind="stable", ignore_index=True)
    got = back.interactions[list(expected.columns)].astype({"event": object})
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    assert back.meta["start_ts"] == ds.meta["start_ts"] and back.meta["train"]["train_days"] == 30
    assert (tmp_path / "sim" / "truth_users.parquet").exists()
    with pytest.raises(InputError, match="simulate"):
        load(tmp_path / "nothing-here")


def test_simulate_into_writes_the_size_and_its_training_job(tmp_path):
    dirs = SystemDir(tmp_path, "recsys")
    summary = sim.simulate_into(dirs, "tiny")
    tiny = sim.SIZES["tiny"]
    assert summary["users"] == tiny.n_users and summary["train"]["train_days"] == tiny.train.train_days
    assert load(dirs.data).meta["train"]["n_estimators"] == tiny.train.n_estimators
    # a custom calendar shorter than the size's job gets the job shortened to fit
    short = sim.simulate_into(dirs, "tiny", n_users=50, days=8)
    assert short["users"] == 50 and short["train"]["train_days"] == 6 and short["train"]["label_days"] == 1
    with pytest.raises(InputError) as err:
        sim.simulate_into(dirs, "huge")
    assert err.value.field == "--size"


@pytest.mark.parametrize(
    ("kwargs", "field"), [({"n_users": 1}, "users"), ({"n_items": 0}, "items"), ({"days": 1}, "days")]
)
def test_bad_sizes_name_the_field(kwargs, field):
    with pytest.raises(InputError) as err:
        sim.simulate(**kwargs)
    assert err.value.field == field


def test_items_are_valid(world):
    ds, _ = world
    items = ds.items
    assert items["item_id"].is_unique
    assert (items["license_start"] < items["license_end"]).all()
    assert np.isin(items["age_rating"], ["G", "PG", "PG-13", "R", "NC-17"]).all()
    assert items["cast"].str.count(r"\|").eq(2).all()
