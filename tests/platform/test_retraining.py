"""``mlsd pipeline run``: the schedule, the ledger (idempotent re-runs), reports, failures, the CLI."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from mlsd.cli import main
from mlsd.platform.errors import InputError
from mlsd.platform.retraining import RunLedger, Trained, Verdict, Window, parse_date, retrain, run_schedule
from mlsd.platform.system import SystemDir, systems_with


class CountingJob:
    """A real job function that trains nothing: it records its calls and answers a report."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, dt.date | None]] = []
        self.fail = fail

    def __call__(self, dirs, run_date, *, progress=True):
        self.calls.append((str(dirs.home), run_date))
        if self.fail:
            raise RuntimeError("disk full")
        dirs.create()
        return {
            "run_date": (run_date or dt.date(2026, 11, 26)).isoformat(),
            "model": "m",
            "version": len(self.calls),
            "registered": True,
            "promoted": False,
            "reason": "challenger did not beat the champion",
            "metrics": {"ndcg@10": 0.4},
            "data_fingerprint": f"fp-{len(self.calls)}",
        }


def test_the_schedule_is_recsys_and_search_daily_and_fraud_weekly() -> None:
    # each registered system declares its cadence; the platform lists no system itself
    assert [s.name for s in systems_with("daily")] == ["recsys", "search"]
    assert [s.name for s in systems_with("weekly")] == ["fraud"]


def test_re_running_a_day_returns_the_stored_report_and_runs_nothing(tmp_path) -> None:
    jobs = {"recsys": CountingJob(), "search": CountingJob()}
    day = dt.date(2026, 11, 20)
    first = run_schedule("daily", tmp_path, day, jobs=jobs, progress=False)
    assert [r["status"] for r in first["runs"]] == ["ran", "ran"] and first["failed"] == []
    assert jobs["recsys"].calls == [(str(tmp_path / "recsys"), day)]
    report = json.loads((tmp_path / "pipeline" / "daily" / "2026-11-20" / "search.json").read_text())
    assert report["version"] == 1 and report["system"] == "search"
    again = run_schedule("daily", tmp_path, day, jobs=jobs, progress=False)
    assert [r["status"] for r in again["runs"]] == ["already ran", "already ran"]
    assert len(jobs["recsys"].calls) == len(jobs["search"].calls) == 1  # nothing ran twice
    assert again["runs"][0]["version"] == first["runs"][0]["version"]
    # another day is another run
    run_schedule("daily", tmp_path, dt.date(2026, 11, 21), jobs=jobs, progress=False)
    assert len(jobs["recsys"].calls) == 2
    assert len(RunLedger(tmp_path / "pipeline" / "ledger.sqlite").runs()) == 4


def test_without_a_date_the_job_picks_the_day_and_the_ledger_still_dedups(tmp_path) -> None:
    job = CountingJob()
    run_schedule("weekly", tmp_path, None, jobs={"fraud": job}, progress=False)
    second = run_schedule("weekly", tmp_path, None, jobs={"fraud": job}, progress=False)
    assert second["runs"][0]["status"] == "already ran" and second["runs"][0]["run_date"] == "2026-11-26"


def test_a_failing_system_does_not_stop_the_others(tmp_path) -> None:
    jobs = {"recsys": CountingJob(fail=True), "search": CountingJob()}
    summary = run_schedule("daily", tmp_path, dt.date(2026, 11, 20), jobs=jobs, progress=False)
    assert summary["failed"] == ["recsys"]
    assert "disk full" in summary["runs"][0]["error"] and summary["runs"][1]["status"] == "ran"
    # the failure is not in the ledger: the next run retries it
    jobs["recsys"].fail = False
    retry = run_schedule("daily", tmp_path, dt.date(2026, 11, 20), jobs=jobs, progress=False)
    assert [r["status"] for r in retry["runs"]] == ["ran", "already ran"]


def test_bad_input_names_the_flag(tmp_path) -> None:
    with pytest.raises(InputError) as err:
        parse_date("2026-13-01")
    assert err.value.field == "--date"
    with pytest.raises(InputError) as err:
        run_schedule("daily", tmp_path, only=["fraud"])
    assert err.value.field == "--systems"


