"""One model definition: `mlsd recsys evaluate` measures the model that `mlsd recsys train` serves.

Both paths build their two-stage model from :func:`mlsd.recsys.model.model_spec`; these tests build the
model each path builds for the same data and compare what they are (sources, each source's settings,
the ranker's settings, the scorers it reads), on a tiny catalogue and on one over the dense-source limit.
"""

from __future__ import annotations

import numpy as np
import pytest

from mlsd.platform.errors import InputError
from mlsd.recsys import evaluate, training
from mlsd.recsys.candidates import EVAL_SOURCES, CandidateGenerator, History
from mlsd.recsys.config import TrainConfig
from mlsd.recsys.data import IdMap, toy_dataset
from mlsd.recsys.model import DENSE_MAX_ITEMS, FEATURE_SETTINGS, definition, model_spec


def both(dataset, cfg: TrainConfig | None = None):
    """(evaluate's model, the daily job's model) for ``dataset``, unfitted, as each path builds it."""
    evaluated = evaluate.two_stage_for_evaluation(n_items=len(dataset.items))
    served = training.model_for(dataset, cfg or TrainConfig())
    return evaluated, served


def fitted_sources(model, dataset) -> dict[str, dict]:
    """Source name -> settings of each source the model's generator actually fits on ``dataset``."""
    hist = History.build(dataset, IdMap(dataset.interactions["user_id"].to_numpy()),
                         IdMap(dataset.items["item_id"].to_numpy()))  # fmt: skip
    gen = model._generator().fit(hist)
    assert gen.skipped_ == {}, "a source the definition names failed to fit: the served model would differ"
    return {name: type(m).__name__ for name, m in gen.models_.items()}


def test_evaluate_and_train_build_the_same_model():
    ds = toy_dataset(n_users=60, n_items=40, per_user=10)
    evaluated, served = both(ds)
    assert definition(evaluated) == definition(served)
    assert definition(served)["sources"] == EVAL_SOURCES  # not the bare generator's DEFAULT_SOURCES
    assert definition(served)["ranker"]["base_feature"] == "m_blend_rel"
    assert set(definition(served)["source_models"]["blend"]["models"]) == {"ease", "rp3", "als", "seq"}
    # the side-information and sequence features reach both paths' feature builders alike
    assert definition(served)["features"] == FEATURE_SETTINGS
    assert evaluated._feature_builder() == served._feature_builder()
    assert served._feature_builder().side_info is FEATURE_SETTINGS["side_info"]
    # only the split protocol differs: the benchmark's stratified split vs the job's point in time
    assert (evaluated.label_split, served.label_split) == ("stratified", "temporal")
    assert fitted_sources(evaluated, ds) == fitted_sources(served, ds)


def test_a_jobs_explicit_overrides_change_only_what_they_name():
    ds = toy_dataset(n_users=60, n_items=40, per_user=10)
    _, served = both(ds, TrainConfig(n_estimators=7))
    base = definition(both(ds)[1])
    changed = definition(served)
    assert changed["ranker"]["n_estimators"] == 7
    assert {**changed, "ranker": base["ranker"]} == base
    # a job without the blend has nothing to boost from: its trees learn the whole order
    _, no_blend = both(ds, TrainConfig(sources={"als": 20, "ease": 10, "popular": 5}))
    assert definition(no_blend)["ranker"].get("base_feature") is None
    assert definition(no_blend)["source_models"]["ease"] == definition(served)["source_models"]["ease"]


def test_over_the_dense_limit_both_paths_leave_out_the_same_sources(capsys):
    ds = toy_dataset(n_users=40, n_items=DENSE_MAX_ITEMS + 2, per_user=6)
    evaluated, served = both(ds)
    assert definition(evaluated) == definition(served)
    sources = definition(served)["sources"]
    assert not {"ease", "seq", "blend"} & set(sources)
    assert {"als", "rp3", "content", "popular"} <= set(sources)  # RP3beta in its sparse top-k form
    assert definition(served)["ranker"].get("base_feature") is None
    # the sources left are the ones that fit: nothing else drops out silently at fit time
    assert fitted_sources(evaluated, ds) == fitted_sources(served, ds)
    # the reason is said, in both paths alike
    spec = model_spec(len(ds.items))
    assert set(spec.dropped) == {"ease", "blend"} and str(DENSE_MAX_ITEMS) in spec.dropped["ease"]
    evaluate.two_stage_for_evaluation(progress=True, n_items=len(ds.items))
    training.model_for(ds, TrainConfig(), progress=True)
    err = capsys.readouterr().err
    assert err.count("source 'ease' left out") == 2 and "ALS, RP3beta (sparse), content and popularity" in err
    with pytest.raises(InputError, match="blend"):
        evaluate.blend_for_evaluation(len(ds.items))


def test_at_the_limit_nothing_is_left_out():
    assert model_spec(DENSE_MAX_ITEMS).dropped == {}
    assert set(model_spec(DENSE_MAX_ITEMS + 1).dropped) == {"ease", "blend"}


@pytest.mark.parametrize("n_items", [-1, 2.5])
def test_a_bad_catalogue_size_names_the_fix(n_items):
    with pytest.raises(InputError, match="n_items"):
        model_spec(n_items)


def test_the_generator_fits_what_the_definition_names():
    ds = toy_dataset(n_users=60, n_items=40, per_user=10)
    spec = model_spec(len(ds.items))
    gen = CandidateGenerator(spec.sources, spec.source_models()).fit(ds)
    assert gen.source_names == list(spec.sources)
    assert np.isclose(gen.models_["blend"].weights_["seq"], spec.source_settings["blend"]["seq"])


def test_the_registered_model_the_service_loads_is_the_evaluated_definition(tmp_path):
    """Through the daily job's whole path (fit, save, register) and back (the engine's load): the
    champion carries evaluate's sources, source settings and ranker settings."""
    from mlsd.platform.registry import ModelRegistry
    from mlsd.recsys.model import TwoStageRecommender, settings_of

    ds = toy_dataset(n_users=80, n_items=40, per_user=12)
    report = training.train_daily(ds, tmp_path / "registry", training.config_for(ds), progress=False)
    served = TwoStageRecommender.load(
        ModelRegistry(tmp_path / "registry").artifact_path(report["model"], "champion")
    )
    evaluated = definition(evaluate.two_stage_for_evaluation(n_items=len(ds.items)))
    assert served.sources == evaluated["sources"] and tuple(served.score_models) == evaluated["score_models"]
    assert {k: v for k, v in settings_of(served.ranker_).items() if k != "n_jobs"} == evaluated["ranker"]
    fitted = {name: settings_of(served.generator_.models_[name]) for name in evaluated["source_models"]}
    assert fitted == evaluated["source_models"]
    assert {k: getattr(served.features_, k) for k in evaluated["features"]} == evaluated["features"]
    from mlsd.recsys.features import SIDE_FEATURES

    assert set(SIDE_FEATURES) <= set(served.ranker_.feature_names_)  # the served ranker reads them
    assert ModelRegistry(tmp_path / "registry").get(report["model"], 1).params["sources_dropped"] == {}
