"""Trainer: fit a CTRModel with early stopping, LR decay on plateau, atomic checkpoints, resume.

The whole loop reads top to bottom in `Trainer.fit`. The Trainer owns everything a model
should not: optimizer, device, loss, regularisation, schedule, compilation and precision.
Determinism: the model is built after `torch.manual_seed(seed)`, epoch e shuffles with a
numpy generator seeded by (seed, e), and the torch RNG state (dropout) is checkpointed, so a
resumed run reaches the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from genctr.data.batches import Batch, batch_of, iterate_batches, prefetched, with_unknown
from genctr.data.encoded import EncodedSplit
from genctr.errors import ConfigError, DataError, GenctrError
from genctr.files import load_tensors, save_tensors_atomic
from genctr.metrics import auc, logloss
from genctr.nn.sparse import SparseDenseAdam, clip_gradients
from genctr.nn.subnormal import zero_subnormals
from genctr.models.base import CTRModel
from genctr.distributed import current as current_distributed
from genctr.runtime import DEVICE_HELP, DEVICE_PATTERN, Runtime, model_device, move_batch
from genctr.schema import Strict

CHECKPOINT = "checkpoint.pt"
BEST_WEIGHTS = "model.pt"
HISTORY = "history.jsonl"


class TrainConfig(Strict):
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(4096, ge=1)
    eval_batch_size: int = Field(65536, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    optimizer: Literal["adam", "adamw"] = Field("adam", description="adamw: decoupled weight "
                                                "decay (MAP's fine-tuning recipe)")
    weight_decay: float = Field(0.0, ge=0, description="adamw's decoupled weight decay")
    warmup_steps: int = Field(0, ge=0, description="linear learning-rate warm-up over the first "
                              "steps (fine-tuning a pre-trained model)")
    label_fraction: float = Field(1.0, gt=0, le=1, description="train on a seeded fraction of the "
                                  "labelled train rows (the label-scarce regime); valid and test "
                                  "stay whole")
    embedding_l2: float = Field(0.0, ge=0, description="λ: + λ/2·‖table‖² per step, FuxiCTR's "
                                "embedding_regularizer")
    embedding_l2_scope: Literal["table", "batch"] = Field(
        "table", description="table: the L2 over whole tables every step (FuxiCTR's); batch: over "
        "the rows the step looked up only, so a step's cost does not grow with the tables")
    sparse_embeddings: bool = Field(False, description="sparse gradients for the embedding "
                                    "tables, updated by lazy Adam (only the rows a step looked "
                                    "up), so a step's cost does not grow with the tables; needs "
                                    "embedding_l2_scope: batch (genctr.nn.sparse)")
    net_l2: float = Field(0.0, ge=0, description="λ/2·‖W‖² on every other weight matrix")
    grad_clip: float | None = Field(10.0, gt=0)
    monitor: Literal["auc", "logloss"] = "auc"
    patience: int = Field(2, ge=1)
    lr_decay: float = Field(0.1, gt=0, le=1, description="LR factor after an epoch without gain")
    min_lr: float = Field(1e-6, ge=0)
    field_dropout: float = Field(0.0, ge=0, lt=1, description="probability of replacing each "
                                 "field by its neutral embedding in a training step, so that "
                                 "test-time drops are familiar (then no longer training-free)")
    oov_dropout: float = Field(0.0, ge=0, lt=1, description="probability of replacing each "
                               "field's value by the out-of-vocabulary token in a training step "
                               "(a numeric field's by 'missing'), so that the OOV rows learn what "
                               "an unseen value, such as a cold user's id, should mean; without "
                               "it they keep their initial values when train has no unseen value")
    shuffle_block_rows: int | None = Field(None, ge=1, description="shuffle by blocks of this "
                                           "many consecutive rows (blocks in a seeded order, rows "
                                           "permuted inside each), for a train split larger than "
                                           "memory; None: one permutation of all rows")
    prefetch: int = Field(2, ge=0, description="batches gathered ahead by a background thread (0: off)")
    checkpoint_every_steps: int | None = Field(None, ge=1, description="also checkpoint every so "
                                               "many steps inside an epoch, so that --resume "
                                               "continues mid-epoch (long epochs)")
    seed: int = 2024
    compile: bool = False
    split_on_device: bool = Field(False, description="keep the whole encoded train split on the "
                                  "training device when it fits in half its free memory (batches "
                                  "gathered there by index, no host copies per step); else a note "
                                  "and batches copied from the host as usual")
    device: str = Field("auto", pattern=f"^({DEVICE_PATTERN})$", description=DEVICE_HELP)
    bf16: bool = False
    threads: int | None = Field(None, ge=1)
    progress: bool = True

    @model_validator(mode="after")
    def _decay_needs_adamw(self) -> "TrainConfig":
        if self.weight_decay and self.optimizer != "adamw":
            raise ValueError("weight_decay needs optimizer: adamw (Adam's coupled L2 fights its "
                             "adaptive step; use net_l2 / embedding_l2 with adam)")
        return self

    @model_validator(mode="after")
    def _sparse_needs_row_updates(self) -> "TrainConfig":
        if not self.sparse_embeddings:
            return self
        if self.embedding_l2 and self.embedding_l2_scope != "batch":
            raise ValueError("sparse_embeddings needs embedding_l2_scope: batch (an L2 over whole "
                             "tables touches every row at every step)")
        if self.field_dropout:
            raise ValueError("sparse_embeddings cannot be combined with field_dropout (a dropped "
                             "field's neutral embedding is a mean over its whole table)")
        return self


class TrainingDiverged(GenctrError):
    """The loss became NaN or infinite, or exploded; the last good checkpoint is kept."""


class DivergenceGuard:
    """Stops a run whose loss exploded: more than `factor` × the first loss of the run (a
    learning rate far too high can keep the loss finite, at 1e12, while nothing is learned)."""

    def __init__(self, first_loss: float | None = None, factor: float = 100.0) -> None:
        self.first_loss = first_loss
        self.factor = factor

    def check(self, loss: float) -> None:
        if not np.isfinite(loss):
            raise TrainingDiverged(f"loss became {loss}")
        if self.first_loss is None:
            self.first_loss = loss
        elif loss > self.factor * max(self.first_loss, 1e-6):
            raise TrainingDiverged(f"loss exploded to {loss:.4g}, more than {self.factor:g}x the "
                                   f"first loss {self.first_loss:.4g}")


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    best_metric: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0
    first_loss: float | None = None  # the divergence guard's reference
    history: list[dict[str, Any]] = field(default_factory=list)
    step_in_epoch: int = 0  # steps of the unfinished epoch `epoch` already taken (mid-epoch checkpoint)
    epoch_loss: float = 0.0  # their summed batch losses
    epoch_seconds: float = 0.0  # and their time


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def _is_better(metric: float, best: float | None, monitor: str) -> bool:
    if best is None:
        return True
    return metric > best if monitor == "auc" else metric < best


def predict_split(model: CTRModel, split: EncodedSplit, batch_size: int = 65536,
                  bf16: bool = False, drop: torch.Tensor | None = None) -> np.ndarray:
    """Click probabilities of every row, in order, in eval mode."""
    model.eval()
    device = model_device(model)  # the model's device: batches and drops move there
    out = []
    with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
        for start in range(0, len(split), batch_size):
            rows = slice(start, min(start + batch_size, len(split)))
            batch = move_batch(batch_of(split, rows), device)
            logits = model(batch, None if drop is None else drop[rows].to(device))
            out.append(torch.sigmoid(logits.float()).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def apply_step(optimizer: torch.optim.Optimizer, objective: torch.Tensor, parameters,
               grad_clip: float | None, after_backward: Callable[[], None] | None = None) -> None:
    """The one optimisation step of training and pre-training: a non-finite objective raises
    TrainingDiverged before the weights are touched; then zero, backward (`after_backward`:
    e.g. averaging gradients over processes), clip, step."""
    if not torch.isfinite(objective):
        raise TrainingDiverged(f"loss became {objective.item()}")
    optimizer.zero_grad(set_to_none=True)
    objective.backward()
    if after_backward is not None:
        after_backward()
    if grad_clip is not None:
        if isinstance(optimizer, SparseDenseAdam):
            clip_gradients(parameters, grad_clip)
        else:
            nn.utils.clip_grad_norm_(parameters, grad_clip)
    optimizer.step()


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load saved weights (never unpickling code); a file that does not fit is one line."""
    state = load_tensors(path, "weights file")
    try:
        model.load_state_dict(zero_subnormals(state))  # also runs saved before weights were zeroed
    except (RuntimeError, TypeError, AttributeError) as err:
        first = str(err).strip().splitlines()[0][:160]
        raise DataError(f"{path}: the weights do not fit this run's model ({first})") from None


