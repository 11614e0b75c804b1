"""``mlsd pipeline run``: the schedule, the ledger (idempotent re-runs), reports, failures, the CLI."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from mlsd.cli import main
from mlsd.platform.errors import InputError
from mlsd.platform.retraining import SCHEDULE, RunLedger, parse_date, run_schedule


class CountingJob:
    """A real job function that trains nothing: it records its calls and answers a report."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, dt.date | None]] = []
        self.fail = fail

    def __call__(self, workdir, run_date, *, progress=True):
        self.calls.append((str(workdir), run_date))
        if self.fail:
            raise RuntimeError("disk full")
        workdir.mkdir(parents=True, exist_ok=True)
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
    assert SCHEDULE == {"daily": ("recsys", "search"), "weekly": ("fraud",)}


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
        run_schedule("daily", tmp_path, systems=["fraud"])
    assert err.value.field == "--systems"


def test_cli_errors_exit_2_with_the_field(tmp_path, capsys) -> None:
    assert main(["pipeline", "run", "daily", "--workdir", str(tmp_path), "--date", "yesterday"]) == 2
    assert "--date" in capsys.readouterr().err
    assert main(["pipeline", "run", "weekly", "--workdir", str(tmp_path), "--systems", "recsys"]) == 2


def test_the_real_search_job_through_the_cli_is_idempotent(tmp_path, capsys):
    # a fresh folder: the job simulates its world, trains, registers and promotes the first model
    argv = ["pipeline", "run", "daily", "--workdir", str(tmp_path), "--systems", "search", "--json"]
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
