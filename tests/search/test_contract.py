"""The platform's System contract (mlsd.platform.testing.SystemContract) run on the search system."""

from __future__ import annotations

from mlsd.platform.testing import SystemContract


class TestSearchContract(SystemContract):
    system_name = "search"