def test_cli_errors_exit_2_with_the_field(tmp_path, capsys) -> None:
    assert main(["pipeline", "run", "daily", "--workdir", str(tmp_path), "--date", "yesterday"]) == 2
    assert "--date" in capsys.readouterr().err
    assert main(["pipeline", "run", "weekly", "--workdir", str(tmp_path), "--systems", "recsys"]) == 2


def test_the_real_search_job_through_the_cli_is_idempotent(tmp_path, capsys):
    # a workdir without data: the job fails closed, naming the fix, and leaves nothing behind
    argv = ["pipeline", "run", "daily", "--workdir", str(tmp_path), "--systems", "search", "--json"]
    assert main(argv) == 2
    assert "mlsd search simulate --workdir" in capsys.readouterr().err
    assert not (tmp_path / "search").exists()
    # with data: trains, registers and promotes the first model
    assert main(["search", "simulate", "--workdir", str(tmp_path), "--size", "tiny"]) == 0
    capsys.readouterr()
    assert main(argv) == 0
    (first,) = json.loads(capsys.readouterr().out)["runs"]
    assert first["status"] == "ran" and first["registered"] and first["promoted"]
    assert (tmp_path / "pipeline" / "daily" / first["run_date"] / "search.json").exists()
    assert main(argv) == 0  # the same day again: nothing trains, nothing is registered
    (again,) = json.loads(capsys.readouterr().out)["runs"]
    assert again["status"] == "already ran" and again["version"] == first["version"]
    from mlsd.platform.registry import ModelRegistry

    registry = ModelRegistry(tmp_path / "search" / "registry")
    assert [v.version for v in registry.versions(registry.names()[0])] == [first["version"]]


def test_a_job_whose_report_lacks_the_contract_keys_is_a_failure(tmp_path) -> None:
    def sloppy(workdir, run_date, *, progress=True):
        return {"run_date": "2026-11-20", "version": 3}

    summary = run_schedule("weekly", tmp_path, jobs={"fraud": sloppy}, progress=False)
    assert summary["failed"] == ["fraud"] and "lacks" in summary["runs"][0]["error"]
    assert RunLedger(tmp_path / "pipeline" / "ledger.sqlite").runs() == []  # not recorded as done


class MeanSteps:
    """A real (tiny) system half of a retrain job: the model is the mean of the data up to the day,
    the gate prefers the model closer to the last day's value."""

    system, model = "toy", "toy-mean"

    def __init__(self, values: dict[dt.date, float]) -> None:
        self.values = values
        self.trained = 0

    def window(self, dirs, run_date, champion, *, progress):
        run_date = run_date or max(self.values)
        data = [v for d, v in sorted(self.values.items()) if d <= run_date]
        backfill = champion is not None and champion.params["run_date"] > run_date.isoformat()
        return Window(run_date, fingerprint=f"{sum(data)}:{len(data)}", settings={"kind": "mean"},
                      data=data, backfill=backfill)  # fmt: skip

    def train(self, window, out, *, progress):
        self.trained += 1
        (out / "mean.txt").write_text(str(sum(window.data) / len(window.data)))
        return Trained(out, params={"run_date": window.run_date.isoformat()}, metrics={"n": len(window.data)})

    def gate(self, window, challenger, champion, *, progress):
        def error(mv):
            return abs(float((mv.path / "mean.txt").read_text()) - window.data[-1])

        better = error(challenger) < error(champion)
        return Verdict(
            better, "closer to the last day" if better else "not closer", {"error": error(challenger)}
        )