def regularization(model: nn.Module, embedding_l2: float, net_l2: float,
                   looked_up: dict[nn.Embedding, list[torch.Tensor]] | None = None) -> torch.Tensor:
    """λ_e/2·Σ‖embedding table‖² + λ_n/2·Σ‖weight matrix‖² (biases and norms excluded).
    With `looked_up` (table -> the ids the step used; LookupRecorder), the embedding term covers
    those rows only, each once."""
    total = torch.zeros((), device=model_device(model))
    if embedding_l2 == 0 and net_l2 == 0:
        return total
    for module in model.modules():
        if isinstance(module, nn.Embedding) and embedding_l2:
            if looked_up is None:
                weight = module.weight
            elif module in looked_up:  # a lookup, so that a sparse table gets a sparse gradient
                weight = nn.functional.embedding(torch.unique(torch.cat(looked_up[module])),
                                                 module.weight, sparse=module.sparse)
            else:
                continue
            total = total + embedding_l2 / 2 * weight.pow(2).sum()
        elif isinstance(module, nn.Linear) and net_l2:
            total = total + net_l2 / 2 * module.weight.pow(2).sum()
    return total


class LookupRecorder:
    """Records the ids every nn.Embedding of a model looks up (forward pre-hooks), for the
    batch-scoped embedding L2; `clear()` after each step."""

    def __init__(self, model: nn.Module) -> None:
        self.looked_up: dict[nn.Embedding, list[torch.Tensor]] = {}
        self.handles = [module.register_forward_pre_hook(self._record)
                        for module in model.modules() if isinstance(module, nn.Embedding)]

    def _record(self, module: nn.Module, inputs: tuple) -> None:
        if module.training:  # training steps only, not the validation passes between epochs
            self.looked_up.setdefault(module, []).append(inputs[0].detach().reshape(-1))

    def clear(self) -> None:
        self.looked_up.clear()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class Trainer:
    def __init__(self, config: TrainConfig, run_dir: str | Path,
                 log: Callable[[str], None] = print) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.log = log
        self.runtime = Runtime.create(config.device, config.bf16, log)
        self.dist = current_distributed(self.runtime.device)
        self.lookups: LookupRecorder | None = None
        self.log = log if self.dist.is_main else (lambda line: None)
        torch.set_num_threads(config.threads or os.cpu_count() or 1)

    # ------------------------------------------------------------------------ the loop
    def fit(self, model: CTRModel, train: EncodedSplit, valid: EncodedSplit,
            resume: bool = False) -> TrainState:
        cfg = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        model.to(self.runtime.device)  # before the optimizer: its state lives with the weights
        self.lookups = (LookupRecorder(model) if cfg.embedding_l2 and cfg.embedding_l2_scope == "batch"
                        else None)
        if cfg.sparse_embeddings and self.dist.active:
            raise ConfigError("train.sparse_embeddings is not supported under torchrun yet: "
                              "train with dense embeddings there")
        optimizer = self.optimizer(model)
        state = TrainState()
        if resume and (self.run_dir / CHECKPOINT).is_file():
            state = self._load_checkpoint(model, optimizer)
            where = (f"at step {state.step_in_epoch} of epoch {state.epoch}" if state.step_in_epoch
                     else f"after epoch {state.epoch}")
            best = ("" if state.best_metric is None else
                    f" (best {cfg.monitor} {state.best_metric:.5f} at epoch {state.best_epoch})")
            self.log(f"resumed {where}{best}")
        forward = torch.compile(model) if cfg.compile else model
        if self.dist.active:  # gradients all-reduced; each rank's dropout draws its own masks
            forward = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.runtime.device] if self.runtime.is_cuda else None,
                find_unused_parameters=True)  # e.g. a learned neutral embedding without drops
        source = self.runtime.resident(train, "train split", self.log) if cfg.split_on_device else train
        while state.epoch < cfg.epochs and state.bad_epochs < cfg.patience:
            epoch = state.epoch
            if self.dist.active:  # each rank its own dropout masks; a resumed epoch draws the same
                torch.manual_seed(cfg.seed * 1009 + self.dist.rank + 7919 * epoch)
            train_loss, seconds = self._train_epoch(forward, model, optimizer, source, state)
            metrics = None
            if self.dist.is_main:  # valid scored once, by rank 0; every rank follows its verdict
                valid_prob = predict_split(model, valid, cfg.eval_batch_size, cfg.bf16)
                metrics = {"auc": auc(valid.label, valid_prob), "logloss": logloss(valid.label, valid_prob)}
            metrics = self.dist.broadcast(metrics)
            improved = _is_better(metrics[cfg.monitor], state.best_metric, cfg.monitor)
            if improved:
                state.best_metric, state.best_epoch, state.bad_epochs = metrics[cfg.monitor], epoch, 0
                if self.dist.is_main:
                    # the served weights: subnormal OOV rows zeroed (nn.subnormal)
                    self._save_atomic(zero_subnormals(model.state_dict()), BEST_WEIGHTS)
            else:
                state.bad_epochs += 1
                for group in optimizer.param_groups:
                    group["lr"] = max(group["lr"] * cfg.lr_decay, cfg.min_lr)
            record = {"epoch": epoch, "train_loss": train_loss, "valid_auc": metrics["auc"],
                      "valid_logloss": metrics["logloss"], "epoch_seconds": seconds,
                      "train_samples_per_s": len(train) / seconds,
                      "lr": optimizer.param_groups[0]["lr"], "improved": improved}
            state.history.append(record)
            state.epoch += 1
            if self.dist.is_main:
                with (self.run_dir / HISTORY).open("a") as handle:
                    handle.write(json.dumps(record) + "\n")
                self._save_checkpoint(model, optimizer, state)
            self.dist.barrier()
            self.log(f"epoch {epoch}: loss {train_loss:.5f}, valid auc {metrics['auc']:.5f} "
                     f"logloss {metrics['logloss']:.5f}, {seconds:.1f} s "
                     f"({len(train) / seconds:,.0f} samples/s){' *' if improved else ''}")
        self.dist.barrier()
        if self.lookups is not None:
            self.lookups.remove()
        load_weights(model, self.run_dir / BEST_WEIGHTS)
        return state

    def _train_epoch(self, forward, model: CTRModel, optimizer: torch.optim.Optimizer,
                     train: EncodedSplit | Batch, state: TrainState) -> tuple[float, float]:
        cfg = self.config
        epoch = state.epoch
        guard = DivergenceGuard(state.first_loss)
        model.train()
        total, batches = state.epoch_loss, state.step_in_epoch  # > 0: resumed mid-epoch
        steps = -(-len(train) // cfg.batch_size)
        started = time.perf_counter() - state.epoch_seconds
        order = iterate_batches(train, cfg.batch_size, shuffle=True, seed=cfg.seed * 100_003 + epoch,
                                block_rows=cfg.shuffle_block_rows, start_batch=batches)
        with self._progress(steps, epoch) as advance:
            for batch in prefetched(order, 0 if isinstance(train, Batch) else cfg.prefetch):
                rows = len(batch)
                if self.dist.active:  # this rank's part of the global batch
                    if rows < self.dist.world:
                        continue  # a last batch too small to give every rank a row: skipped by all
                    part = self.dist.shard(rows)
                    batch = batch.take(torch.arange(part.start, part.stop))
                batch = self.runtime.move(batch)
                self._warm_up(optimizer, epoch * steps + batches)
                try:
                    value = self.train_step(forward, model, optimizer, batch,
                                            share=len(batch) / rows).item()
                    guard.check(value)
                except TrainingDiverged as diverged:
                    kept = (f"the checkpoint after epoch {epoch - 1} is kept in {self.run_dir}"
                            if epoch > 0 else "no epoch had finished, so no checkpoint was saved")
                    raise TrainingDiverged(f"training diverged: {diverged} in epoch {epoch}, batch "
                                           f"{batches}; {kept}. Lower learning_rate.") from None
                state.first_loss = guard.first_loss
                total += value * len(batch) / rows  # this rank's share of the batch mean
                batches += 1
                advance(rows)
                if cfg.checkpoint_every_steps and batches % cfg.checkpoint_every_steps == 0 \
                        and batches < steps:
                    state.step_in_epoch, state.epoch_loss = batches, total
                    state.epoch_seconds = time.perf_counter() - started
                    if self.dist.is_main:
                        self._save_checkpoint(model, optimizer, state)
        state.step_in_epoch, state.epoch_loss, state.epoch_seconds = 0, 0.0, 0.0
        return self.dist.total(total) / max(batches, 1), time.perf_counter() - started

    def optimizer(self, model: CTRModel) -> torch.optim.Optimizer | SparseDenseAdam:
        """Adam (or AdamW) with its fused kernel (one pass per parameter, not ~10 ops; CPU and
        CUDA have it); with sparse_embeddings, lazy Adam for the tables beside it."""
        cfg = self.config
        if cfg.sparse_embeddings:
            dense = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
            options = {"weight_decay": cfg.weight_decay} if cfg.optimizer == "adamw" else {}
            return SparseDenseAdam(model, dense, cfg.learning_rate, fused=True, **options)
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate,
                                     weight_decay=cfg.weight_decay, fused=True)
        return torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, fused=True)

    def _warm_up(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Linear warm-up: step s of the first `warmup_steps` runs at (s+1)/warmup of the LR."""
        warmup = self.config.warmup_steps
        if warmup and step < warmup:
            for group in optimizer.param_groups:
                group["lr"] = self.config.learning_rate * (step + 1) / warmup

    def train_step(self, forward, model: CTRModel, optimizer: torch.optim.Optimizer,
                   batch, share: float = 1.0) -> torch.Tensor:
        """One optimisation step; returns the data loss (detached). Raises TrainingDiverged,
        before touching the weights, when the objective is not finite. Under DDP `share` is
        this rank's part of the global batch: its loss is weighted by share·world, so that the
        average DDP takes is the whole batch's mean loss.
        benchmarks/step_profile.py profiles exactly this."""
        cfg = self.config
        drop = (torch.rand(len(batch), model.embedding.num_fields, device=batch.label.device)
                < cfg.field_dropout if cfg.field_dropout else None)
        if cfg.oov_dropout:
            fields = model.embedding.fields
            unknown = torch.rand(len(batch), len(fields), device=batch.label.device) < cfg.oov_dropout
            batch = with_unknown(batch, unknown, [f.name for f in fields])
        with self.runtime.autocast():
            logits = forward(batch, drop)
        loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), batch.label)
        looked_up = self.lookups.looked_up if self.lookups is not None else None
        objective = loss * (share * self.dist.world) + regularization(model, cfg.embedding_l2,
                                                                      cfg.net_l2, looked_up)
        if self.lookups is not None:
            self.lookups.clear()
        apply_step(optimizer, objective, model.parameters(), cfg.grad_clip)
        return loss.detach()

    def _progress(self, steps: int, epoch: int):
        """A rich progress bar with samples/s on a terminal; silent otherwise (CI, logs)."""
        if not (self.config.progress and sys.stderr.isatty()):
            return contextlib.nullcontext(lambda n: None)

        @contextlib.contextmanager
        def bar():
            columns = (TextColumn(f"epoch {epoch}"), BarColumn(), TextColumn("{task.fields[rate]}"),
                       TimeRemainingColumn())
            with Progress(*columns, transient=True) as progress:
                task = progress.add_task("train", total=steps, rate="")
                started, seen = time.perf_counter(), 0

                def advance(n: int) -> None:
                    nonlocal seen
                    seen += n
                    rate = seen / max(time.perf_counter() - started, 1e-9)
                    progress.update(task, advance=1, rate=f"{rate:,.0f} samples/s")

                yield advance

        return bar()

    # ----------------------------------------------------------------- checkpoints
    def _save_atomic(self, obj: Any, name: str) -> None:
        save_tensors_atomic(obj, self.run_dir / name)

    def _save_checkpoint(self, model: CTRModel, optimizer: torch.optim.Optimizer,
                         state: TrainState) -> None:
        self._save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                           "state": state.__dict__, **self.runtime.rng_state()}, CHECKPOINT)

    def _load_checkpoint(self, model: CTRModel, optimizer: torch.optim.Optimizer) -> TrainState:
        path = self.run_dir / CHECKPOINT
        saved = load_tensors(path, "checkpoint")
        try:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            self.runtime.set_rng_state(saved)
            state = TrainState(**saved["state"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            first = str(err).strip().splitlines()[0][:160]
            raise DataError(f"{path}: the checkpoint does not fit this run's model ({first})") from None
        # history.jsonl may hold an epoch written after this checkpoint: keep the file in step
        if self.dist.is_main:
            lines = [json.dumps(r) for r in state.history]
            (self.run_dir / HISTORY).write_text("".join(line + "\n" for line in lines))
        return state
