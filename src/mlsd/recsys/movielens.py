"""MovieLens loaders: 100K, 1M and the CSV releases (latest-small, 20M, 25M) into one schema.

``load_movielens(path)`` looks at the files in ``path`` and picks the format:

* 100K: ``u.data`` (tab: user, item, rating, timestamp), ``u.item`` ('|', Latin-1, 19 genre flags
  named by ``u.genre``), ``u.user`` ('|': id, age, gender, occupation, zip);
* 1M: ``ratings.dat``, ``movies.dat``, ``users.dat``, ``::``-separated, Latin-1;
* CSV: ``ratings.csv`` (userId, movieId, rating, timestamp) + ``movies.csv`` (movieId, title, genres).

Every file is parsed by pandas' C reader (whole columns at once) and then checked column by column,
so a malformed line is reported as ``DataFormatError(file, line, what was expected)`` without a
per-line Python loop.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pandas as pd

from mlsd.platform.errors import DataFormatError, InputError
from mlsd.recsys.data import RecsysDataset, make_interactions, validate

ML100K_GENRES = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]

_FIELDS_RE = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")
_YEAR_RE = r"\((\d{4})\)\s*$"


def detect_format(path: Path) -> str:
    """'100k', '1m' or 'csv' from the files present in ``path``."""
    if (path / "u.data").exists():
        return "100k"
    if (path / "ratings.dat").exists():
        return "1m"
    if (path / "ratings.csv").exists():
        return "csv"
    raise InputError(
        "path",
        str(path),
        "holds no MovieLens ratings file (u.data, ratings.dat or ratings.csv)",
        "point --path at the unpacked MovieLens folder (e.g. ml-100k/)",
    )


def load_movielens(path: str | Path) -> RecsysDataset:
    """Load a MovieLens release from the folder ``path`` (format auto-detected) into a RecsysDataset.

    Every rating becomes one interaction with ``rating`` set and ``weight`` 1.0.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("path", str(path), "does not exist", "point --path at the unpacked MovieLens folder")
    if not path.is_dir():
        raise InputError("path", str(path), "is not a directory", "point --path at the folder, not a file")
    fmt = detect_format(path)
    loader = {"100k": _load_100k, "1m": _load_1m, "csv": _load_csv}[fmt]
    dataset = loader(path)
    dataset.meta["format"] = fmt
    return validate(dataset)


# --- parsing helpers -------------------------------------------------------------------------


def _read_table(
    file: Path, sep: str, names: list[str], *, encoding: str = "utf-8", header: bool = False, expect: str = ""
) -> pd.DataFrame:
    """Read a delimited file as strings; wrong field counts become a DataFormatError naming the line."""
    if not file.exists():
        raise DataFormatError(file, None, "file is missing", f"the MovieLens folder must contain {file.name}")
    raw = file.read_bytes().decode(encoding, errors="replace")
    if sep == "::":
        # '::' needs pandas' slow python engine; a control char never appears in MovieLens text.
        raw, sep = raw.replace("::", "\x1f"), "\x1f"
    quoting = 0 if sep == "," else 3  # csv.QUOTE_MINIMAL for CSV titles with commas, else QUOTE_NONE
    # One spare column catches a line with one field too many (pandas would silently turn a
    # leading column into the index); two or more too many is a ParserError naming the line.
    width = [*names, "__extra__"]
    try:
        frame = pd.read_csv(
            io.StringIO(raw),
            sep=sep,
            header=None,
            names=width,
            index_col=False,
            dtype=str,
            keep_default_na=False,
            quoting=quoting,
            engine="c",
            skip_blank_lines=True,
        )
    except pd.errors.ParserError as err:
        match = _FIELDS_RE.search(str(err))
        line = int(match.group(2)) if match else None
        saw = f", saw {match.group(3)}" if match else ""
        raise DataFormatError(
            file,
            line,
            f"expected {len(names)} fields ({expect or ', '.join(names)}){saw}",
            "fix or remove that line",
        ) from err
    if header:
        got = [str(c).strip() for c in frame.iloc[0, : len(names)]] if len(frame) else []
        if got != names:
            raise DataFormatError(
                file,
                1,
                f"header is {got}, expected {names}",
                f"header must be {','.join(names)}",
            )
        frame = frame.iloc[1:].reset_index(drop=True)
    extra = frame["__extra__"].notna() & (frame["__extra__"] != "")
    if extra.any():
        row = int(np.flatnonzero(extra.to_numpy())[0])
        raise DataFormatError(
            file,
            row + 1 + int(header),
            f"expected {len(names)} fields ({expect or ', '.join(names)}), saw more",
            "fix or remove that line",
        )
    frame = frame[names]
    # Too few fields leave trailing columns empty: report the first short line.
    last = frame[names[-1]]
    short = (last == "") | last.isna()
    if short.any() and names[-1] not in ("zip", "genres", "video_release", "url"):
        row = int(np.flatnonzero(short.to_numpy())[0])
        raise DataFormatError(
            file,
            row + 1 + int(header),
            f"expected {len(names)} fields ({expect or ', '.join(names)})",
            "fix that line",
        )
    frame.attrs["file"] = file
    frame.attrs["header"] = int(header)
    return frame


