import numpy as np
import polars as pl
import torch

from genctr.data.batches import iterate_batches
from genctr.data.sources import make_source
from genctr.data.store import cache_key, prepare

SCHEMA = """
name: mine
label: {column: y}
fields:
  - {name: user, kind: id}
  - {name: amount, kind: numeric, bins: 3}
"""


def tabular(tmp_path, schema=SCHEMA):
    (tmp_path / "schema.yaml").write_text(schema)
    if not (tmp_path / "rows.csv").exists():
        pl.DataFrame({"user": [f"u{i % 5}" for i in range(40)], "amount": list(range(40)),
                      "y": [i % 2 for i in range(40)]}).write_csv(tmp_path / "rows.csv")
    return make_source("tabular", tmp_path, schema_file="schema.yaml", files=["rows.csv"])


def test_cache_hit_is_memory_mapped_and_identical(tmp_path):
    cache = tmp_path / "cache"
    first = prepare(tabular(tmp_path), cache)
    second = prepare(tabular(tmp_path), cache)
    assert first.folder == second.folder
    assert isinstance(second.splits["train"].tokens["user"], np.memmap)
    np.testing.assert_array_equal(first.splits["test"].tokens["amount"],
                                  second.splits["test"].tokens["amount"])
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 1  # + its lock


def test_changed_schema_or_file_never_reuses_the_cache(tmp_path):
    key = cache_key(tabular(tmp_path))
    changed_schema = cache_key(tabular(tmp_path, SCHEMA.replace("bins: 3", "bins: 4")))
    assert changed_schema != key
    tabular(tmp_path)  # schema back as it was
    assert cache_key(tabular(tmp_path)) == key
    with (tmp_path / "rows.csv").open("a") as handle:
        handle.write("u9,99,1\n")
    assert cache_key(tabular(tmp_path)) != key
    assert cache_key(make_source("synthetic", seed=1)) != cache_key(make_source("synthetic", seed=2))


def test_batches_cover_every_row_once_and_shuffle_by_seed(small_synthetic):
    split = small_synthetic.splits["train"]
    batches = list(iterate_batches(split, 256, shuffle=True, seed=4))
    assert sum(len(b) for b in batches) == len(split)
    again = list(iterate_batches(split, 256, shuffle=True, seed=4))
    other = list(iterate_batches(split, 256, shuffle=True, seed=5))
    assert torch.equal(batches[0].tokens["user_id"], again[0].tokens["user_id"])
    assert not torch.equal(batches[0].tokens["user_id"], other[0].tokens["user_id"])
    labels = torch.cat([b.label for b in batches]).sort().values
    assert torch.equal(labels, torch.from_numpy(np.sort(split.label)))
    first = batches[0]
    assert first.tokens["hist_items"].shape == (256, 10)
    assert first.values["price"].dtype == torch.float32
    # group: a hash of the raw user id, one group per user (train users all have their token)
    assert first.group is not None and first.group.dtype == torch.int64
    pairs = set(zip(first.group.tolist(), first.tokens["user_id"].tolist()))
    assert len(pairs) == len(set(first.group.tolist())) == len(set(first.tokens["user_id"].tolist()))


def test_batches_in_order_and_drop_last(small_synthetic):
    split = small_synthetic.splits["valid"]
    batches = list(iterate_batches(split, 100, drop_last=True))
    assert all(len(b) == 100 for b in batches) and len(batches) == len(split) // 100
    assert torch.equal(batches[0].label, torch.from_numpy(np.asarray(split.label[:100])))
