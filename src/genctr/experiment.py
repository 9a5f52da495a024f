"""Experiment matrices: tasks × models × seeds, each cell a run, each result a JSONL record.

`genctr run EXPERIMENT.yaml` trains every cell not yet recorded (so a killed matrix resumes
where it stopped), each in its own process (clean peak-memory measurement, no state shared
between cells), and appends one record per cell in the results format of BENCHMARKS.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import yaml
from pydantic import Field, field_validator

from genctr.config import DataConfig, RunConfig
from genctr.errors import GenctrError
from genctr.models import model_options
from genctr.provenance import git_commit, machine, now_iso
from genctr.schema import Strict, parse_model, read_yaml
from genctr.train import TrainConfig


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

    @field_validator("models")
    @classmethod
    def _valid_models(cls, models: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for label, spec in models.items():
            spec.setdefault("name", label)
            model_options(spec["name"], {k: v for k, v in spec.items() if k != "name"})
        return models

    def cells(self) -> list[tuple[str, str, int]]:
        return [(t, m, s) for t in self.tasks for m in self.models for s in self.seeds]

    def run_config(self, task: str, model: str, seed: int) -> RunConfig:
        train = self.train.model_dump() | self.model_train.get(model, {}) | {"seed": seed,
                                                                            "progress": False}
        return RunConfig(name=f"{self.name}/{task}/{model}/seed{seed}", data=self.tasks[task],
                         model=self.models[model], train=TrainConfig.model_validate(train),
                         output_dir=self.output_dir)


def load_experiment(path: str | Path) -> ExperimentConfig:
    return parse_model(ExperimentConfig, read_yaml(path), str(path))


def recorded_cells(results: Path, experiment: str) -> set[tuple[str, str, int]]:
    if not results.is_file():
        return set()
    records = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    return {(r["task"], r["model"], r["seed"]) for r in records
            if r.get("experiment") == experiment and r.get("inference", "plain") == "plain"}


def record_for(task: str, model: str, seed: int, config: RunConfig, metrics: dict[str, Any],
               experiment: str, run_dir: Path, commit: str) -> dict[str, Any]:
    test, training = metrics["test"], metrics["training"]
    return {
        "task": task, "model": model, "pretrain": "none", "inference": "plain", "seed": seed,
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


def run_experiment(experiment: ExperimentConfig, log: Callable[[str], None] = print) -> int:
    """Train every cell not yet in the results file; returns how many cells ran."""
    results = Path(experiment.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    done = recorded_cells(results, experiment.name)
    commit = git_commit()  # of the code that runs, even if files are edited meanwhile
    ran = 0
    for task, model, seed in experiment.cells():
        if (task, model, seed) in done:
            log(f"skip {task} {model} seed {seed}: already recorded")
            continue
        config = experiment.run_config(task, model, seed)
        run_dir = Path(config.output_dir) / config.run_name()
        run_dir.mkdir(parents=True, exist_ok=True)
        config_path = run_dir / "experiment-cell.yaml"
        config_path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        log(f"run {task} {model} seed {seed} -> {run_dir}")
        command = [sys.executable, "-m", "genctr", "train", str(config_path), "--output",
                   str(run_dir), "--resume"]
        finished = subprocess.run(command, text=True)
        if finished.returncode != 0:
            raise GenctrError(f"cell {task}/{model}/seed {seed} failed (exit {finished.returncode})")
        metrics = json.loads((run_dir / "metrics.json").read_text())
        record = record_for(task, model, seed, config, metrics, experiment.name, run_dir, commit)
        with results.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        log(f"  test auc {record['test_auc']:.5f} logloss {record['test_logloss']:.5f}")
        ran += 1
    return ran
