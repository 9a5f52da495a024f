"""A saved run: config, encoder state, best weights, history and metrics in one folder.

It loads in a fresh process (`load_run`) to evaluate or to score new raw rows (`predict`).
"""

from __future__ import annotations

import json
import resource
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl
import torch
import yaml

from genctr.config import RunConfig
from genctr.data.encode import FeatureEncoder
from genctr.data.encoded import EncodedSplit
from genctr.data.raw import FILE_COLUMN, LINE_COLUMN, RawDataset
from genctr.data.sources.base import read_table_file
from genctr.data.store import EncodedDataset, prepare
from genctr.errors import DataError
from genctr.metrics import evaluate_predictions
from genctr.models import CTRModel, build_model
from genctr.nn.embedding import field_infos
from genctr.train import BEST_WEIGHTS, Trainer, TrainState, predict_split, seed_everything

CONFIG_FILE = "config.yaml"
ENCODER_FILE = "encoder.json"
METRICS_FILE = "metrics.json"


@dataclass
class Run:
    folder: Path
    config: RunConfig
    encoder: FeatureEncoder
    model: CTRModel


def build_for(config: RunConfig, encoder: FeatureEncoder) -> CTRModel:
    """The configured model for this encoder's fields, initialised from the run's seed."""
    seed_everything(config.train.seed)
    return build_model(config.model_name, field_infos(encoder), config.model_kwargs)


def evaluate_split(model: CTRModel, split: EncodedSplit, batch_size: int = 65536,
                   bf16: bool = False) -> dict[str, Any]:
    prob = predict_split(model, split, batch_size, bf16)
    return evaluate_predictions(split.label, prob, split.group, split.segments)


def train_run(config: RunConfig, folder: str | Path | None = None, resume: bool = False,
              dataset: EncodedDataset | None = None, log: Callable[[str], None] = print
              ) -> tuple[Run, TrainState, dict[str, Any]]:
    """Train, reload the best epoch, evaluate on valid and test, and save everything."""
    folder = Path(folder or Path(config.output_dir) / config.run_name())
    if folder.exists() and not resume:
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dataset = dataset or prepare(config.data.make_source(), config.data.cache_dir)
    if config.init_from:
        from genctr.pretrain.transfer import pretrained_model_options

        config = config.model_copy(update={"model": pretrained_model_options(config.model, config.init_from)})
    (folder / CONFIG_FILE).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    dataset.encoder.save(folder / ENCODER_FILE)
    model = build_for(config, dataset.encoder)
    if config.init_from:
        from genctr.pretrain.transfer import transfer_pretrained

        moved = transfer_pretrained(model, config.init_from, dataset.encoder, config.freeze_embeddings)
        log(f"initialised from {config.init_from}: {', '.join(moved)}")
    state = Trainer(config.train, folder, log).fit(model, dataset.splits["train"],
                                                   dataset.splits["valid"], resume=resume)
    bf16, size = config.train.bf16, config.train.eval_batch_size
    metrics = {split: evaluate_split(model, dataset.splits[split], size, bf16)
               for split in ("valid", "test")}
    epochs = state.history
    metrics["training"] = {
        "epochs": len(epochs), "best_epoch": state.best_epoch,
        "epoch_seconds": float(np.median([e["epoch_seconds"] for e in epochs])),
        "train_samples_per_s": float(np.median([e["train_samples_per_s"] for e in epochs])),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    (folder / METRICS_FILE).write_text(json.dumps(metrics, indent=1))
    return Run(folder, config, dataset.encoder, model), state, metrics


def predict_file(run: Run, input_path: str | Path, output_path: str | Path,
                 batch_size: int = 65536) -> int:
    """Score raw CSV/Parquet rows with the run's saved encoder (unseen values go to OOV).

    Writes the input columns plus `probability`, as CSV or Parquet by the output suffix.
    """
    input_path, output_path = Path(input_path), Path(output_path)
    frame = read_table_file(input_path)
    schema = run.encoder.schema
    raw = RawDataset(schema, frame, {})
    split = run.encoder.encode_frame(frame, raw, with_label=schema.label.column in frame.columns)
    probability = predict_split(run.model, split, batch_size)
    visible = [c for c in frame.columns if c not in (FILE_COLUMN, LINE_COLUMN)]
    out = frame.select(visible).with_columns(pl.Series("probability", probability))
    output_path.parent.mkdir(parents=True, exist_ok=True)
    if output_path.suffix in (".parquet", ".pq"):
        out.write_parquet(output_path)
    else:
        out.write_csv(output_path)
    return out.height


def load_run(folder: str | Path) -> Run:
    """Rebuild a saved run's model with its best weights (no training data needed)."""
    folder = Path(folder)
    if not (folder / BEST_WEIGHTS).is_file():
        raise DataError(f"{folder}: not a finished run (no {BEST_WEIGHTS})")
    config = RunConfig.model_validate(yaml.safe_load((folder / CONFIG_FILE).read_text()))
    encoder = FeatureEncoder.load(folder / ENCODER_FILE)
    model = build_for(config, encoder)
    model.load_state_dict(torch.load(folder / BEST_WEIGHTS, weights_only=True))
    model.eval()
    return Run(folder, config, encoder, model)
