"""The fraud data contract (:mod:`mlsd.fraud.contract`) and ``mlsd fraud import``: schemas, errors that
name the file, line, column, value and fix, atomic appending imports deduplicated on each table's key."""

from __future__ import annotations

import json
import os

import pandas as pd
import pyarrow as pa
import pytest

from mlsd.cli import main
from mlsd.fraud import contract
from mlsd.fraud.contract import import_data, read_labels_table, read_manifest
from mlsd.platform.errors import DataFormatError, InputError
from mlsd.platform.system import get_system

T0 = 1_700_000_000  # 2023-11-14 UTC
DAY = 86_400


def payments_csv(path, rows=None, header="tx_id,ts,card_id,terminal_id,amount,currency,fraud,label_ts"):
    rows = rows or [
        f"1,{T0},10,5,12.50,EUR,0,{T0 + 3600}",  # a review said legitimate
        f"2,{T0 + 60},11,5,900.00,EUR,1,{T0 + 3 * DAY}",
        f"3,{T0 + DAY},10,6,8.00,usd,,",
    ]
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_system_lists_schemas_and_formats():
    system = get_system("fraud")
    assert system.import_formats == contract.FORMATS == ("handbook", "csv", "parquet")
    payments, labels = system.schemas["payments"], system.schemas["labels"]
    assert isinstance(payments, pa.Schema) and isinstance(labels, pa.Schema)
    required = [f.name for f in payments if f.metadata[b"required"] == b"true"]
    assert required == ["tx_id", "ts", "card_id", "terminal_id", "amount"]
    assert payments.field("ts").type == pa.int64() and b"UTC" in payments.field("ts").metadata[b"unit"]
    assert labels.names == ["tx_id", "label", "label_ts", "source"]
    assert "chargeback, review, report" in labels.field("source").metadata[b"doc"].decode()


def test_csv_in_the_contract_imports_with_inline_labels(tmp_path):
    data = tmp_path / "W" / "fraud" / "data"
    summary = import_data(data, "csv", payments_csv(tmp_path / "p.csv"))
    assert (summary["payments_new"], summary["labels_new"], summary["changed"]) == (3, 2, True)
    tx = pd.read_parquet(data / "transactions.parquet")
    assert tx["tx_id"].tolist() == [1, 2, 3] and tx["ts"].dtype == "int64"
    assert tx["currency"].tolist() == ["EUR", "EUR", "USD"]  # normalised to the contract
    assert tx["fraud"].tolist() == [0, 1, 0]
    labels = read_labels_table(data)
    # a label known within a day came from review, a later one from a chargeback
    assert sorted(labels["source"]) == ["chargeback", "review"]
    assert read_manifest(data)["as_of"] == T0 + 3 * DAY


def test_reimport_changes_nothing_and_a_new_day_lands_beside(tmp_path):
    data = tmp_path / "data"
    first = payments_csv(tmp_path / "p.csv")
    import_data(data, "csv", first)
    before = {p.name: p.stat().st_mtime_ns for p in data.iterdir()}
    again = import_data(data, "csv", first)
    assert (again["payments_new"], again["payments_duplicate"], again["changed"]) == (0, 3, False)
    assert {p.name: p.stat().st_mtime_ns for p in data.iterdir()} == before  # not even rewritten
    later = payments_csv(
        tmp_path / "later.csv", [f"4,{T0 + 2 * DAY},12,5,20.0,EUR,0,", f"3,{T0 + DAY},10,6,8.0,USD,,"]
    )
    out = import_data(data, "csv", later)
    assert (out["payments_new"], out["payments_duplicate"], out["payments_total"]) == (1, 1, 4)
    labels = tmp_path / "labels.csv"
    labels.write_text(f"tx_id,label,label_ts,source\n4,1,{T0 + 40 * DAY},report\n2,1,{T0 + 3 * DAY},review\n")
    out = import_data(data, "csv", labels)
    assert out["labels_new"] == 2  # (2, review) is a new event beside (2, chargeback)
    tx = pd.read_parquet(data / "transactions.parquet").set_index("tx_id")
    assert tx.loc[4, "fraud"] == 1 and tx.loc[4, "label_ts"] == T0 + 40 * DAY
    assert len(read_manifest(data)["slices"]) == 3


