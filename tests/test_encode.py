import json

import numpy as np
import pytest

from genctr.data.encode import FeatureEncoder
from genctr.schema import OOV, PAD
from helpers import raw_from_rows

SCHEMA = {
    "name": "toy",
    "label": {"column": "y"},
    "group": "user",
    "fields": [
        {"name": "user", "kind": "id"},
        {"name": "color", "kind": "categorical", "min_count": 2},
        {"name": "price", "kind": "numeric", "bins": 4, "transform": "standard"},
        {"name": "tags", "kind": "multi", "separator": "|", "max_len": 2},
        {"name": "history", "kind": "sequence", "separator": "^", "max_len": 3, "share_vocab": "user"},
    ],
    "segments": [{"name": "cold", "field": "user", "max_train_rows": 0},
                 {"name": "warm", "field": "user", "min_train_rows": 2}],
}
TRAIN = {
    "user": ["a", "a", "b", "c", "a", "b"],
    "color": ["red", "red", "blue", "green", "blue", "red"],
    "price": ["1", "2", "3", "4", "", "6"],
    "tags": ["x|y", "y", "", "x|y|z", "z", "y|x"],
    "history": ["", "a", "a^b", "a^b^c^a", "c", "b"],
    "y": [1, 0, 1, 0, 1, 0],
}
TEST = {
    "user": ["a", "zz"], "color": ["green", "purple"], "price": ["100", "-5"],
    "tags": ["q|x", "y"], "history": ["zz^a", ""], "y": [0, 1],
}


@pytest.fixture()
def fitted():
    raw = raw_from_rows(SCHEMA, TRAIN, TEST)
    return raw, FeatureEncoder(raw.schema).fit(raw)


def decode(encoder, field, ids):
    vocab = encoder.states[field].vocab.to_list()
    return [vocab[i - 2] if i >= 2 else {PAD: "<pad>", OOV: "<oov>"}[i] for i in ids]


def test_round_trip_of_categoricals(fitted):
    raw, encoder = fitted
    train = encoder.encode(raw)["train"]
    assert decode(encoder, "user", train.tokens["user"]) == TRAIN["user"]
    assert train.tokens["user"].dtype == np.int32


def test_vocabulary_is_fitted_on_train_only_and_unseen_values_are_oov(fitted):
    raw, encoder = fitted
    assert "zz" not in encoder.states["user"].vocab.to_list()
    test = encoder.encode(raw)["test"]
    assert test.tokens["user"].tolist()[1] == OOV
    assert test.tokens["color"].tolist()[1] == OOV  # purple never seen
    assert test.tokens["color"].tolist()[0] == OOV  # green seen once < min_count 2


def test_min_count_and_counts(fitted):
    _, encoder = fitted
    assert sorted(encoder.states["color"].vocab.to_list()) == ["blue", "red"]
    counts = encoder.train_counts("color")
    assert counts[OOV] == 1 and counts.sum() == 6  # green went to OOV


def test_max_vocab_keeps_most_frequent():
    schema = {**SCHEMA, "fields": [{"name": "user", "kind": "id", "max_vocab": 1}], "group": None,
              "segments": []}
    raw = raw_from_rows(schema, {"user": ["a", "b", "a"], "y": [0, 1, 0]})
    encoder = FeatureEncoder(raw.schema).fit(raw)
    assert encoder.states["user"].vocab.to_list() == ["a"]


def test_numeric_bins_missing_and_standardised_value(fitted):
    raw, encoder = fitted
    state = encoder.states["price"]
    present = np.array([1, 2, 3, 4, 6], dtype=float)
    np.testing.assert_allclose(state.edges, np.quantile(present, [0.25, 0.5, 0.75]))
    train = encoder.encode(raw)["train"]
    tokens = train.tokens["price"]
    assert tokens[4] == OOV  # the empty price is missing
    assert list(tokens[[0, 1, 2, 3, 5]]) == [2, 3, 4, 5, 5]  # a value on an edge goes up
    filled = np.array([1, 2, 3, 4, 0, 6], dtype=float)  # fill_value 0
    np.testing.assert_allclose(train.values["price"], (filled - filled.mean()) / filled.std(),
                               rtol=1e-6)
    test = encoder.encode(raw)["test"]
    assert list(test.tokens["price"]) == [5, 2]  # beyond both ends: outer bins


