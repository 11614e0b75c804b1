"""The evaluate verb on a tiny MovieLens-format folder: one JSON object, the agreed keys."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from mlsd.platform.errors import InputError
from mlsd.recsys import evaluate
from mlsd.recsys.data import toy_dataset


def write_ml100k(folder, n_users=50, n_items=30):
    ds = toy_dataset(n_users=n_users, n_items=n_items, per_user=10)
    inter = ds.interactions
    lines = [
        f"{u}\t{i}\t{int(r)}\t{t}"
        for u, i, r, t in zip(inter.user_id, inter.item_id, inter.rating, inter.timestamp, strict=True)
    ]
    (folder / "u.data").write_text("\n".join(lines) + "\n")
    flags = [
        "|".join("1" if g == (1 if (i - 1) % 2 == 0 else 2) else "0" for g in range(19))
        for i in ds.items.item_id
    ]
    items = [
        f"{i}|{t}|01-Jan-1995||http://x|{f}"
        for i, t, f in zip(ds.items.item_id, ds.items.title, flags, strict=True)
    ]
    (folder / "u.item").write_text("\n".join(items) + "\n", encoding="latin-1")
    return folder


def parse(argv):
    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize("protocol", ["stratified", "temporal"])
def test_evaluate_prints_one_json_object(tmp_path, capsys, protocol):
    path = write_ml100k(tmp_path)
    args = parse(["--path", str(path), "--protocol", protocol, "--models", "popularity,als,blend", "--json"])
    assert evaluate.run(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dataset"] == "movielens" and out["protocol"] == protocol and out["k"] == 10
    assert set(out["models"]) == {"popularity", "als", "blend"}
    for metrics in out["models"].values():
        assert set(metrics) == {"ndcg@10", "precision@10", "recall@10", "map@10", "coverage@10"}
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
    # the toy data has two clean tastes: collaborative filtering must beat popularity
    assert out["models"]["als"]["ndcg@10"] >= out["models"]["popularity"]["ndcg@10"]
    assert out["models"]["blend"]["ndcg@10"] >= out["models"]["popularity"]["ndcg@10"]


def test_two_stage_on_tiny_data(tmp_path, monkeypatch):
    from mlsd.recsys.movielens import load_movielens

    monkeypatch.setattr("mlsd.recsys.model.EVAL_SOURCES", {"ease": 10, "content": 5, "popular": 5})
    ds = load_movielens(write_ml100k(tmp_path))
    result = evaluate.evaluate_models(ds, "stratified", 5, ("popularity", "two_stage"), progress=False)
    assert result["two_stage"]["ndcg@5"] > result["popularity"]["ndcg@5"]


def test_two_stage_boosts_from_the_blend(tmp_path):
    from mlsd.recsys.movielens import load_movielens

    ds = load_movielens(write_ml100k(tmp_path))
    model = evaluate.two_stage_for_evaluation().fit(ds)
    assert model.ranker_.base_feature == "m_blend_rel"
    assert model.ranker_.base_coef_[0] > 0  # a higher blend score means a likelier label
    assert "blend" in model.generator_.models_
    # the blend's members are the evaluation's (sequential EASE among them), with its weights
    assert set(model.generator_.models_["blend"].members_) == {"ease", "rp3", "als", "seq"}
    items, _, sources = model.recommend(np.array([1, 2]), 5)
    assert (items >= 0).all() and any("blend" in s for row in sources for s in row)


def test_bad_arguments(tmp_path):
    path = write_ml100k(tmp_path)
    ds_args = parse(["--path", str(path), "--models", "bogus"])
    with pytest.raises(InputError, match="models"):
        evaluate.run(ds_args)
    with pytest.raises(InputError, match="k"):
        evaluate.run(parse(["--path", str(path), "--k", "0"]))
    with pytest.raises(InputError, match="does not exist"):
        evaluate.run(parse(["--path", str(tmp_path / "nope")]))
    assert np.isfinite(1.0)


def test_validation_mode_never_reads_the_test_split(tmp_path, capsys, monkeypatch):
    """--validation evaluates on train re-split: the test rows are dropped before any model fits."""
    path = write_ml100k(tmp_path)
    seen_sizes = []
    original = evaluate.evaluate_models

    def spy(dataset, *a, **kw):
        seen_sizes.append(len(dataset.interactions))
        return original(dataset, *a, **kw)

    monkeypatch.setattr(evaluate, "evaluate_models", spy)
    assert evaluate.run(parse(["--path", str(path), "--models", "popularity", "--validation", "--json"])) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["validation"] is True
    from mlsd.recsys.movielens import load_movielens

    full = load_movielens(path)
    train, _ = evaluate.split(full, "stratified")
    assert seen_sizes == [len(train)] and len(train) < len(full.interactions)


def test_temporal_protocol_reports_users_with_and_without_a_history():
    """Users whose every event falls in the last 20% exist only in the test split: their nDCG and the
    others' are reported apart, and their user-weighted mean is the overall figure."""
    ds = toy_dataset(n_users=60, n_items=30, per_user=10)
    inter = ds.interactions.copy()
    late = inter["user_id"] > 54  # six users who only arrive after everyone else
    inter.loc[late, "timestamp"] += int(inter["timestamp"].max() - inter["timestamp"].min()) + 1
    ds = ds.with_interactions(inter)
    _, test = evaluate.split(ds, "temporal")
    train, _ = evaluate.split(ds, "temporal")
    test_users = np.unique(test["user_id"])
    unseen = ~np.isin(test_users, train["user_id"].unique())
    assert unseen.sum() == 6 and (~unseen).sum() > 0
    out = evaluate.evaluate_models(ds, "temporal", 10, ("popularity", "als"), progress=False)
    for m in out.values():
        mean = (m["ndcg@10_seen_users"] * (~unseen).sum() + m["ndcg@10_unseen_users"] * unseen.sum()) / len(unseen)
        assert m["ndcg@10"] == pytest.approx(mean, abs=2e-6)
    # popularity is the same list for everyone; ALS personalises only the users with a history
    assert out["als"]["ndcg@10_unseen_users"] == pytest.approx(out["popularity"]["ndcg@10_unseen_users"])
    # the stratified protocol's test users all have a history: no split to report
    strat = evaluate.evaluate_models(ds, "stratified", 10, ("popularity",), progress=False)
    assert "ndcg@10_seen_users" not in strat["popularity"]
