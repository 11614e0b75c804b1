"""``mlsd recsys <verb>``: the verbs exist, --json prints one object, bad input exits 2 with a clear message."""

from __future__ import annotations

import json

import pytest

from mlsd.cli import main
from mlsd.platform.registry import ModelRegistry


def test_help_lists_every_verb(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["recsys", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for verb in ("simulate", "import", "train", "recommend", "evaluate", "serve", "bench", "demo"):
        assert verb in out


def test_evaluate_comes_from_the_model_module(capsys):
    with pytest.raises(SystemExit):
        main(["recsys", "evaluate", "--help"])
    out = capsys.readouterr().out
    assert "--protocol" in out and "--path" in out


def test_simulate_json_is_one_object_and_writes_the_layout(tmp_path, capsys):
    code = main(["recsys", "simulate", "--workdir", str(tmp_path), "--size", "tiny", "--users", "60", "--items",
                 "30", "--days", "6", "--seed", "3", "--json"])  # fmt: skip
    assert code == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)  # exactly one JSON object on stdout
    assert summary["users"] == 60 and summary["items"] == 30 and summary["events"] > 0
    data = tmp_path / "recsys" / "data"
    assert summary["data"] == str(data)
    assert {p.name for p in data.iterdir()} >= {"interactions.parquet", "items.parquet", "users.parquet"}


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["recsys", "simulate", "--users", "0", "--workdir", "x"], "--users"),
        (["recsys", "simulate", "--users", "many", "--workdir", "x"], "--users"),
        (["recsys", "bench", "--k", "501"], "--k"),
        (["recsys", "serve", "--workdir", "w", "--port", "0"], "--port"),
    ],
)
def test_bad_arguments_exit_2_naming_the_option(argv, needle, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "Fix:" in err


def test_train_on_an_empty_workdir_is_a_clear_error(tmp_path, capsys):
    assert main(["recsys", "train", "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "mlsd: error: --workdir=" in err and f"mlsd recsys simulate --workdir {tmp_path}" in err


def test_simulate_train_serve_share_one_workdir(tmp_path, capsys):
    assert main(["recsys", "simulate", "--workdir", str(tmp_path), "--size", "tiny", "--json"]) == 0
    capsys.readouterr()
    assert main(["recsys", "train", "--workdir", str(tmp_path), "--n-estimators", "5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["version"] == 1 and report["promoted"] is True and report["registered"] is True
    assert {"ndcg@10", "precision@10", "recall@10", "map@10", "coverage@10"} <= set(report["metrics"])
    assert ModelRegistry(tmp_path / "recsys" / "registry").get("recsys-ranker", 1).params["n_estimators"] == 5
    assert main(["recsys", "train", "--workdir", str(tmp_path), "--n-estimators", "5"]) == 0
    assert "already trained" in capsys.readouterr().out  # the same job twice registers nothing


def test_serve_without_a_champion_exits_2_with_the_fix_and_creates_nothing(tmp_path, capsys):
    assert main(["recsys", "serve", "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"mlsd recsys train --workdir {tmp_path}" in err and "recsys-ranker" in err
    assert list(tmp_path.iterdir()) == []


def test_serve_with_a_user_state_store_that_does_not_answer_exits_2_naming_it(tiny, blackhole, capsys):
    """`serve --user-state URL` writes the champion's users there before any worker starts: a store
    that does not answer is named, with the fix, before the service binds its port."""
    assert main(["recsys", "serve", "--workdir", str(tiny.root), "--user-state", blackhole]) == 2
    err = capsys.readouterr().err
    assert "--user-state" in err and "drop --user-state" in err
