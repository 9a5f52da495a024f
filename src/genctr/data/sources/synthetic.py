"""`synthetic`: heterogeneous CTR data with a known click model, deterministic by seed.

The default data of `make demo` and of the tests. It has what makes real CTR data hard:
power-law user and item activity, categoricals from 2 to hundreds of values, a skewed numeric,
a multi-valued tag field, a behaviour sequence (built like ML-1M's, without look-ahead) and
users who appear only in the test period (cold start). The true click probability of every
row is kept in column `true_ctr`, so a model's AUC can be compared with the Bayes-optimal one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from pydantic import Field

from genctr.data.raw import RawDataset
from genctr.data.sources.base import Source, cut_by_position
from genctr.data.sources.movielens import build_histories
from genctr.schema import FieldSpec, LabelSpec, Schema, Strict, user_activity_segments

N_CATEGORIES = 20
N_TAGS = 30
LATENT_DIM = 4


class SyntheticOptions(Strict):
    rows: int = Field(60_000, ge=100)
    users: int = Field(600, ge=10)
    items: int = Field(400, ge=10)
    regions: int = Field(300, ge=2)
    cold_user_fraction: float = Field(0.02, ge=0, lt=1)
    history_length: int = Field(10, ge=1)
    seed: int = 0


class Synthetic(Source):
    name = "synthetic"
    summary = ("generated CTR data with a known click model: power-law ids, categoricals, "
               "a numeric, a multi-valued field, a behaviour sequence, cold users")
    how_to_obtain = "Built in: no files needed (options: rows, users, items, seed, ...)."
    Options = SyntheticOptions

    def input_files(self) -> list[Path]:
        return []

    def schema(self) -> Schema:
        return Schema(
            name=self.name,
            label=LabelSpec(column="click"),
            group="user_id",
            fields=[
                FieldSpec(name="user_id", kind="id"),
                FieldSpec(name="item_id", kind="id"),
                FieldSpec(name="item_category", kind="categorical"),
                FieldSpec(name="gender", kind="categorical"),
                FieldSpec(name="age", kind="categorical"),
                FieldSpec(name="region", kind="categorical"),
                FieldSpec(name="device", kind="categorical"),
                FieldSpec(name="hour", kind="categorical"),
                FieldSpec(name="price", kind="numeric", transform="log1p", bins=10),
                FieldSpec(name="tags", kind="multi", separator="|", max_len=4),
                FieldSpec(name="hist_items", kind="sequence", share_vocab="item_id",
                          separator="^", max_len=self.options.history_length),
                FieldSpec(name="hist_len", kind="numeric", transform="log1p", bins=8),
            ],
            segments=user_activity_segments("user_id"),
        )

    def load(self) -> RawDataset:
        frame, positive = generate(self.options)
        order = np.argsort(frame["time"].to_numpy(), kind="stable")
        frame, positive = frame[order], positive[order]
        refs, hist_len = build_histories(frame["user_id"].str.slice(1).cast(pl.Int64).to_numpy(),
                                         frame["time"].to_numpy(), positive,
                                         self.options.history_length)
        frame = frame.with_columns(pl.Series("hist_len", hist_len))
        splits = cut_by_position(np.arange(frame.height), (0.8, 0.1, 0.1))
        return RawDataset(self.schema(), frame, splits, sequence_refs={"hist_items": refs})


def _zipf_weights(n: int, exponent: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** exponent
    return w / w.sum()


def generate(opts: SyntheticOptions) -> tuple[pl.DataFrame, np.ndarray]:
    """Rows in random order with their clicks; the click model is documented inline."""
    rng = np.random.default_rng(opts.seed)
    n = opts.rows
    # users: latent taste, demographics, a power-law activity; some arrive only at the end
    user_vec = rng.normal(size=(opts.users, LATENT_DIM))
    user_bias = rng.normal(0, 0.5, opts.users)
    gender = rng.integers(0, 2, opts.users)
    age = rng.integers(0, 7, opts.users)
    region = rng.choice(opts.regions, opts.users, p=_zipf_weights(opts.regions, 1.0))
    cold = rng.random(opts.users) < opts.cold_user_fraction
    favourite_tags = rng.integers(0, N_TAGS, (opts.users, 3))
    # items: category, latent, price, tags, power-law popularity
    category = rng.integers(0, N_CATEGORIES, opts.items)
    category_vec = rng.normal(size=(N_CATEGORIES, LATENT_DIM))
    item_vec = 0.7 * category_vec[category] + 0.5 * rng.normal(size=(opts.items, LATENT_DIM))
    item_bias = rng.normal(0, 0.5, opts.items)
    price = np.exp(rng.normal(3, 1.2, opts.items)).round(2)
    n_tags = rng.integers(1, 5, opts.items)
    tag_table = np.argsort(rng.random((opts.items, N_TAGS)), axis=1)[:, :4]  # distinct tags

    u = rng.choice(opts.users, n, p=_zipf_weights(opts.users, 0.9))
    i = rng.choice(opts.items, n, p=_zipf_weights(opts.items, 1.1))
    device = rng.choice(4, n, p=[0.55, 0.3, 0.1, 0.05])
    hour = rng.integers(0, 24, n)
    time = np.where(cold[u], rng.uniform(0.9, 1.0, n), rng.uniform(0.0, 1.0, n))

    # the click model: taste match + biases + a context interaction + price + tag overlap
    tag_slots = np.arange(4)[None, :] < n_tags[i][:, None]
    item_tags = np.where(tag_slots, tag_table[i], -1)
    overlap = (item_tags[:, :, None] == favourite_tags[u][:, None, :]).any(axis=2).sum(axis=1)
    evening_mobile = ((hour >= 18) & (device == 0)).astype(float)
    logit = (-1.0 + 0.8 * (user_vec[u] * item_vec[i]).sum(axis=1) / np.sqrt(LATENT_DIM) * 2
             + user_bias[u] + item_bias[i] + 0.8 * evening_mobile
             - 0.35 * (np.log(price[i]) - 3) + 0.45 * overlap
             + 0.3 * (gender[u] == category[i] % 2) - 0.2 * (age[u] >= 5) * (category[i] < 5))
    true_ctr = 1 / (1 + np.exp(-logit))
    click = (rng.random(n) < true_ctr).astype(np.int64)

    frame = pl.DataFrame({
        "user_id": np.char.add("u", u.astype(str)),
        "item_id": np.char.add("i", i.astype(str)),
        "item_category": np.char.add("c", category[i].astype(str)),
        "gender": np.where(gender[u] == 0, "F", "M"),
        "age": age[u].astype(str),
        "region": np.char.add("r", region[u].astype(str)),
        "device": np.array(["mobile", "desktop", "tablet", "tv"])[device],
        "hour": hour.astype(str),
        "price": price[i],
        "tags": _join_tags(item_tags),
        "time": time,
        "click": click,
        "true_ctr": true_ctr,
    })
    return frame, click.astype(bool)


def _join_tags(item_tags: np.ndarray) -> list[str]:
    """Per row, its item's tags as 't3|t17' (the text is built once per distinct tag set)."""
    unique_rows, inverse = np.unique(item_tags, axis=0, return_inverse=True)
    texts = np.array(["|".join(f"t{t}" for t in row if t >= 0) for row in unique_rows])
    return texts[inverse.reshape(-1)].tolist()
