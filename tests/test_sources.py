import numpy as np
import polars as pl
import pytest

from genctr.data.sources import SOURCES, make_source
from genctr.data.store import encode_source
from genctr.errors import ConfigError, DataError
from conftest import shared

RATINGS = """1::10::5::978300760
1::20::3::978300761
2::10::4::978300700
2::30::2::978300800
1::30::4::978300900
3::20::5::978301000
1::20::5::978301100
2::20::4::978301200
3::10::1::978301300
4::10::5::978301400
"""
USERS = "1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117\n4::F::45::7::02460\n"
MOVIES = ("10::Toy Story (1995)::Animation|Children's|Comedy\n20::Heat (1995)::Action|Crime\n"
          "30::Amélie (2001)::Comedy|Romance\n")


def write_original_ml1m(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_text(RATINGS)
    (folder / "users.dat").write_text(USERS)
    (folder / "movies.dat").write_bytes(MOVIES.encode("latin-1"))
    return folder


def test_ml1m_original_dat_format(tmp_path):
    source = make_source("ml1m-ctr", write_original_ml1m(tmp_path / "ml-1m"),
                         fractions=[0.6, 0.2, 0.2])
    raw = source.load()
    frame = raw.frame
    # sorted by (timestamp, user, item)
    assert frame["timestamp"].to_list() == sorted(frame["timestamp"].to_list())
    assert frame["release_year"].to_list()[0] == "1995"
    amelie = frame.filter(pl.col("item_id") == "30")
    assert amelie["genre"].to_list()[0] == ["Comedy", "Romance"]
    assert {k: len(v) for k, v in raw.splits.items()} == {"train": 6, "valid": 2, "test": 2}
    # user 1's last row (t=978301100) sees its earlier positives 10 (t=..760) and 30 (t=..900)
    last = int(np.flatnonzero(frame["timestamp"].to_numpy() == 978301100)[0])
    seen = frame["item_id"].gather(raw.sequence_refs["hist_items"][last][:2]).to_list()
    assert seen == ["10", "30"]
    assert frame["hist_len"][last] == 3
    dataset = encode_source(source)
    assert dataset.splits["test"].label.tolist() == [0.0, 1.0]  # ratings 1 and 5
    assert dataset.splits["test"].segments["cold"].tolist() == [False, True]  # user 4 is new


def test_ml1m_recbole_atomic_format(tmp_path):
    folder = tmp_path / "movielens-1m"
    folder.mkdir()
    (folder / "ml-1m.inter").write_bytes(
        b"user_id:token\titem_id:token\trating:float\ttimestamp:float\r\n"
        b"1m_1\tHeat (1995)\t5\t100\r\n1m_2\tHeat (1995)\t2\t50\r\n1m_1\tJumanji (1995)\t4\t200\r\n"
        b"1m_2\tJumanji (1995)\t4\t300\r\n1m_1\tHeat (1995)\t1\t400\r\n")
    (folder / "ml-1m.user").write_bytes(
        b"user_id:token\tage:float\tgender:token\toccupation:float\tzip_code:token\r\n"
        b"1m_1\t1\tF\t10\t48067\r\n1m_2\t56\tM\t16\t70072\r\n")
    (folder / "ml-1m.item").write_bytes(
        b"item_id:token\tmovie_title:token\trelease_year:float\tgenre:token\r\n"
        b"Heat (1995)\tHeat\t1995\tAction Crime\r\nJumanji (1995)\tJumanji\t1995\tAdventure\r\n")
    raw = make_source("ml1m-ctr", tmp_path, fractions=[0.6, 0.2, 0.2]).load()
    assert raw.frame["user_id"].to_list() == ["1m_2", "1m_1", "1m_1", "1m_2", "1m_1"]
    assert raw.frame["genre"].to_list()[0] == ["Action", "Crime"]
    assert raw.frame["zip_code"].to_list()[0] == "70072"  # no stray \r
    assert raw.frame["hist_len"].to_list() == [0, 0, 1, 1, 2]


def test_ml1m_missing_user_is_reported(tmp_path):
    folder = write_original_ml1m(tmp_path / "ml-1m")
    (folder / "users.dat").write_text(USERS.replace("4::F::45::7::02460\n", ""))
    with pytest.raises(DataError, match=r"1 rating\(s\) refer to a user_id absent"):
        make_source("ml1m-ctr", folder).load()


def write_frappe(folder):
    (folder / "original").mkdir(parents=True)
    (folder / "nfm_libfm").mkdir()
    header = "user\titem\tcnt\tdaytime\tweekday\tisweekend\thomework\tcost\tweather\tcountry\tcity\n"
    rows = ["0\t0\t1\tmorning\tsunday\tweekend\tunknown\tfree\tsunny\tSpain\t0",
            "1\t1\t7\tafternoon\tsaturday\tweekend\tunknown\tfree\tcloudy\tSpain\t3",
            "0\t2\t2\tmorning\tsunday\tweekend\tunknown\tfree\tsunny\tSpain\t0",
            "0\t0\t1\tmorning\tsunday\tweekend\tunknown\tfree\tsunny\tSpain\t0"]
    (folder / "original" / "frappe.csv").write_text(header + "\n".join(rows) + "\n")
    # row 0's tuple as libFM indices (all context codes 0): held out once in test
    zero = "0:1 957:1 5039:1 5046:1 5053:1 5055:1 5058:1 5060:1 5069:1 5149:1"
    (folder / "nfm_libfm" / "frappe.test.libfm").write_text(f"1 {zero}\n-1 {zero.replace('957:1', '960:1')}\n")
    (folder / "nfm_libfm" / "frappe.validation.libfm").write_text(
        "1 1:1 958:1 5040:1 5047:1 5053:1 5055:1 5058:1 5061:1 5069:1 5150:1\n")
    return folder


def test_frappe_rebuild_protocol(tmp_path):
    raw = make_source("frappe-x1", write_frappe(tmp_path / "frappe")).load()
    train = raw.split_frame("train")
    positives = train.filter(pl.col("label") == 1)
    # 4 log rows minus 1 test positive minus 1 valid positive = 2 train positives
    assert positives.height == 2
    assert positives["item"].to_list() == ["2", "0"]  # the first (0, 0, ...) occurrence went
    negatives = train.filter(pl.col("label") == 0)
    assert negatives.height == 4
    assert (negatives["user"].to_list() == ["0", "0", "0", "0"])
    assert all(n != p for n, p in zip(negatives["item"].to_list(), ["2", "2", "0", "0"]))
    again = make_source("frappe-x1", tmp_path / "frappe").load().split_frame("train")
    assert again.equals(train)  # seeded: the same negatives every time
    test = raw.split_frame("test")
    assert test["label"].to_list() == [1, 0] and test["item"].to_list() == ["0", "3"]


def test_libfm_index_outside_block_is_an_error(tmp_path):
    folder = write_frappe(tmp_path / "frappe")
    (folder / "nfm_libfm" / "frappe.test.libfm").write_text(
        "1 0:1 5039:1 5039:1 5046:1 5053:1 5055:1 5058:1 5060:1 5069:1 5149:1\n")
    with pytest.raises(DataError, match=r"feature 2 \(item\) outside its index block .* line\(s\) \[1\]"):
        make_source("frappe-x1", folder).load()


@pytest.mark.parametrize("path", ["deepctr/criteo_sample.txt", "torch-rechub/criteo_sample.csv"])
def test_criteo_real_samples(path):
    dataset = encode_source(make_source("criteo", shared("ctr-samples", path)))
    train = dataset.splits["train"]
    assert set(train.tokens) == {f"I{i}" for i in range(1, 14)} | {f"C{i}" for i in range(1, 27)}
    assert set(np.unique(train.label)) <= {0.0, 1.0}
    assert (train.tokens["I1"] == 1).any()  # missing numerics get the missing token
    assert sum(len(s) for s in dataset.splits.values()) in (200, 115)


def test_criteo_headerless_tab_file(tmp_path):
    rows = ["\t".join(["1", *[str(i) for i in range(13)], *[f"{i:08x}" for i in range(26)]]),
            "\t".join(["0", "", *["5"] * 12, *["abcdef01"] * 26])] * 10
    path = tmp_path / "train.txt"
    path.write_text("\n".join(rows) + "\n")
    dataset = encode_source(make_source("criteo", tmp_path))
    assert sum(len(s) for s in dataset.splits.values()) == 20


def test_avazu_real_sample_and_hour_expansion():
    raw = make_source("avazu", shared("ctr-samples", "deepctr")).load()
    assert raw.frame["hour_of_day"][0] == "00"
    assert raw.frame["weekday"][0] == "1"  # 2014-10-21 was a Tuesday
    assert raw.frame["weekend"][0] == "0"
    dataset = encode_source(make_source("avazu", shared("ctr-samples", "deepctr")))
    assert sum(len(s) for s in dataset.splits.values()) == 100


SCHEMA_YAML = """
name: mine
label: {column: clicked}
fields:
  - {name: user, kind: id}
  - {name: amount, kind: numeric, bins: 3}
  - {name: seen, kind: sequence, separator: "^", max_len: 2}
"""


def test_tabular_csv_random_and_temporal_split(tmp_path):
    (tmp_path / "schema.yaml").write_text(SCHEMA_YAML)
    frame = pl.DataFrame({"user": [f"u{i % 7}" for i in range(50)], "amount": list(range(50)),
                          "seen": ["a^b"] * 50, "clicked": [i % 2 for i in range(50)],
                          "ts": list(range(50, 0, -1))})
    frame.write_csv(tmp_path / "rows.csv")
    random = make_source("tabular", tmp_path, schema_file="schema.yaml", files=["rows.csv"]).load()
    assert sorted(np.concatenate(list(random.splits.values())).tolist()) == list(range(50))
    temporal = make_source("tabular", tmp_path, schema_file="schema.yaml", files=["rows.csv"],
                           split="temporal", time_column="ts").load()
    ts = temporal.frame["ts"].cast(pl.Int64).to_numpy()
    assert ts[temporal.splits["train"]].max() < ts[temporal.splits["test"]].min()
    dataset = encode_source(make_source("tabular", tmp_path, schema_file="schema.yaml",
                                        files=["rows.csv"]))
    assert dataset.splits["train"].tokens["seen"].shape[1] == 2


def test_tabular_parquet_with_given_splits(tmp_path):
    (tmp_path / "schema.yaml").write_text(SCHEMA_YAML)
    for name, n in (("train", 20), ("valid", 5), ("test", 5)):
        pl.DataFrame({"user": [f"u{i}" for i in range(n)], "amount": [1.5] * n,
                      "seen": [["a", "b"]] * n, "clicked": [i % 2 for i in range(n)]}
                     ).write_parquet(tmp_path / f"{name}.parquet")
    dataset = encode_source(make_source("tabular", tmp_path, schema_file="schema.yaml",
                                        train="train.parquet", valid="valid.parquet",
                                        test="test.parquet"))
    assert [len(dataset.splits[s]) for s in ("train", "valid", "test")] == [20, 5, 5]
    assert (dataset.splits["test"].tokens["user"] == 1).sum() == 0  # u0..u4 seen in train


def test_tabular_needs_one_layout(tmp_path):
    with pytest.raises(ConfigError, match="either 'files' or all three"):
        make_source("tabular", tmp_path, schema_file="s.yaml", train="a.csv")


def test_synthetic_is_deterministic_and_heterogeneous():
    a = make_source("synthetic", rows=2000, seed=1).load()
    b = make_source("synthetic", rows=2000, seed=1).load()
    c = make_source("synthetic", rows=2000, seed=2).load()
    assert a.frame.equals(b.frame)
    assert not a.frame.equals(c.frame)
    kinds = {f.kind.value for f in a.schema.fields}
    assert kinds == {"id", "categorical", "numeric", "multi", "sequence"}
    users = a.frame["user_id"].value_counts()["count"].to_numpy()
    assert users.max() > 20 * np.median(users)  # power-law activity


def test_synthetic_test_split_has_cold_users(small_synthetic):
    assert small_synthetic.splits["test"].segments["cold"].mean() > 0.05
    assert small_synthetic.splits["train"].segments["cold"].sum() == 0


def test_every_source_is_documented():
    for cls in SOURCES.values():
        assert cls.summary and cls.how_to_obtain


def test_unknown_source_and_unknown_option():
    with pytest.raises(ConfigError, match="unknown source 'nope'"):
        make_source("nope")
    with pytest.raises(ConfigError, match="unknown key 'rowz'"):
        make_source("synthetic", rowz=5)
