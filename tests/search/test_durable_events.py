"""A 200 from POST /v1/events means the events are on disk: a real uvicorn process killed right after
the answer (SIGTERM, and SIGKILL with no shutdown at all) loses none of them. (Numbers out of range:
tests/search/test_service.py and test_clicklog.py.)"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import httpx
import pytest

from mlsd.search.clicklog import ClickLog

SERVER = textwrap.dedent(
    """
    import sys

    import pandas as pd
    import uvicorn

    from mlsd.search.clicklog import ClickLog
    from mlsd.search.config import SearchConfig
    from mlsd.search.engine import SearchEngine
    from mlsd.search.service import create_search_app

    root, port = sys.argv[1], int(sys.argv[2])
    products = pd.DataFrame({"product_id": range(40), "title": [f"oak lamp model {i}" for i in range(40)],
                             "brand": "Lumen", "category": "Home / Lighting / Lamps"})
    engine = SearchEngine(SearchConfig(), dense=False).fit(products)
    uvicorn.run(create_search_app(engine, ClickLog(root)), host="127.0.0.1", port=port, log_level="warning")
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    """A search service in its own uvicorn process over ``tmp_path/log``: ``(process, base_url, root)``."""
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    port, root = _free_port(), tmp_path / "log"
    proc = subprocess.Popen([sys.executable, str(script), str(root), str(port)], stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # up to ~60 s on a busy machine: the engine fits a small index first
            if proc.poll() is not None:
                pytest.fail(f"server exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield proc, url, root
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def _events(n: int, start: int = 0) -> list[dict]:
    return [{"type": "impression", "search_id": f"s{i // 10}", "query": "lamp", "product_id": i,
             "position": 1 + i % 10, "ts": 1_700_000_000 + i} for i in range(start, start + n)]  # fmt: skip


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_acknowledged_events_survive_the_process(server, sig) -> None:
    proc, url, root = server
    sent = 0
    for batch in range(5):
        r = httpx.post(f"{url}/v1/events", json={"events": _events(30, 30 * batch)}, timeout=30)
        assert r.status_code == 200 and r.json() == {"accepted": 30}
        sent += 30
    os.kill(proc.pid, sig)
    proc.wait(timeout=60)
    events = ClickLog(root).events()
    assert len(events) == sent and sorted(events["product_id"]) == list(range(sent))
    assert len(ClickLog(root).impressions()) == sent  # the training reader sees them all
