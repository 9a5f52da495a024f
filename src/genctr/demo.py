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
        run, state, metrics = train_run(config, dataset=dataset, log=lambda line: None)
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
    plot = plot_training_curves(histories, output_dir / "training_curves.png", "synthetic")
    (output_dir / "metrics.json").write_text(json.dumps(results, indent=1))
    console.print(f"report: {output_dir}/metrics.json, training curves {plot}, runs in "
                  f"{output_dir}/<model> (load them with `genctr evaluate` / `genctr predict`)")
