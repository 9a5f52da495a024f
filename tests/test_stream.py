"""Out-of-core encoding (tabular `stream: true`): the same cache entry as an in-memory encode,
chunk by chunk, from CSV and Parquet; errors still name the file and line."""

import os

import numpy as np
import polars as pl
import pytest

from genctr.data.sources import make_source
from genctr.data.store import cache_key, prepare
from genctr.errors import ConfigError, DataError

SCHEMA = """
name: mine
label: {column: y}
group: user
segments:
  - {name: cold, field: user, max_train_rows: 2}
fields:
  - {name: user, kind: id}
  - {name: city, kind: categorical, min_count: 2}
  - {name: tags, kind: multi, separator: "|", max_len: 3}
  - {name: price, kind: numeric, transform: standard, bins: 4}
  - {name: clicks, kind: numeric, binning: log_square, transform: log1p}
"""


def rows(n: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    price = rng.lognormal(2, 1, n).round(2).astype(str).astype(object)
    price[rng.random(n) < 0.1] = None  # missing numerics go to OOV / fill_value
    tags = ["|".join(f"t{t}" for t in rng.choice(9, rng.integers(0, 4), replace=False)) for _ in range(n)]
    return pl.DataFrame({
        "user": [f"u{u}" for u in rng.zipf(1.5, n) % 60],
        "city": [None if c == 0 else f"c{c}" for c in rng.integers(0, 12, n)],
        "tags": tags,
        "price": pl.Series(price.tolist(), dtype=pl.String),
        "clicks": rng.poisson(30, n).astype(str).tolist(),
        "y": rng.integers(0, 2, n).astype(str).tolist(),
    })


def write_splits(folder, suffix):
    (folder / "schema.yaml").write_text(SCHEMA)
    for name, n, seed in (("train", 700, 1), ("valid", 150, 2), ("test", 160, 3)):
        frame = rows(n, seed)
        if suffix == "csv":
            frame.write_csv(folder / f"{name}.csv")
        else:
            frame.write_parquet(folder / f"{name}.parquet", row_group_size=64)


def source(folder, suffix, **options):
    return make_source("tabular", folder, schema_file="schema.yaml", train=f"train.{suffix}",
                       valid=f"valid.{suffix}", test=f"test.{suffix}", **options)


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_streaming_encode_equals_the_in_memory_encode(tmp_path, suffix, monkeypatch):
    import genctr.data.stream as stream

    merges = []
    merge = stream._ValueCounter.merge
    monkeypatch.setattr(stream, "PENDING_ROWS", 20)  # counts merged after every chunk
    monkeypatch.setattr(stream._ValueCounter, "merge", lambda self: merges.append(1) or merge(self))
    write_splits(tmp_path, suffix)
    whole = prepare(source(tmp_path, suffix), tmp_path / "cache")
    streamed = prepare(source(tmp_path, suffix, stream=True, chunk_rows=97), tmp_path / "cache")
    assert streamed.folder != whole.folder  # its own cache entry
    for field, state in whole.encoder.states.items():
        other = streamed.encoder.states[field]
        assert (other.vocab is None) == (state.vocab is None), field
        assert other.vocab is None or other.vocab.equals(state.vocab), field
        np.testing.assert_array_equal(other.counts, state.counts, err_msg=field)
        assert other.edges == state.edges, field
        assert other.mean == pytest.approx(state.mean) and other.std == pytest.approx(state.std)
    assert len(merges) > 3  # and the CSV is read in several blocks too
    for name, split in whole.splits.items():
        mine = streamed.splits[name]
        assert isinstance(mine.label, np.memmap)
        for column, array in split.columns().items():
            np.testing.assert_allclose(mine.columns()[column], array, rtol=1e-6, err_msg=column)
    again = prepare(source(tmp_path, suffix, stream=True, chunk_rows=500), tmp_path / "cache")
    assert again.from_cache and again.folder == streamed.folder  # chunk size is not in the key


def test_streaming_errors_name_the_file_and_line(tmp_path):
    write_splits(tmp_path, "csv")
    text = (tmp_path / "valid.csv").read_text().splitlines()
    parts = text[120].split(",")
    parts[-1] = "maybe"  # the label
    text[120] = ",".join(parts)
    (tmp_path / "valid.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=r"valid.csv line 121"):
        prepare(source(tmp_path, "csv", stream=True, chunk_rows=50), tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]  # no half-written entry


def test_streaming_needs_split_files_and_a_cache(tmp_path):
    write_splits(tmp_path, "csv")
    with pytest.raises(ConfigError, match="stream"):
        make_source("tabular", tmp_path, schema_file="schema.yaml", files=["train.csv"], stream=True)
    with pytest.raises(DataError, match="cache_dir"):
        prepare(source(tmp_path, "csv", stream=True), None)


def test_cache_key_by_file_stat_or_by_content(tmp_path, monkeypatch):
    monkeypatch.setattr("genctr.data.store.HASH_FILES_BELOW", 1000)  # the files here are larger
    write_splits(tmp_path, "csv")
    src = source(tmp_path, "csv")
    by_stat, by_content = cache_key(src), cache_key(src, verify_content=True)
    assert by_stat != by_content
    path = tmp_path / "test.csv"
    text, stat = path.read_bytes(), path.stat()
    path.write_bytes(text.replace(b"c1,", b"c2,", 1))  # same size ...
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... and the same time
    assert cache_key(src) == by_stat  # a stat cannot see it
    assert cache_key(src, verify_content=True) != by_content  # the content hash does
