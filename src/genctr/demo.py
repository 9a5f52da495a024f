"""`genctr demo`: the main job on built-in synthetic data."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sklearn.metrics import roc_auc_score

from genctr.data.batches import iterate_batches
from genctr.data.sources import make_source
from genctr.data.store import prepare


def run_demo(console: Console, cache_dir: Path) -> None:
    source = make_source("synthetic")
    started = time.perf_counter()
    dataset = prepare(source, cache_dir)
    console.print(f"[bold]synthetic[/bold] data generated and encoded in "
                  f"{time.perf_counter() - started:.2f} s -> {dataset.folder}")
    from genctr.cli import print_stats

    print_stats(dataset)
    raw_test = source.load()
    test_rows = raw_test.frame[raw_test.splits["test"]]
    bayes = roc_auc_score(test_rows["click"].to_numpy(), test_rows["true_ctr"].to_numpy())
    console.print(f"test AUC of the true click model (the ceiling a model can reach): {bayes:.4f}")
    batch = next(iterate_batches(dataset.splits["train"], 4096, shuffle=True, seed=0))
    table = Table("field", "kind", "batch tensor", title="one shuffled training batch")
    for spec in dataset.encoder.schema.fields:
        tensor = batch.tokens[spec.name]
        extra = f" + value {tuple(batch.values[spec.name].shape)}" if spec.name in batch.values else ""
        table.add_row(spec.name, spec.kind.value, f"{tuple(tensor.shape)} {tensor.dtype}{extra}")
    console.print(table)
