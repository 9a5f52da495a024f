"""The two benchmark tasks, built from ../shared/data, match BENCHMARKS.md."""

import numpy as np
import pytest

from genctr.data.sources import make_source
from genctr.data.stats import split_stats
from genctr.data.store import prepare
from conftest import shared


@pytest.fixture(scope="module")
def ml1m(tmp_path_factory):
    return prepare(make_source("ml1m-ctr", shared("movielens-1m")), tmp_path_factory.mktemp("c"))


@pytest.fixture(scope="module")
def frappe(tmp_path_factory):
    return prepare(make_source("frappe-x1", shared("frappe")), tmp_path_factory.mktemp("c"))


def test_ml1m_split_sizes_positive_rate_and_segments(ml1m):
    stats = {r["split"]: r for r in split_stats(ml1m)}
    assert [stats[s]["rows"] for s in ("train", "valid", "test")] == [800_167, 100_021, 100_021]
    positives = sum(stats[s]["positives"] for s in stats)
    assert positives / 1_000_209 == pytest.approx(0.575, abs=0.0005)
    test = stats["test"]
    assert test["segments"]["cold"] / test["rows"] == pytest.approx(0.19, abs=0.01)
    at_most_10 = test["segments"]["cold"] + test["segments"]["tail"]
    assert at_most_10 / test["rows"] == pytest.approx(0.24, abs=0.01)
    assert test["segments"]["cold"] + test["segments"]["tail"] + test["segments"]["warm"] == test["rows"]


def test_ml1m_fields_and_histories(ml1m):
    test = ml1m.splits["test"]
    assert test.tokens["genre"].shape[1] == 6 and test.tokens["hist_items"].shape[1] == 20
    assert test.lengths["genre"].min() >= 1
    assert ml1m.encoder.vocab_size("hour") == 2 + 24 and ml1m.encoder.vocab_size("weekday") == 2 + 7
    # hist_items shares item_id's vocabulary
    assert ml1m.encoder.states["hist_items"] is ml1m.encoder.states["item_id"]
    train = ml1m.splits["train"]
    assert train.lengths["hist_items"][0] == 0 and train.values["hist_len"][0] == 0


def test_frappe_counts(frappe):
    stats = {r["split"]: r for r in split_stats(frappe)}
    assert stats["train"]["positives"] == 67_604
    assert stats["train"]["rows"] == 3 * 67_604
    assert stats["valid"]["rows"] == 57_722 and stats["valid"]["positives"] == 19_063
    assert stats["test"]["rows"] == 28_860 and stats["test"]["positives"] == 9_536
    assert len(frappe.encoder.schema.fields) == 10


def test_frappe_log_rows_reencode_like_libfm():
    """Every positive of valid/test is a frappe.csv row encoded the same way."""
    from genctr.data.sources.frappe import FIELDS, encode_log, read_libfm

    log = encode_log(shared("frappe", "original", "frappe.csv")).select(FIELDS)
    test = read_libfm(shared("frappe", "nfm_libfm", "frappe.test.libfm"))
    positives = test.filter(test["label"] == 1).select(FIELDS)
    assert positives.join(log.unique(), on=list(FIELDS), how="anti").height == 0
    assert np.isin(test["item"].to_numpy(), np.arange(4082)).all()


def test_the_serve_benchmarks_requests_encode_like_the_test_split(ml1m):
    """benchmarks/serve.py cuts its requests from ml1m-ctr's raw test rows (histories and genre
    lists as lists): read and encoded as a server does, they give the test split's own tokens."""
    import importlib.util
    from pathlib import Path

    from genctr.config import DataConfig
    from genctr.data.encode_fast import encode_rows
    from genctr.serve.rows import RowReader

    spec = importlib.util.spec_from_file_location(
        "serve_bench", Path(__file__).resolve().parents[1] / "benchmarks" / "serve.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    data = DataConfig(source="ml1m-ctr", data_dir=str(shared("movielens-1m")))
    rows = bench.request_rows(data, ml1m.encoder.schema, 64)
    served = encode_rows(ml1m.encoder, RowReader(ml1m.encoder, 64).read(rows).columns)
    test = ml1m.splits["test"]
    expected = test.take(bench.picked_test_rows(len(test), 64))
    for name, column in expected.tokens.items():
        np.testing.assert_array_equal(served.tokens[name], column, err_msg=name)
    for name, column in expected.values.items():
        np.testing.assert_allclose(served.values[name], column, rtol=1e-6, err_msg=name)
    assert (served.tokens["genre"][:, 0] > 1).all()  # real genres, not out-of-vocabulary text
