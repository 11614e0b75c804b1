"""MovieLens loaders: 100K (real sample), 1M and CSV (tiny fixtures), malformed files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlsd.platform.errors import DataFormatError, InputError
from mlsd.recsys.model import stratified_split
from mlsd.recsys.movielens import load_movielens


def write(folder: Path, name: str, text: str, encoding: str = "utf-8") -> None:
    (folder / name).write_bytes(text.encode(encoding))


def ml1m(folder: Path) -> Path:
    write(folder, "ratings.dat", "1::10::5::978300760\n1::20::3::978302109\n2::10::4::978301968\n")
    write(
        folder,
        "movies.dat",
        "10::Toy Story (1995)::Animation|Children's|Comedy\n20::Amélie (2001)::Comedy|Romance\n",
        "latin-1",
    )
    write(folder, "users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n")
    return folder


def mlcsv(folder: Path) -> Path:
    write(
        folder,
        "ratings.csv",
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n7,1,0.5,964982224\n",
    )
    write(
        folder,
        "movies.csv",
        'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n3,"American President, The (1995)",Comedy|Drama|Romance\n'
        "5,Unknown Film,(no genres listed)\n",
    )
    return folder


def ml100k(folder: Path) -> Path:
    write(folder, "u.data", "1\t1\t5\t874965758\n2\t1\t3\t876893171\n1\t2\t4\t878542960\n")
    flags = "|".join(["0"] * 19)
    write(
        folder,
        "u.item",
        f"1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1{flags[11:]}\n2|Café (1994)|01-Jan-1994||http://y|{flags}\n",
        "latin-1",
    )
    write(folder, "u.user", "1|24|M|technician|85711\n2|53|F|other|94043\n")
    return folder


def test_1m_loads_latin1_and_demographics(tmp_path):
    ds = load_movielens(ml1m(tmp_path))
    assert ds.meta["format"] == "1m"
    assert len(ds.interactions) == 3
    assert ds.items.set_index("item_id").loc[20, "title"] == "Amélie (2001)"
    assert list(ds.items["year"]) == [1995, 2001]
    assert ds.users.set_index("user_id").loc[2, "occupation"] == "self-employed"
    assert ds.interactions["rating"].tolist() == [5.0, 3.0, 4.0]


def test_csv_loads_quoted_titles_and_no_genres(tmp_path):
    ds = load_movielens(mlcsv(tmp_path))
    assert ds.meta["format"] == "csv"
    items = ds.items.set_index("item_id")
    assert items.loc[3, "title"] == "American President, The (1995)"
    assert items.loc[5, "genres"] == ""
    assert items.loc[5, "year"] == -1
    assert sorted(ds.users["user_id"]) == [1, 7]
    assert ds.interactions["rating"].iloc[2] == 0.5


def test_100k_genre_flags_become_names(tmp_path):
    ds = load_movielens(ml100k(tmp_path))
    items = ds.items.set_index("item_id")
    assert items.loc[1, "genres"] == "Animation|Children's|Comedy"
    assert items.loc[2, "genres"] == ""
    assert items.loc[2, "title"] == "Café (1994)"
    assert ds.users.set_index("user_id").loc[2, "age"] == 53


@pytest.mark.parametrize(
    ("fmt", "name", "text", "line", "match"),
    [
        ("1m", "ratings.dat", "1::10::5::978300760\n1::20::x::978302109\n", 2, "rating"),
        ("1m", "ratings.dat", "1::10::5::978300760\n1::20::3\n", 2, "expected 4 fields"),
        ("1m", "ratings.dat", "1::10::5::978300760::7\n", 1, "expected 4 fields"),
        (
            "csv",
            "ratings.csv",
            "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,soon\n",
            3,
            "timestamp",
        ),
        ("csv", "ratings.csv", "user,movie,rating,timestamp\n1,1,4.0,964982703\n", 1, "header"),
        ("csv", "ratings.csv", "userId,movieId,rating,timestamp\n1,99,4.0,964982703\n", 1, "99"),
        ("100k", "u.data", "1\t1\t5\t874965758\n1\t2.5\t4\t878542960\n", 2, "item_id"),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path, fmt, name, text, line, match):
    {"1m": ml1m, "csv": mlcsv, "100k": ml100k}[fmt](tmp_path)
    write(tmp_path, name, text)
    with pytest.raises(DataFormatError, match=match) as info:
        load_movielens(tmp_path)
    assert info.value.path.endswith(name)
    assert info.value.line == line


def test_missing_folder_or_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_movielens(tmp_path / "nope")
    with pytest.raises(InputError, match="no MovieLens ratings file"):
        load_movielens(tmp_path)
    write(tmp_path, "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n")
    with pytest.raises(DataFormatError, match="missing"):
        load_movielens(tmp_path)


@pytest.mark.data
def test_real_100k_and_split_protocol_counts(shared_data):
    ds = load_movielens(shared_data("movielens-100k"))
    inter = ds.interactions
    assert len(inter) == 100_000
    assert inter["user_id"].nunique() == 943 and len(ds.items) == 1682
    assert inter["rating"].between(1, 5).all()
    train, test = stratified_split(inter, 0.75, 42)
    per_item = inter.groupby("item_id").size().to_numpy()
    assert train.sum() == int(sum(round(0.75 * n) for n in per_item))
    assert train.sum() + test.sum() == 100_000 and not (train & test).any()
    # stratified by item: each item's train count is exactly round(0.75 n)
    got = inter[train].groupby("item_id").size().reindex(inter.groupby("item_id").size().index, fill_value=0)
    np.testing.assert_array_equal(got.to_numpy(), [round(0.75 * n) for n in per_item])
    # the same seed draws the same rows
    again, _ = stratified_split(inter, 0.75, 42)
    assert (again == train).all()
