"""The search side of the System contract (the platform's contract suite runs the shared flow):
request bodies from the data, the HTTP request for one, and the scheduled job on a fresh workdir."""

from __future__ import annotations

import datetime as dt

import pytest
from fastapi.testclient import TestClient

from mlsd.platform.errors import InputError
from mlsd.platform.system import get_system
from mlsd.search.system import SYSTEM


def test_the_registered_system_is_this_one() -> None:
    assert get_system("search") is SYSTEM and SYSTEM.model == "search-ltr" and SYSTEM.cadence == "daily"


def test_example_requests_are_served_in_process_and_over_http(search_world) -> None:
    dirs, world = search_world
    bodies = SYSTEM.example_requests(dirs, 3)
    assert len(bodies) == 3 and all(set(b) == {"q", "k", "user_id"} for b in bodies)
    queries = world.queries.sort_values("weight", ascending=False)["text"].tolist()
    assert {b["q"] for b in bodies} <= set(queries)  # real query texts of the data
    batch = world.engine.handle(bodies)
    assert [r["query"] for r in batch] == [b["q"] for b in bodies]
    assert all(len(r["results"]) == b["k"] for r, b in zip(batch, bodies, strict=True))
    req = SYSTEM.http_request(bodies[0])
    assert (req.method, req.path, req.params) == ("GET", "/v1/search", bodies[0])
    app = SYSTEM.app(world.engine)  # the engine's workdir: its click log and registry (hot reload)
    assert app.state.clicklog.root == dirs.data / "clicklog"
    app.state.champion_watcher.stop()
    http = TestClient(app)
    resp = http.request(req.method, req.path, params=req.params)
    assert resp.status_code == 200
    assert [r["product_id"] for r in resp.json()["results"]] == [r["product_id"] for r in batch[0]["results"]]
    assert http.get("/health").json()["model_version"] == world.engine.model_version


def test_the_scheduled_job_fails_closed_on_a_workdir_without_data(tmp_path) -> None:
    dirs = SYSTEM.dirs(tmp_path)
    with pytest.raises(InputError) as err:
        SYSTEM.retrain(dirs, dt.date(2030, 1, 1), progress=False)
    assert err.value.field == "--workdir" and "mlsd search simulate --workdir" in err.value.fix
    assert not dirs.exists()  # nothing simulated, trained or created in its place
