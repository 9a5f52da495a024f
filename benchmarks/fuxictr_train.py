"""Train one FuxiCTR 2.3.10 model_zoo model on one task, timed (runs in FuxiCTR's own venv).

Called by benchmarks/peer.py, which passes the same rows (exported CSV columns), model and
hyper-parameters as the genctr run beside it. FuxiCTR is imported from its venv and from a
source checkout of reczoo/FuxiCTR (for model_zoo); none of its code is copied here.
Prints one JSON line: test/valid metrics, training-only seconds per epoch, samples/s, totals.
"""

import argparse
import json
import logging
import os
import resource
import shutil
import statistics
import sys
import time

import yaml

ZOO = {"dnn": ("model_zoo/DNN/DNN_torch", "DNN"), "deepfm": ("model_zoo/DeepFM/DeepFM_torch", "DeepFM"),
       "dcnv2": ("model_zoo/DCNv2", "DCNv2")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--csv-dir", required=True)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--fuxictr-src", required=True)
    parser.add_argument("--model", required=True, choices=sorted(ZOO))
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--params", required=True, help="JSON: FuxiCTR model/training params")
    args = parser.parse_args()
    started = time.perf_counter()
    logging.basicConfig(level=logging.WARNING)
    zoo_dir, class_name = ZOO[args.model]
    sys.path.insert(0, os.path.join(args.fuxictr_src, zoo_dir))
    import src  # model_zoo/<model>/src of the checkout
    import torch
    from fuxictr.features import FeatureMap
    from fuxictr.preprocess import FeatureProcessor, build_dataset
    from fuxictr.pytorch.dataloaders import RankDataLoader
    from fuxictr.pytorch.torch_utils import seed_everything

    torch.set_num_threads(os.cpu_count())
    spec = yaml.safe_load(open(args.spec))
    data_root = os.path.join(args.work_dir, "data")
    shutil.rmtree(data_root, ignore_errors=True)  # never reuse a stale prepared dataset
    processor = FeatureProcessor(feature_cols=spec["feature_cols"], label_col=spec["label_col"],
                                 dataset_id="bench", data_root=data_root)
    train_data, valid_data, test_data = build_dataset(
        processor, train_data=os.path.join(args.csv_dir, "train.csv"),
        valid_data=os.path.join(args.csv_dir, "valid.csv"),
        test_data=os.path.join(args.csv_dir, "test.csv"))
    encoded = time.perf_counter()
    params = json.loads(args.params) | {
        "model_root": os.path.join(args.work_dir, "checkpoints"), "gpu": -1, "seed": args.seed,
        "verbose": 0, "task": "binary_classification", "loss": "binary_crossentropy",
        "metrics": ["AUC", "logloss"], "monitor": "AUC", "monitor_mode": "max",
        "optimizer": "adam", "data_format": "parquet", "shuffle": True, "num_workers": 1,
        "train_data": train_data, "valid_data": valid_data, "test_data": test_data,
        "model_id": f"{class_name}_{args.seed}", "save_best_only": True}
    os.makedirs(os.path.join(params["model_root"], "bench"), exist_ok=True)
    seed_everything(seed=args.seed)
    feature_map = FeatureMap("bench", os.path.join(data_root, "bench"))
    feature_map.load(os.path.join(data_root, "bench", "feature_map.json"), params)
    model = getattr(src, class_name)(feature_map, **params)
    train_gen, valid_gen = RankDataLoader(feature_map, stage="train", **params)

    epoch_seconds, eval_seconds, valid_aucs = [], [0.0], []
    original_eval, original_epoch = model.eval_step, model.train_epoch

    def timed_eval():
        t = time.perf_counter()
        logs = model.evaluate(model.valid_gen, metrics=model._monitor.get_metrics())
        valid_aucs.append(float(logs["AUC"]))
        model.checkpoint_and_earlystop(logs)
        model.train()
        eval_seconds[-1] += time.perf_counter() - t

    def timed_epoch(generator):
        eval_seconds.append(0.0)
        t = time.perf_counter()
        original_epoch(generator)
        epoch_seconds.append(time.perf_counter() - t - eval_seconds[-1])

    model.eval_step, model.train_epoch = timed_eval, timed_epoch
    model.fit(train_gen, validation_data=valid_gen, **params)
    test_gen = RankDataLoader(feature_map, stage="test", **params)
    test = model.evaluate(test_gen)
    done = time.perf_counter()
    rows = train_gen.num_samples
    median = statistics.median(epoch_seconds)
    print(json.dumps({
        "test_auc": float(test["AUC"]), "test_logloss": float(test["logloss"]),
        "valid_auc": max(valid_aucs), "epochs": len(epoch_seconds),
        "best_epoch": valid_aucs.index(max(valid_aucs)),
        "epoch_seconds": median, "train_samples_per_s": rows / median,
        "epoch_seconds_all": epoch_seconds, "encode_seconds": encoded - started,
        "total_seconds": done - started,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
