"""Encoding speed and memory: genctr vs FuxiCTR 2.3.10 on ml1m-ctr and frappe-x1.

    .venv/bin/python benchmarks/encode.py --data-dir ../shared/data [--repeats 3]

Three measurements per task and repeat, each in a fresh process, peak RSS over its process tree:
  genctr raw-files  the raw dataset files -> encoded, cached splits (parsing, the temporal split,
                    hist_items/hist_len, vocabularies, bins, writing .npy): the issue's goal;
  genctr same-csv   the exported CSV columns below -> encoded splits, through the `tabular` source;
  fuxictr same-csv  FuxiCTR's FeatureProcessor + build_dataset on the same CSV columns, in its own
                    venv (created here on first use: torch==2.13.0 fuxictr==2.3.10 'polars<2').
The CSV export (not timed) lives in benchmarks/.work/, which git ignores: it is derived data.
Records go to benchmarks/results/encode.jsonl (cells already measured at this commit are skipped)
and benchmarks/RESULTS.md is re-rendered with `genctr report`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
WORK = ROOT / "benchmarks" / ".work"
RESULTS = ROOT / "benchmarks" / "results" / "encode.jsonl"
TASKS = ("ml1m-ctr", "frappe-x1")


# ------------------------------------------------------------------ CSV export (not timed)
def export_csv(task: str, data_dir: Path) -> Path:
    """The task's raw columns as train/valid/test CSVs plus a genctr schema and a FuxiCTR spec."""
    import polars as pl
    import yaml

    from genctr.data.sources import make_source

    folder = WORK / "encode" / task
    if (folder / "fuxictr_spec.yaml").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    raw = make_source(task, data_dir).load()
    frame = raw.frame
    if task == "ml1m-ctr":
        refs = raw.sequence_refs["hist_items"]
        items = frame["item_id"]
        flat = items.gather(refs.reshape(-1).clip(0)).set(pl.Series(refs.reshape(-1) < 0), None)
        hist = (pl.DataFrame({"h": flat}).with_columns(row=pl.int_range(pl.len()) // refs.shape[1])
                .group_by("row", maintain_order=True).agg(pl.col("h").drop_nulls().str.join("^"))["h"])
        frame = frame.select(
            (pl.col("rating") >= 4).cast(pl.Int8).alias("click"),
            "user_id", "item_id", "gender", "age", "occupation", "zip_code",
            pl.col("genre").list.join("|"), "release_year", "hour", "weekday",
            hist.alias("hist_items"), "hist_len")
        categorical = ["user_id", "item_id", "gender", "age", "occupation", "zip_code", "hour",
                       "weekday"]
        schema_fields = [{"name": c, "kind": "categorical"} for c in categorical] + [
            {"name": "genre", "kind": "multi", "separator": "|", "max_len": 6},
            {"name": "release_year", "kind": "numeric", "transform": "standard"},
            {"name": "hist_items", "kind": "sequence", "separator": "^", "max_len": 20,
             "share_vocab": "item_id"},
            {"name": "hist_len", "kind": "numeric", "transform": "log1p"}]
        fuxi_cols = [
            {"name": categorical, "active": True, "dtype": "str", "type": "categorical"},
            {"name": "genre", "active": True, "dtype": "str", "type": "sequence", "splitter": "|",
             "max_len": 6},
            {"name": ["release_year", "hist_len"], "active": True, "dtype": "float",
             "type": "numeric", "normalizer": "StandardScaler"},
            {"name": "hist_items", "active": True, "dtype": "str", "type": "sequence",
             "splitter": "^", "max_len": 20, "share_embedding": "item_id"}]
        label = "click"
    else:
        from genctr.data.sources.frappe import FIELDS

        frame = frame.select("label", *FIELDS)
        schema_fields = [{"name": c, "kind": "categorical"} for c in FIELDS]
        fuxi_cols = [{"name": list(FIELDS), "active": True, "dtype": "str", "type": "categorical"}]
        label = "label"
    for split, rows in raw.splits.items():
        frame[rows].write_csv(folder / f"{split}.csv")
    (folder / "genctr_schema.yaml").write_text(yaml.safe_dump(
        {"name": task, "label": {"column": label}, "fields": schema_fields}, sort_keys=False))
    (folder / "fuxictr_spec.yaml").write_text(yaml.safe_dump(
        {"feature_cols": fuxi_cols, "label_col": {"name": label, "dtype": "float"}}))
    return folder


# ------------------------------------------------------------------ workers (one process each)
def genctr_worker(task: str, data_dir: Path, csv_dir: Path | None) -> None:
    started = time.perf_counter()
    from genctr.data.sources import make_source
    from genctr.data.store import prepare

    imported = time.perf_counter()
    if csv_dir is None:
        source = make_source(task, data_dir)
    else:
        source = make_source("tabular", csv_dir, schema_file="genctr_schema.yaml",
                             train="train.csv", valid="valid.csv", test="test.csv")
    with tempfile.TemporaryDirectory(dir=WORK) as cache:  # a cold cache: everything is encoded
        dataset = prepare(source, cache)
        done = time.perf_counter()
        rows = sum(len(s) for s in dataset.splits.values())
    print(json.dumps({"encode_seconds": done - imported, "seconds_with_imports": done - started,
                      "rows": rows}))


# ------------------------------------------------------------------ driver
def fuxictr_python(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.is_file():
        print(f"creating FuxiCTR venv at {venv} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "torch==2.13.0",
                        "fuxictr==2.3.10", "polars<2", "pyyaml"], check=True)
    return python


def done_cells(commit: str) -> set[tuple]:
    if not RESULTS.is_file():
        return set()
    records = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    return {(r["task"], r["tool"], r["variant"], r["repeat"]) for r in records
            if r.get("commit") == commit}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".." / "shared" / "data")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fuxictr-venv", type=Path, default=WORK / "fuxictr-venv")
    parser.add_argument("--skip-fuxictr", action="store_true")
    parser.add_argument("--worker", choices=["genctr-raw", "genctr-csv"], help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--csv-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        genctr_worker(args.task, args.data_dir, args.csv_dir if args.worker == "genctr-csv" else None)
        return

    from proctree import run_measured

    from genctr.provenance import git_commit, machine, now_iso
    from genctr.report import write_results_markdown
    from genctr.files import append_jsonl

    WORK.mkdir(parents=True, exist_ok=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    commit, host = git_commit(ROOT), machine()
    finished = done_cells(commit)
    fuxi = None if args.skip_fuxictr else fuxictr_python(args.fuxictr_venv)
    me = [sys.executable, str(Path(__file__).resolve())]
    for task in args.tasks:
        csv_dir = export_csv(task, args.data_dir)
        cells = [("genctr", "raw-files", me + ["--worker", "genctr-raw"]),
                 ("genctr", "same-csv", me + ["--worker", "genctr-csv", "--csv-dir", str(csv_dir)])]
        if fuxi is not None:
            cells.append(("fuxictr", "same-csv", [str(fuxi), str(ROOT / "benchmarks" / "fuxictr_encode.py"),
                                                  "--csv-dir", str(csv_dir),
                                                  "--spec", str(csv_dir / "fuxictr_spec.yaml"),
                                                  "--out-dir", str(WORK / "fuxictr-out" / task)]))
        for repeat in range(args.repeats):
            for tool, variant, command in cells:
                if (task, tool, variant, repeat) in finished:
                    continue
                if tool == "genctr":
                    command = command + ["--task", task, "--data-dir", str(args.data_dir)]
                result, peak_mb = run_measured(command)
                record = {"task": task, "tool": tool, "variant": variant, "repeat": repeat,
                          "encode_seconds": round(result["encode_seconds"], 3),
                          "seconds_with_imports": round(result.get("seconds_with_imports",
                                                                   result["encode_seconds"]), 3),
                          "peak_rss_mb": round(peak_mb, 1), "rows": result["rows"],
                          "commit": commit, "machine": host, "finished_at": now_iso()}
                print(json.dumps(record), flush=True)
                append_jsonl(RESULTS, record)
    write_results_markdown(ROOT / "benchmarks")


if __name__ == "__main__":
    main()
