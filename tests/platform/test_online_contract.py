"""One contract for every registered system's online simulator (``System.world()``): it offers what
``mlsd experiment run <system>`` calls (presets, default arms, run_experiment's keywords) and refuses an
unknown arm with an InputError naming ``--arms`` before it simulates anything."""

from __future__ import annotations

import inspect

import pytest

from mlsd.platform.errors import InputError
from mlsd.platform.experiments.online import OnlineSimulator
from mlsd.platform.system import get_system, system_names

CONTRACT_KEYWORDS = {"units", "arms", "seed", "looks", "lose_exposures", "progress"}


@pytest.fixture(params=system_names())
def simulator(request):
    return get_system(request.param).world()


def test_presets_and_default_arms(simulator) -> None:
    assert len(simulator.DEFAULT_ARMS) >= 2
    assert set(simulator.DEFAULT_ARMS) <= set(simulator.ARM_PRESETS)
    for name, preset in simulator.ARM_PRESETS.items():
        assert {"alias", "params", "description"} <= set(preset), name
        assert isinstance(preset["params"], dict) and preset["description"], name


def test_run_experiment_takes_the_contract_keywords(simulator) -> None:
    params = inspect.signature(simulator.run_experiment).parameters
    assert list(params)[0] == "dirs"
    assert set(params) >= CONTRACT_KEYWORDS
    for name in CONTRACT_KEYWORDS:
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert params[name].default is not inspect.Parameter.empty, name
    assert "run_experiment" in dir(OnlineSimulator)


def test_an_unknown_arm_is_refused_before_any_work(simulator, tmp_path) -> None:
    from mlsd.platform.system import SystemDir

    with pytest.raises(InputError) as err:
        simulator.run_experiment(
            SystemDir(tmp_path, "world"), arms=[simulator.DEFAULT_ARMS[0], "no-such-arm"], progress=False
        )
    assert err.value.field == "--arms"
    assert not any(tmp_path.iterdir())  # nothing simulated, nothing trained
