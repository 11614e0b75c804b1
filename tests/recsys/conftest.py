"""The recommender's shared fixture: one tiny simulated world, trained once per test session."""

from __future__ import annotations

import pytest

from mlsd.platform.system import SystemDir


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> tuple[SystemDir, dict]:
    """``W/recsys`` with the ``tiny`` world's data and its first daily run (champion v1), and that run's
    report (:func:`mlsd.recsys.training.train_daily`). Shared by many tests: treat it as read-only."""
    from mlsd.recsys.data import load
    from mlsd.recsys.training import config_for, train_daily
    from mlsd.recsys.world import simulate_into

    dirs = SystemDir(tmp_path_factory.mktemp("recsys-tiny"), "recsys")
    simulate_into(dirs, "tiny")
    dataset = load(dirs.data)
    report = train_daily(dataset, dirs.registry, config_for(dataset), progress=False)
    return dirs, report


@pytest.fixture(scope="session")
def tiny(tiny_run) -> SystemDir:
    return tiny_run[0]
