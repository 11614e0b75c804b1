"""ModelRegistry: versions, lineage, promote/rollback, corrupted artifacts refused, concurrency, watch."""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlsd.platform.errors import InputError
from mlsd.platform.registry import ArtifactCorrupted, ModelRegistry, fingerprint


def make_artifact(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.txt").write_text(text)
    (root / "sub").mkdir(exist_ok=True)
    (root / "sub" / "weights.npy").write_bytes(np.arange(10, dtype=np.float32).tobytes())
    return root


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "registry")


def register(registry: ModelRegistry, tmp_path: Path, text: str, **kwargs):
    artifact = make_artifact(tmp_path / f"art-{text}", text)
    defaults = {"params": {"lr": 0.1}, "metrics": {"ndcg@10": 0.5}, "data_fingerprint": "abc"}
    return registry.register("ranker", artifact, **{**defaults, **kwargs})


def test_register_copies_hashes_and_increments(registry: ModelRegistry, tmp_path: Path) -> None:
    v1 = register(registry, tmp_path, "one")
    v2 = register(registry, tmp_path, "two", params={"lr": np.float32(0.5)}, parent=1)
    assert (v1.version, v2.version) == (1, 2)
    assert v2.parent == 1 and v2.params == {"lr": 0.5} and v2.metrics == {"ndcg@10": 0.5}
    assert set(v1.files) == {"model.txt", "sub/weights.npy"} and all(len(h) == 64 for h in v1.files.values())
    assert (v1.path / "model.txt").read_text() == "one" and (v2.path / "model.txt").read_text() == "two"
    # it is a copy: changing the source later does not change the registered artifact
    (tmp_path / "art-one" / "model.txt").write_text("changed")
    assert (registry.artifact_path("ranker", 1) / "model.txt").read_text() == "one"
    assert [v.version for v in registry.versions("ranker")] == [1, 2]
    assert registry.versions("never-registered") == []
    assert registry.get("ranker", 2) == v2
    assert (registry.root / "ranker" / "v2.json").exists()
    assert not list((registry.root / "ranker").glob(".tmp-*"))


def test_registry_reopens_from_disk(registry: ModelRegistry, tmp_path: Path) -> None:
    register(registry, tmp_path, "one")
    registry.promote("ranker", 1)
    again = ModelRegistry(registry.root)
    assert again.alias("ranker", "champion").version == 1 and again.names() == ["ranker"]


def test_promote_and_rollback_sequence(registry: ModelRegistry, tmp_path: Path) -> None:
    for text in ("one", "two", "three"):
        register(registry, tmp_path, text)
    assert registry.alias("ranker", "champion") is None
    assert registry.current_version("ranker", "champion") is None
    registry.promote("ranker", 1)
    registry.promote("ranker", 2)
    registry.promote("ranker", 3, alias="challenger")
    assert registry.aliases("ranker") == {"challenger": 3, "champion": 2}
    registry.promote("ranker", 3)  # the challenger wins
    assert registry.current_version("ranker") == 3
    registry.promote("ranker", 3)  # promoting the holder again is a no-op, not a rollback step
    assert registry.rollback("ranker").version == 2
    assert registry.rollback("ranker").version == 1
    with pytest.raises(InputError, match="no previous holder"):
        registry.rollback("ranker")
    assert registry.current_version("ranker") == 1
    registry.promote("ranker", 3)
    assert registry.rollback("ranker").version == 1  # back to whoever held it before the last promotion
    actions = [(h["action"], h["version"], h["previous"]) for h in registry.history("ranker")]
    assert actions == [
        ("promote", 1, None),
        ("promote", 2, 1),
        ("promote", 3, 2),
        ("rollback", 2, 3),
        ("rollback", 1, 2),
        ("promote", 3, 1),
        ("rollback", 1, 3),
    ]
    assert registry.current_version("ranker", "challenger") == 3  # other aliases untouched


def test_artifact_path_by_alias_and_version(registry: ModelRegistry, tmp_path: Path) -> None:
    register(registry, tmp_path, "one")
    register(registry, tmp_path, "two")
    registry.promote("ranker", 2)
    assert registry.artifact_path("ranker") == registry.root / "ranker" / "v2"
    assert registry.artifact_path("ranker", "champion") == registry.artifact_path("ranker", 2)
    assert registry.artifact_path("ranker", "1") == registry.root / "ranker" / "v1"


