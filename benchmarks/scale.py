"""Scale benchmark: out-of-core encoding and one training epoch on Criteo-shaped synthetic data.

    .venv/bin/python benchmarks/scale.py [--rows 1000000 5000000 20000000 45000000]
        [--models dnn dcnv2] [--fuxictr-rows 1000000 5000000] [--skip-fuxictr]

Data (not timed; benchmarks/.work/scale/<rows>/, git-ignored): 13 numeric + 26 categorical
fields with Criteo Kaggle's per-field cardinalities capped at 10M values, each drawn
log-uniformly over its values (Zipf-like: a few values are common, most are rare), and a click
model with real signal (a hashed effect per field value, two pairwise interactions, the
numerics), written as train/valid/test Parquet files (80/10/10 %).

Per size, each step in a fresh process, peak RSS over its process tree (VmRSS, and RssAnon: the
anonymous part, without the page cache mapped by memory-mapped columns):
  encode  `tabular` source with `stream: true` into a cold cache: seconds, rows/s, peak RSS, disk;
  train   one epoch of each model on the encoded cache (sparse_embeddings, batch-scoped L2,
          shuffled by blocks of 1M rows): rows/s of the epoch, peak RSS, test AUC.
At --fuxictr-rows the same rows are also exported as CSV (not timed) and both tools encode and
train from that CSV: genctr (stream: true) and FuxiCTR 2.3.10 (FeatureProcessor + build_dataset,
then its model_zoo model for one epoch with the same hyper-parameters; benchmarks/encode.py
creates its venv, and a source checkout of reczoo/FuxiCTR is needed at --fuxictr-src).
Records in benchmarks/results/scale.jsonl (cells already recorded are skipped unless --rerun), then
`genctr report` renders benchmarks/RESULTS.md with the growth curve.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".work" / "scale"
RESULTS = ROOT / "benchmarks" / "results" / "scale.jsonl"
sys.path.insert(0, str(ROOT / "benchmarks"))

NUMERIC = [f"I{i}" for i in range(1, 14)]
CATEGORICAL = [f"C{i}" for i in range(1, 27)]
# Criteo Kaggle's distinct values per categorical field (train.txt), capped at 10M
CARDINALITY = (1460, 583, 10_000_000, 2_202_608, 305, 24, 12_517, 633, 3, 93_145, 5_683,
               8_351_593, 3_194, 27, 14_992, 5_461_306, 10, 5_652, 2_173, 4, 7_046_547, 18, 15,
               286_181, 105, 142_572)
CHUNK = 1_000_000  # rows generated at a time
ROW_GROUP = 250_000  # Parquet row group: what a reader decodes at once
FRACTIONS = (0.8, 0.1, 0.1)
MODELS = {
    "dnn": {"name": "dnn", "embedding_dim": 16, "numeric_embedding": "scaled",
            "hidden_units": [400, 400, 400], "dropout": 0.2, "batch_norm": True},
    "dcnv2": {"name": "dcnv2", "embedding_dim": 16, "numeric_embedding": "scaled",
              "structure": "parallel", "cross_layers": 3, "hidden_units": [400, 400, 400],
              "dropout": 0.2, "batch_norm": True},
}
TRAIN = {"batch_size": 4096, "learning_rate": 0.001, "embedding_l2": 0.01, "epochs": 1,
         "grad_clip": 10.0, "seed": 1, "progress": False}
# genctr's out-of-core settings on top: updates that touch only the rows a batch looked up, and
# shuffling by blocks of 1M rows (about 200 MB of columns, the 1M dataset's whole cache), so that
# a batch gathers its rows from one block instead of from the whole memory-mapped split (at 45M
# rows a full permutation gathers every batch from about 7 GB of columns)
GENCTR_TRAIN = {"sparse_embeddings": True, "embedding_l2_scope": "batch",
                "shuffle_block_rows": 1_000_000}


# ------------------------------------------------------------------ data (not timed)
def _hash_unit(values, salt: int):
    """A fixed pseudo-random number in [-1, 1) per (value, salt): the click model's effects."""
    import numpy as np

    x = values.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64((salt * 0x632BE59BD9B4E019 + 1) % 2**64)
    x ^= x >> np.uint64(31)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(29)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53) * 2 - 1