@pytest.mark.parametrize(
    ("rows", "line", "words"),
    [
        ([f"1,{T0},10,5,12.50,EUR,0,", f"2,{T0},11,5,-3,EUR,0,"], 3, ["amount", "-3", "currency units"]),
        ([f"1,{T0 * 1000},10,5,1,EUR,0,"], 2, ["ts", "milliseconds", "divide"]),
        ([f"1,{T0},card7,5,1,EUR,0,"], 2, ["card_id", "'card7'", "integer"]),
        ([f"1,{T0},10,5,1,XYZ,0,"], 2, ["currency", "'XYZ'", "EUR"]),
        ([f"1,{T0},10,5,1,EUR,1,{T0 - 5}"], 2, ["label_ts", "before"]),
        ([f"1,{T0},10,,1,EUR,0,"], 2, ["terminal_id", "empty"]),
        ([f"1,{T0},10,5,1,EUR,0,", f"1,{T0},10,5,1,EUR,0,"], 3, ["tx_id", "twice"]),
    ],
)
def test_bad_rows_name_file_line_column_value_and_fix(tmp_path, rows, line, words):
    path = payments_csv(tmp_path / "bad.csv", rows)
    data = tmp_path / "data"
    with pytest.raises(DataFormatError) as err:
        import_data(data, "csv", path)
    assert err.value.path == str(path) and err.value.line == line
    text = str(err.value)
    assert all(w in text for w in words), text
    assert err.value.fix
    assert not data.exists()  # nothing half-imported


def test_a_failed_import_leaves_earlier_data_untouched(tmp_path):
    data = tmp_path / "data"
    import_data(data, "csv", payments_csv(tmp_path / "p.csv"))
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    folder = tmp_path / "slice"
    folder.mkdir()
    payments_csv(folder / "a.csv", [f"7,{T0},10,5,1,EUR,0,"])
    payments_csv(folder / "b.csv", [f"8,{T0},10,5,oops,EUR,0,"])  # the second file is bad
    with pytest.raises(DataFormatError, match="b.csv:2"):
        import_data(data, "csv", folder)
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before
    assert not [p for p in data.iterdir() if p.name.endswith(".tmp")]


