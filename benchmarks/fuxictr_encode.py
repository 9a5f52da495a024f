"""FuxiCTR 2.3.10's feature processing of CSV columns, timed (runs in FuxiCTR's own venv).

Called by benchmarks/encode.py; prints one JSON line. FuxiCTR is imported, never copied.
"""

import argparse
import json
import logging
import os
import shutil
import time

import yaml


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--csv-dir", required=True)
    parser.add_argument("--spec", required=True, help="YAML with feature_cols and label_col")
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args()
    spec = yaml.safe_load(open(args.spec))
    # FuxiCTR silently reuses a dataset whose feature_map.json exists: start from nothing
    shutil.rmtree(args.out_dir, ignore_errors=True)
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    from fuxictr.preprocess import FeatureProcessor, build_dataset

    imported = time.perf_counter()
    processor = FeatureProcessor(feature_cols=spec["feature_cols"], label_col=spec["label_col"],
                                 dataset_id="bench", data_root=args.out_dir)
    build_dataset(processor, train_data=os.path.join(args.csv_dir, "train.csv"),
                  valid_data=os.path.join(args.csv_dir, "valid.csv"),
                  test_data=os.path.join(args.csv_dir, "test.csv"))
    done = time.perf_counter()
    import polars as pl

    rows = sum(pl.scan_parquet(os.path.join(args.out_dir, "bench", f"{s}.parquet")).select(pl.len())
               .collect().item() for s in ("train", "valid", "test"))
    print(json.dumps({"encode_seconds": done - imported, "seconds_with_imports": done - started,
                      "rows": rows}))


if __name__ == "__main__":
    main()
