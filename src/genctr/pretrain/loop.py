"""`genctr pretrain CONFIG`: generative pre-training, logged per field, saved as a run folder.

The folder holds config.yaml, encoder.json, checkpoint.pt (after every epoch: weights,
optimizer, RNG states; `--resume` continues from it), pretrain.pt (the final network weights),
history.jsonl (per epoch: seconds, per-field loss, accuracy and weight), trajectory.jsonl (the
per-field weights and losses every `log_every` steps), fields.md (the summary table: field,
kind, vocabulary size, final loss, accuracy, weight) and field_weights.png.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
import yaml
from pydantic import Field, field_validator
from torch import nn

from genctr.config import DATA_RESUMABLE_KEYS, DataConfig, resolve_paths
from genctr.data.batches import iterate_batches
from genctr.data.encode import FeatureEncoder
from genctr.data.labelled import labels_held_back
from genctr.data.store import EncodedDataset
from genctr.errors import DataError
from genctr.files import load_tensors, read_jsonl, save_tensors_atomic
from genctr.nn.embedding import FieldInfo, field_infos
from genctr.errors import ConfigError
from genctr.pretrain.backbone import BackboneNet
from genctr.pretrain.balance import BalancerOptions
from genctr.pretrain.corruption import CorruptionOptions
from genctr.pretrain.denoiser import DenoiserOptions
from genctr.pretrain.heads import HeadOptions
from genctr.pretrain.network import GenerativeNet
from genctr.schema import Strict, parse_model, read_yaml
from genctr.distributed import Distributed, current as current_distributed
from genctr.rundir import check_config_unchanged, open_run_folder_on_ranks, require_run_file, validate_run_name
from genctr.runtime import DEVICE_HELP, DEVICE_PATTERN, Runtime, resolve_device
from genctr.train import (DivergenceGuard, TrainingDiverged, apply_step, load_weights,
                          regularization, seed_everything)

CONFIG_FILE = "config.yaml"
ENCODER_FILE = "encoder.json"
WEIGHTS_FILE = "pretrain.pt"
CHECKPOINT_FILE = "checkpoint.pt"
HISTORY_FILE = "history.jsonl"
TRAJECTORY_FILE = "trajectory.jsonl"
FIELDS_FILE = "fields.json"


class PretrainOptions(Strict):
    denoiser: DenoiserOptions = Field(default_factory=DenoiserOptions)
    corruption: CorruptionOptions = Field(default_factory=CorruptionOptions)
    heads: HeadOptions = Field(default_factory=HeadOptions)
    balancer: BalancerOptions = Field(default_factory=BalancerOptions)
    objective: Literal["mfp", "rfd"] = Field("mfp", description="masked field prediction (the "
                                             "diffusion objective) or replaced field detection "
                                             "(model backbones only)")
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(2048, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    grad_clip: float | None = Field(10.0, gt=0)
    embedding_l2: float = Field(0.0, ge=0, description="λ/2·‖field tables‖² per step, as "
                                "`train.embedding_l2`: keeps the pre-trained tables at the scale "
                                "a fine-tuning with embedding L2 holds them (0: none)")
    label_fraction: float | None = Field(
        None, gt=0, le=1, description="label-aware pre-training of a model backbone: the labels "
        "of this seeded fraction of the train rows (the rows a fine-tuning with the same "
        "train.label_fraction and seed trains on) are one more target, predicted from the "
        "corrupted fields by the backbone's own output layer and weighed by the balancer like "
        "a field; the other rows' labels are never read. Unset: no label is used")
    seed: int = 2024
    device: str = Field("auto", pattern=f"^({DEVICE_PATTERN})$", description=DEVICE_HELP)
    bf16: bool = False
    threads: int | None = Field(None, ge=1)
    log_every: int = Field(20, ge=1, description="steps between trajectory records")


class PretrainConfig(Strict):
    name: str | None = None
    data: DataConfig = Field(description="required: never falls back to synthetic data")
    pretrain: PretrainOptions = Field(default_factory=PretrainOptions)
    output_dir: str = "runs"

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str | None) -> str | None:
        return None if value is None else validate_run_name(value)

    def run_name(self) -> str:
        return self.name or f"{self.data.source}-pretrain-{self.pretrain.balancer.name}-seed{self.pretrain.seed}"


def load_pretrain_config(path: str | Path) -> PretrainConfig:
    return parse_model(PretrainConfig, resolve_paths(read_yaml(path), path), str(path))


def build_network(fields: list[FieldInfo], options: PretrainOptions) -> GenerativeNet | BackboneNet:
    """The transformer denoiser (GenerativeNet) or a model backbone (BackboneNet)."""
    seed_everything(options.seed)
    denoiser = options.denoiser
    if denoiser.backbone == "transformer":
        if options.objective != "mfp":
            raise ConfigError("pretrain.objective rfd needs a model backbone as the denoiser "
                              "(pretrain.denoiser.backbone: dnn, dcnv2, ...)")
        if options.label_fraction is not None:
            raise ConfigError("pretrain.label_fraction is for model backbones; the transformer "
                              "denoiser reads the label as a token of every row")
        return GenerativeNet(fields, denoiser, options.heads, options.balancer, options.corruption)
    return BackboneNet(fields, denoiser.backbone, denoiser.backbone_options, options.objective,
                       options.heads, options.balancer, options.corruption, denoiser.input_scaling,
                       denoiser.mask, label_target=options.label_fraction is not None)


# keys of a pre-training's config that may change when it is continued with --resume
RESUMABLE_KEYS = DATA_RESUMABLE_KEYS | {"name", "output_dir", "pretrain.epochs", "pretrain.threads",
                                        "pretrain.device", "pretrain.log_every"}


def pretrain_run(config: PretrainConfig, folder: str | Path | None = None,
                 dataset: EncodedDataset | None = None, log: Callable[[str], None] = print,
                 overwrite: bool = False, resume: bool = False
                 ) -> tuple[Path, GenerativeNet | BackboneNet, list[dict]]:
    """Pre-train on the train split; returns the folder, the network and the epoch history.

    Data are checked before any folder is touched; an existing pre-training is continued with
    `resume` (to the same weights as an uninterrupted run) or replaced with `overwrite`, and
    only once the new one has succeeded (genctr.rundir)."""
    target = Path(folder or Path(config.output_dir) / config.run_name())
    ranks = current_distributed(resolve_device(config.pretrain.device))
    log = log if ranks.is_main else (lambda line: None)
    with ranks.main_first():  # rank 0 writes the encoded cache, the others read it
        dataset = dataset or config.data.prepare()
    with open_run_folder_on_ranks(target, "pretrain", resume, overwrite, ranks) as (work, existing):
        resuming = existing and (work / CHECKPOINT_FILE).is_file()
        if resuming:
            saved = read_yaml(require_run_file(work, CONFIG_FILE, "pre-training run"))
            check_config_unchanged(saved, config, RESUMABLE_KEYS, work)
        net, history = _pretrain_into(work, config, dataset, log, resuming, ranks)
    return target, net, history


def _pretrain_into(folder: Path, config: PretrainConfig, dataset: EncodedDataset,
                   log: Callable[[str], None], resuming: bool, ranks: Distributed = Distributed()
                   ) -> tuple[GenerativeNet | BackboneNet, list[dict]]:
    """Under torchrun each rank takes its shard of every global batch with its own masks, the
    gradients are averaged over the ranks (each rank's balanced loss is an estimate of the
    batch's), the per-field statistics summed over the ranks, and rank 0 writes."""
    options = config.pretrain
    torch.set_num_threads(options.threads or os.cpu_count() or 1)
    runtime = Runtime.create(options.device, options.bf16, log)
    net = build_network(field_infos(dataset.encoder), options).to(runtime.device)
    s_params = [net.balancer.log_difficulty] if net.balancer.log_difficulty is not None else []
    others = [p for p in net.parameters() if all(p is not s for s in s_params)]
    optimizer = torch.optim.Adam([{"params": others, "lr": options.learning_rate},
                                  {"params": s_params, "lr": options.balancer.s_learning_rate}])
    names = net.field_names()
    generator = torch.Generator().manual_seed(options.seed)
    state = {"epoch": 0, "step": 0, "first_loss": None, "history": []}
    if resuming:
        state = _load_checkpoint(folder, net, optimizer, generator, runtime, rewrite_logs=ranks.is_main)
        log(f"resumed pre-training after {state['epoch']} epoch(s)")
    elif ranks.is_main:  # a fresh start, perhaps in this run's own folder after a kill in its first epoch
        for stale in (HISTORY_FILE, TRAJECTORY_FILE):
            (folder / stale).unlink(missing_ok=True)
        _write_config(folder, config)
        dataset.encoder.save(folder / ENCODER_FILE)
    guard = DivergenceGuard(state["first_loss"])
    history, step = state["history"], state["step"]
    train = dataset.splits["train"]
    if options.label_fraction is not None:
        train = labels_held_back(train, options.label_fraction, options.seed)
    for epoch in range(state["epoch"], options.epochs):
        net.train()
        sums = {"loss": np.zeros(len(names)), "accuracy": np.zeros(len(names)), "count": np.zeros(len(names))}
        started = time.perf_counter()
        if ranks.active:  # each rank its own masks and dropout; a resumed epoch draws the same
            generator.manual_seed(options.seed * 1009 + ranks.rank + 7919 * epoch)
            torch.manual_seed(options.seed * 2029 + ranks.rank + 7919 * epoch)
        for batch in iterate_batches(train, options.batch_size, shuffle=True, seed=options.seed * 7919 + epoch):
            if ranks.active:
                if len(batch) < ranks.world:
                    continue  # too small to give every rank a row: skipped by all
                part = ranks.shard(len(batch))
                batch = batch.take(torch.arange(part.start, part.stop))
            batch = runtime.move(batch)
            masks = net.masks(batch, generator).to(runtime.device)  # drawn on the host generator
            with runtime.autocast():
                loss, weights, field_losses = net.losses(batch, masks)
            penalty = regularization(net.embedding, options.embedding_l2, 0.0)
            try:
                apply_step(optimizer, loss + penalty, others, options.grad_clip,
                           after_backward=lambda: ranks.average_gradients(net.parameters()))
                guard.check(float(loss.detach()))
            except TrainingDiverged as diverged:
                kept = (f"the checkpoint after epoch {epoch - 1} is kept" if epoch > 0
                        else "no epoch had finished, so nothing was saved")
                raise TrainingDiverged(f"pre-training diverged: {diverged} in epoch {epoch}, step "
                                       f"{step}; {kept}. Lower pretrain.learning_rate") from None
            present = field_losses.present.cpu().numpy()
            losses = field_losses.losses.detach().cpu().numpy()
            sums["loss"][present] += losses[present]
            sums["accuracy"][present] += field_losses.accuracy.cpu().numpy()[present]
            sums["count"][present] += 1
            if step % options.log_every == 0 and ranks.is_main:  # rank 0's shard
                _append(folder / TRAJECTORY_FILE, {
                    "step": step, "epoch": epoch, "loss": float(loss.detach()),
                    "field_loss": _by_name(names, losses, present),
                    "weight": _by_name(names, net.balancer.field_weights(weights)),
                })
            step += 1
        seconds = time.perf_counter() - started
        sums = {k: ranks.total_array(v) for k, v in sums.items()}
        count = np.maximum(sums["count"], 1)
        record = {"epoch": epoch, "epoch_seconds": seconds, "samples_per_s": len(train) / seconds,
                  "field_loss": _by_name(names, sums["loss"] / count, sums["count"] > 0),
                  "field_accuracy": _by_name(names, sums["accuracy"] / count, sums["count"] > 0),
                  "weight": _by_name(names, net.balancer.field_weights(weights)),
                  "log_difficulty": _by_name(names, net.balancer.log_difficulties())}
        history.append(record)
        state = {"epoch": epoch + 1, "step": step, "first_loss": guard.first_loss, "history": history}
        if ranks.is_main:
            _append(folder / HISTORY_FILE, record)
            save_tensors_atomic({"net": net.state_dict(), "optimizer": optimizer.state_dict(),
                                 "state": state, "mask_rng": generator.get_state(),
                                 **runtime.rng_state()}, folder / CHECKPOINT_FILE)
        ranks.barrier()
        log(f"pre-training epoch {epoch}: {seconds:.1f} s; field loss " + ", ".join(
            f"{k} {v:.3f}" for k, v in record["field_loss"].items()))
    if ranks.is_main:
        if resuming:  # only now, with the checkpoint loaded: the allowed keys may have changed
            _write_config(folder, config)
        save_tensors_atomic(net.state_dict(), folder / WEIGHTS_FILE)
        write_field_summary(folder, net, history)
    ranks.barrier()
    return net, history


def _write_config(folder: Path, config: PretrainConfig) -> None:
    (folder / CONFIG_FILE).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


def _load_checkpoint(folder: Path, net: nn.Module, optimizer: torch.optim.Optimizer,
                     generator: torch.Generator, runtime: Runtime, rewrite_logs: bool = True) -> dict:
    """Restore weights, optimizer, both RNGs and the loop state; history and trajectory files
    are cut back to the checkpoint (a kill mid-epoch may have appended past it)."""
    path = folder / CHECKPOINT_FILE
    saved = load_tensors(path, "checkpoint")
    try:
        net.load_state_dict(saved["net"])
        optimizer.load_state_dict(saved["optimizer"])
        runtime.set_rng_state(saved)
        generator.set_state(saved["mask_rng"])
        state = dict(saved["state"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0][:160]
        raise DataError(f"{path}: the checkpoint does not fit this pre-training ({first})") from None
    if not rewrite_logs:  # a torchrun rank other than 0 reads, never writes
        return state
    (folder / HISTORY_FILE).write_text("".join(json.dumps(r) + "\n" for r in state["history"]))
    trajectory = folder / TRAJECTORY_FILE
    if trajectory.is_file():
        kept = [line for line in trajectory.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] < state["step"]]
        trajectory.write_text("".join(line + "\n" for line in kept))
    return state


def _by_name(names: list[str], values: np.ndarray, present: np.ndarray | None = None) -> dict:
    return {n: float(v) for i, (n, v) in enumerate(zip(names, values)) if present is None or present[i]}


def _append(path: Path, record: dict) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def write_field_summary(folder: Path, net: GenerativeNet, history: list[dict]) -> None:
    """fields.md + fields.json: per field kind, vocabulary, final loss/accuracy/weight; and the
    PNG of the weight and loss trajectories."""
    from genctr.plots import plot_field_trajectories

    final = history[-1]
    rows = []
    for info in net.fields:
        rows.append({"field": info.name, "kind": info.kind.value, "vocabulary": info.vocab_size,
                     "head": net.heads.kind(info)})
    rows.append({"field": "label", "kind": "label", "vocabulary": 2, "head": "softmax"})
    for row in rows:
        name = row["field"]
        row |= {"final_loss": final["field_loss"].get(name), "final_accuracy": final["field_accuracy"].get(name),
                "final_weight": final["weight"].get(name), "log_difficulty": final["log_difficulty"].get(name)}
    (folder / FIELDS_FILE).write_text(json.dumps(rows, indent=1))
    lines = [f"# Pre-training fields ({net.balancer.options.name})", "",
             "| field | kind | vocabulary | head | final loss | final accuracy | final weight | s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
        lines.append(f"| {r['field']} | {r['kind']} | {r['vocabulary']:,} | {r['head']} | "
                     f"{fmt(r['final_loss'])} | {fmt(r['final_accuracy'])} | {fmt(r['final_weight'])} | "
                     f"{fmt(r['log_difficulty'])} |")
    (folder / "fields.md").write_text("\n".join(lines) + "\n")
    trajectory = read_jsonl(folder / TRAJECTORY_FILE)
    plot_field_trajectories(trajectory, folder / "field_weights.png",
                            f"{net.balancer.options.name}: per-field weight and loss")


def final_field_weights(folder: str | Path) -> dict[str, float]:
    """field -> final loss weight of a pre-training run ({} when the run left no summary)."""
    path = Path(folder) / FIELDS_FILE
    if not path.is_file():
        return {}
    return {row["field"]: row["final_weight"] for row in json.loads(path.read_text())}


def load_pretrained(folder: str | Path) -> tuple[PretrainConfig, FeatureEncoder, GenerativeNet]:
    """A finished pre-training run: its config, encoder and network (weights loaded)."""
    folder = Path(folder)
    weights = require_run_file(folder, WEIGHTS_FILE, "pre-training run (it has not finished)")
    config = parse_model(PretrainConfig, read_yaml(require_run_file(folder, CONFIG_FILE, "pre-training run")),
                         str(folder / CONFIG_FILE))
    encoder = FeatureEncoder.load(require_run_file(folder, ENCODER_FILE, "pre-training run"))
    net = build_network(field_infos(encoder), config.pretrain)
    load_weights(net, weights)
    return config, encoder, net
