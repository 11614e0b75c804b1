"""Schemathesis against each service as deployed: a tiny trained workdir, ``mlsd <system> serve`` in
its own process with an admin API key, and ``st run --checks all`` over its ``/openapi.json``
(property-based requests from the published schema, valid and invalid). Passing means zero 5xx and
zero schema violations: every answer, error or not, is the one the OpenAPI documents."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
#: a fixed seed and a bounded number of examples per operation: the same requests on every CI run.
EXAMPLES, SEED = 25, 20261206
TRAIN = {
    "recsys": ["train"],
    "fraud": ["train"],
    "search": ["train", "--no-dense", "--no-compare"],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlsd(*argv: str) -> None:
    done = subprocess.run([str(BIN / "mlsd"), *argv], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"mlsd {' '.join(argv)}:\n{done.stderr[-3000:]}"


def wait_until_up(url: str, server: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        assert server.poll() is None, f"the service exited: {log.read_text()[-3000:]}"
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not come up in {timeout_s} s")


@pytest.mark.slow
@pytest.mark.parametrize("system", sorted(TRAIN))
def test_schemathesis_finds_no_5xx_and_no_schema_violation(system: str, tmp_path: Path) -> None:
    workdir = str(tmp_path / "W")
    mlsd(system, "simulate", "--size", "tiny", "--workdir", workdir)
    mlsd(system, *TRAIN[system], "--workdir", workdir)

    key, port = secrets.token_urlsafe(24), free_port()
    env = {**os.environ, "MLSD_API_KEYS": f"schemathesis:admin:{key}"}
    log = tmp_path / "serve.log"  # a file, not a pipe: the audit log of thousands of requests would fill it
    server = subprocess.Popen(
        [str(BIN / "mlsd"), system, "serve", "--workdir", workdir, "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, server, log)
        done = subprocess.run(
            [
                str(BIN / "st"),
                "run",
                f"{url}/openapi.json",
                "--checks",
                "all",
                "--max-examples",
                str(EXAMPLES),
                "--seed",
                str(SEED),
                "--no-color",
                "--header",
                f"Authorization: Bearer {key}",
            ],  # fmt: skip
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,  # st writes its .schemathesis/ state where it runs
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "Traceback" not in log.read_text(), log.read_text()[-4000:]
