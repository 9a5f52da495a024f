"""A saved run: config, encoder state, best weights, history and metrics in one folder.

It loads in a fresh process (`load_run`) to evaluate or to score new raw rows (`predict`).
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import polars as pl
import yaml

from genctr.config import DATA_RESUMABLE_KEYS, DataConfig, RunConfig
from genctr.data.encode import FeatureEncoder
from genctr.distributed import current as current_distributed
from genctr.data.encoded import EncodedSplit
from genctr.data.labelled import labelled_count, labelled_rows
from genctr.data.raw import FILE_COLUMN, LINE_COLUMN, RawDataset
from genctr.data.sources.base import read_table_file
from genctr.data.store import EncodedDataset
from genctr.errors import DataError
from genctr.files import check_writable
from genctr.metrics import evaluate_predictions
from genctr.models import CTRModel, build_model
from genctr.nn.embedding import field_infos
from genctr.rundir import check_config_unchanged, open_run_folder_on_ranks, require_run_file
from genctr.runtime import resolve_device
from genctr.schema import OOV, PAD, FieldKind, parse_model, read_yaml
from genctr.train import (BEST_WEIGHTS, CHECKPOINT, HISTORY, Trainer, TrainState, load_weights,
                          predict_split, seed_everything)

if TYPE_CHECKING:
    from genctr.testtime.inference import InferenceOptions

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


def evaluate_split(model: CTRModel, split: EncodedSplit, batch_size: int = 65536) -> dict[str, Any]:
    """Every metric of one split, always in fp32 (bf16 is a training speed-up only), so that
    `genctr evaluate RUN` reproduces the metrics.json written by training exactly."""
    prob = predict_split(model, split, batch_size)
    return evaluate_predictions(split.label, prob, split.group, split.segments)


# keys of a run's config that may change when it is continued with --resume
RESUMABLE_KEYS = DATA_RESUMABLE_KEYS | {"name", "output_dir", "train.epochs", "train.patience",
                  "train.progress", "train.threads", "train.eval_batch_size", "train.device",
                  "train.split_on_device"}  # where batches live, not what they are: same weights
MIN_VALID_POSITIVES = 100


def effective_config(config: RunConfig, dataset: EncodedDataset,
                     log: Callable[[str], None]) -> RunConfig:
    """The config the run really uses: a pre-trained `hetegen` model's options filled in, and
    the monitor switched to logloss when valid has too few positives for a stable AUC."""
    if config.init_from:
        from genctr.pretrain.transfer import AUTO_FROZEN_BELOW, pretrained_model_options, resolve_transfer

        rows = labelled_count(len(dataset.splits["train"]), config.train.label_fraction)
        transfer = resolve_transfer(config.transfer, rows)
        if transfer != config.transfer:
            log(f"transfer: auto -> {transfer} ({rows:,} labelled train rows; frozen_embedding "
                f"below {AUTO_FROZEN_BELOW:,})")
        config = config.model_copy(update={"transfer": transfer, "model": pretrained_model_options(
            config.model, config.init_from, config.transfer)})
    positives = int(np.asarray(dataset.splits["valid"].label).sum())
    if positives < MIN_VALID_POSITIVES and config.train.monitor == "auc":
        log(f"warning: the valid split has only {positives} positive(s) (< {MIN_VALID_POSITIVES}); "
            "its AUC is too noisy to pick the best epoch, so train.monitor is switched to logloss")
        config = config.model_copy(update={"train": config.train.model_copy(update={"monitor": "logloss"})})
    return config


def check_trainable(dataset: EncodedDataset) -> None:
    labels = np.unique(np.asarray(dataset.splits["train"].label))
    if len(labels) < 2:
        raise DataError(f"{dataset.name}: every training label is {labels.tolist()}; a CTR model "
                        "needs both clicks (1) and non-clicks (0) in the train split")


def train_run(config: RunConfig, folder: str | Path | None = None, resume: bool = False,
              dataset: EncodedDataset | None = None, log: Callable[[str], None] = print,
              overwrite: bool = False) -> tuple[Run, TrainState, dict[str, Any]]:
    """Train, reload the best epoch, evaluate on valid and test, and save everything.

    The config and data are checked before any folder is touched; see genctr.rundir for what
    happens to an existing folder."""
    target = Path(folder or Path(config.output_dir) / config.run_name())
    ranks = current_distributed(resolve_device(config.train.device))
    log = log if ranks.is_main else (lambda line: None)
    with ranks.main_first():  # rank 0 writes the encoded cache, the others read it
        dataset = dataset or config.data.prepare()
    check_trainable(dataset)
    config = effective_config(config, dataset, log)
    with open_run_folder_on_ranks(target, "train", resume, overwrite, ranks) as (work, existing):
        resuming = existing and (work / CHECKPOINT).is_file()
        if resuming:
            saved = read_yaml(require_run_file(work, CONFIG_FILE, "run"))
            check_config_unchanged(saved, config, RESUMABLE_KEYS, work)
        elif ranks.is_main:  # a fresh start, perhaps in this run's own folder after a kill in its first epoch
            (work / HISTORY).unlink(missing_ok=True)
            _write_config(work, config)
            dataset.encoder.save(work / ENCODER_FILE)
        model = build_for(config, dataset.encoder)
        if config.init_from and not resuming:
            from genctr.pretrain.transfer import transfer_pretrained

            moved = transfer_pretrained(model, config.init_from, dataset.encoder,
                                        config.freeze_embeddings, config.transfer)
            log(f"initialised from {config.init_from}: {', '.join(moved)}")
        train = labelled_rows(dataset.splits["train"], config.train.label_fraction, config.train.seed)
        if len(train) < len(dataset.splits["train"]):
            log(f"training on {len(train):,} of {len(dataset.splits['train']):,} labelled train rows "
                f"(label_fraction {config.train.label_fraction}, seed {config.train.seed})")
        state = Trainer(config.train, work, log).fit(model, train, dataset.splits["valid"],
                                                     resume=resuming)
        if ranks.active:  # while every process is up: the test-time methods' index, one shard each
            from genctr.testtime.evaluate import frequency_index
            from genctr.testtime.index import IndexOptions

            started = time.perf_counter()
            frequency_index(dataset, IndexOptions(), work, ranks)
            log(f"frequency index built on {ranks.world} processes and merged "
                f"({time.perf_counter() - started:.1f} s)")
        metrics = None
        if ranks.is_main:  # valid and test scored once, by rank 0
            if resuming:  # only now, with the checkpoint loaded: the allowed keys may have changed
                _write_config(work, config)
            size = config.train.eval_batch_size
            metrics = {split: evaluate_split(model, dataset.splits[split], size)
                       for split in ("valid", "test")}
            epochs = state.history
            metrics["training"] = {
                "epochs": len(epochs), "best_epoch": state.best_epoch,
                "epoch_seconds": float(np.median([e["epoch_seconds"] for e in epochs])),
                "train_samples_per_s": float(np.median([e["train_samples_per_s"] for e in epochs])),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "processes": ranks.world,
            }
            (work / METRICS_FILE).write_text(json.dumps(metrics, indent=1))
        metrics = ranks.broadcast(metrics)
    ratio = metrics["test"]["predicted_over_observed"]
    log(f"predicted / observed click rate on test: {ratio:.3f}"
        + ("" if 0.5 <= ratio <= 2 else " (far from 1: the model is badly calibrated)"))
    return Run(target, config, dataset.encoder, model), state, metrics


def _write_config(folder: Path, config: RunConfig) -> None:
    (folder / CONFIG_FILE).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


UNSEEN_WARNING_SHARE = 0.5


def predict_file(run: Run, input_path: str | Path, output_path: str | Path,
                 batch_size: int = 65536, separator: str = ",",
                 log: Callable[[str], None] = print) -> tuple[int, dict[str, float]]:
    """Score raw CSV/Parquet rows with the run's saved encoder (unseen values go to OOV).

    Writes the input columns plus `probability`, as CSV or Parquet by the output suffix, and
    beside it `<output>.unseen.json`: the share of values per field the encoder never saw in
    training (a field mostly unseen usually means the rows are coded differently from the
    training data). Returns the row count and those shares."""
    input_path, output_path = Path(input_path), Path(output_path)
    check_writable(output_path, "the output file")
    frame = read_table_file(input_path, separator)
    schema = run.encoder.schema
    raw = RawDataset(schema, frame, {})
    split = run.encoder.encode_frame(frame, raw, with_label=schema.label.column in frame.columns)
    unseen = unseen_shares(split, run.encoder)
    for field, share in unseen.items():
        if share > UNSEEN_WARNING_SHARE:
            log(f"warning: {share:.0%} of field '{field}' values in {input_path} were never seen "
                "in training (scored as out-of-vocabulary); are these rows coded like the "
                "training data?")
    probability = predict_split(run.model, split, batch_size)
    visible = [c for c in frame.columns if c not in (FILE_COLUMN, LINE_COLUMN)]
    out = frame.select(visible).with_columns(pl.Series("probability", probability))
    output_path.parent.mkdir(parents=True, exist_ok=True)
    if output_path.suffix in (".parquet", ".pq"):
        out.write_parquet(output_path)
    else:
        out.write_csv(output_path)
    sidecar = output_path.with_name(output_path.name + ".unseen.json")
    sidecar.write_text(json.dumps({"input": str(input_path), "rows": out.height,
                                   "unseen_share": unseen}, indent=1))
    return out.height, unseen


def unseen_shares(split: EncodedSplit, encoder: FeatureEncoder) -> dict[str, float]:
    """Per categorical-like field: the share of its (non-padding) values that map to OOV.
    Numeric fields are left out (their OOV token means a missing value, not an unseen one)."""
    shares = {}
    for spec in encoder.schema.fields:
        if spec.kind is FieldKind.numeric:
            continue
        tokens = np.asarray(split.tokens[spec.name])
        present = tokens != PAD
        count = int(present.sum())
        shares[spec.name] = float((tokens[present] == OOV).sum() / count) if count else 0.0
    return shares


def moved_data(data: DataConfig, new_dir: Path) -> DataConfig:
    """The data config with its folder moved to `new_dir`; an option path that lay inside the
    old folder (a schema_file beside the data) moves with it."""
    old = Path(data.data_dir) if data.data_dir else None
    options = dict(data.options)
    for key, value in options.items():
        if old is not None and isinstance(value, str) and Path(value).is_absolute() \
                and Path(value).is_relative_to(old):
            options[key] = str(new_dir / Path(value).relative_to(old))
    return data.model_copy(update={"data_dir": str(new_dir), "options": options})


def load_run(folder: str | Path, data_dir: str | Path | None = None, device: str = "cpu") -> Run:
    """Rebuild a saved run's model with its best weights (no training data needed), on
    `device` (auto, cpu, cuda, cuda:N).

    `data_dir` replaces the data folder recorded in the run (data moved since training)."""
    folder = Path(folder)
    weights = require_run_file(folder, BEST_WEIGHTS, "run (training has not finished)")
    config = parse_model(RunConfig, read_yaml(require_run_file(folder, CONFIG_FILE, "run")),
                         str(folder / CONFIG_FILE))
    if data_dir is not None:
        config = config.model_copy(update={"data": moved_data(config.data, Path(data_dir).resolve())})
    encoder = FeatureEncoder.load(require_run_file(folder, ENCODER_FILE, "run"))
    model = build_for(config, encoder)
    load_weights(model, weights)
    model.to(resolve_device(device)).eval()
    return Run(folder, config, encoder, model)


def ensemble_members(run: Run, folders: list[str | Path], device: str = "cpu") -> list[CTRModel]:
    """The other runs of an ensemble, loaded; each must encode the data exactly as `run` does
    (same task, same vocabularies), or its token ids would mean other values."""
    members = []
    for folder in folders:
        member = load_run(folder, device=device)
        if not member.encoder.same_state(run.encoder):
            raise DataError(f"ensemble member {folder}: its encoder differs from {run.folder}'s "
                            "(another task or other vocabularies); members must be runs of the same data")
        members.append(member.model)
    return members


def evaluate_run_inference(run: Run, dataset: EncodedDataset, options: "InferenceOptions",
                           splits: tuple[str, ...] = ("valid", "test"),
                           measure_latency: bool = True,
                           members: list[str | Path] = ()) -> dict[str, Any]:
    """A test-time strategy over a saved run; its FrequencyIndex is kept in the run folder.
    `members`: the folders of an ensemble's other runs."""
    from genctr.testtime.evaluate import evaluate_inference

    device = str(next(run.model.parameters()).device)
    imputer = None
    if options.impute == "denoiser":
        from genctr.pretrain.imputer import imputer_for_run

        imputer = imputer_for_run(run.config.init_from, run.encoder, device)
    return evaluate_inference(run.model, dataset, options, splits, measure_latency,
                              index_folder=run.folder, bf16=run.config.train.bf16,
                              members=ensemble_members(run, list(members), device), imputer=imputer)
