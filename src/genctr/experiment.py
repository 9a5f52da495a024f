"""Experiment matrices: tasks × models × seeds (× inference strategies), each result a JSONL record.

`genctr run EXPERIMENT.yaml` trains every cell not yet recorded (so a killed matrix resumes
where it stopped), each in its own process (clean peak-memory measurement, no state shared
between cells), and appends one record per cell in the results format of BENCHMARKS.md.
With an `inference` matrix, every strategy not yet recorded is then evaluated on each cell's
saved run; a cell whose folder already holds a finished run (trained by this experiment or by
another with the same name and output_dir) is not trained again.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import yaml
import numpy as np
from pydantic import Field, field_validator, model_validator

from genctr.config import DataConfig, RunConfig, resolve_data_paths
from genctr.errors import ConfigError, GenctrError
from genctr.files import append_jsonl, check_writable, read_jsonl, results_lock
from genctr.models import model_options
from genctr.pretrain.loop import WEIGHTS_FILE, PretrainConfig, PretrainOptions, final_field_weights
from genctr.provenance import git_commit, machine, now_iso
from genctr.schema import Strict, parse_model, read_yaml
from genctr.testtime.inference import InferenceOptions
from genctr.runs import CONFIG_FILE, METRICS_FILE
from genctr.train import BEST_WEIGHTS, HISTORY, TrainConfig


ENSEMBLES = ("ensemble", "selective_ensemble")


class FinetuneSpec(Strict):
    """A model of the matrix fine-tuned from pre-training runs: one cell per label ('none':
    the same model from scratch)."""

    pretrain: list[str]
    transfer: Literal["full", "embedding", "frozen_embedding", "auto"] = "full"
    freeze_embeddings: bool = False


class ExperimentConfig(Strict):
    name: str
    results: str = Field(description="JSONL file the records are appended to")
    output_dir: str = "runs"
    tasks: dict[str, DataConfig]
    models: dict[str, dict[str, Any]] = Field(description="record name -> {name: backbone, options}")
    seeds: list[int] = [1, 2, 3]
    train: TrainConfig = Field(default_factory=TrainConfig)
    model_train: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per model: train keys overriding `train`")
    inference: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="variant name -> inference options (genctr.testtime); "
        "`paths`, `budget` and `members` may be lists, one record per value; an ensemble's other "
        "members are the runs of the cell's next seeds (in `seeds` order, wrapping round)")
    latency: bool = Field(True, description="time p50/p99 latency of each inference strategy")
    pretrain: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="pre-training label -> pretrain options (genctr pretrain; "
        "the seed is the cell's)")
    finetune: dict[str, FinetuneSpec] = Field(
        default_factory=dict, description="model label -> the pre-trainings it is fine-tuned from")
    pretrain_experiment: str | None = Field(
        None, description="take (and, where missing, make) the pre-training runs in this other "
        "experiment's folders under the same output_dir, so that one pre-training serves several "
        "experiments; its `pretrain` entries must be the same")

    @field_validator("models")
    @classmethod
    def _valid_models(cls, models: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for label, spec in models.items():
            spec.setdefault("name", label)
            model_options(spec["name"], {k: v for k, v in spec.items() if k != "name"})
        return models

    @field_validator("inference")
    @classmethod
    def _valid_inference(cls, entries: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for variant, options in entries.items():
            for expanded in _expand(options):
                parse_model(InferenceOptions, expanded, f"inference.{variant}")
        return entries

    @field_validator("pretrain")
    @classmethod
    def _valid_pretrain(cls, entries: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for label, options in entries.items():
            parse_model(PretrainOptions, options, f"pretrain.{label}")
        return entries

    @model_validator(mode="after")
    def _finetune_refers_to_known_names(self) -> "ExperimentConfig":
        for model, spec in self.finetune.items():
            if model not in self.models:
                raise ValueError(f"finetune.{model}: no such model in `models`")
            for label in spec.pretrain:
                if label != "none" and label not in self.pretrain:
                    raise ValueError(f"finetune.{model}: no pre-training '{label}' in `pretrain`")
        return self

    @model_validator(mode="after")
    def _ensembles_fit_the_seeds(self) -> "ExperimentConfig":
        for variant, options in self.inference_cells():
            if options.strategy in ENSEMBLES and options.members > len(self.seeds):
                raise ValueError(f"inference.{variant}: members {options.members} needs at least "
                                 f"that many seeds (the members are the cell's other seeds), got {len(self.seeds)}")
        return self

    def member_folders(self, cell: tuple[str, str, int, str], options: InferenceOptions) -> list[Path]:
        """The other runs of a cell's ensemble: the same task, model and pre-training at the
        next seeds; empty for a strategy that is no ensemble."""
        if options.strategy not in ENSEMBLES:
            return []
        task, model, seed, pretrain = cell
        at = self.seeds.index(seed)
        others = [self.seeds[(at + k) % len(self.seeds)] for k in range(1, options.members)]
        return [self.run_folder(task, model, other, pretrain) for other in others]

    def inference_cells(self) -> list[tuple[str, InferenceOptions]]:
        """(variant, options) for every inference entry and every listed paths/budget value."""
        return [(variant, InferenceOptions.model_validate(expanded))
                for variant, options in self.inference.items() for expanded in _expand(options)]

    def cells(self) -> list[tuple[str, str, int, str]]:
        """(task, model, seed, pre-training label or 'none')."""
        return [(t, m, s, p) for t in self.tasks for m in self.models for s in self.seeds
                for p in (self.finetune[m].pretrain if m in self.finetune else ["none"])]

    @property
    def pretrain_owner(self) -> str:
        """The experiment whose folders hold the pre-training runs."""
        return self.pretrain_experiment or self.name

    def pretrain_folder(self, task: str, label: str, seed: int) -> Path:
        return Path(self.output_dir) / self.pretrain_owner / task / f"pretrain-{label}" / f"seed{seed}"

    def run_folder(self, task: str, model: str, seed: int, pretrain: str = "none") -> Path:
        tuned = pretrain != "none"
        return Path(self.output_dir) / self.name / task / f"{model}{'+' + pretrain if tuned else ''}" / f"seed{seed}"

    def pretrain_config(self, task: str, label: str, seed: int) -> PretrainConfig:
        options = self.pretrain[label] | {"seed": seed}
        return PretrainConfig(name=f"{self.pretrain_owner}.{task}.pretrain-{label}.seed{seed}",
                              data=self.tasks[task], pretrain=options, output_dir=self.output_dir)

    def run_config(self, task: str, model: str, seed: int, pretrain: str = "none") -> RunConfig:
        train = self.train.model_dump() | self.model_train.get(model, {}) | {"seed": seed,
                                                                            "progress": False}
        tuned = pretrain != "none"
        init_from = str(self.pretrain_folder(task, pretrain, seed).resolve()) if tuned else None
        return RunConfig(name=f"{self.name}.{task}.{model}{'+' + pretrain if tuned else ''}.seed{seed}",
                         data=self.tasks[task], model=self.models[model],
                         train=TrainConfig.model_validate(train), output_dir=self.output_dir,
                         init_from=init_from,
                         transfer=self.finetune[model].transfer if tuned else "full",
                         freeze_embeddings=tuned and self.finetune[model].freeze_embeddings)


@dataclass(frozen=True)
class CellFilter:
    """The part of a matrix to run now (`genctr run --model/--seed/--pretrain`), so that the
    cells that matter first can run first; an empty tuple keeps every value. Records, folders
    and ensembles' members are those of the whole matrix."""

    models: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()
    pretrains: tuple[str, ...] = ()

    def check(self, experiment: "ExperimentConfig") -> None:
        """Every named model, seed and pre-training must be in the matrix (a typo runs nothing)."""
        known = {"--model": set(experiment.models), "--seed": set(experiment.seeds),
                 "--pretrain": {"none", *experiment.pretrain}}
        for option, values in (("--model", self.models), ("--seed", self.seeds),
                               ("--pretrain", self.pretrains)):
            unknown = [v for v in values if v not in known[option]]
            if unknown:
                raise ConfigError(f"{option} {', '.join(map(str, unknown))}: not in the experiment "
                                  f"(it has {', '.join(map(str, sorted(known[option])))})")

    def keeps(self, cell: tuple[str, str, int, str]) -> bool:
        _, model, seed, pretrain = cell
        return ((not self.models or model in self.models) and (not self.seeds or seed in self.seeds)
                and (not self.pretrains or pretrain in self.pretrains))


