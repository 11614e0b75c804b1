"""Training: LambdaMART from the click log, registered, gated and promoted by the platform's retrain job."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import pandas as pd
import pytest

from mlsd.platform.errors import InputError
from mlsd.platform.experiments.client import ExperimentClient
from mlsd.platform.experiments.online import arms_from_presets, make_experiment
from mlsd.platform.registry import ModelRegistry
from mlsd.platform.retraining import REPORT_KEYS
from mlsd.platform.system import SystemDir
from mlsd.search.config import SearchConfig
from mlsd.search.engine import MODEL_NAME, load_engine
from mlsd.search.routing import SearchRouter
from mlsd.search.training import retrain, ship_decision, train, write_online_result
from mlsd.search.world import ARM_PRESETS, METRICS, simulate_into

PARSER = {"cache_size": 5_000}  # a non-default query-understanding setting, stored with the version


def test_train_registers_promotes_reports_and_the_engine_serves_it(tmp_path) -> None:
    dirs = SystemDir(tmp_path, "search")
    simulate_into(dirs, size="tiny", seed=4)
    cfg = SearchConfig.from_dict({"ltr": {"n_estimators": 20}})
    report = train(dirs, config=cfg, dense=False, parser_options=PARSER, progress=False)
    assert set(report) >= REPORT_KEYS and report["version"] == 1 and report["promoted"]
    m = report["metrics"]
    assert 0 < m["truth_ndcg@10"] <= 1 and 0 < m["raw_clicks_truth_ndcg@10"] <= 1 and m["propensity_eta"] > 0
    (run,) = dirs.runs.glob("*.json")  # the run report in W/search/runs
    assert json.loads(run.read_text())["version"] == 1
    mv = ModelRegistry(dirs.registry).get(MODEL_NAME, 1)
    assert mv.params["dense"] is False and mv.params["parser"] == PARSER
    assert (mv.path / "propensity.json").exists() and (mv.path / "reference.parquet").exists()
    engine = load_engine(dirs, config=cfg)  # serves with the champion's settings (no dense, its parser)
    assert engine.model_version == 1 and engine.dense_ is None
    assert engine.search("lamp", "1", k=5)["ranked_by"] == "ltr"
    again = train(dirs, config=cfg, dense=False, parser_options=PARSER, progress=False)
    assert not again["registered"] and again["version"] == 1  # same data, same settings: nothing new


def test_train_on_an_empty_workdir_names_the_fix(tmp_path) -> None:
    with pytest.raises(InputError) as err:
        train(SystemDir(tmp_path, "search"), dense=False, progress=False)
    assert err.value.field == "--workdir" and "mlsd search simulate --workdir" in err.value.fix


def test_retrain_windows_register_a_challenger_gate_it_and_rerun_idempotently(search_world, tmp_path) -> None:
    world_dirs, world = search_world
    dirs = SystemDir(tmp_path, "search")
    shutil.copytree(world_dirs.data, dirs.data)  # data only: no registry yet
    first = retrain(dirs, progress=False)  # default: the log's last day
    assert set(first) >= REPORT_KEYS and first["system"] == "search" and first["run_date"] == "2025-12-31"
    assert first["registered"] and first["promoted"] and first["version"] == 1
    again = retrain(dirs, dt.date(2025, 12, 31), progress=False)
    assert not again["registered"] and not again["promoted"] and "v1" in again["reason"]
    assert again["data_fingerprint"] == first["data_fingerprint"]
    early = retrain(dirs, dt.date(2025, 12, 8), progress=False)  # a week of data only
    assert early["registered"] and early["version"] == 2
    assert early["data_fingerprint"] != first["data_fingerprint"]
    registry = ModelRegistry(dirs.registry)
    windows = [registry.get(MODEL_NAME, v).params["window"]["impressions"] for v in (1, 2)]
    assert windows[1] < windows[0]
    assert registry.aliases(MODEL_NAME)["challenger"] == 2
    gate = early["gate"]
    # The gate compared both on the same judged set; the week-old model does not beat the champion.
    assert gate["truth_ndcg@10"] < gate["champion_truth_ndcg@10"] and not early["promoted"]
    assert registry.aliases(MODEL_NAME)["champion"] == 1 and "does not beat" in early["reason"]
    assert (registry.artifact_path(MODEL_NAME, 2) / "reference.parquet").exists()
    # An experiment arm with alias "challenger" now serves v2 next to the champion.
    arms = arms_from_presets(ARM_PRESETS, ["ltr", "challenger"])
    client = ExperimentClient(make_experiment("search", arms, list(METRICS)), registry=False)
    router = SearchRouter(world.engine, client, registry_dir=dirs.registry)
    users = [str(u) for u in range(20)]
    served = router.search_many(["lamp"] * 20, users, 5)
    for resp, arm in zip(served, client.assign("search-ltr-vs-challenger", users).tolist(), strict=True):
        assert resp["model_version"] == (2 if arm == 1 else world.engine.model_version)
    with pytest.raises(InputError) as err:
        retrain(dirs, dt.date(2030, 1, 1), progress=False)
    assert err.value.field == "--date" and "2025-12-02" in str(err.value) and "2025-12-31" in str(err.value)


def test_without_a_judged_set_the_gate_is_counterfactual_on_held_out_clicks(search_world, tmp_path) -> None:
    world_dirs, _ = search_world
    dirs = SystemDir(tmp_path, "search")
    shutil.copytree(world_dirs.data, dirs.data)
    (dirs.data / "qrels.parquet").unlink()  # no judgements: the simulator's true grades are gone
    first = retrain(dirs, dt.date(2025, 12, 8), progress=False)  # a week of data -> v1 champion
    assert (
        first["promoted"] and "ips_clicks@10" in first["metrics"] and "truth_ndcg@10" not in first["metrics"]
    )
    full = retrain(dirs, progress=False)  # the whole month, gated against v1 on its latest searches
    gate = full["gate"]
    assert gate["gate"].startswith("counterfactual") and gate["searches"] > 1000
    assert "truth_ndcg@10" not in gate and "held-out searches" in full["reason"]
    assert gate["diff"] == pytest.approx(gate["ips_clicks@10"] - gate["champion_ips_clicks@10"], abs=2e-4)
    # The ship rule: never promoted at registration (no online test yet); held when offline passes.
    assert not full["promoted"] and gate["ship"] == ship_decision(gate["offline"]).action
    assert gate["offline"]["metric"] == "ips_clicks@10" and gate["offline"]["se"] == gate["se"]
    mv = ModelRegistry(dirs.registry).get(MODEL_NAME, full["version"])
    assert mv.params["gate"] == {"metric": "ips_clicks@10", "holdout_share": 0.2}
    assert mv.params["holdout"]["searches"] == gate["searches"]
    assert mv.params["window"]["impressions"] > mv.params["training"]["label_impressions"]


def test_a_log_too_small_to_hold_out_trains_on_all_of_it_and_is_not_gated() -> None:
    from mlsd.search.training import SearchSteps

    said: list[str] = []
    log = pd.DataFrame({"search_id": [0, 0, 1], "ts": [1, 1, 2]})
    train_part, holdout = SearchSteps(log=said.append)._holdout(log)
    assert holdout is None and len(train_part) == 3 and "no counterfactual gate" in said[0]


# --------------------------------------------------------------------------------------------------
# The ship rule: the offline evaluation and the online A/B test must agree

OFFLINE_BETTER = {"metric": "truth_ndcg@10", "new": 0.82, "old": 0.80, "diff": 0.02, "se": 0.005}


def _online(diff: float, low: float, high: float, srm: bool = False) -> dict:
    return {"metric": "blended", "diff": diff, "diff_low": low, "diff_high": high, "srm_flagged": srm}


@pytest.mark.parametrize(
    ("offline", "online", "action", "final", "says"),
    [
        (OFFLINE_BETTER, _online(0.03, 0.01, 0.05), "ship", True, "agree"),  # both better
        (OFFLINE_BETTER, _online(0.001, -0.005, 0.007), "ship", True, "agree"),  # online: no loss beyond 1%
        ({**OFFLINE_BETTER, "diff": -0.02}, _online(0.03, 0.01, 0.05), "reject", True, "worse"),  # offline worse
        ({**OFFLINE_BETTER, "diff": 0.002, "se": 0.02}, None, "reject", True, "uncertain"),  # CI far below 0
        (OFFLINE_BETTER, None, "hold", False, "online A/B"),  # waiting for the online test
        (OFFLINE_BETTER, _online(-0.04, -0.06, -0.02), "hold", True, "DISAGREE"),  # offline better, online worse
        (OFFLINE_BETTER, _online(0.01, -0.03, 0.05), "hold", False, "inconclusive"),  # CI includes a loss
        (OFFLINE_BETTER, _online(0.03, 0.01, 0.05, srm=True), "hold", False, "sample-ratio"),  # a broken test
    ],
)
def test_ship_rule_on_planted_candidates(offline, online, action, final, says) -> None:
    decision = ship_decision(offline, online)
    assert decision.action == action and decision.ship == (action == "ship") and says in decision.reason
    assert decision.final == final


def _planted_ab(diff: float, low: float, high: float) -> dict:
    """An experiment analysis as the platform writes it, with a planted blended-metric result."""
    comp = {"treatment": "challenger", "diff": diff, "diff_low": low, "diff_high": high}
    return {"experiment": "search-ltr-vs-challenger", "primary_metric": "blended", "units": 4000,
            "metrics": {"blended": [comp]}, "srm": {"flagged": False}}  # fmt: skip


@pytest.mark.slow  # ~20 s: five retrains and a 300-unit online experiment
def test_the_schedule_holds_an_offline_winner_until_the_online_test_agrees(search_world, tmp_path) -> None:
    from dataclasses import replace

    from mlsd.search.world import run_experiment

    world_dirs, world = search_world
    held = SystemDir(tmp_path / "held", "search")
    shutil.copytree(world_dirs.data, held.data)
    assert retrain(held, dt.date(2025, 12, 8), progress=False)["promoted"]  # a week of data: v1 champion
    full = retrain(held, progress=False)  # the month: better offline on the judged set, so held
    assert full["registered"] and full["version"] == 2 and not full["promoted"]
    assert full["gate"]["ship"] == "hold" and full["gate"]["offline"]["diff"] > 0, full["reason"]
    assert full["gate"]["offline"]["se"] > 0 and "online" in full["reason"]
    waiting = retrain(held, progress=False)  # no online result yet: the job waits, trains nothing
    assert not waiting["registered"] and not waiting["promoted"] and waiting["ship"]["action"] == "wait"
    assert set(waiting) >= REPORT_KEYS and "v2" in waiting["reason"]
    registry = ModelRegistry(held.registry)
    assert [v.version for v in registry.versions(MODEL_NAME)] == [1, 2]
    agree, disagree, live = (SystemDir(tmp_path / n, "search") for n in ("agree", "disagree", "live"))
    for dirs in (agree, disagree, live):
        shutil.copytree(held.home, dirs.home)
    # an inconclusive online test: the job keeps waiting and reads the next result
    write_online_result(agree, _planted_ab(0.02, -0.05, 0.09), "challenger", 2, 1)
    unsure = retrain(agree, progress=False)
    assert unsure["ship"]["action"] == "wait" and "inconclusive" in unsure["reason"] and not unsure["registered"]
    # the larger test agrees: shipped by the next run
    write_online_result(agree, _planted_ab(0.03, 0.01, 0.05), "challenger", 2, 1)
    shipped = retrain(agree, progress=False)
    assert shipped["promoted"] and shipped["ship"]["action"] == "ship" and "agree" in shipped["reason"]
    assert ModelRegistry(agree.registry).aliases(MODEL_NAME)["champion"] == 2
    # the online test says worse: the candidate is held, the champion stays, the report says why
    write_online_result(disagree, _planted_ab(-0.04, -0.06, -0.02), "challenger", 2, 1)
    kept = retrain(disagree, progress=False)
    assert not kept["promoted"] and kept["ship"]["action"] == "hold" and "DISAGREE" in kept["reason"]
    assert ModelRegistry(disagree.registry).aliases(MODEL_NAME)["champion"] == 1
    assert (disagree.runs / "v2-ship.json").exists()
    assert not retrain(disagree, progress=False)["registered"]  # decided; the same data trains nothing new
    # a real simulated A/B of the challenger writes the result the next run reads
    report = run_experiment(live, units=300, arms=["ltr", "challenger"], seed=1, progress=False,
                            world=replace(world, registry_dir=live.registry))  # fmt: skip
    result = json.loads((live.monitoring / "online" / "v2.json").read_text())
    comp = report["metrics"]["blended"][0]
    assert result["version"] == 2 and result["champion_version"] == world.engine.model_version == 1
    assert (result["diff"], result["diff_low"]) == (comp["diff"], comp["diff_low"])
    decided = retrain(live, progress=False)
    rule = ship_decision(full["gate"]["offline"], result)
    assert decided["ship"]["action"] == (rule.action if rule.final else "wait")
    assert decided["promoted"] == (decided["ship"]["action"] == "ship")
