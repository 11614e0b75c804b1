"""The recommender demo end to end at a tiny size: simulate, train, register, serve known, new and unknown users."""

from __future__ import annotations

import pytest

from mlsd.recsys.demo import TINY_SIZE, TINY_TRAIN, run


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    result = run(tmp_path, size=TINY_SIZE, train=TINY_TRAIN)
    out = capsys.readouterr().out
    assert result["version"] == 1 and result["promoted"]
    kinds = {u["kind"]: u for u in result["users"]}
    assert "regular" in kinds and "unknown" in kinds
    assert kinds["unknown"]["cold_start"] is True and kinds["regular"]["cold_start"] is False
    assert set(kinds["regular"]["timings_ms"]) == {"candidates", "rules", "features", "ranking", "rerank"}
    assert (tmp_path / "registry").is_dir() and (tmp_path / "data" / "items.parquet").exists()
    assert "cold start" in out and "stage ms" in out