def _expand(options: dict[str, Any]) -> list[dict[str, Any]]:
    """One options dict per value of a listed `paths`, `budget` or `members`."""
    expanded = [dict(options)]
    for key in ("paths", "budget", "members"):
        if isinstance(options.get(key), list):
            expanded = [e | {key: value} for e in expanded for value in options[key]]
    return expanded


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Tasks' data paths resolve against the experiment file's folder (as in a run config);
    `results` and `output_dir` against the working directory."""
    data = read_yaml(path)
    if isinstance(data, dict) and isinstance(data.get("tasks"), dict):
        base = Path(path).resolve().parent
        data = data | {"tasks": {task: resolve_data_paths(spec, base) if isinstance(spec, dict) else spec
                                 for task, spec in data["tasks"].items()}}
    return parse_model(ExperimentConfig, data, str(path))


def recorded(results: Path, experiment: str) -> tuple[set[tuple], set[tuple]]:
    """The experiment's recorded training cells (task, model, seed, pretrain) and inference
    cells (the same + inference, variant), from one read of the results file."""
    records = read_jsonl(results)
    ours = [r for r in records if r.get("experiment") == experiment]
    cell = lambda r: (r["task"], r["model"], r["seed"], r.get("pretrain", "none"))  # noqa: E731
    return ({cell(r) for r in ours if "variant" not in r},
            {cell(r) + (r["inference"], r["variant"]) for r in ours if "variant" in r})


def pretrain_fields(config: RunConfig) -> dict[str, Any]:
    """The record keys of a fine-tuned run: its pre-training run, that run's median epoch
    seconds and final per-field loss weights (nothing for a run trained from scratch); the
    record carries them so a report needs no run folder."""
    if not config.init_from:
        return {}
    seconds = [r["epoch_seconds"] for r in read_jsonl(Path(config.init_from) / HISTORY)]
    pretrained = yaml.safe_load((Path(config.init_from) / "config.yaml").read_text())["pretrain"]
    transfer = transfer_label(config, pretrained["denoiser"].get("backbone", "transformer"))
    fields = {"pretrain_epoch_seconds": float(np.median(seconds)), "pretrain_run": config.init_from,
              "pretrain_field_weights": final_field_weights(config.init_from),
              "denoiser": pretrained["denoiser"].get("backbone", "transformer"),
              "objective": pretrained.get("objective", "mfp"), "transfer": transfer,
              "pretrain_epochs": pretrained["epochs"]}
    if pretrained.get("label_fraction") is not None:  # a label-aware pre-training
        fields["pretrain_label_fraction"] = pretrained["label_fraction"]
    return fields


def transfer_label(config: RunConfig, denoiser: str) -> str:
    """What a fine-tuned run really received: full, embedding or frozen_embedding (full
    transfer only reaches hetegen and the denoiser's own backbone; `+frozen_embedding` when
    `freeze_embeddings` was set on a full transfer). `config` is the run's effective config,
    so `auto` is already resolved."""
    full = config.transfer == "full" and config.model_name in ("hetegen", denoiser)
    if full:
        return "full+frozen_embedding" if config.freeze_embeddings else "full"
    frozen = config.freeze_embeddings or config.transfer == "frozen_embedding"
    return "frozen_embedding" if frozen else "embedding"


def record_for(task: str, model: str, seed: int, config: RunConfig, metrics: dict[str, Any],
               experiment: str, run_dir: Path, commit: str, pretrain: str = "none") -> dict[str, Any]:
    test, training = metrics["test"], metrics["training"]
    return {
        "task": task, "model": model, "pretrain": pretrain, **pretrain_fields(config),
        "inference": "plain", "seed": seed,
        "test_auc": test["auc"], "test_logloss": test["logloss"], "test_gauc": test.get("gauc"),
        "valid_auc": metrics["valid"]["auc"], "segments": test["segments"],
        "calibration": {"predicted_over_observed": test["predicted_over_observed"],
                        "ece": test["ece"]},
        "epochs": training["epochs"], "best_epoch": training["best_epoch"],
        "train_samples_per_s": training["train_samples_per_s"],
        "epoch_seconds": training["epoch_seconds"], "peak_rss_mb": training["peak_rss_mb"],
        "experiment": experiment, "run_dir": str(run_dir),
        "config": {"model": config.model, "train": config.train.model_dump(mode="json")},
        "commit": commit, "machine": machine(), "finished_at": now_iso(),
    }


def inference_record(task: str, model: str, seed: int, pretrain: str, variant: str,
                     result: dict[str, Any], options: InferenceOptions, experiment: str,
                     run_dir: Path, commit: str, pretrained: dict[str, Any]) -> dict[str, Any]:
    test, valid = result["test"], result["valid"]
    latency = result.get("latency", {})
    return {
        "task": task, "model": model, "pretrain": pretrain, **pretrained, "inference": result["inference"],
        "variant": variant, "strategy": result["strategy"], "seed": seed, "test_auc": test["auc"],
        "test_logloss": test["logloss"],
        "test_gauc": test.get("gauc"), "valid_auc": valid["auc"], "valid_logloss": valid["logloss"],
        "segments": test["segments"],
        "calibration": {"predicted_over_observed": test["predicted_over_observed"], "ece": test["ece"]},
        "avg_cost": test["avg_cost"], "valid_avg_cost": valid["avg_cost"], "max_cost": test["max_cost"],
        "latency_ms_p50": latency.get("single_p50_ms"), "latency_ms_p99": latency.get("single_p99_ms"),
        "latency": latency, "test_seconds": test["seconds"],
        **{k: result[k] for k in ("uttsi", "temperature", "index") if k in result},
        "options": options.model_dump(mode="json"), "experiment": experiment, "run_dir": str(run_dir),
        "commit": commit, "machine": machine(), "finished_at": now_iso(),
    }


def run_inference_cells(experiment: ExperimentConfig, cell: tuple[str, str, int, str],
                        run_dir: Path, done: set, datasets: dict, log: Callable[[str], None],
                        commit: str) -> int:
    """Evaluate every inference variant not yet recorded on one cell's saved run."""
    from genctr.runs import evaluate_run_inference, load_run

    task, model, seed, pretrain = cell
    todo = [(v, o) for v, o in experiment.inference_cells()
            if (task, model, seed, pretrain, o.label(), v) not in done]
    if not todo:
        return 0
    run = load_run(run_dir)
    if task not in datasets:
        datasets[task] = run.config.data.prepare()
    results = Path(experiment.results)
    pretrained = pretrain_fields(run.config)
    for variant, options in todo:
        members = experiment.member_folders(cell, options)
        unfinished = [str(m) for m in members if not (m / BEST_WEIGHTS).is_file()]
        if unfinished:
            raise GenctrError(f"inference.{variant} on {run_dir}: ensemble member(s) not trained: "
                              f"{', '.join(unfinished)}")
        result = evaluate_run_inference(run, datasets[task], options, measure_latency=experiment.latency,
                                        members=members)
        record = inference_record(task, model, seed, pretrain, variant, result, options,
                                  experiment.name, run_dir, commit, pretrained)
        if members:
            record["members"] = [str(m) for m in members]
        append_jsonl(results, record, locked=False)  # run_experiment holds the lock
        log(f"  {task} {model} seed {seed} {record['inference']} ({variant}): test auc "
            f"{record['test_auc']:.5f} logloss {record['test_logloss']:.5f} cost {record['avg_cost']:.2f}")
    return len(todo)


