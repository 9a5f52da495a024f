"""`genctr demo`: the main job on built-in synthetic data, in well under a minute."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sklearn.metrics import roc_auc_score

from genctr.config import DataConfig, RunConfig
from genctr.data.sources import make_source
from genctr.data.store import prepare
from genctr.plots import plot_training_curves
from genctr.runs import train_run

DEMO_MODELS = {
    "dnn": {"name": "dnn", "hidden_units": [256, 128], "dropout": 0.1},
    "dcnv2": {"name": "dcnv2", "hidden_units": [256, 128], "dropout": 0.1, "cross_layers": 2},
}


def run_demo(console: Console, cache_dir: Path, output_dir: Path = Path("runs/demo")) -> None:
    data = DataConfig(source="synthetic", cache_dir=str(cache_dir))
    source = make_source("synthetic")
    started = time.perf_counter()
    dataset = prepare(source, cache_dir)
    console.print(f"[bold]synthetic[/bold] data generated and encoded in "
                  f"{time.perf_counter() - started:.2f} s -> {dataset.folder}")
    from genctr.cli import print_stats

    print_stats(dataset)
    raw = source.load()
    test_rows = raw.frame[raw.splits["test"]]
    bayes = roc_auc_score(test_rows["click"].to_numpy(), test_rows["true_ctr"].to_numpy())

    table = Table("model", "test AUC", "test logloss", "gAUC", *dataset.splits["test"].segments,
                  "epochs", "samples/s", title="test metrics (synthetic, seed 1)")
    histories, results = {}, {}
    for label, model in DEMO_MODELS.items():
        config = RunConfig(name=label, data=data, model=model, output_dir=str(output_dir),
                           train={"batch_size": 512, "epochs": 10, "seed": 1})
        console.print(f"training {label} ...")
        run, state, metrics = train_run(config, dataset=dataset, log=lambda line: None, overwrite=True)
        test = metrics["test"]
        histories[label] = state.history
        results[label] = metrics
        table.add_row(label, f"{test['auc']:.4f}", f"{test['logloss']:.4f}", f"{test['gauc']:.4f}",
                      *[f"{v['auc']:.4f} ({v['rows']})" for v in test["segments"].values()],
                      str(len(state.history)), f"{metrics['training']['train_samples_per_s']:,.0f}")
    table.add_row("true click model", f"{bayes:.4f}", "", "", *[""] * len(dataset.splits["test"].segments),
                  "", "")
    console.print(table)
    output_dir.mkdir(parents=True, exist_ok=True)
    results["hetegen"] = demo_hetegen(console, data, dataset, output_dir)
    results["test_time"] = demo_test_time(console, dataset, output_dir / "dnn")
    plot = plot_training_curves(histories, output_dir / "training_curves.png", "synthetic")
    (output_dir / "metrics.json").write_text(json.dumps(results, indent=1))
    console.print(f"report: {output_dir}/metrics.json, training curves {plot}, runs in "
                  f"{output_dir}/<model> (load them with `genctr evaluate` / `genctr predict`)")


def demo_hetegen(console: Console, data: DataConfig, dataset, output_dir: Path) -> dict:
    """A short HeteGenCTR pre-training (self_balancing + guided attention), fine-tuned by
    predicting the label token, beside the same network trained from scratch."""
    from genctr.pretrain.loop import PretrainConfig, pretrain_run

    console.print("pre-training HeteGenCTR (self_balancing, difficulty-guided attention) ...")
    config = PretrainConfig(data=data, pretrain={"epochs": 2, "batch_size": 1024, "seed": 1,
                                                 "corruption": {"label_only_rate": 0.1}})
    folder, net, history = pretrain_run(config, output_dir / "pretrain", dataset, log=lambda line: None,
                                        overwrite=True)
    table = Table("field", "kind", "final loss", "accuracy", "learned weight exp(-s)",
                  title=f"pre-training: per-field reconstruction ({folder / 'fields.md'})")
    for row in json.loads((folder / "fields.json").read_text()):
        table.add_row(row["field"], row["kind"], f"{row['final_loss']:.3f}",
                      f"{row['final_accuracy']:.3f}", f"{row['final_weight']:.3f}")
    console.print(table)
    results = {"pretrain_epoch_seconds": history[-1]["epoch_seconds"]}
    tuned = Table("model", "test AUC", "test logloss", title="HeteGen network: scratch vs pre-trained (seed 1)")
    for label, init_from in (("hetegen, scratch", None), ("hetegen, pre-trained", str(folder))):
        run_config = RunConfig(name=label.replace(", ", "-").replace(" ", ""), data=data,
                               model={"name": "hetegen"}, init_from=init_from, output_dir=str(output_dir),
                               train={"batch_size": 1024, "epochs": 3, "seed": 1, "progress": False})
        _, _, metrics = train_run(run_config, dataset=dataset, log=lambda line: None, overwrite=True)
        results[label] = metrics["test"]
        tuned.add_row(label, f"{metrics['test']['auc']:.4f}", f"{metrics['test']['logloss']:.4f}")
    console.print(tuned)
    return results


def demo_test_time(console: Console, dataset, run_dir: Path) -> dict:
    """Plain vs MATT vs UTTSI on the DNN run, with their costs."""
    from genctr.runs import evaluate_run_inference, load_run
    from genctr.testtime.inference import InferenceOptions

    run = load_run(run_dir)
    table = Table("inference", "test AUC", "test logloss", "passes / instance", "cold AUC",
                  title="test-time inference on the DNN (training-free)")
    results = {}
    for options in (InferenceOptions(), InferenceOptions(strategy="matt", paths=4),
                    InferenceOptions(strategy="uttsi", budget=2.0)):
        result = evaluate_run_inference(run, dataset, options, splits=("valid", "test"), measure_latency=False)
        test = result["test"]
        results[result["strategy"]] = test
        table.add_row(result["strategy"], f"{test['auc']:.4f}", f"{test['logloss']:.4f}",
                      f"{test['avg_cost']:.2f}", f"{test['segments']['cold']['auc']:.4f}")
    console.print(table)
    return results