def test_missing_required_column_and_handbook_file_as_csv(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text(f"tx_id,ts,card_id,amount\n1,{T0},3,2.0\n")
    with pytest.raises(DataFormatError, match="lacks the required column.*terminal_id"):
        import_data(tmp_path / "d", "csv", path)
    hb = tmp_path / "hb.csv"
    hb.write_text(
        "TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_TIME_SECONDS,TX_TIME_DAYS,TX_FRAUD,"
        "TX_FRAUD_SCENARIO\n1,2018-07-25 00:00:29,1,2,3.0,29,0,0,0\n"
    )
    with pytest.raises(DataFormatError, match="--format handbook"):
        import_data(tmp_path / "d", "csv", hb)
    # and mlsd's own payment schema is not mistaken for the handbook format
    assert import_data(tmp_path / "d", "csv", payments_csv(tmp_path / "own.csv"))["payments_new"] == 3


def test_labels_table_validation(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text(f"tx_id,label,label_ts,source\n1,1,{T0},chargeback\n2,1,{T0},phone\n")
    with pytest.raises(DataFormatError) as err:
        import_data(tmp_path / "d", "csv", path)
    assert err.value.line == 3 and "'phone'" in str(err.value) and "review" in err.value.fix


def test_parquet_round_trip_and_handbook_format(tmp_path):
    frame = pd.DataFrame(
        {"tx_id": [1, 2], "ts": [T0, T0 + 5], "card_id": [1, 2], "terminal_id": [3, 3], "amount": [1.0, 2.5]}
    )
    frame.to_parquet(tmp_path / "p.parquet")
    assert import_data(tmp_path / "d", "parquet", tmp_path / "p.parquet")["payments_new"] == 2
    bad = frame.assign(amount=[1.0, -1.0])
    bad.to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DataFormatError, match=r"row 1 \(0-based\): column amount: -1.0"):
        import_data(tmp_path / "d", "parquet", tmp_path / "bad.parquet")
    with pytest.raises(InputError, match="--format"):
        import_data(tmp_path / "d", "xlsx", tmp_path / "p.parquet")


def test_import_cli_json_and_exit_2(tmp_path, capsys):
    path = payments_csv(tmp_path / "p.csv")
    assert (
        main(
            ["fraud", "import", "--format", "csv", "--path", str(path), "--workdir", str(tmp_path), "--json"]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["payments_new"] == 3 and out["data"] == str(tmp_path / "fraud" / "data")
    assert out["missing_context"] == ["device_id", "ip", "email", "lat", "lon"]  # said once, at import
    bad = payments_csv(tmp_path / "bad.csv", [f"9,{T0},10,5,x,EUR,0,"])
    code = main(["fraud", "import", "--format", "csv", "--path", str(bad), "--workdir", str(tmp_path)])
    assert code == 2
    assert "bad.csv:2" in capsys.readouterr().err
    assert not [p for p in os.listdir(tmp_path / "fraud" / "data") if p.endswith(".tmp")]


def test_own_payment_schema_as_csv_trains(tmp_path, capsys):
    """Issue 10: a CSV in mlsd's own payment schema (what simulate writes) imports with --format csv and
    trains; its labels are known long after the last payment, so the matured period ends with the data."""
    sim = tmp_path / "sim"
    assert main(["fraud", "simulate", "--workdir", str(sim), "--size", "tiny", "--json"]) == 0
    tx = pd.read_parquet(sim / "fraud" / "data" / "transactions.parquet")
    tx.to_csv(tmp_path / "own.csv", index=False)
    w = str(tmp_path / "W")
    assert (
        main(["fraud", "import", "--format", "csv", "--path", str(tmp_path / "own.csv"), "--workdir", w]) == 0
    )
    capsys.readouterr()
    assert main(["fraud", "train", "--workdir", w, "--trees", "20", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["registered"] and report["metrics"]["eval"]["frauds"] > 0
    as_of = read_manifest(tmp_path / "W" / "fraud" / "data")["as_of"]
    assert (
        report["run_date"]
        == str(pd.Timestamp(as_of, unit="s").date())
        > str(pd.Timestamp(tx["ts"].max(), unit="s").date())
    )


def test_train_on_too_short_an_import_exits_2_with_the_fix(tmp_path, capsys):
    w = str(tmp_path / "W")
    path = payments_csv(tmp_path / "p.csv")  # two days of payments, labels known three days in
    assert main(["fraud", "import", "--format", "csv", "--path", str(path), "--workdir", w]) == 0
    capsys.readouterr()
    assert main(["fraud", "train", "--workdir", w]) == 2
    err = capsys.readouterr().err
    assert "holds 4 days of payments and labels" in err and "12+ days" in err and "mlsd fraud import" in err
    assert not (tmp_path / "W" / "fraud" / "registry").exists()


def test_long_integer_ids_stay_exact(tmp_path):
    big = 9_007_199_254_740_993  # 2**53 + 1: a float64 round trip would change it
    path = tmp_path / "p.csv"
    path.write_text(f"tx_id,ts,card_id,terminal_id,amount\n{big},{T0},{big},1,2.0\n")
    import_data(tmp_path / "d", "csv", path)
    tx = pd.read_parquet(tmp_path / "d" / "transactions.parquet")
    assert int(tx["tx_id"].iloc[0]) == big and int(tx["card_id"].iloc[0]) == big
