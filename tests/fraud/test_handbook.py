"""The handbook loader: one file, .gz, a directory; malformed files named by file and line."""

from __future__ import annotations

import gzip

import pytest

from mlsd.fraud.handbook import load_handbook
from mlsd.platform.errors import DataFormatError

HEADER = "TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_TIME_SECONDS,TX_TIME_DAYS,TX_FRAUD,TX_FRAUD_SCENARIO"
ROWS = [
    "0,2018-04-01 00:00:31,596,3156,57.16,31,0,0,0",
    "1,2018-04-01 00:02:10,4961,3412,81.51,130,0,0,0",
    "2,2018-04-02 00:07:56,2,1365,146.00,86876,1,1,3",
]


def test_one_file_maps_to_the_schema(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("\n".join([HEADER, *ROWS]) + "\n")
    tx = load_handbook(path)
    assert tx["tx_id"].tolist() == [0, 1, 2]
    assert tx["ts"].iloc[0] == 1522540831  # 2018-04-01 00:00:31 UTC
    assert tx["fraud"].tolist() == [0, 0, 1] and tx["scenario"].tolist() == [0, 0, 3]
    assert (tx["label_ts"] - tx["ts"] == 7 * 86400).all()
    assert "device_id" not in tx and "lat" not in tx  # absent, never faked


def test_directory_of_gz_daily_files(tmp_path):
    with gzip.open(tmp_path / "2018-04-02.csv.gz", "wt") as f:
        f.write("\n".join([HEADER, ROWS[2]]) + "\n")
    (tmp_path / "2018-04-01.csv").write_text("\n".join([HEADER, *ROWS[:2]]) + "\n")
    (tmp_path / "notes.txt").write_text("ignored")
    tx = load_handbook(tmp_path)
    assert tx["tx_id"].tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    ("lines", "line", "needle"),
    [
        ([HEADER.replace("TX_AMOUNT", "AMOUNT"), ROWS[0]], 1, "TX_AMOUNT"),
        ([HEADER, ROWS[0], ROWS[1].replace("81.51", "abc")], 3, "TX_AMOUNT"),
        ([HEADER, ROWS[0].replace("2018-04-01 00:00:31", "yesterday")], 2, "TX_DATETIME"),
        ([HEADER, ROWS[0].replace(",0,0,0", ",0,7,0")], 2, "TX_FRAUD"),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path, lines, line, needle):
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError) as err:
        load_handbook(path)
    assert err.value.line == line and needle in err.value.problem and err.value.path == str(path)


def test_not_a_csv(tmp_path):
    path = tmp_path / "x.csv.gz"
    path.write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(DataFormatError):
        load_handbook(path)


@pytest.mark.data
def test_real_sample_week(shared_data):
    tx = load_handbook(shared_data("fraud-sample"))
    assert len(tx) == 67_240 and int(tx["fraud"].sum()) == 598
    assert tx["card_id"].nunique() == 4_815