@pytest.mark.parametrize("damage", ["modify", "delete", "add"])
def test_corrupted_artifact_is_refused(registry: ModelRegistry, tmp_path: Path, damage: str) -> None:
    v1 = register(registry, tmp_path, "one")
    registry.promote("ranker", 1)
    target = v1.path / "sub" / "weights.npy"
    if damage == "modify":
        target.write_bytes(b"tampered")
    elif damage == "delete":
        target.unlink()
    else:
        (v1.path / "extra.bin").write_bytes(b"?")
    with pytest.raises(ArtifactCorrupted) as err:
        registry.artifact_path("ranker", "champion")
    message = str(err.value)
    assert isinstance(err.value, RuntimeError)
    assert ("extra.bin" if damage == "add" else "sub/weights.npy") in message
    assert "Fix:" in message and "'ranker' version 1" in message


def test_unknown_name_version_alias_are_clear_errors(registry: ModelRegistry, tmp_path: Path) -> None:
    register(registry, tmp_path, "one")
    with pytest.raises(InputError, match="no model named 'rankr'") as err:
        registry.artifact_path("rankr", "champion")
    assert err.value.status == 404 and "ranker" in err.value.fix
    with pytest.raises(InputError, match="no version 7"):
        registry.get("ranker", 7)
    with pytest.raises(InputError, match="no version 7"):
        registry.promote("ranker", 7)
    with pytest.raises(InputError, match="no alias 'champion'"):
        registry.artifact_path("ranker", "champion")
    with pytest.raises(InputError, match="no version 5"):
        register(registry, tmp_path, "orphan", parent=5)
    with pytest.raises(InputError, match="not a directory"):
        registry.register("ranker", tmp_path / "nope", params={}, metrics={}, data_fingerprint="x")
    with pytest.raises(InputError, match="JSON"):
        register(registry, tmp_path, "bad", params={"f": object()})
    with pytest.raises(InputError, match="letters"):
        registry.register("../evil", tmp_path, params={}, metrics={}, data_fingerprint="x")
    assert [v.version for v in registry.versions("ranker")] == [1]  # failed registrations left nothing


