"""``mlsd search`` verbs: JSON on stdout, bad arguments -> message and exit 2."""

from __future__ import annotations

import json

import pytest

from mlsd.cli import main


def test_simulate_json(tmp_path, capsys) -> None:
    assert (
        main(
            [
                "search",
                "simulate",
                "--products",
                "300",
                "--sessions",
                "500",
                "--queries",
                "30",
                "--users",
                "20",
                "--out",
                str(tmp_path / "d"),
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["products"] == 300 and out["searches"] == 500 and out["events"] >= out["impressions"]
    assert (tmp_path / "d" / "products.parquet").exists() and (
        tmp_path / "d" / "clicklog" / "events"
    ).is_dir()


@pytest.mark.parametrize(
    "argv",
    [
        ["search", "simulate", "--products", "5", "--out", "x"],
        ["search", "simulate", "--products", "many", "--out", "x"],
        ["search", "bench", "--queries", "0"],
        ["search", "serve", "--data", "d", "--port", "70000"],
    ],
)
def test_bad_arguments_exit_2(argv, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "mlsd" in capsys.readouterr().err


def test_train_on_a_missing_folder_is_a_clear_error(tmp_path, capsys) -> None:
    assert main(["search", "train", "--data", str(tmp_path / "nope"), "--no-dense", "--json"]) == 2
    err = capsys.readouterr().err
    assert "products.parquet" in err and "simulate" in err


def test_bad_config_key_is_a_clear_error(tmp_path, capsys) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("rules:\n  max_per_brnd: 2\n")
    (tmp_path / "d").mkdir()
    assert main(["search", "train", "--data", str(tmp_path / "d"), "--config", str(cfg), "--no-dense"]) == 2
    assert "max_per_brnd" in capsys.readouterr().err


def test_help_lists_the_verbs(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    out = capsys.readouterr().out
    for verb in ("simulate", "train", "evaluate", "serve", "bench", "demo"):
        assert verb in out