def run_experiment(experiment: ExperimentConfig, log: Callable[[str], None] = print,
                   only: CellFilter = CellFilter()) -> int:
    """Train every cell (of those `only` keeps) not yet in the results file; returns how many
    cells ran.

    The results file is checked for writing before any cell trains, and locked for the whole
    run: a second `genctr run` on the same file stops with one line."""
    only.check(experiment)
    results = Path(experiment.results)
    check_writable(results, "the results file")
    results.parent.mkdir(parents=True, exist_ok=True)
    with results_lock(results):
        return _run_cells(experiment, results, log, [c for c in experiment.cells() if only.keeps(c)])


def _run_cells(experiment: ExperimentConfig, results: Path, log: Callable[[str], None],
               cells: list[tuple[str, str, int, str]]) -> int:
    done, inference_done = recorded(results, experiment.name)
    commit = git_commit()  # of the code that runs, even if files are edited meanwhile
    ran, datasets = 0, {}
    for cell in cells:
        task, model, seed, pretrain = cell
        config = experiment.run_config(task, model, seed, pretrain)
        run_dir = experiment.run_folder(task, model, seed, pretrain)
        finished = (run_dir / BEST_WEIGHTS).is_file() and (run_dir / METRICS_FILE).is_file()
        if cell in done or (experiment.inference and finished):
            log(f"skip training {task} {model} seed {seed} ({pretrain}): already recorded or finished")
        else:
            if pretrain != "none":
                _pretrain_cell(experiment, task, pretrain, seed, log)
            ran += _train_cell(experiment, cell, config, run_dir, results, commit, log)
    for cell in cells if experiment.inference else []:  # after training: ensembles need every seed
        run_dir = experiment.run_folder(*cell)
        ran += run_inference_cells(experiment, cell, run_dir, inference_done, datasets, log, commit)
    return ran


