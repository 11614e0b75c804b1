"""Features: known answers, offline == online on both backends (real Redis), idempotent replays."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlsd.fraud.features import DAY, HOUR, FeatureConfig, FeatureEngine, compute_features, replay
from mlsd.fraud.world import simulate

T0 = 1_767_225_600


def _tiny():
    """Card 1: four payments; terminal 9 gets a fraud whose label is known 2 h later."""
    rows = [
        # tx, ts, card, terminal, amount, device, lat, lon, fraud, label_ts
        (1, T0, 1, 9, 10.0, "a", 48.0, 2.0, 1, T0 + 2 * HOUR),
        (2, T0 + HOUR, 1, 9, 20.0, "a", 48.0, 2.0, 0, T0 + 90 * DAY),
        (3, T0 + 2 * HOUR, 1, 8, 30.0, "a", 48.0, 2.0, 0, T0 + 90 * DAY),
        (4, T0 + 3 * HOUR, 1, 9, 100.0, "b", 49.0, 2.0, 0, T0 + 90 * DAY),
        (5, T0 + 3 * HOUR, 2, 9, 5.0, None, 48.0, 2.0, 0, T0 + 90 * DAY),
    ]
    cols = ["tx_id", "ts", "card_id", "terminal_id", "amount", "device_id", "lat", "lon", "fraud", "label_ts"]
    return pd.DataFrame(rows, columns=cols)


CONFIG = FeatureConfig(
    windows=(2 * HOUR, DAY), entities=("card", "terminal", "device"), risk_windows=(DAY,), seq_len=3
)


def test_known_answers():
    f = compute_features(_tiny(), CONFIG)
    assert f["card_count_2h"].tolist() == [1, 2, 2, 2, 1]  # (t - 2h, t]: the payment at t - 2h is out
    assert f["card_sum_1d"].tolist() == [10, 30, 60, 160, 5]
    assert f["card_mean_2h"].iloc[3] == 65.0 and f["card_std_2h"].iloc[3] == 35.0
    assert np.isnan(f["card_secs_since_last"].iloc[0]) and f["card_secs_since_last"].iloc[3] == HOUR
    hist = np.array([10.0, 20.0, 30.0])
    assert f["card_amount_z"].iloc[3] == pytest.approx((100 - hist.mean()) / hist.std())
    assert f["card_amount_ratio"].iloc[3] == 5.0 and np.isnan(f["card_amount_ratio"].iloc[0])
    assert f["card_new_terminal"].tolist() == [1, 0, 1, 0, 1]
    assert f["card_new_device"].iloc[:4].tolist() == [1, 0, 0, 1] and np.isnan(f["card_new_device"].iloc[4])
    assert f["device_count_1d"].iloc[:4].tolist() == [1, 2, 3, 1] and np.isnan(f["device_count_1d"].iloc[4])
    assert f["card_distance_km"].iloc[3] == pytest.approx(111.2, abs=0.5)
    assert f["card_geo_velocity_kmh"].iloc[3] == pytest.approx(111.2, abs=0.5)  # 111 km in one hour
    # terminal 9: tx 1 is a fraud known from T0 + 2h; decisions at T0 + 1h do not know it yet
    assert f["terminal_risk_1d"].tolist() == [0, 0, 0, pytest.approx(1 / 3), pytest.approx(1 / 4)]
    assert f["seq1_present"].tolist() == [0, 1, 1, 1, 0]
    assert f["seq1_log_amount"].iloc[3] == pytest.approx(np.log1p(30.0))
    assert f["seq2_same_terminal"].iloc[3] == 1.0  # two payments back: terminal 9 again


def test_handbook_config_has_no_faked_columns():
    names = FeatureConfig.handbook().feature_names()
    assert "card_new_device" not in names and not any(
        n.startswith(("device_", "ip_", "card_geo")) for n in names
    )
    tx = _tiny().drop(columns=["device_id", "lat", "lon"])
    f = compute_features(tx, FeatureConfig.handbook())
    assert list(f.columns) == names


@pytest.fixture(scope="module")
def stream():
    return simulate(n_cards=120, n_terminals=30, days=12, seed=5, takeovers_per_day=0.01, rings=1)


def _assert_identical(offline: pd.DataFrame, online: pd.DataFrame) -> None:
    assert list(offline.columns) == list(online.columns)
    a, b = offline.to_numpy(), online.to_numpy()
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    bad = [offline.columns[j] for j in np.flatnonzero(~same.all(axis=0))]
    assert not bad, f"online differs from offline in {bad}"


def test_online_equals_offline_in_process(stream):
    offline = compute_features(stream)
    assert offline["terminal_risk_7d"].max() > 0 and offline["card_new_device"].sum() > 0
    engine = FeatureEngine()
    _assert_identical(offline, replay(engine, stream, batch_size=97))


def test_online_equals_offline_handbook_delay_convention(stream):
    tx = stream.drop(columns=["device_id", "ip", "email", "lat", "lon"]).assign(
        label_ts=stream["ts"] + 2 * DAY
    )
    config = FeatureConfig.handbook(delay=2 * DAY)
    _assert_identical(compute_features(tx, config), replay(FeatureEngine(config), tx, batch_size=256))


@pytest.mark.services
def test_online_equals_offline_on_redis(stream, redis_url, redis_prefix):
    tx = stream[stream["ts"] < stream["ts"].min() + 5 * DAY]
    engine = FeatureEngine(backend="redis", redis_url=redis_url, prefix=redis_prefix)
    _assert_identical(compute_features(tx), replay(engine, tx, batch_size=200))


def test_presized_engine_gives_the_same_features(stream):
    engine = FeatureEngine()
    sizes = engine.presize(stream)
    # known answer: the card store holds every card, and at least its busiest card's 30-day count
    card = stream.sort_values("ts").groupby("card_id")["ts"]
    peak = max(
        int(
            (
                np.arange(len(t)) - np.searchsorted(t, t - engine.config.horizon("card"), side="right") + 1
            ).max()
        )
        for t in (g.to_numpy() for _, g in card)
    )
    assert sizes["card"] == (int(stream["card_id"].nunique() * 1.5) + 1, int(peak * 1.5) + 1)
    store = engine.stores["card"]
    capacity, rows = store.capacity, store._ts.shape[0]
    assert capacity >= sizes["card"][1] and rows >= sizes["card"][0]
    _assert_identical(compute_features(stream), replay(engine, stream, batch_size=97))
    assert (store.capacity, store._ts.shape[0]) == (capacity, rows)  # no growth happened


def _idempotent(engine, tx):
    first = engine.update_batch(tx.iloc[:300])
    again = engine.update_batch(tx.iloc[:300])  # at-least-once delivery: the whole batch again
    pd.testing.assert_frame_equal(first, again)
    after = engine.update_batch(tx.iloc[300:400])
    fresh = FeatureEngine(engine.config)
    fresh.update_batch(tx.iloc[:300])
    pd.testing.assert_frame_equal(after, fresh.update_batch(tx.iloc[300:400]))


def test_replaying_tx_ids_changes_nothing_in_process(stream):
    _idempotent(FeatureEngine(), stream)


@pytest.mark.services
def test_replaying_tx_ids_changes_nothing_on_redis(stream, redis_url, redis_prefix):
    engine = FeatureEngine(backend="redis", redis_url=redis_url, prefix=redis_prefix)
    first = engine.update_batch(stream.iloc[:150])
    pd.testing.assert_frame_equal(first, engine.update_batch(stream.iloc[:150]))
    expected = FeatureEngine().update_batch(stream.iloc[:150])
    pd.testing.assert_frame_equal(first, expected)


def test_unknown_backend_and_missing_field():
    from mlsd.platform.errors import InputError

    with pytest.raises(InputError):
        FeatureEngine(backend="cassandra")
    with pytest.raises(InputError) as err:
        FeatureEngine().update_batch(_tiny().drop(columns=["amount"]))
    assert err.value.field == "amount"


def test_a_shuffled_micro_batch_gives_the_same_features(stream):
    batch = stream.iloc[:200]
    shuffled = batch.sample(frac=1.0, random_state=0)
    expected = FeatureEngine().update_batch(batch)
    got = FeatureEngine().update_batch(shuffled)
    pd.testing.assert_frame_equal(
        got, expected.iloc[batch.index.get_indexer(shuffled.index)].reset_index(drop=True)
    )


def _engine(backend, request):
    if backend == "memory":
        return FeatureEngine()
    url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
    return FeatureEngine(backend="redis", redis_url=url, prefix=prefix)


@pytest.mark.parametrize("backend", ["memory", pytest.param("redis", marks=pytest.mark.services)])
def test_a_batch_replayed_after_later_batches_gets_the_features_it_had(stream, backend, request):
    """Later payments of the same terminals, devices, IPs moved the 7-day windows on: the replay of an
    early batch must still get its own features (a redelivered stream entry), on both stores."""
    engine = _engine(backend, request)
    tx = stream.sort_values("ts", kind="stable").reset_index(drop=True)
    first = engine.update_batch(tx.iloc[:200])
    later = tx[tx["ts"] > tx["ts"].iloc[199] + 8 * DAY].iloc[:300]  # every 7-day window has moved
    engine.update_batch(later)
    pd.testing.assert_frame_equal(engine.update_batch(tx.iloc[:200]), first)


@pytest.mark.services
def test_a_payment_applied_before_a_crash_and_again_after_gets_the_same_features(redis_url, redis_prefix):
    """The crash point between the window update and the feature record: the replay recomputes the
    row from the windows, and must see what the first application saw although a later payment of
    its own batch has moved the key on (and Redis has dropped the cells it left behind)."""
    import redis

    def pay(tx, ts):
        return (tx, ts, 1, 9, 10.0 * tx)

    old = pd.DataFrame([pay(1, T0)], columns=["tx_id", "ts", "card_id", "terminal_id", "amount"])
    batch = pd.DataFrame(
        [pay(2, T0 + 7 * DAY - 10), pay(3, T0 + 7 * DAY + 100)], columns=old.columns
    )  # tx 2 still sees tx 1 in its 7 days; tx 3 pushes tx 1 out of the terminal's horizon
    engine = FeatureEngine(backend="redis", redis_url=redis_url, prefix=redis_prefix)
    engine.update_batch(old)
    first = engine.update_batch(batch)
    assert first["terminal_count_7d"].tolist() == [2, 2]
    client = redis.Redis.from_url(redis_url)
    records = list(client.scan_iter(match=f"{redis_prefix}rec:*"))
    if records:
        client.delete(*records)  # the worker died before the record was written
    pd.testing.assert_frame_equal(engine.update_batch(batch), first)


# ------------------------------------------------------------------------------------------------
# offline windows on DuckDB (training frames over long histories) == the online windows


def _stream_with_ties():
    tx = simulate(n_cards=300, n_terminals=60, days=10, seed=4)
    # same-second payments of one card (ties: arrival order decides what each one sees) and missing
    # devices (no device windows for those payments)
    tx.loc[tx.index[5:40:2], "ts"] = tx.loc[tx.index[4:39:2], "ts"].to_numpy()
    tx.loc[tx.index[10:30], "device_id"] = None
    return tx


def test_duckdb_windows_equal_the_online_engine_value_for_value():
    from mlsd.fraud.features import window_features_duckdb

    tx = _stream_with_ties()
    online = replay(FeatureEngine(), tx, batch_size=256)  # micro-batches, labels as they arrive
    offline = window_features_duckdb(tx)
    ordered = tx.sort_values("ts", kind="stable").reset_index(drop=True)
    assert offline["tx_id"].tolist() == ordered["tx_id"].tolist()  # stream order
    columns = [c for c in offline.columns if c != "tx_id"]
    assert len(columns) == 4 * 4 * 3  # 4 statistics x 4 entities x 3 windows
    online = online.set_index(tx["tx_id"]).loc[offline["tx_id"]]
    for column in columns:
        np.testing.assert_array_equal(offline[column].to_numpy(), online[column].to_numpy(), err_msg=column)
    assert offline["device_count_1h"].isna().sum() == 20  # missing device: no device window


def test_duckdb_windows_read_parquet_files_out_of_core(tmp_path):
    from mlsd.fraud.features import window_features_duckdb

    tx = _stream_with_ties()
    # a history in several files, ties across files ordered by file name then row
    tx.iloc[: len(tx) // 2].to_parquet(tmp_path / "part-0.parquet")
    tx.iloc[len(tx) // 2 :].to_parquet(tmp_path / "part-1.parquet")
    from_files = window_features_duckdb(str(tmp_path / "part-*.parquet"), memory_limit="256MB", threads=1)
    pd.testing.assert_frame_equal(from_files, window_features_duckdb(tx))


def test_duckdb_windows_name_a_missing_column():
    from mlsd.fraud.features import window_features_duckdb
    from mlsd.platform.errors import InputError

    with pytest.raises(InputError, match="amount"):
        window_features_duckdb(_tiny().drop(columns=["amount"]), CONFIG)


def test_compute_features_with_duckdb_windows_is_the_same_frame():
    tx = _stream_with_ties()
    pd.testing.assert_frame_equal(compute_features(tx, windows="duckdb"), compute_features(tx))
    handbook = FeatureConfig.handbook()  # no device / IP columns in that format: absent, not faked
    plain = tx.drop(columns=["device_id", "ip"])
    pd.testing.assert_frame_equal(
        compute_features(plain, handbook, windows="duckdb"), compute_features(plain, handbook)
    )
