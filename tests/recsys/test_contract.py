"""The platform's System contract (mlsd.platform.testing.SystemContract) run on the recsys system."""

from __future__ import annotations

from mlsd.platform.testing import SystemContract


class TestRecsysContract(SystemContract):
    system_name = "recsys"
