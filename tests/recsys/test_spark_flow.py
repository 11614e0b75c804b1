"""One end-to-end recommender flow on a real Spark standalone cluster (``spark_master_url``: a master
and 2 workers): simulate a small world, ``mlsd recsys train --als-engine spark --spark-master <url>``,
then answer from the workdir in a fresh process that never imports pyspark (the fitted Spark ALS is an
``ALSCandidates`` with factors)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mlsd.cli import main
from mlsd.platform.registry import ModelRegistry
from mlsd.platform.testing import require_extra

# A fresh interpreter answers from the champion through `mlsd recsys recommend --json`, as a serving box
# without pyspark would, and says whether pyspark was imported on the way.
SERVE = """
import contextlib, io, json, sys
from mlsd.cli import main
answers = []
for user in sys.argv[2:]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["recsys", "recommend", "--workdir", sys.argv[1], "--user", user, "--k", "5", "--json"]) == 0
    answers.append(json.loads(out.getvalue()))
print(json.dumps({"answers": answers, "pyspark": any(m.startswith("pyspark") for m in sys.modules)}))
"""


@pytest.mark.slow
@pytest.mark.services
def test_train_on_the_spark_cluster_then_serve_without_pyspark(spark_master_url, tmp_path, capsys):
    require_extra("pyspark", "spark")
    from mlsd.recsys.candidates.spark_als import SparkALSCandidates, spark_session
    from mlsd.recsys.config import MODEL_NAME
    from mlsd.recsys.data import load
    from mlsd.recsys.model import TwoStageRecommender

    workdir = str(tmp_path)
    assert main(["recsys", "simulate", "--workdir", workdir, "--size", "tiny", "--json"]) == 0  # 400 users
    capsys.readouterr()
    try:
        code = main(["recsys", "train", "--workdir", workdir, "--als-engine", "spark", "--spark-master",
                     spark_master_url, "--n-estimators", "5", "--json"])  # fmt: skip
        report = json.loads(capsys.readouterr().out)
        assert code == 0 and report["registered"] and report["promoted"], report
        # The job ran on the cluster's executors, not in a local context.
        session = spark_session()
        assert session.sparkContext.master == spark_master_url
        assert session.sparkContext._jsc.sc().getExecutorMemoryStatus().size() == 3  # 2 executors + driver
    finally:
        spark_session().stop()  # the next test must not inherit this process's session

    registry = ModelRegistry(tmp_path / "recsys" / "registry")
    mv = registry.get(MODEL_NAME, report["version"])
    assert mv.params["als_engine"] == "spark"
    model = TwoStageRecommender.load(registry.artifact_path(MODEL_NAME, "champion"))
    als = model.generator_.models_["als"]  # fitted, not skipped
    assert type(als) is SparkALSCandidates and als.master == spark_master_url
    assert als.user_factors_.shape[0] == len(als.users_) and als.item_factors_.any()

    data = load(tmp_path / "recsys" / "data")
    known = [str(u) for u in als.users_.ids[:3]]
    served = subprocess.run([sys.executable, "-c", SERVE, workdir, *known], capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert served.returncode == 0, served.stderr[-3000:]
    result = json.loads(served.stdout.strip().splitlines()[-1])
    assert result["pyspark"] is False  # serving a Spark-trained model never imports pyspark
    catalogue = set(data.items["item_id"].tolist())
    for user, answer in zip(known, result["answers"], strict=True):
        items = [item["item_id"] for item in answer["items"]]
        assert str(answer["user_id"]) == user and not answer["cold_start"]
        assert len(items) == 5 and len(set(items)) == 5 and set(items) <= catalogue
        assert answer["model_version"] == report["version"]


def test_the_engine_choice_reaches_the_als_source_and_the_blends_als_member():
    from mlsd.recsys.candidates.spark_als import SparkALSCandidates
    from mlsd.recsys.model import definition, model_spec

    url = "spark://127.0.0.1:7077"
    spec = model_spec(1_682, als_engine="spark", spark_master=url)
    models = spec.source_models()
    assert type(models["als"]) is SparkALSCandidates and models["als"].master == url
    assert type(models["blend"].models["als"]) is SparkALSCandidates
    assert models["blend"].models["als"].master == url
    # The rest of the definition is the implicit one's: only the ALS trainer (and where it runs) differ.
    spark_def, implicit_def = definition(spec.build()), definition(model_spec(1_682).build())
    assert {k: v for k, v in spark_def.items() if k != "source_models"} == {
        k: v for k, v in implicit_def.items() if k != "source_models"
    }
    assert spark_def["source_models"]["ease"] == implicit_def["source_models"]["ease"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"als_engine": "mllib"}, "als_engine"),
        ({"spark_master": "spark://127.0.0.1:7077"}, "spark_master"),  # a master without the Spark engine
        ({"als_engine": "spark", "spark_master": "http://127.0.0.1:8080"}, "spark_master"),
    ],
)
def test_a_bad_engine_or_master_is_an_input_error(kwargs, field):
    from mlsd.platform.errors import InputError
    from mlsd.recsys.model import model_spec

    with pytest.raises(InputError) as err:
        model_spec(100, **kwargs)
    assert err.value.field == field and err.value.value == kwargs[field] and err.value.fix


def test_the_cli_refuses_a_spark_master_without_the_spark_engine(tmp_path, capsys):
    for verb in (["train", "--workdir", str(tmp_path)], ["bench", "--users", "10", "--items", "20"]):
        assert main(["recsys", *verb, "--spark-master", "spark://127.0.0.1:7077"]) == 2
        err = capsys.readouterr().err
        assert "--spark-master=" in err and "--als-engine spark" in err
    with pytest.raises(SystemExit) as exit_:
        main(["recsys", "train", "--workdir", str(tmp_path), "--als-engine", "mllib"])
    assert exit_.value.code == 2 and "--als-engine" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


@pytest.mark.parametrize("extra", [[], ["--als-engine", "spark", "--spark-master", "spark://127.0.0.1:7077"]])
def test_the_bench_refuses_a_local_spark_cluster_without_the_engine_or_beside_a_master(extra, capsys):
    assert main(["recsys", "bench", "--users", "10", "--items", "20", "--spark-cluster", "2", *extra]) == 2
    err = capsys.readouterr().err
    assert "--spark-cluster=2" in err and "--als-engine spark without --spark-master" in err


@pytest.mark.slow
@pytest.mark.services
def test_the_bench_trains_on_a_local_spark_cluster_it_starts_and_stops(capsys):
    """``--spark-cluster 2``: the figure's command is reproducible without a cluster at hand."""
    require_extra("pyspark", "spark")
    import psutil
    from pyspark.sql import SparkSession

    before = {p.pid for p in psutil.process_iter()}
    argv = ["recsys", "bench", "--users", "300", "--items", "80", "--requests", "8", "--ranker-users", "200",
            "--events-per-user", "10", "--k", "10", "--als-engine", "spark", "--spark-cluster", "2", "--json"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["train"]["als_engine"] == "spark" and result["train"]["spark_cluster"]["workers"] == 2
    assert result["http"]["throughput_rps"] > 0
    assert SparkSession.getActiveSession() is None  # the run's session ended with its cluster
    java = [p for p in psutil.process_iter(["pid", "name"]) if p.pid not in before and p.info["name"] == "java"]
    assert java == []  # master, workers and executors stopped
