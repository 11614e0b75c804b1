"""Loaders: real samples parse into the schema; malformed files fail naming file, line and expectation."""

from __future__ import annotations

import numpy as np
import pytest

from mlsd.platform.errors import DataFormatError, InputError
from mlsd.search.data import gains
from mlsd.search.loaders import load_crowdflower, load_dataset, load_homedepot, load_wands

CF_HEADER = '"id","query","product_title","product_description","median_relevance","relevance_variance"\n'
HD_HEADER = '"id","product_uid","product_title","search_term","relevance"\n'


@pytest.mark.data
def test_crowdflower_sample(shared_data):
    ds = load_crowdflower(shared_data("crowdflower-sample"))
    assert len(ds.products) == 1743 and len(ds.judgements) == 1743 and len(ds.queries) == 40
    # README label counts: 4: 1102, 3: 330, 2: 196, 1: 115 -> grades 3, 2, 1, 0
    counts = ds.judgements["grade"].value_counts().to_dict()
    assert counts == {3.0: 1102, 2.0: 330, 1.0: 196, 0.0: 115}
    # a description with newlines inside quotes stays one field
    assert ds.products["description"].str.contains("\n").any()


@pytest.mark.data
def test_homedepot_sample(shared_data):
    ds = load_homedepot(shared_data("home-depot-sample"))
    assert len(ds.judgements) == 256 and len(ds.queries) == 40
    assert ds.judgements["grade"].between(0, 2).all()
    assert "rolling barn dorr hardware" in set(ds.queries["text"])


def test_crowdflower_quoted_newlines_and_grades(tmp_path):
    f = tmp_path / "train.csv"
    f.write_text(
        CF_HEADER + '1,"red shoe","Red Shoe","line one\nline ""two""",4,0\n2,"red shoe","Blue Hat","",1,0.5\n'
    )
    ds = load_crowdflower(f)
    assert ds.products["description"].tolist() == ['line one\nline "two"', ""]
    assert ds.judgements["grade"].tolist() == [3.0, 0.0]
    assert ds.products["product_id"].tolist() == [1, 2]
    np.testing.assert_allclose(gains(ds.judgements["grade"]), [7.0, 0.0])


def test_crowdflower_bad_label_names_line(tmp_path):
    f = tmp_path / "train.csv"
    # the second record starts on line 4 because the first spans lines 2-3
    f.write_text(CF_HEADER + '1,"q","t","a\nb",4,0\n2,"q","t","",7,0\n')
    with pytest.raises(DataFormatError) as err:
        load_crowdflower(f)
    assert err.value.line == 4 and "median_relevance" in err.value.problem and str(f) in str(err.value)


def test_missing_column_and_field_count(tmp_path):
    f = tmp_path / "train.csv"
    f.write_text('"id","query","product_title"\n1,"q","t"\n')
    with pytest.raises(DataFormatError, match="product_description"):
        load_crowdflower(f)
    f.write_text(HD_HEADER + '1,100,"t","q",3\n2,101,"t","q",2,extra\n')
    with pytest.raises(DataFormatError) as err:
        load_homedepot(f)
    assert err.value.line == 3 and "6 field" in err.value.problem


def test_unclosed_quote(tmp_path):
    f = tmp_path / "train.csv"
    f.write_text(CF_HEADER + '1,"q","t","never closed,4,0\n')
    with pytest.raises(DataFormatError, match="malformed CSV|field"):
        load_crowdflower(f)


def test_homedepot_latin1_and_dedup(tmp_path):
    f = tmp_path / "train.csv"
    f.write_bytes(
        (HD_HEADER + '1,100,"Caf\xe9 Lamp","cafe lamp",2.67\n2,100,"Caf\xe9 Lamp","lamp",1\n').encode(
            "latin-1"
        )
    )
    ds = load_homedepot(f)
    assert ds.products["title"].tolist() == ["Café Lamp"]  # one product judged for two terms
    np.testing.assert_allclose(ds.judgements["grade"], [1.67, 0.0])


def _write_wands(root, label="Exact"):
    (root / "product.csv").write_text(
        "product_id\tproduct_name\tproduct_class\tcategory hierarchy\tproduct_description\tproduct_features\t"
        "rating_count\taverage_rating\treview_count\n"
        "0\tsolid wood platform bed\tBeds\tFurniture / Bedroom Furniture / Beds\ta bed\tcolor:white|material:oak\t3\t4.5\t2\n"
        "1\tleather sofa\tSofas\tFurniture / Living Room / Sofas\ta sofa\tcolor:brown\t1\t4\t1\n"
    )
    (root / "query.csv").write_text("query_id\tquery\tquery_class\n0\twhite bed\tBeds\n")
    (root / "label.csv").write_text(
        f"id\tquery_id\tproduct_id\tlabel\n0\t0\t0\t{label}\n1\t0\t1\tIrrelevant\n"
    )


def test_wands_fixture_evaluates(tmp_path):
    from mlsd.search.evaluate import evaluate

    _write_wands(tmp_path)
    with open(tmp_path / "query.csv", "a") as f:
        f.write("1\tbrown leather sofa\tSofas\n")
    with open(tmp_path / "label.csv", "a") as f:
        f.write("2\t1\t1\tExact\n3\t1\t0\tPartial\n")
    report = evaluate(load_wands(tmp_path), "full", dense=False, quiet=True)
    assert report["dataset"] == "wands" and report["models"]["bm25"]["ndcg@10"] > 0.85
    assert set(report["models"]) == {"bm25", "ltr"}


def test_evaluate_needs_two_queries(tmp_path):
    from mlsd.search.evaluate import evaluate

    _write_wands(tmp_path)
    with pytest.raises(InputError, match="2 or more"):
        evaluate(load_wands(tmp_path), dense=False, quiet=True)


def test_wands_fixture(tmp_path):
    _write_wands(tmp_path)
    ds = load_wands(tmp_path)
    assert ds.products["category"].tolist() == [
        "Furniture / Bedroom Furniture / Beds",
        "Furniture / Living Room / Sofas",
    ]
    assert ds.products["attributes"].iloc[0] == "color: white; material: oak"
    assert ds.judgements["grade"].tolist() == [2.0, 0.0]
    assert load_dataset("wands", tmp_path).summary()["judgements"] == 2


def test_wands_bad_label(tmp_path):
    _write_wands(tmp_path, label="Great")
    with pytest.raises(DataFormatError) as err:
        load_wands(tmp_path)
    assert err.value.line == 2 and "Exact, Partial, Irrelevant" in err.value.fix


def test_wands_needs_folder_and_tabs(tmp_path):
    with pytest.raises(DataFormatError, match="folder"):
        load_wands(tmp_path / "product.csv")
    _write_wands(tmp_path)
    (tmp_path / "query.csv").write_text("query_id,query,query_class\n0,white bed,Beds\n")
    with pytest.raises(DataFormatError, match="TAB"):
        load_wands(tmp_path)


def test_unknown_dataset_and_missing_file(tmp_path):
    with pytest.raises(InputError, match="unknown dataset"):
        load_dataset("amazon", tmp_path)
    with pytest.raises(DataFormatError, match="not found"):
        load_crowdflower(tmp_path / "nope.csv")