def _pretrain_cell(experiment: ExperimentConfig, task: str, label: str, seed: int,
                   log: Callable[[str], None]) -> None:
    """Run the pre-training a fine-tuning cell needs, unless it has finished already."""
    config = experiment.pretrain_config(task, label, seed)
    folder = experiment.pretrain_folder(task, label, seed)
    if (folder / WEIGHTS_FILE).is_file():
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    config_path = folder.parent / f"{folder.name}-pretrain.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    log(f"pre-train {task} {label} seed {seed} -> {folder}")
    # an unfinished pre-training of this cell (killed) is continued from its last epoch
    done = subprocess.run([sys.executable, "-m", "genctr", "pretrain", str(config_path), "--output",
                           str(folder), "--resume"], text=True)
    if done.returncode != 0:
        raise GenctrError(f"pre-training {task}/{label}/seed {seed} failed (exit {done.returncode})")


def _train_cell(experiment: ExperimentConfig, cell: tuple[str, str, int, str], config: RunConfig,
                run_dir: Path, results: Path, commit: str, log: Callable[[str], None]) -> int:
    task, model, seed, pretrain = cell
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    config_path = run_dir.parent / f"{run_dir.name}-cell.yaml"  # beside the run, not in it
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    log(f"run {task} {model} seed {seed} -> {run_dir}")
    command = [sys.executable, "-m", "genctr", "train", str(config_path), "--output",
               str(run_dir), "--resume"]
    finished = subprocess.run(command, text=True)
    if finished.returncode != 0:
        raise GenctrError(f"cell {task}/{model}/seed {seed} failed (exit {finished.returncode})")
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    # the run's effective config: pre-trained options filled in, `transfer: auto` resolved
    config = RunConfig.model_validate(yaml.safe_load((run_dir / CONFIG_FILE).read_text()))
    record = record_for(task, model, seed, config, metrics, experiment.name, run_dir, commit, pretrain)
    record["history"] = [{k: e[k] for k in ("epoch", "train_loss", "valid_auc", "valid_logloss")}
                         for e in read_jsonl(run_dir / HISTORY)]
    append_jsonl(results, record, locked=False)  # run_experiment holds the lock
    log(f"  test auc {record['test_auc']:.5f} logloss {record['test_logloss']:.5f}")
    return 1
