"""The system contract as a test suite: a system opts in with three lines.

Like implicit's ``RecommenderBaseTestMixin``: every registered system (and a system of your own) runs
the same flow against :class:`mlsd.platform.system.System` -- simulate tiny -> train -> serve a
batch and a single request in-process and over HTTP -> retrain -> drift report -> an online
experiment of a few hundred units -- and the failure modes every system shares (serving an empty or
mistyped workdir exits 2 with the fix and creates nothing)::

    # tests/<system>/test_contract.py
    from mlsd.platform.testing import SystemContract

    class TestContract(SystemContract):
        system_name = "recsys"

Requires pytest (a dev dependency); this module is imported only by test suites.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, ClassVar

import pytest

from mlsd.platform.errors import InputError
from mlsd.platform.system import Engine, System, SystemDir, get_system

__all__ = ["SystemContract", "require_extra"]

EXPERIMENT_UNITS = 300


def require_extra(module: str, extra: str) -> Any:
    """Import an optional engine (``pyspark``, ``distributed``, ``nats``) for a test. Under
    ``MLSD_REQUIRE_SERVICES=1`` (CI, whose test command installs ``mlsd[scale]``) a missing one is an
    error, so its suite cannot vanish silently; elsewhere the test skips naming the install.

    Examples:
        >>> require_extra("json", "none").__name__
        'json'
    """
    if os.environ.get("MLSD_REQUIRE_SERVICES") == "1" and importlib.util.find_spec(module) is None:
        pytest.fail(f"MLSD_REQUIRE_SERVICES=1 but {module} is not installed: pip install mlsd[{extra}]")
    return pytest.importorskip(module, reason=f"an optional engine: pip install mlsd[{extra}]")


class SystemContract:
    """Mixin: set ``system_name``; the expensive steps (simulate, train) run once per class."""

    system_name: ClassVar[str] = ""

    # -- fixtures: one trained workdir per class ---------------------------------------------------

    @pytest.fixture(scope="class")
    def system(self) -> System:
        return get_system(self.system_name)

    @pytest.fixture(scope="class")
    def trained(self, system: System, tmp_path_factory: pytest.TempPathFactory) -> tuple[SystemDir, dict]:
        dirs = system.dirs(tmp_path_factory.mktemp(f"{system.name}-contract"))
        system.simulate(dirs, size="tiny", seed=0, progress=False)
        report = system.train(dirs, progress=False)
        return dirs, report

    @pytest.fixture(scope="class")
    def engine(self, system: System, trained: tuple[SystemDir, dict]) -> Engine:
        return system.engine(trained[0])

    @pytest.fixture(scope="class")
    def bodies(self, system: System, trained: tuple[SystemDir, dict]) -> list[dict[str, Any]]:
        return system.example_requests(trained[0], 3)

    # -- the flow ----------------------------------------------------------------------------------

    def test_simulate_and_train_fill_the_layout(
        self, system: System, trained: tuple[SystemDir, dict]
    ) -> None:
        dirs, report = trained
        assert any(dirs.data.iterdir()), "simulate wrote nothing to W/<system>/data"
        mv = dirs.require_champion(system.model)
        assert report["version"] == mv.version and report["model"] == system.model

    def test_the_engine_serves_a_batch_and_a_batch_of_one(self, engine: Engine, bodies: list[dict]) -> None:
        assert isinstance(engine, Engine)
        assert isinstance(engine.model_version, int)
        assert len(bodies) == 3
        batch = engine.handle(bodies)
        single = engine.handle(bodies[:1])
        assert len(batch) == 3 and len(single) == 1
        assert all(isinstance(r, dict) for r in batch)
        assert set(single[0]) == set(batch[0])  # one serving path: the same answer shape

    def test_http_serves_the_champion_and_health_names_it(
        self, system: System, engine: Engine, bodies: list[dict]
    ) -> None:
        from fastapi.testclient import TestClient

        client = TestClient(system.app(engine))
        health = client.get("/health").json()
        assert health["model"] == system.model and health["model_version"] == engine.model_version
        req = system.http_request(bodies[0])
        resp = client.request(req.method, req.path, params=req.params, json=req.json)
        assert resp.status_code == 200, resp.text
        assert isinstance(resp.json(), dict)

    def test_retrain_reports_and_is_idempotent(self, system: System, trained: tuple[SystemDir, dict]) -> None:
        from mlsd.platform.retraining import REPORT_KEYS

        dirs, _ = trained
        first = system.retrain(dirs, None, progress=False)
        assert set(first) >= REPORT_KEYS
        again = system.retrain(dirs, None, progress=False)
        assert not again["registered"] and again["data_fingerprint"] == first["data_fingerprint"]

    def test_drift_report(self, system: System, trained: tuple[SystemDir, dict], engine: Engine) -> None:
        report = system.drift_report(trained[0])
        assert {"features", "summary"} <= set(report) and report["features"]

    def test_an_online_experiment_of_a_few_hundred_units(
        self, system: System, tmp_path_factory: pytest.TempPathFactory
    ) -> None:
        world = system.world()
        dirs = system.dirs(tmp_path_factory.mktemp(f"{system.name}-world"))
        report = world.run_experiment(
            dirs, units=EXPERIMENT_UNITS, seed=0, looks=1, lose_exposures=0.0, progress=False
        )
        assert {"srm", "metrics", "truth", "truth_covered"} <= set(report)
        assert report["units"] >= 0.8 * EXPERIMENT_UNITS  # the world is sized for the units asked
        assert report["arms"][0]["name"] == world.DEFAULT_ARMS[0]

    # -- failing safe ------------------------------------------------------------------------------

    def test_no_champion_is_an_input_error_and_creates_nothing(self, system: System, tmp_path: Path) -> None:
        dirs = system.dirs(tmp_path / "empty")
        with pytest.raises(InputError) as err:
            system.engine(dirs)
        assert err.value.field == "--workdir" and "train" in err.value.fix
        assert not (tmp_path / "empty").exists()

    def test_serve_on_an_empty_or_mistyped_workdir_exits_2_with_the_fix(
        self, system: System, tmp_path: Path, capsys: pytest.CaptureFixture
    ) -> None:
        from mlsd.cli import main

        for workdir in (tmp_path, tmp_path / "typo"):
            assert main([system.name, "serve", "--workdir", str(workdir)]) == 2
            message = capsys.readouterr().err
            assert f"mlsd {system.name} train --workdir" in message
        assert list(tmp_path.iterdir()) == []  # a read path creates nothing
