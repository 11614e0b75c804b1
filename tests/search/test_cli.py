"""``mlsd search`` verbs: state in ``--workdir W`` (W/search/...), JSON on stdout, bad arguments -> exit 2."""

from __future__ import annotations

import json

import pytest

from mlsd.cli import main


def test_simulate_then_train_in_a_workdir(tmp_path, capsys) -> None:
    w = str(tmp_path)
    argv = ["search", "simulate", "--workdir", w, "--size", "tiny", "--sessions", "1500", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["products"] == 800 and out["searches"] == 1500 and out["events"] >= out["impressions"]
    assert (tmp_path / "search" / "data" / "products.parquet").exists()
    assert (tmp_path / "search" / "data" / "clicklog" / "events").is_dir()
    assert main(argv) == 2  # never simulates over existing data
    assert "already holds data" in capsys.readouterr().err
    assert main(["search", "train", "--workdir", w, "--no-dense", "--no-compare", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["version"] == 1 and report["promoted"] and report["model"] == "search-ltr"
    assert (tmp_path / "search" / "registry" / "registry.sqlite").exists()
    assert list((tmp_path / "search" / "runs").glob("*.json"))


@pytest.mark.parametrize(
    "argv",
    [
        ["search", "simulate", "--workdir", "x", "--products", "5"],
        ["search", "simulate", "--workdir", "x", "--products", "many"],
        ["search", "simulate", "--workdir", "x", "--size", "huge"],
        ["search", "simulate", "--products", "300"],  # --workdir is required
        ["search", "bench", "--queries", "0"],
        ["search", "serve", "--workdir", "d", "--port", "70000"],
    ],
)
def test_bad_arguments_exit_2(argv, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "mlsd" in capsys.readouterr().err


def test_train_on_an_empty_workdir_is_a_clear_error(tmp_path, capsys) -> None:
    assert main(["search", "train", "--workdir", str(tmp_path), "--no-dense", "--json"]) == 2
    err = capsys.readouterr().err
    assert "search/data" in err and "mlsd search simulate --workdir" in err and "mlsd search import" in err


def test_serve_without_a_champion_exits_2_naming_the_commands_and_creates_nothing(tmp_path, capsys) -> None:
    for workdir in (tmp_path, tmp_path / "typo"):
        assert main(["search", "serve", "--workdir", str(workdir)]) == 2
        err = capsys.readouterr().err
        assert "search-ltr" in err and "mlsd search simulate --workdir" in err and "mlsd search train" in err
    assert list(tmp_path.iterdir()) == []


def test_bad_config_key_is_a_clear_error(tmp_path, capsys) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("rules:\n  max_per_brnd: 2\n")
    assert main(["search", "train", "--workdir", str(tmp_path), "--config", str(cfg), "--no-dense"]) == 2
    assert "max_per_brnd" in capsys.readouterr().err


def test_help_lists_the_verbs(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    out = capsys.readouterr().out
    for verb in ("simulate", "train", "evaluate", "serve", "bench", "demo"):
        assert verb in out


def test_online_result_refuses_a_workdir_without_a_held_challenger(tmp_path, capsys):
    report = tmp_path / "ab.json"
    report.write_text('{"metrics": {"blended": [{"treatment": "challenger", "diff": 0.0}]}}')
    assert main(["search", "online-result", "--workdir", str(tmp_path / "W"), "--report", str(report)]) == 2
    assert "mlsd search train" in capsys.readouterr().err
    assert not (tmp_path / "W").exists()
