"""Every registered system against the one contract (:class:`mlsd.platform.testing.SystemContract`).

Each system opts in with three lines; a system of your own does the same in its own test suite.
"""

from __future__ import annotations

import pytest

from mlsd.platform.system import system_names
from mlsd.platform.testing import SystemContract

pytestmark = pytest.mark.slow


class TestRecsys(SystemContract):
    system_name = "recsys"


class TestFraud(SystemContract):
    system_name = "fraud"


class TestSearch(SystemContract):
    system_name = "search"


def test_every_registered_system_runs_the_contract() -> None:
    covered = {cls.system_name for cls in SystemContract.__subclasses__() if cls.__module__ == __name__}
    assert covered == set(system_names())