def test_concurrent_registrations_do_not_clobber(registry: ModelRegistry, tmp_path: Path) -> None:
    artifacts = [make_artifact(tmp_path / f"c{i}", f"model {i}") for i in range(8)]
    results: dict[int, int] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(artifacts))

    def work(i: int) -> None:
        try:
            barrier.wait()
            # each thread its own registry object, as separate processes would have
            mv = ModelRegistry(registry.root).register(
                "ranker", artifacts[i], params={"i": i}, metrics={}, data_fingerprint=str(i)
            )
            results[i] = mv.version
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(artifacts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(results.values()) == list(range(1, 9))
    for i, version in results.items():
        mv = registry.get("ranker", version)
        assert mv.params == {"i": i}
        assert (registry.artifact_path("ranker", version) / "model.txt").read_text() == f"model {i}"


def test_watch_calls_back_on_alias_change(registry: ModelRegistry, tmp_path: Path) -> None:
    register(registry, tmp_path, "one")
    register(registry, tmp_path, "two")
    registry.promote("ranker", 1)
    seen: list[int | None] = []
    watcher = registry.watch("ranker", "champion", lambda mv: seen.append(mv.version), start=False)
    assert watcher.version == 1 and watcher.poll() is False
    registry.promote("ranker", 2)
    assert watcher.poll() is True and seen == [2]
    assert watcher.poll() is False
    registry.rollback("ranker")
    watcher.poll()
    assert seen == [2, 1]


def test_watch_retries_a_failed_reload(registry: ModelRegistry, tmp_path: Path) -> None:
    register(registry, tmp_path, "one")
    calls: list[int] = []

    def flaky(mv) -> None:
        calls.append(mv.version)
        if len(calls) == 1:
            raise RuntimeError("load failed")

    watcher = registry.watch("ranker", "champion", flaky, start=False)
    registry.promote("ranker", 1)
    with pytest.raises(RuntimeError):
        watcher.poll()
    assert watcher.poll() is True and calls == [1, 1]


def test_watch_thread_starts_and_stops(registry: ModelRegistry, tmp_path: Path) -> None:
    register(registry, tmp_path, "one")
    changed = threading.Event()
    watcher = registry.watch("ranker", "champion", lambda mv: changed.set(), interval_s=0.01)
    registry.promote("ranker", 1)
    assert changed.wait(timeout=10)
    watcher.stop()


def test_fingerprint_is_stable_and_content_based(tmp_path: Path) -> None:
    df = pd.DataFrame({"user": [1, 2, 3], "item": [10, 20, 30], "rating": [4.0, 3.5, 5.0]})
    same = pd.DataFrame({"user": [1, 2, 3], "item": [10, 20, 30], "rating": [4.0, 3.5, 5.0]}, index=[7, 8, 9])
    assert fingerprint(df) == fingerprint(same)  # the index is not content
    assert fingerprint(df) != fingerprint(df.assign(rating=[4.0, 3.5, 4.5]))
    assert fingerprint(df) != fingerprint(df.astype({"rating": "float32"}))
    assert fingerprint(df) != fingerprint(df.rename(columns={"item": "movie"}))
    # known value: an array's fingerprint is the sha256 of "array;<dtype>;<shape>" then its bytes,
    # so it never changes between runs or machines
    expected = hashlib.sha256(b"array;<i8;(4,)" + np.arange(4, dtype="<i8").tobytes()).hexdigest()
    assert fingerprint(np.arange(4, dtype=np.int64)) == expected
    column = np.stack([np.arange(4), np.zeros(4)], axis=1).astype(np.int64)[:, 0]
    assert not column.flags.c_contiguous and fingerprint(column) == expected  # a strided view, same contents
    assert fingerprint(np.arange(4, dtype=np.int64)) != fingerprint(np.arange(4, dtype=np.int32))
    assert fingerprint({"a": np.ones(2), "b": df}) == fingerprint({"b": df, "a": np.ones(2)})
    (tmp_path / "f.csv").write_text("1,2\n")
    assert fingerprint(tmp_path / "f.csv") == fingerprint(Path(tmp_path / "f.csv"))
    assert len(fingerprint(df)) == 64
    with pytest.raises(InputError):
        fingerprint(object())


# -- issue 11: names with control characters, corrupted versions never promoted, failed reloads visible


@pytest.mark.parametrize("name", ["ranker\n", "ranker\r\n", "ran\x00ker", "ranker\t", "\nranker"])
def test_a_name_with_a_newline_or_control_character_is_refused(
    registry: ModelRegistry, tmp_path, name
) -> None:
    artifact = make_artifact(tmp_path / "art", "one")
    with pytest.raises(InputError) as err:
        registry.register(name, artifact, params={}, metrics={}, data_fingerprint="x")
    assert (
        err.value.field == "name" and "control character" in err.value.problem and "newline" in err.value.fix
    )
    with pytest.raises(InputError):
        registry.promote("ranker", 1, alias="champion\n")
    assert registry.names() == []


def test_promoting_a_corrupted_version_is_refused_and_the_alias_keeps_its_holder(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    register(registry, tmp_path, "one")
    v2 = register(registry, tmp_path, "two")
    registry.promote("ranker", 1)
    (v2.path / "model.txt").write_text("tampered")
    with pytest.raises(InputError) as err:
        registry.promote("ranker", 2)
    assert err.value.status == 409 and err.value.field == "version" and err.value.value == 2
    assert "model.txt" in err.value.problem and "retrain" in err.value.fix
    assert registry.current_version("ranker") == 1
    assert [h["version"] for h in registry.history("ranker")] == [1]


def test_rolling_back_to_a_corrupted_version_is_refused(registry: ModelRegistry, tmp_path: Path) -> None:
    v1 = register(registry, tmp_path, "one")
    register(registry, tmp_path, "two")
    registry.promote("ranker", 1)
    registry.promote("ranker", 2)
    (v1.path / "model.txt").unlink()
    with pytest.raises(InputError, match="refusing to roll champion back"):
        registry.rollback("ranker")
    assert registry.current_version("ranker") == 2


def test_a_failed_reload_is_logged_once_and_makes_ready_say_so(
    registry: ModelRegistry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from fastapi.testclient import TestClient

    from mlsd.platform.registry import ReloadFailed
    from mlsd.platform.serving import create_app

    register(registry, tmp_path, "one")
    v2 = register(registry, tmp_path, "two")
    registry.promote("ranker", 1)
    watcher = registry.watch("ranker", "champion", lambda mv: registry.artifact_path(mv.name, mv.version),
                             start=False)  # fmt: skip
    app = create_app("reloadsys", title="r", health=lambda: {"model_version": watcher.version})
    app.state.ready_checks.append(watcher.check)
    client = TestClient(app)
    assert client.get("/ready").json()["ranker@champion"] == 1

    registry.promote("ranker", 2)  # intact when promoted ...
    (v2.path / "model.txt").write_text("tampered")  # ... damaged before the service reloads it
    with caplog.at_level(logging.ERROR, logger="mlsd.registry"):
        for _ in range(5):  # five polls of the background loop
            watcher.poll_and_log()
    logged = [r for r in caplog.records if r.name == "mlsd.registry"]
    assert len(logged) == 1 and logged[0].exc_info is not None  # one traceback, not one every 2 s
    with pytest.raises(ReloadFailed, match="ranker v2"):
        watcher.check()
    ready = client.get("/ready")
    assert ready.status_code == 503
    assert "ranker v2" in ready.json()["reason"] and "still serving v1" in ready.json()["reason"]
    assert client.get("/health").status_code == 200  # alive and serving v1: no restart wanted

    (v2.path / "model.txt").write_text("two")  # restored: the next poll loads it
    watcher.poll_and_log()
    assert client.get("/ready").json()["ranker@champion"] == 2 and watcher.error is None