def _numeric(frame: pd.DataFrame, column: str, kind: str, what: str) -> np.ndarray:
    """Column as int64/float64; the first non-numeric value is reported with its line number."""
    values = pd.to_numeric(frame[column].str.strip(), errors="coerce")
    bad = values.isna().to_numpy().copy()
    if kind == "int" and not bad.all():
        finite = values.to_numpy(dtype=np.float64, na_value=np.nan)
        bad |= ~np.isnan(finite) & (np.floor(finite) != finite)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataFormatError(
            frame.attrs["file"],
            row + 1 + frame.attrs["header"],
            f"{column}={frame[column].iloc[row]!r} is not {what}",
            f"{column} must be {what}",
        )
    return values.to_numpy(dtype=np.int64 if kind == "int" else np.float64)


def _year_from_title(titles: pd.Series) -> np.ndarray:
    years = titles.str.extract(_YEAR_RE, expand=False)
    return pd.to_numeric(years, errors="coerce").fillna(-1).to_numpy(dtype=np.int64)


def _ratings(frame: pd.DataFrame) -> pd.DataFrame:
    rating = _numeric(frame, "rating", "float", "a number")
    return make_interactions(
        _numeric(frame, "user_id", "int", "an integer user id"),
        _numeric(frame, "item_id", "int", "an integer item id"),
        _numeric(frame, "timestamp", "int", "an integer epoch timestamp"),
        rating=rating,
        weight=np.ones(len(rating)),
    )


def _users_from_ratings(inter: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"user_id": np.unique(inter["user_id"].to_numpy())})


def _check_items_cover(
    inter: pd.DataFrame, items: pd.DataFrame, ratings_file: Path, items_file: Path
) -> None:
    unknown = ~inter["item_id"].isin(items["item_id"]).to_numpy()
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise DataFormatError(
            ratings_file,
            row + 1,
            f"item id {int(inter['item_id'].iloc[row])} is not in {items_file.name}",
            f"add the movie to {items_file.name} or drop the rating",
        )


# --- the three formats -----------------------------------------------------------------------


def _load_100k(path: Path) -> RecsysDataset:
    ratings = _read_table(path / "u.data", "\t", ["user_id", "item_id", "rating", "timestamp"])
    inter = _ratings(ratings)
    genre_names = ML100K_GENRES
    item_cols = ["item_id", "title", "release_date", "video_release", "url", *[f"g{i}" for i in range(19)]]
    raw_items = _read_table(
        path / "u.item",
        "|",
        item_cols,
        encoding="latin-1",
        expect="id|title|release date|video|url|19 genre flags",
    )
    flags = np.column_stack(
        [_numeric(raw_items, f"g{i}", "int", "a 0/1 genre flag") for i in range(19)]
    ).astype(bool)
    names = np.array(genre_names, dtype=object)
    # '|'-join the set flags per row without a Python loop over the rows: one pass per genre.
    genres = pd.Series([""] * len(raw_items), dtype=object)
    for g in range(19):
        sel = flags[:, g]
        genres[sel] = genres[sel] + np.where(genres[sel] == "", "", "|") + names[g]
    release = pd.to_datetime(raw_items["release_date"], format="%d-%b-%Y", errors="coerce")
    year = release.dt.year.fillna(-1).to_numpy(dtype=np.int64)
    title_year = _year_from_title(raw_items["title"])
    year = np.where(year > 0, year, title_year)
    seconds = release.to_numpy().astype("datetime64[s]").astype(np.int64).astype(np.float64)
    release_ts = np.where(release.isna().to_numpy(), np.nan, seconds)
    items = pd.DataFrame(
        {
            "item_id": _numeric(raw_items, "item_id", "int", "an integer movie id"),
            "title": raw_items["title"].to_numpy(),
            "genres": genres.to_numpy(),
            "year": year,
            "release_ts": release_ts,
        }
    )
    _check_items_cover(inter, items, path / "u.data", path / "u.item")
    user_file = path / "u.user"
    if user_file.exists():
        raw_users = _read_table(user_file, "|", ["user_id", "age", "gender", "occupation", "zip"])
        users = pd.DataFrame(
            {
                "user_id": _numeric(raw_users, "user_id", "int", "an integer user id"),
                "age": _numeric(raw_users, "age", "int", "an integer age"),
                "gender": raw_users["gender"].to_numpy(),
                "occupation": raw_users["occupation"].to_numpy(),
            }
        )
    else:
        users = _users_from_ratings(inter)
    return RecsysDataset(inter, items, users, name=f"movielens-100k:{path}")