def test_retrain_runs_the_platform_job_over_a_systems_steps(tmp_path) -> None:
    from mlsd.platform.registry import ModelRegistry

    d = [dt.date(2026, 1, i) for i in (1, 2, 3)]
    steps = MeanSteps({d[0]: 1.0, d[1]: 5.0, d[2]: 9.0})
    dirs = SystemDir(tmp_path, "toy")
    first = retrain(steps, dirs, d[0], progress=False)
    assert first["promoted"] and first["reason"].startswith("first model")
    again = retrain(steps, dirs, d[0], progress=False)  # same window + settings: nothing trained
    assert not again["registered"] and steps.trained == 1 and again["version"] == 1
    second = retrain(steps, dirs, d[2], progress=False)  # mean 5 vs last 9: closer than 1 -> promoted
    assert second["registered"] and second["promoted"] and second["champion"] == 2
    registry = ModelRegistry(dirs.registry)
    assert registry.aliases("toy-mean") == {"champion": 2, "challenger": 2}
    back = retrain(steps, dirs, d[1], progress=False)  # before the champion's day: a backfill
    assert back["registered"] and not back["promoted"] and registry.current_version("toy-mean") == 2
    assert {k for k in first} >= {"system", "run_date", "model", "version", "registered", "promoted",
                                  "reason", "metrics", "data_fingerprint"}  # fmt: skip
    assert sorted(p.name for p in dirs.runs.iterdir()) == [
        "2026-01-01-v1.json", "2026-01-02-v3.json", "2026-01-03-v2.json"
    ]  # fmt: skip


def test_systems_not_deployed_in_the_workdir_are_skipped_not_failed(tmp_path, capsys) -> None:
    job = CountingJob()
    summary = run_schedule("daily", tmp_path, dt.date(2026, 11, 20), jobs={"recsys": job}, progress=False)
    assert [(r["system"], r["status"]) for r in summary["runs"]] == [("recsys", "ran"), ("search", "skipped")]
    assert summary["failed"] == [] and "not deployed" in summary["runs"][1]["reason"]
    # asked for by name, an absent system is a failure with the fix (exit 2), as before
    assert main(["pipeline", "run", "daily", "--workdir", str(tmp_path), "--systems", "search"]) == 2
    assert "mlsd search simulate --workdir" in capsys.readouterr().err


class ServingSteps(MeanSteps):
    """MeanSteps whose new champion needs its serving state prepared first (the recommender's user rows
    in the online store): ``down`` makes that step fail, as an unreachable store would."""

    def __init__(self, values: dict[dt.date, float]) -> None:
        super().__init__(values)
        self.down = False
        self.prepared: list[int] = []

    def before_promote(self, window, challenger, *, progress):
        if self.down:
            raise ConnectionError("store at 127.0.0.1:1 refused the connection")
        self.prepared.append(challenger.version)
        return {"rows_for": challenger.version}


def test_a_champion_is_promoted_only_once_its_serving_state_is_ready_and_a_failed_run_resumes(tmp_path):
    from mlsd.platform.registry import ModelRegistry

    d = [dt.date(2026, 1, i) for i in (1, 2, 3)]
    steps = ServingSteps({d[0]: 1.0, d[1]: 5.0, d[2]: 9.0})
    dirs = SystemDir(tmp_path, "toy")
    first = retrain(steps, dirs, d[0], progress=False)
    assert first["promoted"] and steps.prepared == [1] and first["gate"]["before_promote"] == {"rows_for": 1}
    steps.down = True
    with pytest.raises(InputError) as err:  # passed the gate, serving state could not be written
        retrain(steps, dirs, d[2], progress=False)
    assert err.value.field == "before_promote" and "ConnectionError" in str(err.value)
    assert "champion v1 kept" in str(err.value) and "run the same job again" in err.value.fix
    registry = ModelRegistry(dirs.registry)
    assert registry.current_version("toy-mean") == 1  # fail closed: the old champion serves on
    held = json.loads((dirs.runs / "2026-01-03-v2.json").read_text())
    assert not held["promoted"] and "preparing serving failed" in held["reason"]
    steps.down = False
    resumed = retrain(steps, dirs, d[2], progress=False)  # same data: resumes instead of "nothing to do"
    assert resumed["promoted"] and not resumed["registered"] and resumed["reason"].startswith("resumed:")
    assert registry.current_version("toy-mean") == 2 and steps.prepared == [1, 2] and steps.trained == 2
    again = retrain(steps, dirs, d[2], progress=False)  # now there is nothing left to do
    assert not again["registered"] and not again["promoted"] and "nothing to do" in again["reason"]
