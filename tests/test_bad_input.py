"""Bad input gets a clear error naming the file, column and rows, or its documented path."""

import subprocess
import sys

import polars as pl
import pytest

from genctr.data.sources import make_source
from genctr.data.store import encode_source
from genctr.errors import ConfigError, DataError

SCHEMA = """
name: mine
label: {column: y}
fields:
  - {name: user, kind: id}
  - {name: amount, kind: numeric, bins: 3%s}
  - {name: seen, kind: sequence, separator: "^", max_len: 3}
"""
GOOD_ROWS = "user,amount,seen,y\nu1,1.5,a^b,1\nu2,2,b,0\nu3,,,1\nu1,4,a,0\n"


def source(tmp_path, rows=GOOD_ROWS, numeric_options=""):
    (tmp_path / "schema.yaml").write_text(SCHEMA % numeric_options)
    (tmp_path / "rows.csv").write_text(rows)
    return make_source("tabular", tmp_path, schema_file="schema.yaml", files=["rows.csv"],
                       fractions=[0.5, 0.25, 0.25])


def test_good_rows_encode(tmp_path):
    dataset = encode_source(source(tmp_path))
    assert sum(len(s) for s in dataset.splits.values()) == 4


def test_missing_column(tmp_path):
    with pytest.raises(DataError, match=r"rows.csv: column 'amount' \(field 'amount'\) not found"):
        encode_source(source(tmp_path, GOOD_ROWS.replace("amount", "amt")))


def test_non_numeric_value_names_file_column_and_line(tmp_path):
    rows = GOOD_ROWS.replace("u2,2,", "u2,two,")
    with pytest.raises(DataError) as err:
        encode_source(source(tmp_path, rows))
    message = str(err.value)
    assert "column 'amount'" in message and "'two'" in message and "rows.csv line 3" in message


def test_non_numeric_value_filled_when_configured(tmp_path):
    rows = GOOD_ROWS.replace("u2,2,", "u2,two,")
    dataset = encode_source(source(tmp_path, rows, ", on_invalid: fill, fill_value: -1"))
    pairs = sorted((v, t) for s in dataset.splits.values()
                   for v, t in zip(s.values["amount"].tolist(), s.tokens["amount"].tolist()))
    # the invalid 'two' and the missing value both take fill_value and the missing-value token
    assert [p[0] for p in pairs] == [-1.0, -1.0, 1.5, 4.0]
    assert [p[1] for p in pairs[:2]] == [1, 1]


def test_label_outside_0_1(tmp_path):
    with pytest.raises(DataError, match=r"label column 'y': 1 value\(s\) outside \{0, 1\}.*rows.csv line 4"):
        encode_source(source(tmp_path, GOOD_ROWS.replace("u3,,,1", "u3,,,2")))


def test_empty_file_and_header_only(tmp_path):
    with pytest.raises(DataError, match="rows.csv: the file is empty"):
        source(tmp_path, "").load()
    with pytest.raises(DataError, match="rows.csv: the file has no data rows"):
        source(tmp_path, "user,amount,seen,y\n").load()


def test_malformed_sequence(tmp_path):
    rows = GOOD_ROWS.replace("u2,2,b,0", "u2,2,b^^c,0")
    with pytest.raises(DataError, match=r"column 'seen'.*malformed list.*rows.csv line 3"):
        encode_source(source(tmp_path, rows))


def test_unknown_config_key(tmp_path):
    with pytest.raises(ConfigError, match=r"schema.yaml: unknown key 'fields.1.colour'"):
        source(tmp_path, numeric_options=", colour: red").load()


def test_unseen_categories_map_to_oov_not_an_error(tmp_path):
    dataset = encode_source(source(tmp_path))
    train_users = set(dataset.splits["train"].tokens["user"].tolist())
    assert 1 not in train_users


def test_cli_prints_one_clear_line_not_a_traceback(tmp_path):
    source(tmp_path, GOOD_ROWS.replace("u2,2,", "u2,two,"))
    result = subprocess.run(
        [sys.executable, "-m", "genctr", "datasets", "stats", "tabular", "--data-dir", str(tmp_path),
         "--cache-dir", str(tmp_path / "cache"), "-o", "schema_file=schema.yaml",
         "-o", "files=[rows.csv]"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    assert "error:" in result.stdout and "'two'" in result.stdout
