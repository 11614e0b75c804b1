"""``SYSTEM``, the recommender's side of the platform contract: light to import, adapters that map onto
the engine, the service and the workdir layout (the full flow runs in tests/platform/test_system_contract.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from mlsd.platform.errors import InputError
from mlsd.platform.system import get_system
from mlsd.recsys.config import MODEL_NAME
from mlsd.recsys.system import SYSTEM


def test_the_registered_system_is_this_one_and_importing_it_loads_no_model_code():
    assert get_system("recsys") is SYSTEM and SYSTEM.model == MODEL_NAME and SYSTEM.cadence == "daily"
    code = "import sys, mlsd.recsys; print(sorted(m for m in ('lightgbm', 'faiss', 'implicit', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_http_request_asks_what_the_body_asks():
    req = SYSTEM.http_request({"user_id": "42", "k": 5, "region": "EU", "age": 30, "seed_items": [3, 9]})
    assert (req.method, req.path) == ("GET", "/v1/recommendations/42")
    assert req.params == {"k": 5, "region": "EU", "age": 30, "seed": "3,9"}


def test_example_requests_are_answered_the_same_in_process_and_over_http(tiny):
    from mlsd.recsys.config import RecsysConfig, RerankConfig, ServiceConfig

    bodies = SYSTEM.example_requests(tiny, 4)
    assert len(bodies) == 4 and all(set(b) == {"user_id", "k"} for b in bodies)
    config = RecsysConfig(service=ServiceConfig(reload_poll_s=0), rerank=RerankConfig(epsilon=0.0))
    engine = SYSTEM.engine(tiny, config=config)
    answers = engine.handle(bodies)
    assert all(not a["cold_start"] and a["items"] for a in answers)  # the data's most active viewers
    client = TestClient(SYSTEM.app(engine))
    for body, answer in zip(bodies, answers, strict=True):
        req = SYSTEM.http_request(body)
        over_http = client.request(req.method, req.path, params=req.params).json()
        assert [i["item_id"] for i in over_http["items"]] == [i["item_id"] for i in answer["items"]]
    engine.close()


def test_simulate_refuses_an_unknown_size_and_example_requests_need_data(tmp_path):
    with pytest.raises(InputError) as err:
        SYSTEM.simulate(SYSTEM.dirs(tmp_path), size="huge", progress=False)
    assert err.value.field == "--size"
    with pytest.raises(InputError) as err:
        SYSTEM.example_requests(SYSTEM.dirs(tmp_path), 3)
    assert "mlsd recsys simulate --workdir" in err.value.fix
    assert list(tmp_path.iterdir()) == []  # nothing created by either