def _chunk(rows: int, seed: int):
    """`rows` rows as a polars frame: ids drawn log-uniformly per field, clicks from the model."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    ranks = {c: (np.exp(rng.random(rows) * np.log(v)) - 1).astype(np.int64).clip(0, v - 1)
             for c, v in zip(CATEGORICAL, CARDINALITY)}
    logit = np.full(rows, -1.25)
    for j, c in enumerate(CATEGORICAL):
        logit += 0.4 * _hash_unit(ranks[c], j)
    logit += 0.6 * _hash_unit(ranks["C1"] * 1_000_003 + ranks["C2"], 101)
    logit += 0.6 * _hash_unit(ranks["C6"] * 1_000_003 + ranks["C9"], 102)
    numeric = {}
    for k, c in enumerate(NUMERIC):
        z = rng.normal(size=rows)
        logit += 0.25 * (1 if k % 2 else -1) * z
        values = np.floor(np.exp(1 + z)).astype(np.float64)
        values[rng.random(rows) < 0.2] = np.nan
        numeric[c] = values
    click = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    return pl.DataFrame({"label": click,
                         **{c: pl.Series(v).fill_nan(None) for c, v in numeric.items()},
                         **{c: pl.Series(r).cast(pl.String) for c, r in ranks.items()}})


def generate(rows: int, folder: Path) -> Path:
    """train/valid/test Parquet files of `rows` rows in all, and the genctr schema."""
    import pyarrow.parquet as pq
    import yaml

    if (folder / "schema.yaml").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    counts = [int(rows * f) for f in FRACTIONS[:2]]
    counts.append(rows - sum(counts))
    seed = 0
    for name, count in zip(("train", "valid", "test"), counts):
        writer = None
        for start in range(0, count, CHUNK):
            table = _chunk(min(CHUNK, count - start), seed).to_arrow()
            seed += 1
            writer = writer or pq.ParquetWriter(folder / f"{name}.parquet", table.schema)
            writer.write_table(table, row_group_size=ROW_GROUP)
        writer.close()
    schema = {"name": "criteo-synthetic", "label": {"column": "label"},
              "fields": [{"name": c, "kind": "numeric", "transform": "standard"} for c in NUMERIC]
              + [{"name": c, "kind": "categorical"} for c in CATEGORICAL]}
    (folder / "schema.yaml").write_text(yaml.safe_dump(schema, sort_keys=False))
    return folder


def export_csv(folder: Path) -> Path:
    """The same rows as CSV and a FuxiCTR feature spec (the peer reads CSV)."""
    import polars as pl
    import yaml

    csv_dir = folder / "csv"
    if (csv_dir / "fuxictr_spec.yaml").is_file():
        return csv_dir
    csv_dir.mkdir(exist_ok=True)
    for name in ("train", "valid", "test"):
        pl.scan_parquet(folder / f"{name}.parquet").sink_csv(csv_dir / f"{name}.csv")
    shutil.copy(folder / "schema.yaml", csv_dir / "schema.yaml")
    spec = {"feature_cols": [
        {"name": NUMERIC, "active": True, "dtype": "float", "type": "numeric",
         "normalizer": "StandardScaler", "fill_na": 0},
        {"name": CATEGORICAL, "active": True, "dtype": "str", "type": "categorical"}],
        "label_col": {"name": "label", "dtype": "float"}}
    (csv_dir / "fuxictr_spec.yaml").write_text(yaml.safe_dump(spec))
    return csv_dir


# ------------------------------------------------------------------ workers (one process each)
def data_config(folder: Path, suffix: str, cache: Path):
    from genctr.config import DataConfig

    return DataConfig(source="tabular", data_dir=str(folder), cache_dir=str(cache), options={
        "schema_file": "schema.yaml", "train": f"train.{suffix}", "valid": f"valid.{suffix}",
        "test": f"test.{suffix}", "stream": True})


def encode_worker(folder: Path, suffix: str, cache: Path) -> None:
    started = time.perf_counter()
    import genctr.config  # noqa: F401  (imports are not encoding: FuxiCTR's time excludes its own)

    imported = time.perf_counter()
    dataset = data_config(folder, suffix, cache).prepare()
    seconds = time.perf_counter() - imported
    rows = sum(len(s) for s in dataset.splits.values())
    disk = sum(p.stat().st_size for p in dataset.folder.rglob("*") if p.is_file())
    sizes = {f: dataset.encoder.vocab_size(f) for f in CATEGORICAL}
    print(json.dumps({"encode_seconds": seconds, "seconds_with_imports": time.perf_counter() - started,
                      "rows": rows, "disk_mb": disk / 2**20,
                      "largest_vocab": max(sizes.values()), "from_cache": dataset.from_cache}))


def train_worker(folder: Path, suffix: str, cache: Path, model: str, out: Path) -> None:
    from genctr.config import RunConfig
    from genctr.runs import train_run

    config = RunConfig(data=data_config(folder, suffix, cache), model=MODELS[model],
                       train=TRAIN | GENCTR_TRAIN)
    shutil.rmtree(out, ignore_errors=True)  # benchmarks/.work is the benchmark's own folder
    _, _, metrics = train_run(config, out, log=lambda line: None)
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    print(json.dumps({"train_rows_per_s": history[0]["train_samples_per_s"],
                      "epoch_seconds": history[0]["epoch_seconds"],
                      "test_auc": metrics["test"]["auc"], "test_logloss": metrics["test"]["logloss"]}))


# ------------------------------------------------------------------ driver
def recorded() -> set[tuple]:
    """Cells already measured, at any commit (the report names each record's commit): a run
    over 45M rows takes hours, so a later session resumes rather than repeats."""
    from genctr.files import read_jsonl

    return {(r["tool"], r["format"], r["rows"], r["model"]) for r in read_jsonl(RESULTS)}


def measured(command: list[str]) -> dict:
    from proctree import run_measured_detail

    result, peaks = run_measured_detail(command, timeout=6 * 3600)
    return result | peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", type=int, default=[1_000_000, 5_000_000, 20_000_000, 45_000_000])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=sorted(MODELS))
    parser.add_argument("--fuxictr-rows", nargs="+", type=int, default=[1_000_000, 5_000_000])
    parser.add_argument("--skip-fuxictr", action="store_true")
    parser.add_argument("--rerun", action="store_true", help="measure cells already recorded again")
    parser.add_argument("--fuxictr-venv", type=Path, default=ROOT / "benchmarks" / ".work" / "fuxictr-venv")
    parser.add_argument("--fuxictr-src", type=Path, default=ROOT / "benchmarks" / ".work" / "FuxiCTR")
    parser.add_argument("--worker", choices=["encode", "train"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--suffix", help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "encode":
        return encode_worker(args.folder, args.suffix, args.cache)
    if args.worker == "train":
        return train_worker(args.folder, args.suffix, args.cache, args.model, args.out)

    from genctr.files import append_jsonl
    from genctr.provenance import git_commit, machine, now_iso
    from genctr.report import write_results_markdown

    commit, host = git_commit(ROOT), machine()
    done = set() if args.rerun else recorded()
    me = [sys.executable, str(Path(__file__).resolve())]
    command_line = "benchmarks/scale.py " + " ".join(sys.argv[1:])
    fuxi = None
    if not args.skip_fuxictr and set(args.rows) & set(args.fuxictr_rows):
        from encode import fuxictr_python

        fuxi = fuxictr_python(args.fuxictr_venv)
    for rows in args.rows:
        folder = generate(rows, WORK / str(rows))
        formats = [("genctr", "parquet")]
        if rows in args.fuxictr_rows:
            export_csv(folder)
            formats.append(("genctr", "csv"))
            if fuxi is not None:
                formats.append(("fuxictr", "csv"))
        for tool, fmt in formats:
            todo = [m for m in args.models if (tool, fmt, rows, m) not in done]
            if not todo:
                print(f"skip {tool} {fmt} {rows:,}: recorded", flush=True)
                continue
            data = folder if fmt == "parquet" else folder / "csv"
            cache = WORK / f"cache-{rows}-{fmt}"
            if tool == "genctr":
                shutil.rmtree(cache, ignore_errors=True)  # a cold cache: everything is encoded
                encode = measured(me + ["--worker", "encode", "--folder", str(data), "--suffix", fmt,
                                        "--cache", str(cache)])
            else:
                encode = measured([str(fuxi), str(ROOT / "benchmarks" / "fuxictr_encode.py"),
                                   "--csv-dir", str(data), "--spec", str(data / "fuxictr_spec.yaml"),
                                   "--out-dir", str(WORK / "fuxictr-out")])
            print(f"{tool} {fmt} {rows:,} rows: encoded in {encode['encode_seconds']:.1f} s, "
                  f"peak RSS {encode['peak_rss_mb']:,.0f} MB", flush=True)
            for model in todo:
                if tool == "genctr":
                    train = measured(me + ["--worker", "train", "--folder", str(data), "--suffix", fmt,
                                           "--cache", str(cache), "--model", model,
                                           "--out", str(WORK / "run")])
                else:
                    train = fuxictr_train(fuxi, args.fuxictr_src, data, model)
                record = {
                    "task": "scale", "tool": tool, "format": fmt, "rows": rows,
                    "fields": len(NUMERIC) + len(CATEGORICAL), "model": model,
                    "encode_seconds": round(encode["encode_seconds"], 2),
                    "encode_seconds_with_imports": round(encode.get("seconds_with_imports", float("nan")), 2),
                    "encode_rows_per_s": rows / encode["encode_seconds"],
                    "encode_peak_rss_mb": round(encode["peak_rss_mb"], 1),
                    "encode_peak_anon_mb": round(encode["peak_anon_mb"], 1),
                    "disk_mb": round(encode.get("disk_mb", float("nan")), 1),
                    "largest_vocab": encode.get("largest_vocab"),
                    "train_rows_per_s": train["train_rows_per_s"],
                    "train_peak_rss_mb": round(train["peak_rss_mb"], 1),
                    "train_peak_anon_mb": round(train["peak_anon_mb"], 1),
                    "test_auc": train["test_auc"],
                    "config": {"model": MODELS[model],
                               "train": (TRAIN | GENCTR_TRAIN) if tool == "genctr" else TRAIN},
                    "command": command_line, "commit": commit, "machine": host,
                    "finished_at": now_iso()}
                append_jsonl(RESULTS, record)
                print(f"  {model}: {record['train_rows_per_s']:,.0f} rows/s, test AUC "
                      f"{record['test_auc']:.4f}, peak RSS {record['train_peak_rss_mb']:,.0f} MB "
                      f"(anon {record['train_peak_anon_mb']:,.0f})", flush=True)
            if tool == "genctr":
                shutil.rmtree(cache, ignore_errors=True)
    write_results_markdown(ROOT / "benchmarks")


def fuxictr_train(python: Path, src: Path, csv_dir: Path, model: str) -> dict:
    """One FuxiCTR epoch with the same model and hyper-parameters (its own encode inside)."""
    from peer import fuxictr_params

    from genctr.train import TrainConfig

    train = TrainConfig(**TRAIN | {"patience": 1})
    params = fuxictr_params(MODELS[model], train) | {"epochs": 1}
    peer = measured([str(python), str(ROOT / "benchmarks" / "fuxictr_train.py"), "--csv-dir",
                     str(csv_dir), "--spec", str(csv_dir / "fuxictr_spec.yaml"), "--work-dir",
                     str(WORK / "fuxictr-train"), "--fuxictr-src", str(src), "--model", model,
                     "--seed", "1", "--params", json.dumps(params)])
    return {"train_rows_per_s": peer["train_samples_per_s"], "test_auc": peer["test_auc"],
            "peak_rss_mb": peer["peak_rss_mb"], "peak_anon_mb": peer["peak_anon_mb"]}


if __name__ == "__main__":
    main()
