"""``mlsd recsys import``: the data contract (schemas, validation naming file/line/column/value/fix),
appending with dedup, atomic writes, the three formats; and the acceptance sequence on MovieLens 100K."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mlsd.cli import main
from mlsd.platform.errors import DataFormatError, InputError
from mlsd.platform.system import SystemDir, get_system
from mlsd.recsys.contract import SCHEMAS, conform, coverage, required
from mlsd.recsys.importing import FORMATS, import_data

ITEMS = "item_id,title,genres,year\n1,Alpha (1990),Drama,1990\n2,Beta (1991),Comedy|Drama,1991\n3,Gamma,,\n"


def folder_of(path: Path, interactions: str, items: str | None = ITEMS) -> Path:
    """A source folder with ``interactions.csv`` (and ``items.csv`` unless ``items`` is None)."""
    if items is not None:
        write(path, "items.csv", items)
    return write(path, "interactions.csv", interactions)


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder


def events(rows: list[tuple[int, int, int]], header: str = "user_id,item_id,timestamp,rating\n") -> str:
    return header + "".join(f"{u},{i},{t},4\n" for u, i, t in rows)


def snapshot(dirs: SystemDir) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(dirs.data.iterdir())}


# --- the contract ------------------------------------------------------------------------------


def test_system_exposes_the_schemas_and_formats():
    system = get_system("recsys")
    assert set(system.schemas) == {"interactions", "items", "users"}
    assert all(isinstance(system.schemas[t], pa.Schema) for t in system.schemas)
    assert tuple(system.import_formats) == FORMATS
    assert required("interactions") == ["user_id", "item_id", "timestamp"]
    assert required("items") == ["item_id", "title"] and required("users") == ["user_id"]
    ts = SCHEMAS["interactions"].field("timestamp")
    assert ts.type == pa.int64() and ts.metadata[b"unit"] == b"epoch seconds UTC" and not ts.nullable


@pytest.mark.parametrize(
    ("text", "line", "expect"),
    [
        ("user_id,item_id,timestamp\n1,1,1000\n2,1,1000000000000\n", 3, r"'timestamp' has value '1000000000000'.*milliseconds"),
        ("user_id,item_id,timestamp\n1,x,1000\n", 2, r"'item_id' has value 'x'.*non-negative integer id"),
        ("user_id,item_id,timestamp\n1,1,\n", 2, r"'timestamp' is empty"),
        ("user_id,item_id,timestamp,weight\n1,1,5,1.5\n", 2, r"'weight' has value '1.5'.*fraction in 0..1"),
        ("user_id,item_id,timestamp\n1,2.5,5\n", 2, r"'item_id' has value '2.5'"),
    ],
)  # fmt: skip
def test_validation_names_file_line_column_value_and_fix(tmp_path, text, line, expect):
    folder = folder_of(tmp_path / "src", items=ITEMS, interactions=text)
    with pytest.raises(DataFormatError, match=expect) as err:
        import_data(SystemDir(tmp_path / "W", "recsys"), "csv", folder)
    assert err.value.path.endswith("interactions.csv") and err.value.line == line
    assert "Fix:" in str(err.value)
    assert not (tmp_path / "W").exists()  # nothing half-imported, not even the folders


def test_missing_column_unknown_item_and_key_clash(tmp_path):
    dirs = SystemDir(tmp_path / "W", "recsys")
    folder = folder_of(tmp_path / "a", items=ITEMS, interactions="user_id,item_id\n1,1\n")
    with pytest.raises(DataFormatError, match=r"lacks required column\(s\) \['timestamp'\]"):
        import_data(dirs, "csv", folder)
    folder = folder_of(tmp_path / "b", items=ITEMS, interactions=events([(1, 1, 10), (1, 9, 20)]))
    with pytest.raises(DataFormatError, match=r"'item_id' has value 9, which is in no items table") as err:
        import_data(dirs, "csv", folder)
    assert err.value.line == 3
    clash = ITEMS + "2,Other title,,\n"
    folder = folder_of(tmp_path / "c", items=clash, interactions=events([(1, 1, 10)]))
    with pytest.raises(DataFormatError, match=r"item_id=2 also on line 3") as err:
        import_data(dirs, "csv", folder)
    assert err.value.line == 5
    assert not dirs.data.exists()


def test_conform_fills_defaults_and_keeps_nullable_times():
    frame = pd.DataFrame(
        {"item_id": ["1", "2"], "title": ["A", "B"], "release_ts": ["-94694400", ""], "x": [1, 2]}
    )
    out = conform(frame, "items", "items.csv")
    assert list(out.columns) == ["item_id", "title", "release_ts", "genres", "year"]  # 'x' dropped
    assert out["item_id"].dtype == np.int64 and out["year"].tolist() == [-1, -1]
    assert out["release_ts"].iloc[0] == -94694400 and np.isnan(out["release_ts"].iloc[1])  # a 1967 film
    cover = coverage(out, pd.DataFrame({"user_id": [1]}))
    assert cover["used"] == ["items.release_ts"] and "items.region" in cover["dropped"]


# --- importing: append, dedup, atomic ----------------------------------------------------------------


def test_csv_appends_a_later_slice_and_reimport_changes_nothing(tmp_path):
    dirs = SystemDir(tmp_path / "W", "recsys")
    first = folder_of(tmp_path / "d1", items=ITEMS, interactions=events([(1, 1, 100), (2, 2, 200)]))
    summary = import_data(dirs, "csv", first)
    assert summary["added"] == {"items": 3, "users": 2, "interactions": 2}
    before = snapshot(dirs)
    again = import_data(dirs, "csv", first)
    assert again["written"] == [] and again["added"] == {"items": 0, "users": 0, "interactions": 0}
    assert snapshot(dirs) == before  # not even rewritten
    # A later slice: only interactions (its items are already there), one event repeated.
    second = write(tmp_path / "d2", "interactions.csv", events([(2, 2, 200), (3, 3, 300), (1, 2, 400)]))
    summary = import_data(dirs, "csv", second)
    assert summary["added"] == {"items": 0, "users": 1, "interactions": 2}
    from mlsd.recsys.data import load

    ds = load(dirs.data)
    assert ds.interactions["timestamp"].tolist() == [100, 200, 300, 400]
    assert ds.interactions["weight"].tolist() == [1.0] * 4 and sorted(ds.users["user_id"]) == [1, 2, 3]
    assert len(json.loads((dirs.data / "meta.json").read_text())["imports"]) == 2
    # A corrected rating under a stored key replaces the stored row; nothing else moves.
    fix = write(tmp_path / "d3", "interactions.csv", "user_id,item_id,timestamp,rating\n1,1,100,1.5\n")
    summary = import_data(dirs, "csv", fix)
    assert summary["added"]["interactions"] == 0 and summary["written"] == ["interactions"]
    assert load(dirs.data).interactions["rating"].tolist() == [1.5, 4.0, 4.0, 4.0]


def test_a_bad_slice_leaves_the_data_untouched(tmp_path):
    dirs = SystemDir(tmp_path / "W", "recsys")
    import_data(dirs, "csv", folder_of(tmp_path / "ok", items=ITEMS, interactions=events([(1, 1, 5)])))
    before = snapshot(dirs)
    bad = write(tmp_path / "bad", "interactions.csv", events([(1, 2, 6), (1, 7, 7)]))
    with pytest.raises(DataFormatError, match="which is in no items table"):
        import_data(dirs, "csv", bad)
    assert snapshot(dirs) == before
    assert not [p for p in dirs.data.iterdir() if p.name.startswith(".")]  # no temp file left


def test_parquet_of_the_contract_round_trips(tmp_path):
    src = SystemDir(tmp_path / "A", "recsys")
    import_data(
        src, "csv", folder_of(tmp_path / "c", items=ITEMS, interactions=events([(1, 1, 5), (2, 3, 9)]))
    )
    dst = SystemDir(tmp_path / "B", "recsys")
    summary = import_data(dst, "parquet", src.data)  # W/recsys/data is itself a parquet import
    assert summary["added"] == {"items": 3, "users": 2, "interactions": 2}
    for table in ("interactions", "items", "users"):
        a = pd.read_parquet(src.data / f"{table}.parquet")
        b = pd.read_parquet(dst.data / f"{table}.parquet")
        pd.testing.assert_frame_equal(a, b)
    one = import_data(dst, "parquet", dst.data / "interactions.parquet")  # one table file
    assert one["written"] == []


def test_bad_format_or_path_is_an_input_error(tmp_path):
    dirs = SystemDir(tmp_path / "W", "recsys")
    with pytest.raises(InputError, match="is not a recsys import format"):
        import_data(dirs, "xml", tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        import_data(dirs, "csv", tmp_path / "nope")
    with pytest.raises(InputError, match="holds none of interactions.csv"):
        import_data(dirs, "csv", tmp_path)
    only_events = write(tmp_path / "e", "interactions.csv", events([(1, 1, 5)]))
    with pytest.raises(InputError, match="has no items"):
        import_data(dirs, "csv", only_events)
    argv = [
        "recsys",
        "import",
        "--format",
        "csv",
        "--path",
        str(tmp_path / "nope"),
        "--workdir",
        str(tmp_path / "W"),
    ]
    assert main(argv) == 2
    assert not (tmp_path / "W").exists()


def test_movielens_layout_imports_with_its_training_defaults(tmp_path):
    ml = write(
        tmp_path / "ml", "ratings.dat", "1::10::5::978300760\n1::20::3::978302109\n2::10::4::978301968\n"
    )
    write(ml, "movies.dat", "10::Toy Story (1995)::Animation|Comedy\n20::Heat (1995)::Action\n")
    dirs = SystemDir(tmp_path / "W", "recsys")
    summary = import_data(dirs, "movielens", ml)
    assert summary["added"]["interactions"] > 0
    meta = json.loads((dirs.data / "meta.json").read_text())
    assert meta["train"] == {"train_days": 365.0, "label_days": 28.0, "eval_days": 7.0}
    assert "items.region" in summary["features_dropped"] and "items.age_rating" in summary["features_dropped"]


# --- the acceptance sequence (issue 10, recsys) ------------------------------------------------------


@pytest.mark.data
def test_movielens_100k_import_train_recommend_serve(shared_data, tmp_path, capsys):
    """import --format movielens -> train -> recommend --user 1 --k 10 --json -> serve (same answer)."""
    from fastapi.testclient import TestClient

    from mlsd.platform.registry import ModelRegistry

    path = shared_data("movielens-100k")
    W = str(tmp_path / "W")
    import_argv = ["recsys", "import", "--format", "movielens", "--path", str(path), "--workdir", W, "--json"]
    assert main(import_argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["added"] == {"items": 1682, "users": 943, "interactions": 100_000}
    assert main(import_argv) == 0
    assert json.loads(capsys.readouterr().out)["written"] == []  # re-import: nothing changes
    assert main(["recsys", "train", "--workdir", W, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["registered"] and report["promoted"]
    assert main(["recsys", "recommend", "--workdir", W, "--user", "1", "--k", "10", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)

    ids = [item["item_id"] for item in answer["items"]]
    assert len(ids) == 10 and len(set(ids)) == 10
    ratings = pd.read_csv(path / "u.data", sep="\t", names=["user", "item", "rating", "ts"])
    catalogue = pd.read_csv(path / "u.item", sep="|", header=None, encoding="latin-1")[0]
    assert set(ids) <= set(catalogue)
    params = ModelRegistry(Path(W) / "recsys" / "registry").alias("recsys-ranker", "champion").params
    window = ratings[(ratings["ts"] >= params["train_start"]) & (ratings["ts"] < params["eval_start"])]
    assert not set(ids) & set(window.loc[window["user"] == 1, "item"])
    assert (window["user"] == 1).sum() == (ratings["user"] == 1).sum()  # the window holds all of user 1
    assert "items.region" in params["features_dropped"] and "users.age" in params["features_used"]

    system = get_system("recsys")
    engine = system.engine(system.dirs(W))  # a fresh engine, as `serve` builds: the same answer
    http = TestClient(system.app(engine)).get("/v1/recommendations/1", params={"k": 10})
    assert http.status_code == 200
    assert [item["item_id"] for item in http.json()["items"]] == ids


def test_importing_into_simulated_data_keeps_its_columns(tiny, tmp_path):
    """A slice imported beside simulated data: the simulator's extra columns survive the rewrite."""
    import shutil

    from mlsd.recsys.data import load

    dirs = SystemDir(tmp_path / "W", "recsys")
    shutil.copytree(tiny.data, dirs.data)
    before = load(dirs.data)
    item = int(before.items["item_id"].iloc[0])
    ts = int(before.interactions["timestamp"].max()) + 60
    slice_ = write(
        tmp_path / "s",
        "interactions.csv",
        f"user_id,item_id,timestamp,weight,event\n1,{item},{ts},0.9,watch\n",
    )
    summary = import_data(dirs, "csv", slice_)
    assert summary["added"]["interactions"] == 1 and summary["written"] == ["interactions"]
    after = load(dirs.data)
    assert set(after.interactions.columns) == set(before.interactions.columns)  # "event" kept
    assert (
        after.interactions["event"].iloc[-1] == "watch"
        and len(after.interactions) == len(before.interactions) + 1
    )
    assert "end_ts" not in after.meta and after.meta["train"] == before.meta["train"]
