"""docs/data.md's per-system scripts run as written: each ```bash block that starts with
``# mlsd-script: <system>`` is the whole own-data sequence (import, train, query at the terminal and
over HTTP, a later slice, the scheduled retrain), run here in bash from the repository root on the
public samples, then its outputs are checked against the files it read."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mlsd.platform.registry import ModelRegistry

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = dict(
    re.findall(
        r"^```bash\n(# mlsd-script: (\w+).*?)^```", (ROOT / "docs" / "data.md").read_text(), re.S | re.M
    )
)
SCRIPTS = {name: source for source, name in SCRIPTS.items()}
SAMPLES = {"recsys": "movielens-100k", "fraud": "fraud-sample", "search": "home-depot-sample"}


def test_the_data_page_has_one_script_per_system() -> None:
    assert sorted(SCRIPTS) == sorted(SAMPLES)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_script(system: str, workdir: Path, data: Path) -> subprocess.CompletedProcess:
    missing = [tool for tool in ("bash", "curl", "jq") if shutil.which(tool) is None]
    assert not missing, f"the docs scripts need {missing}: apt-get install {' '.join(missing)}"
    env = {
        **os.environ,
        "W": str(workdir),
        "DATA": str(data),
        "PORT": str(free_port()),
        # the interpreter running the tests first, in case it is not the checkout's .venv
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    done = subprocess.run(
        ["bash", "-c", SCRIPTS[system]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, f"{system} script failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


def scheduled_run(workdir: Path, system: str, version: int) -> dict:
    reports = sorted((workdir / system / "runs").glob(f"*-v{version}.json"))
    assert len(reports) == 1, f"no run report of v{version} under {workdir / system / 'runs'}"
    return json.loads(reports[0].read_text())


@pytest.mark.data
@pytest.mark.slow
def test_recsys_script(tmp_path, shared_data) -> None:
    sample = shared_data(SAMPLES["recsys"])
    W = tmp_path / "W"
    run_script("recsys", W, sample.parent)

    answer = json.loads((W / "cli.json").read_text())
    ids = [item["item_id"] for item in answer["items"]]
    assert len(ids) == 10 and len(set(ids)) == 10
    titles = pd.read_csv(sample / "u.item", sep="|", header=None, encoding="latin-1")[0]
    assert set(ids) <= set(titles)
    ratings = pd.read_csv(sample / "u.data", sep="\t", names=["user", "item", "rating", "ts"])
    v1 = ModelRegistry(W / "recsys" / "registry").get("recsys-ranker", 1).params
    window = ratings[(ratings["ts"] >= v1["train_start"]) & (ratings["ts"] < v1["eval_start"])]
    assert not set(ids) & set(window.loc[window["user"] == 1, "item"])  # nothing user 1 rated
    http = json.loads((W / "http.json").read_text())
    assert [item["item_id"] for item in http["items"]] == ids

    daily = scheduled_run(W, "recsys", 2)  # the later slice: a challenger, gated against v1
    assert daily["registered"] and "champion v1" in daily["reason"]


@pytest.mark.data
@pytest.mark.slow
def test_fraud_script(tmp_path, shared_data) -> None:
    shared_data(SAMPLES["fraud"])
    W = tmp_path / "W"
    run_script("fraud", W, shared_data(SAMPLES["fraud"]).parent)

    cli = json.loads((W / "cli.json").read_text())["decisions"]
    assert [d["tx_id"] for d in cli] == [900001, 900002, 900003]
    assert all(d["decision"] in {"approve", "review", "block"} and d["reasons"] for d in cli)
    http = json.loads((W / "http.json").read_text())["decisions"]
    assert [(d["tx_id"], d["decision"]) for d in http] == [(d["tx_id"], d["decision"]) for d in cli]

    weekly = scheduled_run(W, "fraud", 2)
    assert weekly["registered"] and weekly["reason"].startswith("v2 vs champion v1")


@pytest.mark.data
@pytest.mark.slow
def test_search_script(tmp_path, shared_data) -> None:
    sample = shared_data(SAMPLES["search"])
    W = tmp_path / "W"
    run_script("search", W, sample.parent)

    products = set(pd.read_csv(sample / "train.csv", encoding="latin-1")["product_uid"])
    cli = [r["product_id"] for r in json.loads((W / "cli.json").read_text())["results"]]
    assert len(cli) == 5 and set(cli) <= products
    http = [r["product_id"] for r in json.loads((W / "http.json").read_text())["results"]]
    assert http == cli

    ranker = ModelRegistry(W / "search" / "registry").get("search-ltr", 2).params
    assert ranker["ranker"] == "lambdamart-ips"  # the click log trained the ranker, with IPS
