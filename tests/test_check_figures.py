"""``benchmarks/check_figures.py`` (``make figures``): a README figure that a fresh run does not give is
reported and fails the check; the README's own figures pass against the run they came from."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("check_figures", ROOT / "benchmarks" / "check_figures.py")
check_figures = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_figures)  # type: ignore[union-attr]


def _run(out: Path) -> None:
    """A complete run's JSON files, with the figures the README prints today."""

    def models(spec, values):
        names, metrics = spec
        return {
            "models": {m: dict(zip(metrics, row, strict=True)) for m, row in zip(names, values, strict=True)}
        }

    files = {
        "recsys-movielens": models(check_figures.RECSYS, [
            (0.2524, 0.2287, 0.1132, 0.0560, 0.0268), (0.4656, 0.4049, 0.2198, 0.1408, 0.2247),
            (0.4937, 0.4291, 0.2346, 0.1534, 0.1766), (0.4997, 0.4346, 0.2368, 0.1560, 0.1944)]),
        "recsys-movielens-temporal": {"models": {"two_stage": {"ndcg@10": 0.3618}, "als": {"ndcg@10": 0.3544},
                                                 "popularity": {"ndcg@10": 0.3402}}},
        "fraud-handbook": models(check_figures.FRAUD, [
            (0.9602, 0.5263, 0.39), (0.9571, 0.7891, 0.4333), (0.9666, 0.7866, 0.4233), (0.9667, 0.7964, 0.4333)]),
        "search-homedepot-full": models(check_figures.HOMEDEPOT, [
            (0.8496, 0.8719, 0.803, 0.9354), (0.8881, 0.9064, 0.8842, 1.0), (0.8769, 0.9062, 0.8651, 1.0),
            (0.9066, 0.9172, 0.8963, 1.0)]),
        "experiment-calibrate": {"fixed_horizon_fpr": 0.0505, "naive_peeking_fpr": 0.321, "sequential_fpr": 0.016,
                                 "cuped_variance_reduction": 0.48978},
    }  # fmt: skip
    for seed, ltr in enumerate((0.8890, 0.8832, 0.8799, 0.8810, 0.8817)):
        files[f"search-crowdflower-seed{seed}"] = models(check_figures.CROWDFLOWER, [
            (0.8201, 0.9178, 0.2516), (0.8456, 0.9304, 0.2845), (0.8609, 0.9374, 0.2679), (ltr, 0.9494, 0.2836)])  # fmt: skip
    for seed, nested in enumerate((0.8648, 0.8641, 0.8566, 0.8547, 0.8635)):
        files[f"search-crowdflower-nested-seed{seed}"] = {"models": {"ltr-nested": {"ndcg@10": nested}}}
    for seed, (ips, raw) in enumerate(
        ((0.8603, 0.8116), (0.8816, 0.8117), (0.8255, 0.8102), (0.8264, 0.7964))
    ):
        files[f"search-ips-seed{seed}"] = {"metrics": {"truth_ndcg@10": ips, "raw_clicks_truth_ndcg@10": raw}}
    for name, content in files.items():
        (out / f"{name}.json").write_text(json.dumps(content))


def test_the_readme_figures_match_their_run(tmp_path, capsys) -> None:
    _run(tmp_path)
    assert check_figures.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "25 of 25" in out and "DRIFT" not in out


def test_a_figure_the_run_does_not_give_fails_the_check(tmp_path, capsys) -> None:
    _run(tmp_path)
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    readme.write_text(readme.read_text().replace("**0.4997** | **0.4346**", "**0.4998** | **0.4346**"))
    assert check_figures.main([str(tmp_path), str(readme)]) == 1
    assert "MISMATCH recsys-movielens two_stage" in capsys.readouterr().out


def _nudge_ranker(out: Path, by: float) -> None:
    """Move the Home Depot LTR row's nDCG@10 by ``by``, as another machine's BLAS kernels would."""
    path = out / "search-homedepot-full.json"
    run = json.loads(path.read_text())
    run["models"]["ltr"]["ndcg@10"] = round(run["models"]["ltr"]["ndcg@10"] + by, 4)
    path.write_text(json.dumps(run))


def test_a_ranker_row_that_moved_within_its_tolerance_passes_and_is_listed_as_drift(tmp_path, capsys) -> None:
    _run(tmp_path)
    _nudge_ranker(tmp_path, 0.004)
    assert check_figures.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "DRIFT search-homedepot-full ltr: the run gives '0.9106 | 0.9172" in out
    assert "README.md shows '0.9066 | 0.9172 | 0.8963 | 1.0000'" in out and "1 of them within" in out


def test_a_ranker_row_beyond_its_tolerance_and_any_exact_figure_off_by_a_digit_fail(tmp_path, capsys) -> None:
    _run(tmp_path)
    _nudge_ranker(tmp_path, 0.02)
    assert check_figures.main([str(tmp_path)]) == 1
    assert "MISMATCH search-homedepot-full ltr" in capsys.readouterr().out
    _run(tmp_path)  # the BM25 row has no tolerance: one digit fails
    path = tmp_path / "search-homedepot-full.json"
    run = json.loads(path.read_text())
    run["models"]["bm25"]["ndcg@10"] = 0.8497
    path.write_text(json.dumps(run))
    assert check_figures.main([str(tmp_path)]) == 1
    assert "MISMATCH search-homedepot-full bm25" in capsys.readouterr().out
