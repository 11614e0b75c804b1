"""The search data contract (``mlsd.search.contract``) and ``mlsd search import``: typed tables,
validation that names file / line / column / value / fix, atomic appends deduplicated on each key."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from mlsd.cli import main
from mlsd.platform.errors import DataFormatError, InputError
from mlsd.platform.system import SystemDir, get_system
from mlsd.search.contract import SCHEMAS, convert, import_data, required


def _csv(path, frame: pd.DataFrame):
    frame.to_csv(path, index=False)
    return path


CATALOG = pd.DataFrame(
    {"product_id": [1, 2, 3], "title": ["red boots", "blue sofa", "oak table"], "price": [30.0, 400.0, ""]}
)


def test_system_exposes_the_schemas_and_formats() -> None:
    s = get_system("search")
    assert set(s.schemas) == {"catalog", "queries", "judgements", "events"}
    assert all(isinstance(schema, pa.Schema) for schema in s.schemas.values())
    assert s.schemas["events"].field("ts").type == pa.int64()
    assert required("catalog") == ["product_id", "title"]
    assert required("events") == ["type", "ts", "search_id", "product_id"]
    assert set(s.import_formats) >= {"homedepot", "crowdflower", "wands", "csv", "parquet"}
    from mlsd.search.contract import FORMATS

    assert tuple(s.import_formats) == FORMATS  # the System's list (the CLI's choices) is the contract's
    assert SCHEMAS["judgements"].field("grade").type == pa.float64()


@pytest.mark.parametrize(
    ("table", "frame", "where"),
    [
        ("catalog", CATALOG.assign(price=["30", "cheap", "1"]), (":3", "price='cheap'")),
        ("catalog", CATALOG.assign(title=["a", "", "c"]), (":3", "title=")),
        ("catalog", CATALOG.drop(columns="title"), (":1", "title")),
        ("judgements", pd.DataFrame({"query": ["boots"], "product_id": [1], "grade": [-1]}), (":2", "grade")),
        (
            "events",
            pd.DataFrame(
                {
                    "type": ["impression", "impression"],
                    "ts": [10, 11],
                    "search_id": ["s", "s"],
                    "query": ["q", "q"],
                    "product_id": [1, 2],
                    "position": [1, ""],
                }
            ),  # fmt: skip
            (":3", "position"),
        ),
        (
            "events",
            pd.DataFrame({"type": ["view"], "ts": [1], "search_id": ["s"], "product_id": [1]}),
            (":2", "type"),
        ),
        (
            "events",
            pd.DataFrame({"type": ["click"], "ts": [""], "search_id": ["s"], "product_id": [1]}),
            (":2", "ts"),
        ),
    ],
)
def test_a_bad_row_names_file_line_column_and_fix(tmp_path, table, frame, where) -> None:
    path = _csv(tmp_path / f"{table}.csv", frame)
    with pytest.raises(DataFormatError) as info:
        convert("csv", path)
    message = str(info.value)
    assert f"{table}.csv{where[0]}" in message and where[1] in message and "Fix:" in message


def test_import_appends_dedups_and_is_a_noop_the_second_time(tmp_path) -> None:
    dirs = SystemDir(tmp_path, "search")
    cat = _csv(tmp_path / "catalog.csv", CATALOG)
    first = import_data(dirs, "csv", cat)
    assert first["added"] == {"catalog": 3} and first["changed"]
    again = import_data(dirs, "csv", cat)
    assert again["added"] == {"catalog": 0} and not again["changed"]
    later = tmp_path / "later"
    later.mkdir()
    _csv(later / "catalog.csv", pd.DataFrame({"product_id": [3, 4], "title": ["oak table", "lamp"]}))
    _csv(
        later / "judgements.csv",
        pd.DataFrame({"query": ["lamp", "boots"], "product_id": [4, 1], "grade": [2, 1.5]}),
    )
    out = import_data(dirs, "csv", later)
    assert out["added"] == {"catalog": 1, "queries": 2, "judgements": 2}
    products = pd.read_parquet(dirs.data / "products.parquet")
    assert sorted(products["product_id"]) == [1, 2, 3, 4] and products["product_id"].dtype == "int64"
    # the same judgements again, one grade changed: the pair is replaced, not added; query ids are stable
    _csv(
        later / "judgements.csv",
        pd.DataFrame({"query": ["lamp", "boots"], "product_id": [4, 1], "grade": [2, 3]}),
    )
    out = import_data(dirs, "csv", later / "judgements.csv")
    assert out["added"] == {"queries": 0, "judgements": 0}
    qrels = pd.read_parquet(dirs.data / "qrels.parquet")
    queries = pd.read_parquet(dirs.data / "queries.parquet")
    assert len(qrels) == 2 and len(queries) == 2
    boots = int(queries.loc[queries["text"] == "boots", "query_id"].iloc[0])
    assert qrels.loc[qrels["query_id"] == boots, "grade"].tolist() == [3.0]
    assert len((dirs.data / "imports.jsonl").read_text().splitlines()) == 3  # the no-op is not logged


def test_events_append_one_part_per_new_slice_and_dedup(tmp_path) -> None:
    from mlsd.search.clicklog import ClickLog

    dirs = SystemDir(tmp_path, "search")
    import_data(dirs, "csv", _csv(tmp_path / "catalog.csv", CATALOG))
    day1 = pd.DataFrame({"type": ["impression", "impression", "click", "purchase"], "ts": [100, 100, 105, 130],
                         "search_id": ["a", "a", "a", "a"], "query": ["boots"] * 4, "product_id": [1, 2, 1, 1],
                         "position": [1, 2, None, None], "value": [None, None, None, 29.5]})  # fmt: skip
    f1 = _csv(tmp_path / "events.csv", day1)
    assert import_data(dirs, "csv", f1)["added"] == {"events": 4}
    assert import_data(dirs, "csv", f1)["added"] == {"events": 0}
    day2 = pd.concat([day1, day1.assign(search_id="b", ts=day1["ts"] + 86_400)])
    day2.to_parquet(tmp_path / "day2.parquet", index=False)
    assert import_data(dirs, "parquet", tmp_path / "day2.parquet", table="events")["added"] == {"events": 4}
    parts = list((dirs.data / "clicklog" / "events").glob("*.parquet"))
    assert len(parts) == 2
    imp = ClickLog(dirs.data / "clicklog").impressions()
    assert len(imp) == 4 and imp["purchased"].sum() == 2 and imp["order_value"].sum() == pytest.approx(59.0)


def test_a_failed_import_changes_nothing(tmp_path) -> None:
    dirs = SystemDir(tmp_path, "search")
    import_data(dirs, "csv", _csv(tmp_path / "catalog.csv", CATALOG))
    before = {p.name: p.read_bytes() for p in dirs.data.iterdir() if p.is_file()}
    bad = tmp_path / "bad"
    bad.mkdir()
    _csv(bad / "catalog.csv", pd.DataFrame({"product_id": [7], "title": ["new"]}))  # valid ...
    _csv(
        bad / "judgements.csv", pd.DataFrame({"query": ["x"], "product_id": [99], "grade": [1]})
    )  # ... this not
    with pytest.raises(DataFormatError, match="product_id=99, not in the catalog"):
        import_data(dirs, "csv", bad)
    after = {p.name: p.read_bytes() for p in dirs.data.iterdir() if p.is_file()}
    assert after == before  # no new catalog row, no temp file left behind


def test_import_verb_and_its_errors(tmp_path, capsys) -> None:
    w = str(tmp_path / "W")
    cat = _csv(tmp_path / "catalog.csv", CATALOG)
    assert main(["search", "import", "--workdir", w, "--format", "csv", "--path", str(cat), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["added"] == {"catalog": 3}
    odd = _csv(tmp_path / "stuff.csv", CATALOG)
    assert main(["search", "import", "--workdir", w, "--format", "csv", "--path", str(odd)]) == 2
    assert "--table" in capsys.readouterr().err
    assert main(["search", "import", "--workdir", w, "--format", "csv", "--path", str(tmp_path / "none.csv"),
                 "--table", "catalog"]) == 2  # fmt: skip
    assert "file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["search", "import", "--workdir", w, "--format", "xlsx", "--path", str(cat)])
    with pytest.raises(InputError):
        convert("xlsx", cat)


def test_the_simulator_writes_the_contract(tmp_path) -> None:
    """What ``mlsd search simulate`` writes satisfies the same schemas an import is checked against."""
    from mlsd.search.clicklog import ClickLog
    from mlsd.search.contract import _Where, validate_table
    from mlsd.search.world import simulate_into

    dirs = SystemDir(tmp_path, "search")
    simulate_into(dirs, size="tiny", sessions=200)
    products = pd.read_parquet(dirs.data / "products.parquet")
    catalog = validate_table("catalog", products, _Where("products.parquet"))
    assert len(catalog) == len(products)
    assert {"price", "stock", "rating", "margin", "last_review_ts", "color"} <= set(catalog.columns)
    queries = pd.read_parquet(dirs.data / "queries.parquet")
    qrels = pd.read_parquet(dirs.data / "qrels.parquet")
    judged = qrels.assign(query=queries.set_index("query_id")["text"].reindex(qrels["query_id"]).to_numpy())
    assert len(validate_table("judgements", judged, _Where("qrels.parquet"))) == len(qrels)
    events = ClickLog(dirs.data / "clicklog").events()
    assert len(validate_table("events", events, _Where("clicklog"))) == len(events)


@pytest.mark.data
@pytest.mark.parametrize(
    ("fmt", "sample", "counts"),
    [
        ("homedepot", "home-depot-sample", {"catalog": 256, "queries": 40, "judgements": 256}),
        ("crowdflower", "crowdflower-sample", {"catalog": 1743, "queries": 40, "judgements": 1743}),
    ],
)
def test_the_public_samples_import_into_one_workdir(tmp_path, shared_data, fmt, sample, counts) -> None:
    dirs = SystemDir(tmp_path, "search")
    assert import_data(dirs, fmt, shared_data(sample))["added"] == counts
    assert import_data(dirs, fmt, shared_data(sample))["changed"] is False
    qrels = pd.read_parquet(dirs.data / "qrels.parquet")
    products = pd.read_parquet(dirs.data / "products.parquet")
    assert qrels["product_id"].isin(products["product_id"]).all() and qrels["grade"].min() >= 0


def test_a_failure_while_writing_leaves_no_temporary_file(tmp_path, monkeypatch) -> None:
    dirs = SystemDir(tmp_path, "search")
    folder = tmp_path / "in"
    folder.mkdir()
    _csv(folder / "catalog.csv", CATALOG)
    _csv(folder / "judgements.csv", pd.DataFrame({"query": ["boots"], "product_id": [1], "grade": [2]}))
    real, calls = pd.DataFrame.to_parquet, []

    def flaky(frame, target, *args, **kwargs):
        calls.append(Path(target).name)
        if len(calls) == 2:  # the catalog's temp file is written, then the disk fills up
            raise OSError("No space left on device")
        return real(frame, target, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", flaky)
    with pytest.raises(OSError):
        import_data(dirs, "csv", folder)
    assert list(dirs.data.iterdir()) == []  # nothing renamed into place, no temp file left
    monkeypatch.setattr(pd.DataFrame, "to_parquet", real)
    assert import_data(dirs, "csv", folder)["added"] == {"catalog": 3, "queries": 1, "judgements": 1}
