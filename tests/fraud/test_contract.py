"""The platform's System contract (mlsd.platform.testing.SystemContract) run on the fraud system."""

from __future__ import annotations

from mlsd.platform.testing import SystemContract


class TestFraudContract(SystemContract):
    system_name = "fraud"
