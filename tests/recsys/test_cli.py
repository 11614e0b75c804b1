"""``mlsd recsys <verb>``: the verbs exist, --json prints one object, bad input exits 2 with a clear message."""

from __future__ import annotations

import json

import pytest

from mlsd.cli import main
from mlsd.recsys.demo import tiny_registry


def test_help_lists_every_verb(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["recsys", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for verb in ("simulate", "train", "evaluate", "serve", "bench", "demo"):
        assert verb in out


def test_evaluate_comes_from_the_model_module(capsys):
    with pytest.raises(SystemExit):
        main(["recsys", "evaluate", "--help"])
    out = capsys.readouterr().out
    assert "--protocol" in out and "--path" in out


def test_simulate_json_is_one_object_and_writes_the_tables(tmp_path, capsys):
    out_dir = tmp_path / "sim"
    code = main(["recsys", "simulate", "--users", "60", "--items", "30", "--days", "6", "--seed", "3",
                 "--out", str(out_dir), "--json"])  # fmt: skip
    assert code == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)  # exactly one JSON object on stdout
    assert summary["users"] == 60 and summary["items"] == 30 and summary["events"] > 0
    assert {p.name for p in out_dir.iterdir()} >= {"interactions.parquet", "items.parquet", "users.parquet"}


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["recsys", "simulate", "--users", "0", "--out", "x"], "--users"),
        (["recsys", "simulate", "--users", "many", "--out", "x"], "--users"),
        (["recsys", "bench", "--k", "501"], "--k"),
        (["recsys", "serve", "--registry", "r", "--port", "0"], "--port"),
    ],
)
def test_bad_arguments_exit_2_naming_the_option(argv, needle, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "Fix:" in err


def test_train_on_a_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert (
        main(["recsys", "train", "--data", str(tmp_path / "nope"), "--registry", str(tmp_path / "reg")]) == 2
    )
    err = capsys.readouterr().err
    assert "mlsd: error: data=" in err and "mlsd recsys simulate" in err


def test_train_json_registers_a_champion(tmp_path, capsys):
    data = tiny_registry() / "data"
    code = main(["recsys", "train", "--data", str(data), "--registry", str(tmp_path / "reg"), "--train-days", "12",
                 "--label-days", "4", "--n-estimators", "5", "--json"])  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["version"] == 1 and report["promoted"] is True
    assert set(report["metrics"]) == {"ndcg@10", "precision@10", "recall@10", "map@10", "coverage@10"}


def test_serve_without_a_champion_is_a_clear_error(tmp_path, capsys):
    from mlsd.platform.registry import ModelRegistry

    ModelRegistry(tmp_path / "empty")
    assert main(["recsys", "serve", "--registry", str(tmp_path / "empty")]) == 2
    assert "mlsd recsys train" in capsys.readouterr().err
