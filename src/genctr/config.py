"""Run configuration: which data, which model, how to train. Strict: unknown keys are errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from genctr.data.sources import SOURCES, Source, make_source
from genctr.errors import ConfigError
from genctr.models import model_options
from genctr.schema import Strict, parse_model, read_yaml
from genctr.train import TrainConfig


class DataConfig(Strict):
    source: str = "synthetic"
    data_dir: str | None = None
    options: dict[str, Any] = {}
    cache_dir: str | None = ".cache/genctr"

    @field_validator("source")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in SOURCES:
            raise ValueError(f"unknown source '{value}'; choose one of {sorted(SOURCES)}")
        return value

    def make_source(self) -> Source:
        return make_source(self.source, self.data_dir, **self.options)


class RunConfig(Strict):
    """One training run. `model` is `{name: dnn, <that model's options>}`."""

    name: str | None = None
    data: DataConfig = Field(default_factory=DataConfig)
    model: dict[str, Any] = Field(default_factory=lambda: {"name": "dnn"})
    train: TrainConfig = Field(default_factory=TrainConfig)
    output_dir: str = "runs"
    init_from: str | None = Field(None, description="a pre-training run folder to fine-tune from")
    freeze_embeddings: bool = Field(False, description="with init_from: keep the transferred "
                                    "embedding tables fixed")

    @field_validator("model")
    @classmethod
    def _valid_model(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "name" not in value:
            raise ValueError("model needs a 'name'")
        model_options(value["name"], {k: v for k, v in value.items() if k != "name"})
        return value

    @property
    def model_name(self) -> str:
        return self.model["name"]

    @property
    def model_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in self.model.items() if k != "name"}

    def run_name(self) -> str:
        return self.name or f"{self.data.source}-{self.model_name}-seed{self.train.seed}"


def load_run_config(path: str | Path) -> RunConfig:
    try:
        return parse_model(RunConfig, read_yaml(path), str(path))
    except ConfigError:
        raise
    except ValueError as err:  # a model-option error raised inside a validator
        raise ConfigError(f"{path}: {err}") from None
