"""``mlsd.platform.system``: the workdir layout, the registered systems, and the one CLI over them."""

from __future__ import annotations

import datetime as dt

import pytest

from mlsd.cli import main
from mlsd.platform.errors import InputError
from mlsd.platform.registry import ModelRegistry
from mlsd.platform.system import LAYOUT, System, SystemDir, get_system, system_names, systems


def test_the_layout_is_the_same_for_every_system(tmp_path) -> None:
    for name in system_names():
        dirs = get_system(name).dirs(tmp_path)
        assert dirs.home == tmp_path / name
        assert [getattr(dirs, f).name for f in LAYOUT] == list(LAYOUT)
    dirs = SystemDir(tmp_path, "x").create()
    assert sorted(p.name for p in dirs.home.iterdir()) == sorted(LAYOUT)


def test_require_champion_reads_without_creating_and_names_the_fix(tmp_path) -> None:
    dirs = SystemDir(tmp_path / "W", "toy")
    with pytest.raises(InputError) as err:
        dirs.require_champion("toy-model")
    assert "mlsd toy simulate --workdir" in err.value.fix and "mlsd toy train --workdir" in err.value.fix
    assert not (tmp_path / "W").exists()
    # a registry without that champion: still an error, still nothing written
    art = tmp_path / "art"
    art.mkdir()
    (art / "m.txt").write_text("1")
    registry = ModelRegistry(dirs.create().registry)
    mv = registry.register("toy-model", art, params={}, metrics={}, data_fingerprint="fp")
    with pytest.raises(InputError):
        dirs.require_champion("toy-model")
    registry.promote("toy-model", mv.version)
    assert dirs.require_champion("toy-model").version == mv.version


def test_a_workdir_one_level_too_deep_gets_a_hint(tmp_path) -> None:
    SystemDir(tmp_path, "toy").create()
    with pytest.raises(InputError) as err:
        SystemDir(tmp_path / "toy", "toy").require_champion("toy-model")
    assert f"did you mean --workdir {tmp_path}" in err.value.fix


def test_systems_are_registered_with_their_contract() -> None:
    assert system_names() == ["fraud", "recsys", "search"]
    for name, system in systems().items():
        assert isinstance(system, System) and system.name == name
        assert system.cadence in ("daily", "weekly") and system.model and system.summary
    assert [s.name for s in systems().values() if s.review_queue is not None] == ["fraud"]
    with pytest.raises(InputError) as err:
        get_system("ads")
    assert "fraud, recsys, search" in err.value.fix


def test_a_bad_cadence_is_refused_at_definition() -> None:
    fields = {f: (lambda *a, **k: None) for f in ("add_commands", "simulate", "train", "retrain", "engine", "app",
                                                  "drift_report", "world", "demo", "example_requests",
                                                  "http_request")}  # fmt: skip
    with pytest.raises(ValueError, match="cadence"):
        System(name="toy", summary="t", cadence="hourly", model="m", **fields)
    assert (
        System(name="toy", summary="t", cadence="daily", model="m", **fields).dirs("W").home.as_posix()
        == "W/toy"
    )


def test_the_cli_lists_every_registered_system(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name, system in systems().items():
        assert name in out and system.summary[:30] in " ".join(out.split())
    assert main(["demo", "--systems", "ads"]) == 2
    assert "choose from fraud, recsys, search" in capsys.readouterr().err


def test_monitor_and_experiment_resolve_systems_through_the_registry(tmp_path, capsys) -> None:
    assert main(["monitor", "report", "--system", "ads", "--workdir", str(tmp_path)]) == 2
    assert "use one of fraud, recsys, search" in capsys.readouterr().err
    assert main(["monitor", "report", "--system", "fraud", "--workdir", str(tmp_path)]) == 2
    assert f"has no fraud folder ({tmp_path / 'fraud'})" in capsys.readouterr().err
    assert main(["experiment", "run", "ads", "--units", "100"]) == 2
    assert main(["pipeline", "run", "weekly", "--workdir", str(tmp_path), "--date", str(dt.date.today()),
                 "--systems", "recsys"]) == 2  # fmt: skip