def test_multi_keeps_first_items_and_sequence_keeps_last(fitted):
    raw, encoder = fitted
    train = encoder.encode(raw)["train"]
    assert decode(encoder, "tags", train.tokens["tags"][3]) == ["x", "y"]
    assert train.lengths["tags"].tolist() == [2, 1, 0, 2, 1, 2]
    assert decode(encoder, "user", train.tokens["history"][3]) == ["b", "c", "a"]
    assert train.tokens["history"][0].tolist() == [PAD, PAD, PAD]
    test = encoder.encode(raw)["test"]
    assert test.tokens["history"][0].tolist()[:2] == [OOV, encoder.states["user"].vocab.to_list().index("a") + 2]


def test_segments_from_train_counts(fitted):
    raw, encoder = fitted
    test = encoder.encode(raw)["test"]
    assert test.segments["cold"].tolist() == [False, True]
    assert test.segments["warm"].tolist() == [True, False]


def test_state_save_load_gives_identical_encoding(fitted, tmp_path):
    raw, encoder = fitted
    encoder.save(tmp_path / "enc.json")
    again = FeatureEncoder.load(tmp_path / "enc.json")
    first, second = encoder.encode(raw)["test"], again.encode(raw)["test"]
    for field in first.tokens:
        np.testing.assert_array_equal(first.tokens[field], second.tokens[field])
    np.testing.assert_array_equal(first.values["price"], second.values["price"])
    assert again.schema == encoder.schema and again.same_state(encoder)
    assert '"red"' not in (tmp_path / "enc.json").read_text()  # values live in the Parquet file
    assert (tmp_path / "enc.vocab.parquet").is_file()


def test_encoder_files_of_version_1_still_load_and_a_missing_vocabulary_file_is_named(fitted, tmp_path):
    from genctr.errors import DataError

    _, encoder = fitted
    fields = {name: {"vocab": None if s.vocab is None else s.vocab.to_list(),
                     "counts": None if s.counts is None else s.counts.tolist(),
                     "edges": s.edges, "mean": s.mean, "std": s.std}
              for name, s in encoder.states.items() if encoder.schema.field(name).share_vocab is None}
    (tmp_path / "old.json").write_text(json.dumps({  # as genctr wrote it before the Parquet file
        "version": 1, "schema": encoder.schema.model_dump(mode="json", exclude_unset=True),
        "fields": fields}))
    assert FeatureEncoder.load(tmp_path / "old.json").same_state(encoder)
    encoder.save(tmp_path / "enc.json")
    (tmp_path / "enc.vocab.parquet").unlink()
    with pytest.raises(DataError, match="enc.vocab.parquet: missing"):
        FeatureEncoder.load(tmp_path / "enc.json")


def test_label_rule_derives_clicks():
    schema = {"name": "r", "label": {"column": "rating", "rule": ">= 4"},
              "fields": [{"name": "u", "kind": "id"}]}
    raw = raw_from_rows(schema, {"u": ["a", "b", "c"], "rating": [5.0, 3.0, 4.0]})
    split = FeatureEncoder(raw.schema).fit(raw).encode(raw)["train"]
    assert split.label.tolist() == [1.0, 0.0, 1.0]


def test_log_square_binning():
    schema = {"name": "c", "label": {"column": "y"},
              "fields": [{"name": "i1", "kind": "numeric", "binning": "log_square"}]}
    raw = raw_from_rows(schema, {"i1": ["0", "1", "2", "10", "100", "", "-1"], "y": [0] * 7})
    encoder = FeatureEncoder(raw.schema).fit(raw)
    split = encoder.encode(raw)["train"]
    # floor(ln(10)^2) = 5, floor(ln(100)^2) = 21; small values are their own bucket
    assert decode(encoder, "i1", split.tokens["i1"][[0, 1, 2, 3, 4, 6]]) == ["0", "1", "2", "5", "21", "-1"]
    assert split.tokens["i1"][5] == OOV


def test_few_rows_take_the_dict_lookup_and_encode_exactly_like_many(monkeypatch):
    import genctr.data.encode as encode
    from genctr.data.sources import make_source

    raw = make_source("synthetic", rows=3000, users=200, items=150, seed=7).load()
    encoder = FeatureEncoder(raw.schema).fit(raw)
    polars = encoder.encode_frame(raw.frame, raw, raw.sequence_refs)  # 3,000 rows: polars
    monkeypatch.setattr(encode, "SMALL_LOOKUP", 10 ** 9)  # the dict for every size
    many = encoder.encode_frame(raw.frame, raw, raw.sequence_refs)
    for name in many.tokens:
        np.testing.assert_array_equal(many.tokens[name], polars.tokens[name], err_msg=name)
    assert (many.tokens["user_id"] == OOV).any()  # unseen users are in the comparison
    assert not any(k.startswith("_") for k in vars(encoder.states["user_id"]))  # the cache is apart