ML1M_OCCUPATIONS = [
    "other",
    "academic/educator",
    "artist",
    "clerical/admin",
    "college/grad student",
    "customer service",
    "doctor/health care",
    "executive/managerial",
    "farmer",
    "homemaker",
    "K-12 student",
    "lawyer",
    "programmer",
    "retired",
    "sales/marketing",
    "scientist",
    "self-employed",
    "technician/engineer",
    "tradesman/craftsman",
    "unemployed",
    "writer",
]


def _load_1m(path: Path) -> RecsysDataset:
    ratings = _read_table(
        path / "ratings.dat",
        "::",
        ["user_id", "item_id", "rating", "timestamp"],
        encoding="latin-1",
        expect="UserID::MovieID::Rating::Timestamp",
    )
    inter = _ratings(ratings)
    raw_items = _read_table(
        path / "movies.dat",
        "::",
        ["item_id", "title", "genres"],
        encoding="latin-1",
        expect="MovieID::Title::Genres",
    )
    items = pd.DataFrame(
        {
            "item_id": _numeric(raw_items, "item_id", "int", "an integer movie id"),
            "title": raw_items["title"].to_numpy(),
            "genres": raw_items["genres"].to_numpy(),
            "year": _year_from_title(raw_items["title"]),
        }
    )
    _check_items_cover(inter, items, path / "ratings.dat", path / "movies.dat")
    user_file = path / "users.dat"
    if user_file.exists():
        raw_users = _read_table(
            user_file,
            "::",
            ["user_id", "gender", "age", "occupation", "zip"],
            encoding="latin-1",
            expect="UserID::Gender::Age::Occupation::Zip-code",
        )
        occ = _numeric(raw_users, "occupation", "int", "an occupation code 0-20")
        names = np.array(ML1M_OCCUPATIONS, dtype=object)
        users = pd.DataFrame(
            {
                "user_id": _numeric(raw_users, "user_id", "int", "an integer user id"),
                "age": _numeric(raw_users, "age", "int", "an integer age group"),
                "gender": raw_users["gender"].to_numpy(),
                "occupation": np.where(
                    (occ >= 0) & (occ < len(names)), names[np.clip(occ, 0, len(names) - 1)], "other"
                ),
            }
        )
    else:
        users = _users_from_ratings(inter)
    return RecsysDataset(inter, items, users, name=f"movielens-1m:{path}")


def _load_csv(path: Path) -> RecsysDataset:
    ratings = _read_table(
        path / "ratings.csv", ",", ["userId", "movieId", "rating", "timestamp"], header=True
    )
    ratings = ratings.rename(columns={"userId": "user_id", "movieId": "item_id"})
    ratings.attrs.update(file=path / "ratings.csv", header=1)
    inter = _ratings(ratings)
    raw_items = _read_table(path / "movies.csv", ",", ["movieId", "title", "genres"], header=True)
    genres = raw_items["genres"].replace("(no genres listed)", "")
    items = pd.DataFrame(
        {
            "item_id": _numeric(raw_items, "movieId", "int", "an integer movie id"),
            "title": raw_items["title"].str.strip().to_numpy(),
            "genres": genres.to_numpy(),
            "year": _year_from_title(raw_items["title"].str.strip()),
        }
    )
    _check_items_cover(inter, items, path / "ratings.csv", path / "movies.csv")
    return RecsysDataset(inter, items, _users_from_ratings(inter), name=f"movielens-csv:{path}")
