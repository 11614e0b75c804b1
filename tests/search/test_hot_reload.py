"""The search service follows the registry: a newly promoted champion serves from the next request on."""

from __future__ import annotations

import shutil

from fastapi.testclient import TestClient

from mlsd.platform.registry import ModelRegistry
from mlsd.search.engine import MODEL_NAME
from mlsd.search.service import champion_watcher, create_search_app


def test_a_promoted_champion_is_served_without_a_restart(search_world, tmp_path) -> None:
    dirs, world = search_world
    engine = world.engine
    original = (engine.ranker_, engine.ranker_version_)
    shutil.copytree(dirs.registry, tmp_path / "registry")
    registry = ModelRegistry(tmp_path / "registry")
    champion = registry.alias(MODEL_NAME)
    try:
        app = create_search_app(engine, registry_dir=tmp_path / "registry")
        assert app.state.champion_watcher is not None  # polling in the background while the app lives
        app.state.champion_watcher.stop()
        watcher = champion_watcher(engine, tmp_path / "registry", start=False)
        http = TestClient(app)
        before = http.get("/v1/search", params={"q": "lamp", "k": 3}).json()
        assert before["model_version"] == engine.ranker_version_
        assert not watcher.poll()  # nothing moved
        new = registry.register(
            MODEL_NAME, champion.path, params=champion.params, metrics=champion.metrics,
            data_fingerprint="retrained", parent=champion.version,
        )  # fmt: skip
        registry.promote(MODEL_NAME, new.version)
        assert watcher.poll()
        after = http.get("/v1/search", params={"q": "lamp", "k": 3}).json()
        assert (
            after["model_version"] == new.version
            and http.get("/health").json()["model_version"] == new.version
        )
        assert [r["product_id"] for r in after["results"]] == [r["product_id"] for r in before["results"]]
    finally:
        engine.set_ranker(*original)  # the world is shared by other tests


def test_no_watcher_without_a_registry_or_with_polling_off(search_world, tmp_path) -> None:
    engine = search_world[1].engine
    assert champion_watcher(engine, tmp_path) is None  # no registry.sqlite there