@pytest.mark.parametrize("vocab", [["a", "bb", "ccc"], ["a", "b", "cc"]])
def test_hashed_lookup_is_exact_when_hashes_collide(monkeypatch, vocab):
    """Many rows look values up by hash; a value whose hash matches a vocabulary value's but not
    its text is OOV, and a vocabulary with two values of one hash takes polars' exact map."""
    import polars as pl

    import genctr.data.encode as encode

    # the string's length as its hash: "zz" hashes like "bb", "q" like "a"; ["a", "b", "cc"] collides
    monkeypatch.setattr(encode, "hash_strings",
                        lambda v: v.cast(pl.String).str.len_bytes().cast(pl.UInt64).to_numpy())
    state = encode.FieldState(vocab=pl.Series("value", vocab))
    values = ["a", "bb", "zz", "ccc", "q", "", "b", "cc"] * 200  # more than SMALL_LOOKUP
    expected = {v: encode.FIRST_VALUE + i for i, v in enumerate(vocab)}
    tokens = encode._lookup(pl.Series(values), state)
    np.testing.assert_array_equal(tokens, [expected.get(v, OOV) for v in values])
    assert (encode._hash_index(state.vocab) is None) == (vocab == ["a", "b", "cc"])


def _same_columns(fast, full) -> None:
    for part in ("tokens", "values", "lengths", "segments"):
        assert getattr(fast, part).keys() == getattr(full, part).keys(), part
        for name, column in getattr(full, part).items():
            np.testing.assert_array_equal(getattr(fast, part)[name], column, err_msg=f"{part} {name}")
            assert getattr(fast, part)[name].dtype == column.dtype, f"{part} {name}"
    assert np.isnan(fast.label).all() and fast.group is None


def test_served_rows_take_the_python_path_and_encode_exactly_like_polars(monkeypatch):
    """encode_rows (a request's columns) against encode_frame on the same rows as text: every
    field kind, unseen values, nulls, numbers as numbers and as padded text, log-square codes."""
    from genctr.data.encode_fast import columns_frame, encode_rows

    schema = {**SCHEMA, "fields": SCHEMA["fields"] + [
        {"name": "count", "kind": "numeric", "binning": "log_square", "transform": "log1p"}]}
    raw = raw_from_rows(schema, {**TRAIN, "count": ["0", "3", "12", "150", "", "7"]})
    encoder = FeatureEncoder(raw.schema).fit(raw)
    columns = {"user": ["a", "zz", None, "b"], "color": ["red", "purple", "blue", None],
               "price": [" 2.5 ", -1e3, None, 7], "tags": [["x", "q", "y"], [], [], ["z"]],
               "history": [["zz", "a", "b", "c"], ["c"], [], []], "count": ["12", 100.0, "", -4]}
    full = encoder.encode_frame(columns_frame(encoder.schema, columns), with_label=False)
    with monkeypatch.context() as patched:  # the polars path is not taken
        patched.setattr(encoder, "encode_frame", lambda *args, **kwargs: pytest.fail("polars path"))
        _same_columns(encode_rows(encoder, columns), full)
    many = {column: values * 500 for column, values in columns.items()}  # a large micro-batch
    _same_columns(encode_rows(encoder, many), encoder.encode_frame(
        columns_frame(encoder.schema, many), with_label=False))


@pytest.mark.parametrize("value, message", [("abc", "not finite numbers"), ("inf", "not finite numbers")])
def test_served_values_the_python_path_does_not_read_get_the_full_paths_error(fitted, value, message):
    from genctr.data.encode_fast import encode_rows
    from genctr.errors import DataError

    _, encoder = fitted
    columns = {"user": ["a"], "color": ["red"], "price": [value], "tags": [[]], "history": [[]]}
    with pytest.raises(DataError, match=message):
        encode_rows(encoder, columns)
    with pytest.raises(DataError, match="column 'user'"):
        encode_rows(encoder, {name: values for name, values in columns.items() if name != "user"})
